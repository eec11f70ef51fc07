"""One-shot mode: one turn of the chat session, printed for a terminal or a script.

Three stdout shapes (the README's "One-shot answers" documents them):

    text (default)  the notices (emergency first), a blank line, the answer, a blank line, the reminder
    --bare          the model's text only; the guard's verdict goes to stderr as one JSON line
    --json          one JSON object: answer, notices, ood_level, ood_score, red_flags, dosing_note,
                    declined, degraded, reminder, stop_reason, error, stats

--stats adds one JSON line of timing and token counts to stderr (always the last line). Ctrl-C stops the
model (a second Ctrl-C aborts); what was generated is printed, with the reminder, and the exit status is 130.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import threading

import click

from medchat.core.engine import GenerationSettings
from medchat.core.model import ModelSpec
from medchat.core.session import (
    ChatSession,
    Checked,
    Declined,
    Finished,
    Notice,
    Reminder,
    Stats,
    Token,
    Waiting,
    load_guard,
)

OUTPUTS = ("text", "bare", "json")


def run_ask(question: str, spec: ModelSpec, settings: GenerationSettings, *, system_prompt: str | None = None,
            style: str = "chat", show_stats: bool = False, output: str = "text", ood_policy: str = "note",
            endpoint: dict | None = None) -> None:
    """`endpoint`: RemoteEngine's arguments to generate through an OpenAI-compatible server instead."""
    from medchat.core.fastdecode import load_engine
    from medchat.core.remote import RemoteEngine

    guard = load_guard(spec.adapter)
    # The embedder is not loaded alongside the model: loading both at once in two threads broke bf16
    # generation on the bundled model (a float/bf16 matmul mismatch). The session loads it (Waiting).
    engine = RemoteEngine(**endpoint) if endpoint else load_engine(spec, prompt_style=style)
    for note in engine.info.extra.get("notes", ()):  # e.g. NF4 on CPU is slow; stdout stays the answer only
        click.echo(f"note: {note}", err=True)
    session = ChatSession(engine, guard, policy=ood_policy, settings=settings, system_prompt=system_prompt)
    printer = {"text": TextPrinter, "bare": BarePrinter, "json": JsonPrinter}[output]()
    finished = stats = None
    with _ctrl_c_cancels(session):
        for event in session.send(question):
            printer.handle(event)
            if isinstance(event, Stats):
                stats = event.stats
            elif isinstance(event, Finished):
                finished = event
    sys.stdout.flush()
    if show_stats:
        record = {"model": engine.info.summary(), "backend": engine.info.extra.get("backend"),
                  **(stats.as_dict() if stats is not None else {}), "stop_reason": finished.stop_reason}
        click.echo(json.dumps(record), err=True)
    if finished.stop_reason == "error":
        raise click.ClickException(finished.error or "generation failed")
    if finished.stop_reason == "cancelled":
        sys.exit(130)


@contextlib.contextmanager
def _ctrl_c_cancels(session: ChatSession):
    """The first Ctrl-C stops the model (the answer so far and the reminder are still printed); a second
    one raises KeyboardInterrupt as usual."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        signal.signal(signal.SIGINT, previous)
        session.cancel()

    previous = signal.signal(signal.SIGINT, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def verdict(checked: Checked, notices: list[Notice], declined: bool) -> dict:
    """The guard's verdict for a script: the result's fields, the notices shown, and what the policy did."""
    result = checked.result.as_dict() if checked.result is not None else {
        "ood_score": None, "ood_level": None, "red_flags": [], "dosing_note": False}
    return result | {"notices": [n.as_dict() for n in notices], "declined": declined, "degraded": checked.degraded}


class TextPrinter:
    """For a person at a terminal: notices first, the answer as it streams, the reminder last."""

    MARKS = {"emergency": "⚠"}

    def __init__(self):
        self.out = sys.stdout
        self.wrote_notice = False

    def write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def handle(self, event) -> None:
        if isinstance(event, Waiting):
            if sys.stderr.isatty():
                click.echo(f"medchat: {event.text}", err=True)
        elif isinstance(event, Notice):
            self.write(f"{self.MARKS.get(event.kind, 'ⓘ')} {event.text}\n")
            self.wrote_notice = True
        elif isinstance(event, (Token, Declined)):
            if self.wrote_notice:
                self.write("\n")
                self.wrote_notice = False
            self.write(event.text)
        elif isinstance(event, Reminder):
            self.write(f"\n\n{event.text}\n")


class VerdictCollector:
    """What the machine-readable printers share: the guard's verdict and the notices, gathered as they come."""

    def __init__(self):
        self.checked: Checked | None = None
        self.notices: list[Notice] = []

    def collect(self, event) -> bool:
        """Take a Checked or Notice event; False for any other event."""
        if isinstance(event, Checked):
            self.checked = event
        elif isinstance(event, Notice):
            self.notices.append(event)
        else:
            return False
        return True


class BarePrinter(VerdictCollector):
    """The model's text only on stdout; the verdict as one JSON line on stderr before the answer starts."""

    def flush_verdict(self, declined: bool = False) -> None:
        if self.checked is not None:
            click.echo(json.dumps(verdict(self.checked, self.notices, declined), ensure_ascii=False), err=True)
            self.checked = None

    def handle(self, event) -> None:
        if self.collect(event):
            return
        if isinstance(event, Declined):
            self.flush_verdict(declined=True)
        elif isinstance(event, Token):
            self.flush_verdict()
            sys.stdout.write(event.text)
            sys.stdout.flush()
        elif isinstance(event, Finished):
            self.flush_verdict()
            sys.stdout.write("\n")


class JsonPrinter(VerdictCollector):
    """One JSON object on stdout once the turn is over."""

    def __init__(self):
        super().__init__()
        self.declined = False
        self.reminder = ""
        self.stats = None

    def handle(self, event) -> None:
        if self.collect(event):
            return
        if isinstance(event, Declined):
            self.declined = True
        elif isinstance(event, Stats):
            self.stats = event.stats.as_dict()
        elif isinstance(event, Reminder):
            self.reminder = event.text
        elif isinstance(event, Finished):
            record = {"answer": event.answer} | verdict(self.checked, self.notices, self.declined) | {
                "reminder": self.reminder, "stop_reason": event.stop_reason, "error": event.error,
                "stats": self.stats}
            click.echo(json.dumps(record, ensure_ascii=False))
