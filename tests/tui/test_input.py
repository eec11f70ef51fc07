"""The prompt box and hostile input: newlines, recall, a 100 KB paste, escape sequences, emoji, RTL."""

from __future__ import annotations

import pytest
from textual import events

from medchat.core.history import HistoryStore
from medchat.app.chat.widgets import AssistantMessage, ChatInput, UserMessage

from .conftest import FakeEngine, wait_idle, wait_ready

pytestmark = pytest.mark.anyio


async def test_enter_sends_ctrl_j_and_shift_enter_add_newlines_up_recalls(make_app):
    engine = FakeEngine([{"chunks": ["ok"]}])
    app = make_app(engine)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_ready(app, pilot)
        prompt = app.query_one(ChatInput)
        await pilot.press("h", "i", "ctrl+j", "y", "o", "shift+enter", "u")
        assert prompt.text == "hi\nyo\nu"
        await pilot.press("enter")
        await wait_idle(app, pilot)
        assert engine.requests[0][0][-1]["content"] == "hi\nyo\nu"
        assert prompt.text == ""
        await pilot.press("s", "e", "c", "enter")
        await wait_idle(app, pilot)
        await pilot.press("d", "r", "a", "f", "t")
        await pilot.press("up")
        assert prompt.text == "sec"
        await pilot.press("up")
        assert prompt.text == "hi\nyo\nu"
        await pilot.press("down", "down", "down")  # back through the lines, then to the newer prompt
        assert prompt.text == "sec"
        await pilot.press("down")
        assert prompt.text == "draft"  # the unsent draft comes back


async def test_hostile_paste_is_sanitised_and_survives(make_app):
    nasty = (
        "Headache? \x1b[2J\x1b]52;c;ZXZpbA==\x07\x1b[31mred\x1b[0m \x00\x07\x08 "
        "🙂🩺 emoji, עברית RTL, العربية\u202e reversed\n"
    )
    big = nasty + ("lorem ipsum dolor sit amet " * 4000)  # ~108 KB
    engine = FakeEngine([{"chunks": ["Answer \x1b[31mwith\x1b[0m escape", " 🙂"]}])
    app = make_app(engine)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_ready(app, pilot)
        prompt = app.query_one(ChatInput)
        prompt.post_message(events.Paste(big))
        await pilot.pause()
        assert len(prompt.text) > 100_000
        assert "\x1b" not in prompt.text and "\x00" not in prompt.text and "\x07" not in prompt.text
        assert "🙂🩺" in prompt.text and "עברית" in prompt.text
        await pilot.press("enter")
        await wait_idle(app, pilot)
        sent = engine.requests[0][0][-1]["content"]
        assert sent.startswith("Headache? red ") and "\x1b" not in sent
        [user] = app.query(UserMessage)
        assert "more characters not shown" in str(user.query_one(".body").render())
        [answer] = app.query(AssistantMessage)
        assert answer.text == "Answer with escape 🙂"
        await pilot.press("ctrl+o")
        assert "\x1b" not in app.clipboard
    with HistoryStore() as store:
        [conv] = store.list_conversations()
        for message in store.messages(conv.id):
            assert "\x1b" not in message.content and "\x07" not in message.content
        assert len(store.messages(conv.id)[0].content) > 100_000
