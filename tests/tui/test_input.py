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


async def _prefills_after(app, pilot, engine, n: int, within_s: float) -> list:
    for _ in range(int(within_s / 0.01)):
        if len(engine.prefills) > n:
            break
        await pilot.pause(0.01)
    return engine.prefills[n:]


async def test_a_paste_is_read_ahead_at_once_and_typing_after_a_pause(make_app):
    engine = FakeEngine()
    app = make_app(engine)
    app.DRAFT_PAUSE_S = 1.5
    question = "What could cause swollen ankles and breathlessness at night?"
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_ready(app, pilot)
        before = len(engine.prefills)  # the system prompt, read when the model loaded
        app.query_one(ChatInput).post_message(events.Paste(question))
        [(context, draft)] = await _prefills_after(app, pilot, engine, before, within_s=1.0)  # before the pause
        assert draft == question and context[0]["role"] == "system"
        await pilot.press("space", "o", "k")  # typing: nothing is read until the typing pauses
        assert await _prefills_after(app, pilot, engine, before + 1, within_s=0.5) == []
        [(_, draft)] = await _prefills_after(app, pilot, engine, before + 1, within_s=5.0)
        assert draft == question + " ok"


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


HOSTILE_PASTE = "AAA \x1b[31mBBB\x1b[0m CCC"
PASTED = "x\x1b[200~" + HOSTILE_PASTE + "\x1b[201~y"


@pytest.mark.parametrize("cut", range(len(PASTED) + 1))
def test_the_parser_keeps_a_bracketed_paste_whole_and_in_order_wherever_the_read_splits_it(cut):
    from medchat.app.chat.paste import PasteSafeParser

    parser = PasteSafeParser()
    tokens = [*parser.feed(PASTED[:cut]), *parser.tick(), *parser.feed(PASTED[cut:]), *parser.tick()]
    got = [(type(t).__name__, t.text if isinstance(t, events.Paste) else t.character) for t in tokens]
    assert got == [("Key", "x"), ("Paste", HOSTILE_PASTE), ("Key", "y")]


def test_a_lone_escape_still_arrives_as_the_escape_key():
    import time

    from medchat.app.chat.paste import PasteSafeParser

    parser = PasteSafeParser()
    tokens = [*parser.feed("\x1b"), *parser.tick(), *parser.tick()]
    deadline = time.monotonic() + 2
    while not tokens and time.monotonic() < deadline:  # Textual waits a moment for more of a sequence
        time.sleep(0.05)
        tokens += parser.tick()
    assert [t.key for t in tokens] == ["escape"]


async def test_pasted_escapes_are_removed_in_order_before_the_text_is_shown_stored_or_titled(make_app):
    from medchat.app.chat.paste import PasteSafeParser

    engine = FakeEngine([{"chunks": ["ok"]}])
    app = make_app(engine)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_ready(app, pilot)
        prompt = app.query_one(ChatInput)
        await pilot.press("q", "space")
        for token in PasteSafeParser().feed("\x1b[200~" + HOSTILE_PASTE + "\x1b[201~"):
            prompt.post_message(token)
        await pilot.pause()
        assert prompt.text == "q AAA BBB CCC"
        await pilot.press("enter")
        await wait_idle(app, pilot)
        assert app.query_one(UserMessage).text == "q AAA BBB CCC"
        assert app.title == "medchat — q AAA BBB CCC"
    with HistoryStore() as store:
        [conv] = store.list_conversations()
        assert conv.title == "q AAA BBB CCC"
        assert store.messages(conv.id)[0].content == "q AAA BBB CCC"
