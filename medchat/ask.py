"""One-shot mode: stream one answer to stdout (nothing else on stdout; stats on stderr)."""

from __future__ import annotations

import json
import sys

import click

from medchat.engine import EngineError, GenerationSettings
from medchat.fastdecode import load_engine
from medchat.model import ModelError, ModelSpec
from medchat.prompting import DEFAULT_SYSTEM_PROMPT, build_messages
from medchat.textsafe import strip_control


def run_ask(question: str, spec: ModelSpec, settings: GenerationSettings, *, system_prompt: str | None = None,
            style: str = "chat", show_stats: bool = False) -> None:
    try:
        engine = load_engine(spec, prompt_style=style)
    except ModelError as exc:
        raise click.ClickException(str(exc)) from exc
    for note in engine.info.extra.get("notes", ()):  # e.g. NF4 on CPU is slow; stdout stays the answer only
        click.echo(f"note: {note}", err=True)
    stream = engine.stream(build_messages(question, system_prompt or DEFAULT_SYSTEM_PROMPT), settings)
    out = sys.stdout
    try:
        for chunk in stream:
            out.write(strip_control(chunk) if out.isatty() else chunk)
            out.flush()
    except KeyboardInterrupt:
        stream.cancel()
        for _ in stream:  # let the model stop and the thread finish
            pass
    except EngineError as exc:
        raise click.ClickException(str(exc)) from exc
    out.write("\n")
    if show_stats:
        record = {"model": engine.info.summary(), "backend": engine.info.extra.get("backend"), **stream.stats.as_dict(),
                  "truncated_turns": stream.truncated_turns}
        click.echo(json.dumps(record), err=True)
