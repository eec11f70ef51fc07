"""Scripted fakes that implement medchat.core.protocols (Engine, Stream, GuardChecker), for session and app tests.

They return the real result types (GenerationStats, GuardResult, RedFlag), so that what a front end renders
in a test is what it renders in use.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from medchat.core.engine import EngineError, GenerationStats
from medchat.core.guard.guard import GuardResult, RedFlag
from medchat.core.guard.notices import EMERGENCY_NOTICE
from medchat.core.model import ModelInfo


def fake_info() -> ModelInfo:
    return ModelInfo(
        base="fake-base", base_path="/nowhere/fake-base", adapter="/nowhere/run/adapter", merged=True,
        quantization="none", device="cpu", dtype="fp32", params_total=1_234_567, params_trainable=0,
        load_seconds=0.5, context_length=2048,
    )


class FakeStream:
    """Yields scripted chunks; with `hang=True` it then blocks until cancelled (a stream that never ends);
    `fail` is raised after the chunks (as an EngineError, as the real streams do); `stuck` (an Event) blocks
    before the first chunk until set, ignoring the cancel (a model reading a huge prompt)."""

    def __init__(self, chunks, *, hang=False, fail=None, truncated_turns=0, truncated_chars=0, stuck=None,
                 cancel: threading.Event | None = None):
        self.chunks = list(chunks)
        self.hang = hang
        self.fail = fail
        self.truncated_turns = truncated_turns
        self.truncated_chars = truncated_chars
        self.stats: GenerationStats | None = None
        self.started = threading.Event()  # set once the first chunk has been handed out
        self.stuck = stuck
        self._cancel = cancel or threading.Event()

    def __iter__(self):
        sent = 0
        if self.stuck is not None:
            self.stuck.wait(timeout=60)
        for chunk in self.chunks:
            if self._cancel.is_set():
                break
            sent += 1
            yield chunk
            self.started.set()
        if self.fail is not None:
            self.stats = GenerationStats(0.1, sent, 10.0, 0.2, "error")
            raise EngineError(f"Generation failed: {type(self.fail).__name__}: {self.fail}") from self.fail
        if self.hang:
            self._cancel.wait(timeout=60)
        reason = "cancelled" if self._cancel.is_set() else "eos"
        self.stats = GenerationStats(ttft_s=0.25, tokens=sent, tokens_per_s=12.5, elapsed_s=1.0, stop_reason=reason)

    def cancel(self):
        self._cancel.set()

    @property
    def cancelled(self):
        return self._cancel.is_set()


@dataclass
class FakeEngine:
    """Returns the scripted streams in order (the last one repeats); records every request."""

    streams: list = field(default_factory=list)
    requests: list = field(default_factory=list)

    def __post_init__(self):
        self.info = fake_info()
        self.made: list[FakeStream] = []
        self.prefills: list = []

    def prefill(self, messages, draft=""):
        self.prefills.append((messages, draft))

    def stream(self, messages, settings=None, cancel=None):
        self.requests.append((messages, settings))
        script = self.streams[min(len(self.made), len(self.streams) - 1)] if self.streams else {"chunks": ["OK"]}
        stream = FakeStream(**script, cancel=cancel) if isinstance(script, dict) else script
        self.made.append(stream)
        return stream


def _flag(rule_id: str, category: str = "emergency", source: str = "rule") -> RedFlag:
    return RedFlag(rule_id, category, EMERGENCY_NOTICE[category], rule_id.replace("_", " "), source=source)


class FakeGuard:
    """The real Guard's behaviour on a few phrases: "chest pain" is a rule flag (instant), "face is drooping"
    only a semantic one (the full check), "how much" a dosing request, "football" out of domain, "maybe"
    uncertain. `loading` (an Event) makes it not ready until set: warm_up blocks on it."""

    def __init__(self, loading: threading.Event | None = None, ood_error: str | None = None):
        self.loading = loading
        self.ood_error = ood_error
        self.warm_ups = 0
        self.checked: list[str] = []

    @property
    def ready(self) -> bool:
        return self.loading is None or self.loading.is_set()

    def warm_up(self):
        self.warm_ups += 1
        if self.loading is not None:
            self.loading.wait(timeout=30)
        return self

    def check_rules(self, text):
        lower = text.lower()
        flags = [_flag("chest_pain")] if "chest pain" in lower else []
        if "overdose" in lower:
            flags.append(_flag("overdose", "poisoning"))
        return GuardResult(None, None, flags, dosing_note="how much" in lower)

    def check(self, text):
        self.checked.append(text)
        rules = self.check_rules(text)
        lower = text.lower()
        flags = list(rules.red_flags)
        if "face is drooping" in lower:
            flags.append(_flag("stroke", source="semantic"))
        if "football" in lower:
            return GuardResult(-0.3, "out_of_domain", flags, rules.dosing_note)
        if "maybe" in lower:
            return GuardResult(0.0, "uncertain", flags, rules.dosing_note)
        return GuardResult(0.4, "in_domain", flags, rules.dosing_note)


class BrokenIndexGuard(FakeGuard):
    """A guard whose index turns out corrupt on first use: check() fails, the rules still work."""

    def __init__(self, message: str):
        super().__init__(loading=threading.Event())
        self.message = message

    def warm_up(self):
        from medchat.core.guard import GuardIndexError

        self.ood_error = self.message
        raise GuardIndexError(self.message)
