"""What chat-TUI users ask for: regenerate, edit and resend, $EDITOR, key bindings and themes from config.toml;
and the small wrongs of issue 15 (palette names, the history search box)."""

from __future__ import annotations

import pytest

from medchat.core.history import HistoryStore
from medchat.app.chat.widgets import AssistantMessage, ChatInput, ConversationList, UserMessage

from .conftest import FakeEngine, send, wait_idle, wait_ready

pytestmark = pytest.mark.anyio


def _shown(app):
    return [(type(w).__name__, w.text) for w in app.query("UserMessage, AssistantMessage")]


def _stored(app):
    with HistoryStore() as store:
        return [(m.role, m.content) for m in store.messages(app.conversation.id)]


async def test_regenerate_answers_the_last_question_again_and_replaces_the_answer(make_app):
    engine = FakeEngine([{"chunks": ["First."]}, {"chunks": ["Second."]}])
    app = make_app(engine)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_ready(app, pilot)
        await send(app, pilot, "What is asthma?")
        await wait_idle(app, pilot)
        await pilot.press("ctrl+g")
        await pilot.pause()
        await wait_idle(app, pilot)
        assert _shown(app) == [("UserMessage", "What is asthma?"), ("AssistantMessage", "Second.")]
        assert _stored(app) == [("user", "What is asthma?"), ("assistant", "Second.")]
        assert [m["content"] for m in engine.requests[1][0][1:]] == ["What is asthma?"]  # not the old answer
        assert "physician" in str(app.query_one(AssistantMessage).query_one(".reminder").render())


async def test_edit_an_earlier_message_resends_from_there_and_drops_the_later_turns(make_app):
    engine = FakeEngine([{"chunks": ["A1."]}, {"chunks": ["A2."]}, {"chunks": ["A3."]}])
    app = make_app(engine)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_ready(app, pilot)
        await send(app, pilot, "Q1")
        await wait_idle(app, pilot)
        await send(app, pilot, "Q2")
        await wait_idle(app, pilot)
        first = app.query(UserMessage).first()
        first.focus()
        await pilot.press("e")
        prompt = app.query_one(ChatInput)
        assert prompt.text == "Q1" and app.focused is prompt
        prompt.load_text("Q1 edited")
        await pilot.press("enter")
        await pilot.pause()
        await wait_idle(app, pilot)
        assert _shown(app) == [("UserMessage", "Q1 edited"), ("AssistantMessage", "A3.")]
        assert _stored(app) == [("user", "Q1 edited"), ("assistant", "A3.")]
        assert [m["content"] for m in engine.requests[2][0][1:]] == ["Q1 edited"]
        conversation = app.conversation.id
        await pilot.press("ctrl+n")
        await app.open_conversation(conversation)  # reopened, it is what was on screen
        await pilot.pause()
        assert _shown(app) == [("UserMessage", "Q1 edited"), ("AssistantMessage", "A3.")]


async def test_escape_cancels_an_edit_and_the_next_enter_sends_a_new_message(make_app):
    engine = FakeEngine([{"chunks": ["A1."]}, {"chunks": ["A2."]}])
    app = make_app(engine)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_ready(app, pilot)
        await send(app, pilot, "Q1")
        await wait_idle(app, pilot)
        app.query_one(UserMessage).focus()
        await pilot.press("e", "escape")
        assert app.query_one(ChatInput).text == ""
        await send(app, pilot, "Q2")
        await wait_idle(app, pilot)
        assert [t for _, t in _shown(app)] == ["Q1", "A1.", "Q2", "A2."]


@pytest.fixture
def editor_script(tmp_path, monkeypatch):
    """An $EDITOR that appends a line to the file it is given and records the file's mode."""
    script = tmp_path / "editor.sh"
    script.write_text('#!/bin/sh\nstat -c %a "$1" > "$1.mode"; cp "$1.mode" ' + str(tmp_path / "mode") +
                      '\nprintf "\\nwritten in the editor \\033[31mred\\033[0m\\n" >> "$1"\n')
    script.chmod(0o755)
    monkeypatch.delenv("VISUAL", raising=False)
    monkeypatch.setenv("EDITOR", str(script))
    return tmp_path


def test_edit_text_runs_the_editor_on_a_private_file_and_reads_it_back(editor_script):
    from medchat.app.chat.editor import edit_text

    assert edit_text("draft") == "draft\nwritten in the editor red"
    assert (editor_script / "mode").read_text().strip() == "600"


def test_edit_text_without_an_editor_says_what_to_set(monkeypatch):
    from medchat.app.chat.editor import EditorError, edit_text

    monkeypatch.delenv("VISUAL", raising=False)
    monkeypatch.delenv("EDITOR", raising=False)
    with pytest.raises(EditorError, match="Set \\$EDITOR"):
        edit_text("x")
    monkeypatch.setenv("EDITOR", "/nonexistent/editor")
    with pytest.raises(EditorError, match="Could not start the editor"):
        edit_text("x")


def _config(isolated_user_dirs, text):
    path = isolated_user_dirs / "config" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


async def test_key_bindings_are_overridden_by_id_in_config(make_app, isolated_user_dirs):
    _config(isolated_user_dirs, '[keys]\nregenerate = "f9"\nnot_a_binding = "f7"\n')
    engine = FakeEngine([{"chunks": ["First."]}, {"chunks": ["Second."]}])
    app = make_app(engine)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_ready(app, pilot)
        assert any("not_a_binding" in n.message and "regenerate" in n.message for n in app._notifications)
        await send(app, pilot, "Q")
        await wait_idle(app, pilot)
        await pilot.press("ctrl+g")  # no longer bound
        await pilot.pause()
        await wait_idle(app, pilot)
        assert len(engine.requests) == 1
        await pilot.press("f9")
        await pilot.pause()
        await wait_idle(app, pilot)
        assert len(engine.requests) == 2 and _shown(app)[-1] == ("AssistantMessage", "Second.")


async def test_a_theme_from_config_is_used_and_a_new_choice_is_saved(make_app, isolated_user_dirs):
    from medchat.core.settings import load_config, load_theme

    path = _config(isolated_user_dirs, '[chat]\ntheme = "nord"\n[generation]\nmax_new_tokens = 64\n')
    app = make_app(FakeEngine())
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_ready(app, pilot)
        assert app.theme == "nord"
        app.theme = "gruvbox"
        await pilot.pause()
    assert load_theme(path) == "gruvbox" and load_config(path)["generation"]["max_new_tokens"] == 64


async def test_an_unknown_theme_in_config_is_a_warning_not_a_crash(make_app, isolated_user_dirs):
    _config(isolated_user_dirs, '[chat]\ntheme = "no-such-theme"\n')
    app = make_app(FakeEngine())
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_ready(app, pilot)
        assert any("no-such-theme" in n.message for n in app._notifications)


async def test_palette_entries_have_distinct_names(make_app):
    app = make_app(FakeEngine())
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_ready(app, pilot)
        titles = [c.title for c in app.get_system_commands(app.screen)]
        assert len(titles) == len(set(titles)), titles


async def test_down_in_the_history_search_box_reaches_the_results(make_app):
    with HistoryStore() as store:
        for title in ("Asthma inhalers", "Migraine triggers"):
            store.create_conversation(title)
    app = make_app(FakeEngine())
    async with app.run_test(size=(120, 30)) as pilot:
        await wait_ready(app, pilot)
        await pilot.press("ctrl+f", *"migraine")
        await pilot.pause()
        await pilot.press("down")
        await pilot.pause()
        listing = app.query_one(ConversationList)
        assert app.focused is listing and listing.highlighted_child.conversation.title == "Migraine triggers"
        await pilot.press("enter")
        await pilot.pause()
        assert app.conversation.title == "Migraine triggers"


async def test_switch_run_mid_conversation_and_each_answer_records_its_model(make_app, isolated_user_dirs):
    import dataclasses
    import json

    from session_fakes import FakeGuard

    run = isolated_user_dirs / "runs" / "20261201-asthma"
    (run / "adapter").mkdir(parents=True)
    (run / "adapter" / "adapter_config.json").write_text("{}")
    (run / "run.json").write_text(json.dumps({"id": run.name, "preset": "tiny", "status": "complete"}))
    second = FakeEngine([{"chunks": ["From the new run."]}])
    second.info = dataclasses.replace(second.info, adapter=str(run / "adapter"))
    asked = []

    def factories(adapter):
        asked.append(adapter)
        return (lambda: second), (lambda: FakeGuard())

    app = make_app(FakeEngine([{"chunks": ["From the first run."]}]), factories_for_adapter=factories)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_ready(app, pilot)
        await send(app, pilot, "Q1")
        await wait_idle(app, pilot)
        await pilot.press("f8")
        await pilot.pause()
        labels = [str(o.prompt) for o in app.screen.query_one("#menu").options]
        assert any("20261201-asthma" in label for label in labels) and labels[-1].endswith("no adapter)")
        app.screen.query_one("#menu").highlighted = next(i for i, l in enumerate(labels) if "asthma" in l)
        await pilot.press("enter")
        await wait_ready(app, pilot)
        await send(app, pilot, "Q2")
        await wait_idle(app, pilot)
        assert asked == [str(run / "adapter")]
        assert [m["content"] for m in second.requests[0][0][1:]] == ["Q1", "From the first run.", "Q2"]
    with HistoryStore() as store:
        [conv] = store.list_conversations()
        answers = [m for m in store.messages(conv.id) if m.role == "assistant"]
        assert [m.stats["model"]["adapter"] for m in answers] == ["/nowhere/run/adapter", str(run / "adapter")]
        assert answers[0].stats["stop_reason"] == "eos"
