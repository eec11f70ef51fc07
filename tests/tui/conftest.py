"""A scripted fake engine and guard, and helpers to drive the chat app with Pilot."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import pytest

from medchat.engine import GenerationStats
from medchat.model import ModelInfo


def fake_info() -> ModelInfo:
    return ModelInfo(
        base="fake-base", base_path="/nowhere/fake-base", adapter="/nowhere/run/adapter", merged=True,
        quantization="none", device="cpu", dtype="fp32", params_total=1_234_567, params_trainable=0,
        load_seconds=0.5, context_length=2048,
    )


class FakeStream:
    """Yields scripted chunks; with `hang=True` it then blocks until cancel() (a stream that never ends)."""

    def __init__(self, chunks, *, hang=False, fail=None, truncated_turns=0, truncated_chars=0, stuck=None):
        self.chunks = list(chunks)
        self.hang = hang
        self.fail = fail
        self.truncated_turns = truncated_turns
        self.truncated_chars = truncated_chars
        self.stats = None
        self.started = threading.Event()  # set once the first chunk has been handed out
        self.stuck = stuck  # an Event: before the first chunk, block until it is set, ignoring cancel()
        self._cancel = threading.Event()

    def __iter__(self):
        sent = 0
        if self.stuck is not None:  # like a model reading a huge prompt: cancel is only seen later
            self.stuck.wait(timeout=60)
        for chunk in self.chunks:
            if self._cancel.is_set():
                break
            sent += 1
            yield chunk
            self.started.set()
        if self.fail is not None:
            self.stats = GenerationStats(0.1, sent, 10.0, 0.2, "error")
            raise self.fail
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

    def prefill(self, messages, draft=""):  # the real engines' read-ahead; nothing to read here
        pass

    def stream(self, messages, settings=None, cancel=None):
        self.requests.append((messages, settings))
        script = self.streams[min(len(self.made), len(self.streams) - 1)] if self.streams else {"chunks": ["OK"]}
        stream = FakeStream(**script) if isinstance(script, dict) else script
        self.made.append(stream)
        return stream


@dataclass
class FakeFlag:
    rule_id: str
    category: str
    notice: str


@dataclass
class FakeResult:
    ood_score: float | None
    ood_level: str | None
    red_flags: list
    dosing_note: bool = False


class FakeGuard:
    """The real Guard's shape: instant rules (check_rules), the full check with a score, warm_up."""

    def __init__(self):
        self.warmed = False

    def warm_up(self):
        self.warmed = True
        return self

    def check_rules(self, text):
        flags = []
        if "chest pain" in text.lower():
            flags.append(FakeFlag("chest_pain", "cardiac", "EMERGENCY: call your local emergency number now."))
        return FakeResult(None, None, flags, dosing_note="how much" in text.lower())

    def check(self, text):
        rules = self.check_rules(text)
        if "football" in text.lower():
            return FakeResult(0.1, "out_of_domain", rules.red_flags, rules.dosing_note)
        return FakeResult(0.8, "in_domain", rules.red_flags, rules.dosing_note)


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
def make_app():
    from medchat.tui.app import MedchatApp

    def make(engine=None, guard=None, **kwargs):
        engine = engine if engine is not None else FakeEngine()
        kwargs.setdefault("cursor_blink", False)
        return MedchatApp(
            None,
            engine_factory=lambda: engine,
            guard_factory=(lambda: guard) if guard is not None else (lambda: FakeGuard()),
            **kwargs,
        )

    return make


async def wait_ready(app, pilot):
    for _ in range(400):
        if app.model_status != "loading" and app._guard_ready.is_set():
            break
        await pilot.pause(0.01)
    await pilot.pause()


async def wait_idle(app, pilot):
    for _ in range(1000):
        if not app.generating:
            break
        await pilot.pause(0.01)
    await app.workers.wait_for_complete()
    await pilot.pause()


async def send(app, pilot, text):
    from medchat.tui.widgets import ChatInput

    prompt = app.query_one(ChatInput)
    prompt.load_text(text)
    prompt.focus()
    await pilot.press("enter")
    await pilot.pause()
