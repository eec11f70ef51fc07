"""Nothing hidden at any size: the emergency notice stays in view while its answer streams, the sidebar
gives way on narrow terminals, the footer keeps the newcomer's keys, the welcome fits at 40x12."""

from __future__ import annotations

import pytest

from medchat.app.chat.widgets import ChatView, HistorySidebar, PinnedNotice

from .conftest import FakeEngine, send, wait_idle, wait_ready

pytestmark = pytest.mark.anyio

LONG = [f"Line {i} of a long answer about chest pain.\n\n" for i in range(40)]


def _in_view(app, widget) -> bool:
    region = widget.region
    return widget.display and region.height > 0 and app.screen.region.contains_region(region)


async def _stream_until_scrolled(app, pilot):
    chat = app.query_one(ChatView)
    for _ in range(500):
        if chat.max_scroll_y > 5 and app.loader.engine.made and app.loader.engine.made[-1].started.is_set():
            break
        await pilot.pause(0.01)
    await pilot.pause(0.1)


@pytest.mark.parametrize("size", [(80, 24), (40, 12)])
async def test_the_emergency_notice_stays_in_view_while_a_long_answer_streams(make_app, size):
    engine = FakeEngine([{"chunks": LONG, "hang": True}, {"chunks": ["Next."]}])
    app = make_app(engine)
    async with app.run_test(size=size) as pilot:
        await wait_ready(app, pilot)
        await send(app, pilot, "I have crushing chest pain")
        await _stream_until_scrolled(app, pilot)
        pinned = app.query_one(PinnedNotice)
        assert app.generating and _in_view(app, pinned)
        assert "medical emergency" in str(pinned.render())
        answer_notice = app.query_one(".notices")
        assert not app.query_one(ChatView).can_view_entire(answer_notice)  # scrolled away in the answer itself
        await pilot.press("pageup")  # the user scrolls: the copy goes, the notice in the answer is there
        await pilot.pause()
        assert not pinned.display
        await pilot.press("escape")
        await wait_idle(app, pilot)


async def test_the_pinned_notice_goes_with_the_next_message(make_app):
    engine = FakeEngine([{"chunks": LONG}, {"chunks": ["Fine."]}])
    app = make_app(engine)
    async with app.run_test(size=(40, 12)) as pilot:
        await wait_ready(app, pilot)
        await send(app, pilot, "I have crushing chest pain")
        await wait_idle(app, pilot)
        assert app.query_one(PinnedNotice).display  # the notice in the answer is out of view
        await send(app, pilot, "What is a normal pulse?")
        await wait_idle(app, pilot)
        assert not app.query_one(PinnedNotice).display


@pytest.mark.parametrize("size", [(80, 24), (40, 12)])
async def test_narrow_terminals_hide_the_sidebar_and_ctrl_b_shows_it_over_the_chat(make_app, size):
    app = make_app(FakeEngine())
    async with app.run_test(size=size) as pilot:
        await wait_ready(app, pilot)
        sidebar = app.query_one(HistorySidebar)
        chat = app.query_one(ChatView)
        assert not sidebar.display and chat.region.width >= size[0] - 2
        await pilot.press("ctrl+b")
        await pilot.pause()
        assert sidebar.display and sidebar.region.width <= 34
        assert chat.region.width >= size[0] - 2  # an overlay: the chat keeps its width beneath
        await pilot.press("ctrl+b")
        await pilot.pause()
        assert not sidebar.display


async def test_a_wide_terminal_keeps_the_sidebar_beside_the_chat(make_app):
    app = make_app(FakeEngine())
    async with app.run_test(size=(140, 30)) as pilot:
        await wait_ready(app, pilot)
        sidebar = app.query_one(HistorySidebar)
        assert sidebar.display and app.query_one(ChatView).region.x >= sidebar.region.right


async def test_the_footer_shows_help_settings_and_report_at_80_columns(make_app):
    from textual.widgets import Footer

    app = make_app(FakeEngine())
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_ready(app, pilot)
        footer = app.query_one(Footer)
        keys = [k for k in footer.query("FooterKey") if k.region.right <= 80 and k.region.width > 0]
        shown = " ".join(f"{k.key_display} {k.description}" for k in keys)
        for needed in ("f1 Help", "f3 Settings", "f5 Report"):
            assert needed in shown, shown


@pytest.mark.parametrize("resized", [False, True])
async def test_the_welcome_with_not_a_doctor_fits_at_40x12(make_app, resized):
    app = make_app(FakeEngine())
    async with app.run_test(size=(100, 30) if resized else (40, 12)) as pilot:
        await wait_ready(app, pilot)
        if resized:
            await pilot.resize_terminal(40, 12)
            await pilot.pause(0.1)
        welcome = app.query_one("#welcome")
        assert "not a doctor" in str(welcome.render())
        assert app.query_one(ChatView).can_view_entire(welcome)
