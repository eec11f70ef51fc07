"""One-shot mode: stream one answer to stdout (nothing else on stdout; stats on stderr)."""

from __future__ import annotations

import json
import sys

import click

from medchat.engine import Engine, EngineError, GenerationSettings
from medchat.model import ModelError, ModelSpec, load
from medchat.prompting import DEFAULT_SYSTEM_PROMPT, build_messages
from medchat.textsafe import strip_control


def run_ask(question: str, spec: ModelSpec, settings: GenerationSettings, *, system_prompt: str | None = None,
            style: str = "chat", show_stats: bool = False) -> None:
    try:
        loaded = load(spec)
    except ModelError as exc:
        raise click.ClickException(str(exc)) from exc
    engine = Engine(loaded, prompt_style=style)
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
        record = {"model": loaded.info.summary(), **stream.stats.as_dict(),
                  "truncated_turns": stream.truncated_turns}
        click.echo(json.dumps(record), err=True)
