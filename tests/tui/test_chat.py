"""Pilot tests of the chat app with a scripted fake engine (real SQLite, real Textual)."""

from __future__ import annotations

import json

import pytest

from medchat.core.history import HistoryStore
from medchat.core.guard.notices import EMERGENCY_NOTICE, PHYSICIAN_REMINDER
from medchat.app.chat.widgets import AssistantMessage, ChatInput, UserMessage

from .conftest import FakeEngine, send, wait_idle, wait_ready

pytestmark = pytest.mark.anyio


def _answers(app):
    return list(app.query(AssistantMessage))


async def test_streams_answer_saves_it_and_shows_footer_and_reminder(make_app):
    engine = FakeEngine([{"chunks": ["**Diabetes** ", "is a ", "chronic disease."]}])
    app = make_app(engine)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_ready(app, pilot)
        await send(app, pilot, "What is diabetes?")
        await wait_idle(app, pilot)
        [answer] = _answers(app)
        assert answer.text == "**Diabetes** is a chronic disease."
        assert answer.status == "complete"
        footer = str(answer.query_one(".footer").render())
        assert "first token 0.25 s" in footer and "3 tokens" in footer and "12.5 tok/s" in footer and "eos" in footer
        assert str(answer.query_one(".reminder").render()) == PHYSICIAN_REMINDER
        assert app.query_one(UserMessage).query_one(".ood").render().plain == "● in domain"
        assert app.query_one(ChatInput).text == ""
        messages, settings = engine.requests[0]
        assert messages[0]["role"] == "system" and messages[-1] == {"role": "user", "content": "What is diabetes?"}
        assert settings.max_new_tokens == 256
    with HistoryStore() as store:
        [conv] = store.list_conversations()
        assert conv.title == "What is diabetes?"
        stored = store.messages(conv.id)
        assert [(m.role, m.content) for m in stored] == [
            ("user", "What is diabetes?"), ("assistant", "**Diabetes** is a chronic disease.")]
        assert PHYSICIAN_REMINDER not in stored[1].content  # the app adds it on screen, it is not saved
        assert stored[1].stats["stop_reason"] == "eos"
        assert stored[0].guard["ood_level"] == "in_domain"


async def test_escape_stops_a_stream_that_never_ends_and_keeps_the_partial_answer(make_app):
    engine = FakeEngine([{"chunks": ["Partial ", "answer"], "hang": True}, {"chunks": ["Second."]}])
    app = make_app(engine)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_ready(app, pilot)
        await send(app, pilot, "Tell me everything")
        for _ in range(500):
            if _answers(app) and _answers(app)[0].text == "Partial answer":
                break
            await pilot.pause(0.01)
        assert app.generating
        await pilot.press("escape")
        await wait_idle(app, pilot)
        [answer] = _answers(app)
        assert engine.made[0].cancelled  # the model was told to stop, not just the display
        assert answer.status == "stopped" and answer.text == "Partial answer"
        assert "stopped" in str(answer.query_one(".marker").render())
        assert "stopped" in str(answer.query_one(".footer").render())
        # the conversation goes on, with the partial answer in the model's history
        await send(app, pilot, "And then?")
        await wait_idle(app, pilot)
        messages, _ = engine.requests[1]
        assert {"role": "assistant", "content": "Partial answer"} in messages
    with HistoryStore() as store:
        [conv] = store.list_conversations()
        assert [(m.content, m.status) for m in store.messages(conv.id) if m.role == "assistant"] == [
            ("Partial answer", "stopped"), ("Second.", "complete")]


async def test_history_is_resumed_with_its_settings(make_app, isolated_user_dirs):
    engine = FakeEngine([{"chunks": ["First answer."]}])
    app = make_app(engine)
    async with app.run_test(size=(120, 30)) as pilot:
        await wait_ready(app, pilot)
        await send(app, pilot, "First question")
        await wait_idle(app, pilot)
    with HistoryStore() as store:
        [conv] = store.list_conversations()
        store.update_settings(conv.id, conv.settings | {"temperature": 0.7})

    engine2 = FakeEngine([{"chunks": ["Follow-up answer."]}])
    app = make_app(engine2)
    async with app.run_test(size=(120, 30)) as pilot:
        await wait_ready(app, pilot)
        assert app.query_one("#sidebar").display  # wide terminal: the history is shown
        await pilot.press("ctrl+b")  # hide
        await pilot.press("ctrl+b")  # show and focus the list
        await pilot.press("enter")
        await pilot.pause()
        assert app.conversation is not None and app.conversation.id == conv.id
        assert [w.text for w in app.query(UserMessage)] == ["First question"]
        assert [w.text for w in _answers(app)] == ["First answer."]
        assert app.settings.temperature == 0.7
        prompt = app.query_one(ChatInput)
        prompt.focus()
        await pilot.press("up")
        assert prompt.text == "First question"  # Up recalls the resumed conversation's prompts
        prompt.clear()
        await send(app, pilot, "Second question")
        await wait_idle(app, pilot)
        messages, settings = engine2.requests[0]
        assert [m["content"] for m in messages[1:]] == ["First question", "First answer.", "Second question"]
        assert settings.temperature == 0.7
    with HistoryStore() as store:
        assert len(store.list_conversations()) == 1
        assert len(store.messages(conv.id)) == 4


async def test_incognito_writes_nothing(make_app, isolated_user_dirs):
    app = make_app(FakeEngine([{"chunks": ["Hi."]}]), no_history=True)
    async with app.run_test(size=(120, 30)) as pilot:
        await wait_ready(app, pilot)
        await send(app, pilot, "Secret question")
        await wait_idle(app, pilot)
        assert _answers(app)[0].text == "Hi."
        assert "incognito" in app.sub_title
    assert not (isolated_user_dirs / "data").exists()
    assert not (isolated_user_dirs / "config").exists()


async def test_emergency_notice_and_out_of_domain_indicator(make_app):
    app = make_app(FakeEngine([{"chunks": ["Answer."]}]))
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_ready(app, pilot)
        await send(app, pilot, "I have chest pain")
        await wait_idle(app, pilot)
        await send(app, pilot, "Who won the football game?")
        await wait_idle(app, pilot)
        first, second = _answers(app)
        assert EMERGENCY_NOTICE["emergency"] in str(first.query_one(".notices").render())
        assert first.query_one(".notices").display
        assert not second.query_one(".notices").display
        levels = [w.query_one(".ood").render().plain for w in app.query(UserMessage)]
        assert levels == ["● in domain", "○ out of domain"]


async def test_copy_last_answer_and_any_answer(make_app):
    app = make_app(FakeEngine([{"chunks": ["One."]}, {"chunks": ["Two."]}]))
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_ready(app, pilot)
        await send(app, pilot, "q1")
        await wait_idle(app, pilot)
        await send(app, pilot, "q2")
        await wait_idle(app, pilot)
        await pilot.press("ctrl+o")
        assert app.clipboard == "Two.\n\n" + PHYSICIAN_REMINDER
        first = _answers(app)[0]
        first.focus()
        await pilot.press("c")
        assert app.clipboard.startswith("One.")
        await pilot.press("enter")  # the answer's menu
        await pilot.pause()
        await pilot.press("down", "down", "enter")  # "Copy the question"
        await pilot.pause()
        assert app.clipboard == "q1"


async def test_export_markdown_and_json(make_app, tmp_path):
    app = make_app(FakeEngine([{"chunks": ["Drink water."]}]))
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_ready(app, pilot)
        await send(app, pilot, "Dehydration?")
        await wait_idle(app, pilot)
        await pilot.press("ctrl+s")
        await pilot.pause()
        path_input = app.screen.query_one("#export-path")
        path_input.value = str(tmp_path / "out.md")
        await pilot.click("#md")
        await pilot.pause()
        md = (tmp_path / "out.md").read_text(encoding="utf-8")
        assert "# Dehydration?" in md and "Drink water." in md and PHYSICIAN_REMINDER in md
        await pilot.press("ctrl+s")
        await pilot.pause()
        app.screen.query_one("#export-path").value = str(tmp_path / "out.md")
        await pilot.click("#json")
        await pilot.pause()
        data = json.loads((tmp_path / "out.json").read_text(encoding="utf-8"))
        assert [m["content"] for m in data["messages"]] == ["Dehydration?", "Drink water."]


async def test_model_load_failure_is_a_readable_message(make_app):
    from medchat.core.model import ModelError
    from medchat.app.chat.app import MedchatApp

    def broken():
        raise ModelError("Adapter directory /x has no adapter_config.json; pass --adapter DIR or --no-adapter.")

    app = MedchatApp(None, engine_factory=broken, guard_factory=lambda: None, cursor_blink=False)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_ready(app, pilot)
        assert app.loader.model_status == "failed"
        status = str(app.query_one("#status").render())
        assert "did not load" in status and "adapter_config.json" in status
        await send(app, pilot, "hello")
        assert not app.query(AssistantMessage)
        assert app.query_one(ChatInput).text == "hello"  # nothing lost


async def test_generation_error_keeps_partial_text_and_is_saved(make_app):
    engine = FakeEngine([{"chunks": ["Half"], "fail": RuntimeError("CUDA out of memory")}])
    app = make_app(engine)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_ready(app, pilot)
        await send(app, pilot, "q")
        await wait_idle(app, pilot)
        [answer] = _answers(app)
        assert answer.status == "error" and answer.text == "Half"
        assert "CUDA out of memory" in str(answer.query_one(".marker").render())
    with HistoryStore() as store:
        [conv] = store.list_conversations()
        assert store.messages(conv.id)[-1].status == "error"


async def test_context_truncation_note(make_app):
    app = make_app(FakeEngine([{"chunks": ["ok"], "truncated_turns": 4}]))
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_ready(app, pilot)
        await send(app, pilot, "q")
        await wait_idle(app, pilot)
        note = app.query_one(AssistantMessage).query_one(".note")
        assert note.display and "oldest 4 messages were left out" in str(note.render())


async def test_dosing_note_and_notices_come_back_on_resume(make_app):
    app = make_app(FakeEngine([{"chunks": ["Take as directed."]}]))
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_ready(app, pilot)
        await send(app, pilot, "How much aspirin for chest pain?")
        await wait_idle(app, pilot)
        answer = app.query_one(AssistantMessage)
        assert EMERGENCY_NOTICE["emergency"] in str(answer.query_one(".notices").render())
        assert answer.query_one(".dosing").display
        conv_id = app.conversation.id
        await pilot.press("ctrl+n")
        assert not app.query(AssistantMessage)
        await app.open_conversation(conv_id)
        await pilot.pause()
        answer = app.query_one(AssistantMessage)
        assert EMERGENCY_NOTICE["emergency"] in str(answer.query_one(".notices").render())
        assert answer.query_one(".dosing").display
        assert app.query_one(UserMessage).query_one(".ood").render().plain == "● in domain"


async def test_quitting_while_generating_keeps_the_partial_answer(make_app):
    engine = FakeEngine([{"chunks": ["Half an answer"], "hang": True}])
    app = make_app(engine)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_ready(app, pilot)
        await send(app, pilot, "q")
        for _ in range(500):
            if engine.made and engine.made[0].started.is_set() and _answers(app)[0].text:
                break
            await pilot.pause(0.01)
        await pilot.press("ctrl+q")
        await pilot.pause()
    with HistoryStore() as store:
        [conv] = store.list_conversations()
        assert [(m.content, m.status) for m in store.messages(conv.id)][-1] == ("Half an answer", "stopped")


async def test_follows_new_text_only_at_the_bottom(make_app):
    long_answer = [f"Line {i} of a long answer.\n\n" for i in range(60)]
    engine = FakeEngine([{"chunks": long_answer, "hang": True}])
    app = make_app(engine)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_ready(app, pilot)
        await send(app, pilot, "long please")
        chat = app.query_one("#chat")
        for _ in range(500):
            if _answers(app)[0].text.count("Line") == 60:
                break
            await pilot.pause(0.01)
        await pilot.pause(0.1)
        assert chat.max_scroll_y > 0 and chat.scroll_y == chat.max_scroll_y  # following
        await pilot.press("pageup")
        await pilot.pause()
        held = chat.scroll_y
        assert held < chat.max_scroll_y
        await pilot.press("escape")  # the answer ends and grows by its footer: the view stays put
        await wait_idle(app, pilot)
        assert chat.scroll_y == held
        await pilot.press("ctrl+end")
        await pilot.pause()
        assert chat.scroll_y == chat.max_scroll_y


async def test_escape_returns_at_once_even_if_the_engine_is_slow_to_stop(make_app, monkeypatch):
    import threading

    from medchat.app.chat.widgets import ChatView

    release = threading.Event()
    engine = FakeEngine([{"chunks": ["never shown"], "stuck": release}, {"chunks": ["Next."]}])
    app = make_app(engine)
    monkeypatch.setattr(ChatView, "STOP_GRACE_S", 0.05)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_ready(app, pilot)
        await send(app, pilot, "huge prompt")
        await pilot.press("escape")
        for _ in range(500):
            if not app.generating:
                break
            await pilot.pause(0.01)
        [answer] = _answers(app)
        assert answer.status == "stopped" and answer.text == ""
        assert engine.made[0].cancelled
        await send(app, pilot, "too soon")  # refused while the engine finishes its step
        assert len(engine.made) == 1 and app.query_one(ChatInput).text == "too soon"
        release.set()
        await app.chat_view.draining
        await pilot.pause()
        assert answer.stats["stop_reason"] == "cancelled" and answer.stats["tokens"] == 0  # the engine's own
        with HistoryStore() as store:
            assert store.messages(app.conversation.id)[-1].stats["tokens"] == 0
        await pilot.press("enter")
        await wait_idle(app, pilot)
        assert _answers(app)[-1].text == "Next."


async def test_message_sent_while_loading_waits_for_the_model(make_app):
    import threading

    from medchat.app.chat.app import MedchatApp

    gate = threading.Event()
    engine = FakeEngine([{"chunks": ["Loaded answer."]}])

    def slow_factory():
        gate.wait(timeout=30)
        return engine

    app = MedchatApp(None, engine_factory=slow_factory, guard_factory=lambda: None, cursor_blink=False)
    async with app.run_test(size=(100, 30)) as pilot:
        await send(app, pilot, "early question")
        assert app.loader.model_status == "loading" and app.query(".pending")
        assert app.query_one("#loading").display
        gate.set()
        await wait_ready(app, pilot)
        await wait_idle(app, pilot)
        assert [w.text for w in app.query(AssistantMessage)] == ["Loaded answer."]
        assert not app.query(".pending")
        assert not app.query_one("#loading").display


async def test_message_sent_while_loading_comes_back_if_the_load_fails(make_app):
    import threading

    from medchat.app.chat.app import MedchatApp

    gate = threading.Event()

    def failing_factory():
        gate.wait(timeout=30)
        raise RuntimeError("boom")

    app = MedchatApp(None, engine_factory=failing_factory, guard_factory=lambda: None, cursor_blink=False)
    async with app.run_test(size=(100, 30)) as pilot:
        await send(app, pilot, "early question")
        gate.set()
        await wait_ready(app, pilot)
        await pilot.pause()
        assert app.loader.model_status == "failed" and "RuntimeError: boom" in app.loader.model_error
        assert app.query_one(ChatInput).text == "early question"
        assert not app.query(".pending")


async def test_settings_saved_for_the_conversation_and_as_defaults(make_app, isolated_user_dirs):
    from medchat.core.settings import load_defaults

    engine = FakeEngine([{"chunks": ["ok"]}])
    app = make_app(engine)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_ready(app, pilot)
        await send(app, pilot, "first")
        await wait_idle(app, pilot)
        await pilot.press("f3")
        await pilot.pause()
        screen = app.screen
        screen.query_one("#set-temperature").value = "abc"
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert app.screen is screen  # invalid: the dialog stays, with the reason
        assert "temperature must be a number" in str(screen.query_one("#settings-error").render())
        screen.query_one("#set-temperature").value = "0.7"
        screen.query_one("#set-max_new_tokens").value = "64"
        screen.query_one("#set-system_prompt").load_text("Answer in one sentence.")
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert app.screen is not screen
        await send(app, pilot, "second")
        await wait_idle(app, pilot)
        messages, settings = engine.requests[-1]
        assert settings.temperature == 0.7 and settings.max_new_tokens == 64
        assert messages[0] == {"role": "system", "content": "Answer in one sentence."}
        await pilot.press("f3")
        await pilot.pause()
        await pilot.click("#default")
        await pilot.pause()
    with HistoryStore() as store:
        [conv] = store.list_conversations()
        assert conv.settings["temperature"] == 0.7 and conv.settings["system_prompt"] == "Answer in one sentence."
    defaults = load_defaults()
    assert defaults.max_new_tokens == 64 and defaults.system_prompt == "Answer in one sentence."
    assert (isolated_user_dirs / "config" / "config.toml").is_file()


async def test_command_palette_has_every_action_and_runs_them(make_app):
    from medchat.app.chat.app import MedchatApp

    app = make_app(FakeEngine([{"chunks": ["Palette answer."]}]))
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_ready(app, pilot)
        titles = {c.title for c in app.get_system_commands(app.screen)}
        for action in ("New conversation", "Stop generating", "Copy last answer", "Toggle history",
                       "Search history", "Rename conversation", "Delete conversation", "Export conversation",
                       "Settings", "Model info", "Metrics report", "Help", "Regenerate answer",
                       "Compose in editor"):
            assert action in titles
        assert {b.action for b in MedchatApp.BINDINGS} - {"stop"} <= set(MedchatApp._CHAT_ACTIONS)
        await send(app, pilot, "q")
        await wait_idle(app, pilot)
        await pilot.press("ctrl+p")
        await pilot.pause()
        await pilot.press(*"copy last answer")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await pilot.pause(0.2)
        assert app.clipboard.startswith("Palette answer.")


async def test_rename_and_delete_the_current_conversation(make_app):
    app = make_app(FakeEngine([{"chunks": ["ok"]}]))
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_ready(app, pilot)
        await send(app, pilot, "original title")
        await wait_idle(app, pilot)
        await pilot.press("ctrl+t")
        await pilot.pause()
        app.screen.query_one("#prompt-input").value = "Renamed 🙂 עברית"
        await pilot.press("enter")
        await pilot.pause()
        assert app.conversation.title == "Renamed 🙂 עברית" and "Renamed" in app.title
        app.action_delete()
        await pilot.pause()
        await pilot.press("y")
        await pilot.pause()
        assert app.conversation is None and not app.query(AssistantMessage)
    with HistoryStore() as store:
        assert store.list_conversations() == []


async def test_metrics_report_key_opens_the_report_or_says_why_not(make_app):
    app = make_app(FakeEngine())
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_ready(app, pilot)
        await pilot.press("f5")
        await pilot.pause(0.3)
        try:
            from medchat.app.report import ReportScreen
        except Exception:
            assert any("not available" in n.message for n in app._notifications)
        else:
            assert isinstance(app.screen, ReportScreen)
            await pilot.press("escape")
            await pilot.pause()
            assert not isinstance(app.screen, ReportScreen)


# ---------------------------------------------------------------- the app renders the chat session's events


async def test_a_semantic_only_emergency_is_on_screen_before_the_first_token(make_app):
    import threading

    release = threading.Event()
    engine = FakeEngine([{"chunks": ["Sit down."], "stuck": release}])
    app = make_app(engine)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_ready(app, pilot)
        await send(app, pilot, "my dad's face is drooping on one side")
        for _ in range(500):
            if engine.made:
                break
            await pilot.pause(0.01)
        await pilot.pause(0.05)
        [answer] = _answers(app)
        notices = answer.query_one(".notices")
        assert notices.display and EMERGENCY_NOTICE["emergency"] in str(notices.render())
        assert answer.text == ""  # the model has not produced a word yet
        release.set()
        await wait_idle(app, pilot)
        assert answer.text == "Sit down." and answer.status == "complete"


async def test_a_loading_guard_holds_the_answer_and_the_status_says_so(make_app):
    import threading

    from .conftest import FakeGuard

    loading = threading.Event()
    engine = FakeEngine([{"chunks": ["ok"], "hang": True}])  # streams "ok", then waits for Esc
    app = make_app(engine, guard=FakeGuard(loading=loading))
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_ready(app, pilot)
        await send(app, pilot, "I have chest pain")
        for _ in range(300):
            if "safety checker" in app.status_bar.text:
                break
            await pilot.pause(0.01)
        assert "safety checker" in app.status_bar.text
        assert app.query_one(UserMessage).query_one(".ood").render().plain == "… checking"
        assert engine.requests == [] and app.generating
        loading.set()
        for _ in range(300):
            if engine.made and engine.made[0].started.is_set():
                break
            await pilot.pause(0.01)
        await pilot.pause(0.05)
        # once the check is done the status line stops saying it waits, while the answer streams
        assert app.status_bar.text.startswith("Ready") and app.generating
        await pilot.press("escape")
        await wait_idle(app, pilot)
        [answer] = _answers(app)
        assert EMERGENCY_NOTICE["emergency"] in str(answer.query_one(".notices").render())
        assert answer.text == "ok" and len(engine.requests) == 1


async def test_decline_policy_answers_politely_without_the_model(make_app):
    from medchat.core.guard.notices import DECLINE_MESSAGE

    engine = FakeEngine([{"chunks": ["should not run"]}])
    app = make_app(engine, ood_policy="decline")
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_ready(app, pilot)
        await send(app, pilot, "Who won the football game?")
        await wait_idle(app, pilot)
        [answer] = _answers(app)
        assert answer.text == DECLINE_MESSAGE and engine.requests == []
        assert "declined" in str(answer.query_one(".footer").render())
        assert str(answer.query_one(".reminder").render()) == PHYSICIAN_REMINDER
    with HistoryStore() as store:
        [conv] = store.list_conversations()
        assert [(m.role, m.content) for m in store.messages(conv.id)][-1] == ("assistant", DECLINE_MESSAGE)


async def test_a_corrupt_index_leaves_a_usable_chat_with_the_rules_and_says_so(make_app, tmp_path):
    from medchat.core.session import load_guard

    index = tmp_path / "guard_index"
    index.mkdir()
    (index / "index.json").write_text("{broken", encoding="utf-8")
    app = make_app(FakeEngine([{"chunks": ["Call now."]}]), guard=load_guard(index_dir=index))
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_ready(app, pilot)
        assert app.loader.guard_status.startswith("rules only") and "index.json" in app.loader.guard_status
        await send(app, pilot, "I have crushing chest pain")
        await wait_idle(app, pilot)
        [answer] = _answers(app)
        assert EMERGENCY_NOTICE["emergency"] in str(answer.query_one(".notices").render())
        note = str(answer.query_one(".note").render())
        assert "Safety checks are limited" in note and str(index / "index.json") in note
        assert answer.text == "Call now."


def test_the_app_holds_no_safety_logic_of_its_own():
    from pathlib import Path

    import medchat.app.chat as tui

    root = Path(tui.__file__).parent
    assert not (root / "safety.py").exists()
    source = "\n".join(p.read_text(encoding="utf-8") for p in root.rglob("*.py"))
    for name in ("check_rules", "red_flags", "should_decline", "medchat.core.guard.policy", "DECLINE_MESSAGE",
                 "hasattr("):
        assert name not in source, name
