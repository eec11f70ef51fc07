"""One-shot mode: one turn of the chat session, printed for a terminal or a script.

Three stdout shapes (the README's "One-shot answers" documents them):

    text (default)  the notices (emergency first), a blank line, the answer, a blank line, the reminder
    --bare          the model's text only; the guard's verdict goes to stderr as one JSON line
    --json          one JSON object: answer, notices, ood_level, ood_score, red_flags, dosing_note,
                    declined, degraded, reminder, stop_reason, error, stats

--stats adds one JSON line of timing and token counts to stderr (always the last line). Once the answer has
begun, Ctrl-C stops the model: what was generated is printed, with the reminder, and the exit status is 130.
A hang-up (SIGHUP: a closed terminal, a dropped SSH session) or SIGTERM does the same (129, 143): where
stdout is a file or a pipe, it gets the partial answer and the reminder; on a terminal that is gone, the
printing stops quietly. Before the answer begins (the model or the safety checker still loading), and at a
second signal, medchat ends at once (`Interrupted`).
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


class Interrupted(BaseException):
    """A signal ended `medchat ask` before the answer began, or a second one came (a BaseException, like
    KeyboardInterrupt, so that no `except Exception` in a library swallows it). The exit status is 128 + signum."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.exit_code = 128 + signum


def run_ask(question: str, spec: ModelSpec, settings: GenerationSettings, *, system_prompt: str | None = None,
            style: str = "chat", show_stats: bool = False, output: str = "text", ood_policy: str = "note",
            endpoint: dict | None = None) -> int:
    """Answer `question`; return the exit status (0, or 128 + the signal that stopped the answer).
    `endpoint`: RemoteEngine's arguments to generate through an OpenAI-compatible server instead.
    Raises click.ClickException for a load or generation error and Interrupted (see the module doc)."""
    with _signals_stop() as stop:
        return _ask(question, spec, settings, stop, system_prompt=system_prompt, style=style,
                    show_stats=show_stats, output=output, ood_policy=ood_policy, endpoint=endpoint)


def _ask(question: str, spec: ModelSpec, settings: GenerationSettings, stop: "_SignalStop", *,
         system_prompt: str | None, style: str, show_stats: bool, output: str, ood_policy: str,
         endpoint: dict | None) -> int:
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
    output_lost = False
    for event in session.send(question):
        if isinstance(event, Checked):
            stop.session = session  # from here on a signal stops the model and keeps the answer so far
        if not output_lost:
            try:
                printer.handle(event)
            except OSError:  # the terminal hung up or the reader of the pipe left: nobody reads the rest
                output_lost = True
                session.cancel()
        if isinstance(event, Stats):
            stats = event.stats
        elif isinstance(event, Finished):
            finished = event
    if show_stats and not output_lost:
        # The stats' own "model" is the name an endpoint answered with (None for the local engine).
        record = {**(stats.as_dict() if stats is not None else {}), "model": engine.info.summary(),
                  "backend": engine.info.extra.get("backend"), "stop_reason": finished.stop_reason}
        click.echo(json.dumps(record), err=True)
    if finished.stop_reason == "error":
        raise click.ClickException(finished.error or "generation failed")
    if stop.signum is not None:
        return 128 + stop.signum
    return 1 if output_lost else 0


# SIGHUP: a closed terminal or a dropped SSH session; SIGTERM: `kill`, a session manager logging out.
STOP_SIGNALS = tuple(s for s in (signal.SIGINT, getattr(signal, "SIGHUP", None), signal.SIGTERM) if s is not None)


class _SignalStop:
    """What the stop signals did. Once `session` is set (the guard has checked the question), the first
    signal cancels the turn; before that, or at a second signal, the handler raises Interrupted."""

    def __init__(self):
        self.session: ChatSession | None = None
        self.signum: int | None = None

    def handle(self, signum, frame) -> None:
        if self.session is None or self.signum is not None:
            raise Interrupted(signum)
        self.signum = signum
        self.session.cancel()


@contextlib.contextmanager
def _signals_stop():
    stop = _SignalStop()
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield stop
        return
    previous = {s: signal.signal(s, stop.handle) for s in STOP_SIGNALS}
    try:
        yield stop
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


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
