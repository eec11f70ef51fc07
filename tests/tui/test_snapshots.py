"""Snapshots of the main screens (pytest-textual-snapshot), cursor blink off, no clock, fixed dates."""

from __future__ import annotations

import pytest

from medchat.core.history import HistoryStore

from .conftest import FakeEngine, send, wait_idle, wait_ready

pytest.importorskip("pytest_textual_snapshot")


@pytest.fixture(autouse=True)
def utc(monkeypatch):
    import time

    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.fixture
def fixed_paths(monkeypatch):
    """Paths shown on screen (help, model info) must not depend on the test's tmp dir."""
    monkeypatch.setenv("MEDCHAT_DATA_DIR", "/home/user/.local/share/medchat")
    monkeypatch.setenv("MEDCHAT_CONFIG_DIR", "/home/user/.config/medchat")
    monkeypatch.setenv("MEDCHAT_CACHE_DIR", "/home/user/.cache/medchat")
    from medchat.app import environment

    environment.start()  # as the command would have at its start


ANSWER = [
    "Common symptoms of **type 2 diabetes**:\n\n",
    "- increased thirst\n",
    "- frequent urination\n",
    "- tiredness\n",
]


def test_empty_chat_80x24(snap_compare, make_app):
    async def run_before(pilot):
        await wait_ready(pilot.app, pilot)

    assert snap_compare(make_app(FakeEngine()), terminal_size=(80, 24), run_before=run_before)


def test_answer_with_footer_and_reminder_80x24(snap_compare, make_app):
    async def run_before(pilot):
        await wait_ready(pilot.app, pilot)
        await send(pilot.app, pilot, "What are the symptoms of diabetes?")
        await wait_idle(pilot.app, pilot)

    app = make_app(FakeEngine([{"chunks": ANSWER}]))
    assert snap_compare(app, terminal_size=(80, 24), run_before=run_before)


def test_emergency_notice_stopped_answer_and_out_of_domain(snap_compare, make_app):
    async def run_before(pilot):
        app = pilot.app
        await wait_ready(app, pilot)
        await send(app, pilot, "Who won the football game?")
        await wait_idle(app, pilot)
        await send(app, pilot, "I have crushing chest pain")
        for _ in range(500):
            if app.loader.engine.made[-1].started.is_set():
                break
            await pilot.pause(0.01)
        await pilot.pause(0.05)
        await pilot.press("escape")
        await wait_idle(app, pilot)

    engine = FakeEngine([{"chunks": ["I can only help with health questions."]},
                         {"chunks": ["Chest pain can be"], "hang": True}])
    assert snap_compare(make_app(engine), terminal_size=(100, 32), run_before=run_before)


def test_history_sidebar_200x50(snap_compare, make_app):
    with HistoryStore() as store:
        for title in ("Asthma inhalers", "Migraine triggers", "Vitamin D dose"):
            conv = store.create_conversation(title)
            store.add_message(conv.id, "user", f"Tell me about {title.lower()}")
        store._db.execute("UPDATE conversations SET created = '2026-01-02T10:00:00+00:00', "
                          "updated = '2026-01-0' || id || 'T1' || id || ':30:00+00:00'")
        store._db.commit()

    async def run_before(pilot):
        await wait_ready(pilot.app, pilot)

    assert snap_compare(make_app(FakeEngine()), terminal_size=(200, 50), run_before=run_before)


def test_help_screen(snap_compare, make_app, fixed_paths):
    async def run_before(pilot):
        await wait_ready(pilot.app, pilot)
        await pilot.press("f1")
        await pilot.pause()

    assert snap_compare(make_app(FakeEngine(), no_history=True), terminal_size=(100, 40), run_before=run_before)


def test_model_info_screen(snap_compare, make_app, fixed_paths):
    async def run_before(pilot):
        await wait_ready(pilot.app, pilot)
        await pilot.press("f2")
        await pilot.pause()

    assert snap_compare(make_app(FakeEngine(), no_history=True), terminal_size=(100, 32), run_before=run_before)


def test_settings_screen_80x24(snap_compare, make_app):
    async def run_before(pilot):
        await wait_ready(pilot.app, pilot)
        await pilot.press("f3")
        await pilot.pause()

    assert snap_compare(make_app(FakeEngine()), terminal_size=(80, 24), run_before=run_before)


def test_empty_chat_40x12(snap_compare, make_app):
    async def run_before(pilot):
        await wait_ready(pilot.app, pilot)

    assert snap_compare(make_app(FakeEngine()), terminal_size=(40, 12), run_before=run_before)


def _streaming_emergency(size):
    """The answer streams past the notice (the engine then waits): the notice is pinned above the prompt."""

    async def run_before(pilot):
        app = pilot.app
        await wait_ready(app, pilot)
        await send(app, pilot, "I have crushing chest pain")
        for _ in range(500):
            if app.loader.engine.made and app.loader.engine.made[-1].started.is_set():
                break
            await pilot.pause(0.01)
        await pilot.pause(0.3)

    return run_before


STREAMING = [{"chunks": [f"Line {i} of a long answer.\n\n" for i in range(30)], "hang": True}]


def test_emergency_notice_in_view_while_streaming_80x24(snap_compare, make_app):
    app = make_app(FakeEngine(STREAMING))
    assert snap_compare(app, terminal_size=(80, 24), run_before=_streaming_emergency((80, 24)))


def test_emergency_notice_in_view_while_streaming_40x12(snap_compare, make_app):
    app = make_app(FakeEngine(STREAMING))
    assert snap_compare(app, terminal_size=(40, 12), run_before=_streaming_emergency((40, 12)))


def test_sidebar_overlay_40x12(snap_compare, make_app):
    with HistoryStore() as store:
        store.create_conversation("Asthma inhalers")
        store._db.execute("UPDATE conversations SET created = '2026-01-02T10:00:00+00:00', "
                          "updated = '2026-01-02T11:30:00+00:00'")
        store._db.commit()

    async def run_before(pilot):
        await wait_ready(pilot.app, pilot)
        await pilot.press("ctrl+b")
        await pilot.pause()

    assert snap_compare(make_app(FakeEngine()), terminal_size=(40, 12), run_before=run_before)
