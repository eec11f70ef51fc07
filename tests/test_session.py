"""The headless chat session: the whole guard verdict before the first token, policy, reminder, persistence."""

from __future__ import annotations

import re
import threading

import pytest
from session_fakes import BrokenIndexGuard, FakeEngine, FakeGuard

from medchat.core.guard.notices import (
    DECLINE_MESSAGE,
    DOSING_NOTE,
    EMERGENCY_NOTICE,
    OUT_OF_DOMAIN_NOTE,
    PHYSICIAN_REMINDER,
    UNCERTAIN_NOTE,
)
from medchat.core.history import HistoryStore
from medchat.core.session import (
    MAX_MESSAGE_CHARS,
    ChatSession,
    Checked,
    Declined,
    Finished,
    Notice,
    Reminder,
    SessionBusy,
    Stats,
    Token,
    Waiting,
    load_guard,
    stored_notices,
)

# [Waiting] Checked Notice* (Declined | Token*) [Stats] Reminder Finished
GRAMMAR = re.compile(r"(W )?C (N )*(D |(T )*)(S )?R F")
LETTER = {Waiting: "W", Checked: "C", Notice: "N", Declined: "D", Token: "T", Stats: "S", Reminder: "R", Finished: "F"}


def run(session, text):
    events = list(session.send(text))
    shape = " ".join(LETTER[type(e)] for e in events)
    assert GRAMMAR.fullmatch(shape), shape
    return events


def kinds(events):
    return [e.kind for e in events if isinstance(e, Notice)]


def first_index(events, kind):
    return next(i for i, e in enumerate(events) if isinstance(e, kind))


def test_emergency_notice_comes_before_the_first_token():
    engine = FakeEngine([{"chunks": ["Chest pain ", "can be serious."]}])
    events = run(ChatSession(engine, FakeGuard()), "I have crushing chest pain")
    notice = next(e for e in events if isinstance(e, Notice))
    assert notice == Notice("emergency", EMERGENCY_NOTICE["emergency"])
    assert events.index(notice) < first_index(events, Token)
    assert "".join(e.text for e in events if isinstance(e, Token)) == "Chest pain can be serious."
    assert events[-2] == Reminder(PHYSICIAN_REMINDER)
    assert events[-1] == Finished("Chest pain can be serious.", "eos", None)
    checked = events[first_index(events, Checked)]
    assert checked.result.red_flags[0].rule_id == "chest_pain" and checked.degraded is None


def test_a_semantic_only_emergency_is_decided_before_the_first_token():
    guard = FakeGuard()
    text = "my dad's face is drooping on one side"
    assert not guard.check_rules(text).red_flags  # only the semantic layer raises it
    events = run(ChatSession(FakeEngine([{"chunks": ["Answer."]}]), guard), text)
    assert kinds(events) == ["emergency"]
    assert first_index(events, Notice) < first_index(events, Token)
    assert events[first_index(events, Checked)].result.red_flags[0].source == "semantic"
    assert guard.checked == [text]  # the whole check ran, once, before generation


def test_decline_policy_generates_nothing_but_never_declines_a_red_flag():
    engine = FakeEngine([{"chunks": ["Should not run."]}])
    session = ChatSession(engine, FakeGuard(), policy="decline")
    events = run(session, "Who won the football game?")
    assert [type(e) for e in events] == [Checked, Declined, Reminder, Finished]
    assert events[1] == Declined(DECLINE_MESSAGE)
    assert events[-1] == Finished(DECLINE_MESSAGE, "declined", None)
    assert engine.requests == []  # the model was never asked
    events = run(session, "Football practice and now chest pain")
    assert kinds(events) == ["emergency"] and not any(isinstance(e, Declined) for e in events)
    assert len(engine.requests) == 1


def test_note_policy_notes_out_of_domain_and_uncertain_and_dosing():
    session = ChatSession(FakeEngine([{"chunks": ["x"]}]), FakeGuard())
    events = run(session, "Who won the football game?")
    assert [(e.kind, e.text) for e in events if isinstance(e, Notice)] == [("out_of_domain", OUT_OF_DOMAIN_NOTE)]
    assert kinds(run(session, "maybe a question")) == ["uncertain"]
    events = run(session, "How much ibuprofen for my 3 year old?")
    assert [(e.kind, e.text) for e in events if isinstance(e, Notice)] == [("dosing", DOSING_NOTE)]
    assert UNCERTAIN_NOTE  # the texts come from guard.notices, worded once
    with pytest.raises(ValueError, match="policy"):
        ChatSession(FakeEngine(), FakeGuard(), policy="shout")


def test_the_reminder_ends_a_stopped_and_a_failed_answer():
    engine = FakeEngine([{"chunks": ["Partial ", "answer"], "hang": True},
                         {"chunks": ["Half"], "fail": RuntimeError("CUDA out of memory")}])
    session = ChatSession(engine, FakeGuard())
    events = []
    for event in session.send("Tell me everything"):
        events.append(event)
        if isinstance(event, Token) and event.text == "answer":
            threading.Timer(0.05, session.cancel).start()  # Esc from another thread while the model runs
    assert engine.made[0].cancelled  # the model was told to stop, not just the reading
    assert [type(e) for e in events[-3:]] == [Stats, Reminder, Finished]
    assert events[-1] == Finished("Partial answer", "cancelled", None)
    assert events[-3].stats.stop_reason == "cancelled"
    events = run(session, "again")
    assert events[-2] == Reminder(PHYSICIAN_REMINDER)
    assert events[-1].stop_reason == "error" and "CUDA out of memory" in events[-1].error
    assert events[-1].answer == "Half"
    # the stopped answer is part of the conversation; the reminder text never is
    assert session.messages[:2] == [{"role": "user", "content": "Tell me everything"},
                                    {"role": "assistant", "content": "Partial answer"}]
    assert all(PHYSICIAN_REMINDER not in m["content"] for m in session.messages)


def test_cancel_while_the_guard_loads_generates_nothing():
    loading = threading.Event()
    engine = FakeEngine()
    session = ChatSession(engine, FakeGuard(loading=loading))
    events = session.send("What is asthma?")
    assert isinstance(next(events), Waiting)
    session.cancel()
    loading.set()
    rest = list(events)
    assert rest[-1] == Finished("", "cancelled", None) and isinstance(rest[-2], Reminder)
    assert engine.requests == []


def test_waits_for_a_loading_guard_and_says_so():
    loading = threading.Event()
    guard = FakeGuard(loading=loading)
    session = ChatSession(FakeEngine([{"chunks": ["ok"]}]), guard)
    events = session.send("my dad's face is drooping")
    first = next(events)
    assert isinstance(first, Waiting) and "safety checker" in first.text
    got = []
    worker = threading.Thread(target=lambda: got.extend(events))
    worker.start()
    worker.join(0.2)
    assert worker.is_alive() and got == []  # blocked: nothing, not even the rules' verdict, goes out early
    loading.set()
    worker.join(10)
    assert isinstance(got[0], Checked) and kinds(got) == ["emergency"]
    assert not any(isinstance(e, Waiting) for e in run(session, "second"))  # loaded now: no wait


def test_persists_each_message_once_with_verdict_and_stats(isolated_user_dirs):
    engine = FakeEngine([{"chunks": ["Answer one."]}, {"chunks": ["Answer two."]}])
    with HistoryStore() as store:
        session = ChatSession(engine, FakeGuard(), store=store, system_prompt="Be brief.")
        run(session, "I have chest pain")
        run(session, "And now?")
        [conv] = store.list_conversations()
        assert session.conversation_id == conv.id and conv.title == "I have chest pain"
        assert conv.settings["system_prompt"] == "Be brief." and conv.settings["max_new_tokens"] == 256
        assert conv.model["base"] == "fake-base"
        stored = store.messages(conv.id)
        assert [(m.role, m.content, m.status) for m in stored] == [
            ("user", "I have chest pain", "complete"), ("assistant", "Answer one.", "complete"),
            ("user", "And now?", "complete"), ("assistant", "Answer two.", "complete")]
        assert stored[0].guard["red_flags"][0]["rule_id"] == "chest_pain"
        assert stored[0].guard["notices"] == [{"kind": "emergency", "text": EMERGENCY_NOTICE["emergency"]}]
        assert stored_notices(stored[0].guard) == [Notice("emergency", EMERGENCY_NOTICE["emergency"])]
        assert stored[1].stats["stop_reason"] == "eos" and stored[1].stats["tokens"] == 1
        # One shape for every front end (the chat, ask, serve): what ran, and the name an endpoint gave.
        assert stored[1].stats["model"] == {"base": "fake-base", "adapter": "/nowhere/run/adapter", "name": None}
        assert PHYSICIAN_REMINDER not in stored[1].content
        assert (session.last_user_message_id, session.last_answer_message_id) == (stored[2].id, stored[3].id)
        # a second session resumes the conversation: the model reads the earlier turns
        again = ChatSession(engine, FakeGuard(), store=store, conversation_id=conv.id,
                            messages=[{"role": m.role, "content": m.content} for m in stored])
        run(again, "Third")
        assert [m["content"] for m in engine.requests[-1][0]][1:] == [
            "I have chest pain", "Answer one.", "And now?", "Answer two.", "Third"]
        assert len(store.messages(conv.id)) == 6 and len(store.list_conversations()) == 1


def test_a_consumer_that_leaves_stops_the_model_and_keeps_the_partial_answer(isolated_user_dirs):
    engine = FakeEngine([{"chunks": ["Half ", "an answer"], "hang": True}])
    with HistoryStore() as store:
        session = ChatSession(engine, FakeGuard(), store=store)
        events = session.send("q")
        for event in events:
            if isinstance(event, Token) and event.text == "an answer":
                break
        events.close()  # e.g. an HTTP client that disconnected
        assert engine.made[0].cancelled and not session.busy
        assert [(m.content, m.status) for m in store.messages(session.conversation_id)][-1] == ("Half an answer", "stopped")


def test_one_turn_at_a_time():
    engine = FakeEngine([{"chunks": ["a"], "hang": True}, {"chunks": ["b"]}])
    session = ChatSession(engine, FakeGuard())
    events = session.send("first")
    assert next(e for e in events if isinstance(e, Token)) == Token("a")
    with pytest.raises(SessionBusy):
        next(session.send("second"))
    session.cancel()
    list(events)
    assert run(session, "third")[-1] == Finished("b", "eos", None)


def test_bad_input_empty_huge_and_escape_sequences(isolated_user_dirs):
    engine = FakeEngine([{"chunks": ["ok"]}])
    with HistoryStore() as store:
        session = ChatSession(engine, FakeGuard(), store=store)
        events = run(session, " \x1b[2J \n\t")
        assert events[-1] == Finished("", "error", "The message is empty: type a question.")
        assert engine.requests == [] and store.list_conversations() == []

        paste = "What is this rash? " + "lorem ipsum " * 9000  # a 100 KB paste goes through whole
        events = run(session, paste)
        assert kinds(events) == [] and events[-1].stop_reason == "eos"
        assert engine.requests[-1][0][-1]["content"] == paste.strip()
        events = run(session, "I have chest pain " + "x" * MAX_MESSAGE_CHARS)
        assert kinds(events) == ["emergency", "truncated"]
        assert len(engine.requests[-1][0][-1]["content"]) == MAX_MESSAGE_CHARS

        events = run(session, "\x1b]0;pwned\x07What is \x1b[31masthma\x1b[0m?\x00\x9b2J")
        assert engine.requests[-1][0][-1]["content"] == "What is asthma?"
        assert store.messages(session.conversation_id)[-2].content == "What is asthma?"


def test_model_output_is_stripped_of_escape_sequences():
    engine = FakeEngine([{"chunks": ["Fine\x1b[2J", "\x07 answer"]}])
    events = run(ChatSession(engine, FakeGuard()), "q")
    assert events[-1].answer == "Fine answer"


def test_a_corrupt_index_leaves_the_rules_and_says_so_once(tmp_path):
    index = tmp_path / "run" / "guard_index"
    index.mkdir(parents=True)
    (index / "index.json").write_text("{not json", encoding="utf-8")
    guard = load_guard(str(tmp_path / "run" / "adapter"))
    assert str(index / "index.json") in guard.ood_error
    session = ChatSession(FakeEngine([{"chunks": ["ok"]}]), guard)
    events = run(session, "I have crushing chest pain")
    assert kinds(events) == ["emergency", "guard_degraded"]
    checked = events[first_index(events, Checked)]
    assert checked.degraded == guard.ood_error and checked.result.red_flags[0].rule_id == "chest_pain"
    degraded = next(e for e in events if isinstance(e, Notice) and e.kind == "guard_degraded")
    assert str(index / "index.json") in degraded.text and "rules alone" in degraded.text
    assert kinds(run(session, "what is asthma")) == []  # said once per session


def test_an_index_that_fails_on_first_use_and_no_guard_at_all():
    guard = BrokenIndexGuard("/x/guard_index/embeddings.npy: unreadable; rebuild the index")
    events = run(ChatSession(FakeEngine(), guard), "chest pain again")
    assert kinds(events) == ["emergency", "guard_degraded"]
    assert events[first_index(events, Checked)].degraded.startswith("/x/guard_index/embeddings.npy")
    events = run(ChatSession(FakeEngine(), None), "chest pain")
    assert kinds(events) == ["guard_degraded"] and events[-1].stop_reason == "eos"


def test_the_engine_sees_the_system_prompt_and_the_context_notes():
    engine = FakeEngine([{"chunks": ["ok"], "truncated_turns": 3, "truncated_chars": 1200}])
    session = ChatSession(engine, FakeGuard(), messages=[{"role": "system", "content": "From the API."},
                                                         {"role": "user", "content": "hi"},
                                                         {"role": "assistant", "content": "hello"}])
    events = run(session, "q")
    assert engine.requests[0][0] == [{"role": "system", "content": "From the API."},
                                     {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                                     {"role": "user", "content": "q"}]
    notes = [e.text for e in events if isinstance(e, Notice)]
    assert "oldest 3 messages were left out" in notes[0] and "1,200 characters were cut" in notes[1]
    assert ChatSession(engine, None, system_prompt="").prompt_messages("q") == [{"role": "user", "content": "q"}]


def test_real_classes_and_fakes_implement_the_protocols(tiny_model_dir):
    from medchat.core.engine import Engine as TorchEngine, GenerationSettings
    from medchat.core.fastdecode import LlamaCppEngine
    from medchat.core.guard import Guard
    from medchat.core.model import ModelSpec, load
    from medchat.core.protocols import Engine, GuardChecker, Stream

    engine = TorchEngine(load(ModelSpec(base=str(tiny_model_dir), device="cpu", dtype="fp32")))
    stream = engine.stream([{"role": "user", "content": "hi"}], GenerationSettings(max_new_tokens=2))
    assert isinstance(engine, Engine) and isinstance(stream, Stream)
    list(stream)
    assert isinstance(Guard(None), GuardChecker) and isinstance(FakeGuard(), GuardChecker)
    assert isinstance(FakeEngine(), Engine) and isinstance(FakeEngine().stream([]), Stream)
    assert all(hasattr(LlamaCppEngine, name) for name in ("stream", "prefill"))


def test_a_real_tiny_model_behind_the_real_rules(tiny_model_dir):
    from medchat.core.engine import Engine as TorchEngine, GenerationSettings
    from medchat.core.guard import Guard
    from medchat.core.model import ModelSpec, load

    engine = TorchEngine(load(ModelSpec(base=str(tiny_model_dir), device="cpu", dtype="fp32")))
    guard = Guard(None)
    guard.ood_error = "no reference index in this test"
    session = ChatSession(engine, guard, settings=GenerationSettings(max_new_tokens=4))
    events = run(session, "I have crushing chest pain and my left arm is numb")
    assert kinds(events)[0] == "emergency"
    assert events[-1].stop_reason in ("eos", "length") and events[first_index(events, Stats)].stats.tokens <= 4


# ---------------------------------------------------------------- saved as it streams


def _tokens_until(events, n):
    """Take events until the n-th Token; the session's generator stays suspended there."""
    seen = 0
    for event in events:
        if isinstance(event, Token):
            seen += 1
            if seen == n:
                return


def _reader(store):
    """A second connection to the same file, as another process would see it."""
    return HistoryStore(store.path)


def test_the_answer_is_saved_every_few_dozen_chunks_while_it_streams(isolated_user_dirs, monkeypatch):
    from medchat.core import session as session_module

    monkeypatch.setattr(session_module._LiveAnswer, "SAVE_EVERY_S", 3600.0)  # only the chunk count saves here
    every = session_module._LiveAnswer.SAVE_EVERY_CHUNKS
    chunks = [f"w{i} " for i in range(3 * every)]
    with HistoryStore() as store:
        session = ChatSession(FakeEngine([{"chunks": chunks}]), FakeGuard(), store=store)
        events = session.send("q")
        _tokens_until(events, every - 1)
        with _reader(store) as reader:
            [_, answer] = reader.messages(session.conversation_id)
            assert (answer.role, answer.status, answer.content) == ("assistant", "streaming", "")
        _tokens_until(events, 1)  # the every-th chunk
        with _reader(store) as reader:  # the writer (this process) is alive: not marked interrupted
            answer = reader.messages(session.conversation_id)[-1]
            assert answer.status == "streaming" and answer.content == "".join(chunks[:every]).strip()
        list(events)
        [answer] = [m for m in store.messages(session.conversation_id) if m.role == "assistant"]
        assert (answer.status, answer.content) == ("complete", "".join(chunks).strip())
        assert answer.stats["stop_reason"] == "eos" and session.last_answer_message_id == answer.id


def test_text_shown_before_the_model_stalls_is_saved_within_the_interval(isolated_user_dirs, monkeypatch):
    import time

    from medchat.core import session as session_module

    monkeypatch.setattr(session_module._LiveAnswer, "SAVE_EVERY_S", 0.05)
    with HistoryStore() as store:
        session = ChatSession(FakeEngine([{"chunks": ["One ", "two"], "hang": True}]), FakeGuard(), store=store)
        events = session.send("q")
        _tokens_until(events, 2)  # then the stream waits: no more chunks come to trigger a save
        with _reader(store) as reader:
            deadline = time.monotonic() + 10
            while reader.messages(session.conversation_id)[-1].content != "One two" and time.monotonic() < deadline:
                time.sleep(0.02)
            assert reader.messages(session.conversation_id)[-1].content == "One two"
        session.cancel()
        list(events)


def test_cancel_saves_what_was_shown_as_stopped_before_the_model_stops(isolated_user_dirs):
    engine = FakeEngine([{"chunks": ["Shown ", "so far", " never shown"], "hang": True}])
    with HistoryStore() as store:
        session = ChatSession(engine, FakeGuard(), store=store)
        events = session.send("q")
        _tokens_until(events, 2)
        session.cancel()  # e.g. Ctrl+Q or a hang-up: the front end may exit right away
        with _reader(store) as reader:
            answer = reader.messages(session.conversation_id)[-1]
            assert (answer.status, answer.content, answer.stats) == ("stopped", "Shown so far",
                                                                      {"stop_reason": "cancelled"})
        assert list(events)[-1] == Finished("Shown so far", "cancelled", None)
        answer = store.messages(session.conversation_id)[-1]
        assert (answer.status, answer.content) == ("stopped", "Shown so far")
        assert answer.stats["tokens"] == 2  # the stream's own stats once it stopped


KILLED_WRITER = """
import sys
sys.path.insert(0, sys.argv[2])
from session_fakes import FakeEngine, FakeGuard
from medchat.core import session as session_module
from medchat.core.history import HistoryStore
session_module._LiveAnswer.SAVE_EVERY_S = 0.05
store = HistoryStore(sys.argv[1])
session = session_module.ChatSession(FakeEngine([{"chunks": ["Call ", "your doctor"], "hang": True}]), FakeGuard(),
                                     store=store)
for event in session.send("Is this serious?"):
    if isinstance(event, session_module.Token) and event.text == "your doctor":
        print("shown", flush=True)
"""


def _wait_saved(path, text):
    """Until a message with `text` is committed (read with a plain connection: nothing marked or migrated)."""
    import contextlib
    import sqlite3
    import time

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.closing(sqlite3.connect(path)) as db:
            if db.execute("SELECT 1 FROM messages WHERE content = ?", (text,)).fetchone():
                return
        time.sleep(0.02)
    raise AssertionError(f"{text!r} was never saved")


def test_a_killed_session_leaves_the_partial_answer_marked_interrupted(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    path = tmp_path / "h.sqlite3"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(path), str(Path(__file__).parent)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "shown\n"
        _wait_saved(path, "Call your doctor")  # the save interval after the last chunk
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    with HistoryStore(path) as store:
        [conv] = store.list_conversations()
        [question, answer] = store.messages(conv.id)
        assert question.content == "Is this serious?"
        assert (answer.status, answer.content) == ("interrupted", "Call your doctor")
        assert answer.updated is not None
