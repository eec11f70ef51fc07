"""`medchat history list|show|export|delete`: the conversation store from the command line."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import click

from medchat.app.cli_options import MedchatGroup
from medchat.core.history import HistoryStore
from medchat.core.textsafe import strip_control


def _open() -> HistoryStore | None:
    """The store, or None when nothing was ever saved (reading must not create the database)."""
    from medchat.core.paths import history_db_path

    path = history_db_path()
    if not path.exists():
        return None
    return HistoryStore(path)


def _open_existing() -> HistoryStore:
    store = _open()
    if store is None:
        from medchat.core.paths import history_db_path

        raise click.ClickException(f"No history yet ({history_db_path()} does not exist). Chat with `medchat` first.")
    return store


def _local(iso: str) -> str:
    from datetime import datetime

    try:
        return datetime.fromisoformat(iso).astimezone().strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return iso


@click.group("history", cls=MedchatGroup)
def history() -> None:
    """List, show, export or delete saved conversations."""


@history.command("list")
@click.option("-s", "--search", default="", help="Only conversations whose title or messages contain this text.")
@click.option("-n", "--limit", type=click.IntRange(1), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def list_cmd(search: str, limit: int, as_json: bool) -> None:
    """Saved conversations, most recent first."""
    store = _open()
    if store is None:
        hits = []
    else:
        with store:
            hits = store.search(search, limit=limit)
    if as_json:
        for hit in hits:
            data = hit.conversation.as_dict()
            data.pop("settings", None)
            click.echo(json.dumps(data | ({"match": hit.snippet} if search else {}), ensure_ascii=False))
        return
    if not hits:
        click.echo("No conversations" + (f" match {search!r}." if search else " yet."))
        return
    # Titles and snippets are cut to the terminal width, so each conversation stays on one line.
    width = shutil.get_terminal_size().columns
    click.echo(f"{'id':>5}  {'updated':16}  {'msgs':>4}  title")
    for hit in hits:
        c = hit.conversation
        title = strip_control(c.title).replace("\n", " ")
        click.echo(_fit(f"{c.id:>5}  {_local(c.updated):16}  {c.message_count:>4}  {title}", width))
        if search and hit.snippet:
            click.echo(_fit(f"{'':>31}{strip_control(hit.snippet)}", width))


def _fit(line: str, width: int) -> str:
    return line if len(line) <= width else line[: max(width - 1, 1)] + "…"


@history.command("export")
@click.argument("conversation_id", type=int)
@click.option("-f", "--format", "fmt", type=click.Choice(["md", "json"]), default=None,
              help="Default: from the output file's extension, else md.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="File to write (default: print to stdout). Its folder must exist.")
@click.option("--force", is_flag=True, help="Replace the output file if it exists.")
def export_cmd(conversation_id: int, fmt: str | None, output: Path | None, force: bool) -> None:
    """Write conversation CONVERSATION_ID as Markdown or JSON."""
    from medchat.core.guard.notices import PHYSICIAN_REMINDER

    if fmt is None:
        fmt = "json" if output is not None and output.suffix.lower() == ".json" else "md"
    if output is not None:
        output = output.expanduser()
        if output.exists() and not force:
            raise click.ClickException(f"{output} exists; pass --force to replace it, or choose another file.")
        if not output.parent.is_dir():
            raise click.ClickException(f"The folder {output.parent} does not exist; create it first.")
    if output is None:
        _print_conversation(conversation_id, fmt)
        return
    with _open_existing() as store:
        out = store.export(conversation_id, output, fmt, reminder=PHYSICIAN_REMINDER)
    click.echo(f"Wrote {out}", err=True)


@history.command("show")
@click.argument("conversation_id", type=int)
def show_cmd(conversation_id: int) -> None:
    """Print conversation CONVERSATION_ID (Markdown): each answer with its notices, the reminder, and a mark
    on one that was stopped, failed or interrupted."""
    _print_conversation(conversation_id, "md")


def _print_conversation(conversation_id: int, fmt: str) -> None:
    from medchat.core.guard.notices import PHYSICIAN_REMINDER

    with _open_existing() as store:
        if fmt == "json":  # a HistoryError (no such conversation) is printed as one line by MedchatGroup
            sys.stdout.write(store.export_json(conversation_id))
        else:
            sys.stdout.write(strip_control(store.export_markdown(conversation_id, reminder=PHYSICIAN_REMINDER)))


@history.command("delete")
@click.argument("conversation_ids", type=int, nargs=-1, required=True)
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
def delete_cmd(conversation_ids: tuple[int, ...], yes: bool) -> None:
    """Delete conversations (and all their messages)."""
    with _open_existing() as store:
        conversations = [store.get_conversation(i) for i in conversation_ids]
        titles = ", ".join(f"{c.id} “{strip_control(c.title)}”" for c in conversations)
        if not yes and not click.confirm(f"Delete {titles}?", default=False):
            raise click.Abort()
        for c in conversations:
            store.delete_conversation(c.id)
    click.echo(f"Deleted {len(conversations)} conversation{'s' if len(conversations) != 1 else ''}.")
