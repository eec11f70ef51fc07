"""Drive the chat app with Pilot; the scripted engine and guard (they implement medchat.core.protocols) are
shared with the session tests (tests/session_fakes.py)."""

from __future__ import annotations

import pytest
from session_fakes import FakeEngine, FakeGuard, FakeStream, fake_info  # noqa: F401  (re-exported for tests)


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
def make_app():
    from medchat.app.chat.app import MedchatApp

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
        if app.loader.model_status != "loading" and app.loader.guard_ready.is_set():
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
    from medchat.app.chat.widgets import ChatInput

    prompt = app.query_one(ChatInput)
    prompt.load_text(text)
    prompt.focus()
    await pilot.press("enter")
    await pilot.pause()
