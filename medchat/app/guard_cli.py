"""`medchat guard [TEXT]`: screen messages, one JSON object per line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from medchat.app.cli_options import MedchatCommand


@click.command(name="guard", cls=MedchatCommand)
@click.argument("text", required=False)
@click.option("--index", "index_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Guard index directory (default: the shipped one).")
@click.option("--rules-only", is_flag=True, help="Only the red-flag and dosing rules (no embedder, instant).")
@click.option("--batch-size", type=int, default=64, show_default=True, help="Lines scored together from stdin.")
def guard_command(text, index_dir, rules_only, batch_size):
    """Check TEXT (or each line of stdin) for out-of-domain, red flags and dosing requests.

    Prints one JSON object per message: text, ood_score, ood_level (in_domain, uncertain, out_of_domain,
    or null when not scored), red_flags (rule_id, category, title, source: "rule" or "semantic") and
    dosing_note. The semantic red-flag layer and the score need the embedder; --rules-only skips both.
    """
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # huggingface_hub reads it when it is first imported
    from medchat.core.guard import Guard
    from medchat.core.textsafe import strip_control

    if text is not None:
        text = strip_control(text)
        if not text.strip():  # an empty message has no meaning to score
            click.echo("Error: TEXT is empty; give a message to check, or omit TEXT to read one message a line "
                       "from stdin.", err=True)
            sys.exit(2)
    guard = Guard.load(index_dir)  # a bad index or rules file: MedchatCommand prints its one line

    def emit(batch: list[str]) -> None:
        results = guard.check_many(batch, ood=not rules_only)
        for t, r in zip(batch, results):
            click.echo(json.dumps({"text": t, **r.as_dict()}, ensure_ascii=False))
        sys.stdout.flush()

    if text is not None:
        emit([text])
    else:
        batch: list[str] = []
        for line in click.get_text_stream("stdin"):
            line = strip_control(line.rstrip("\n"))
            if not line.strip():
                continue
            batch.append(line)
            if len(batch) >= max(1, batch_size):
                emit(batch)
                batch = []
        if batch:
            emit(batch)
    if not rules_only and guard.ood_error:
        click.echo(f"warning: out-of-domain score unavailable: {guard.ood_error}", err=True)
