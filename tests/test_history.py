"""The SQLite conversation store: schema and migrations, privacy, crash safety, search, rename, export."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap

import pytest

from medchat.core.history import MIGRATIONS, SCHEMA_VERSION, HistoryError, HistoryStore, export_filename


@pytest.fixture
def store(tmp_path):
    with HistoryStore(tmp_path / "h.sqlite3") as s:
        yield s


def test_default_path_wal_schema_version_and_private_files(isolated_user_dirs):
    with HistoryStore() as store:
        conv = store.create_conversation("t")
        store.add_message(conv.id, "user", "hello")
        path = isolated_user_dirs / "data" / "history.sqlite3"
        assert store.path == path
        assert store.schema_version == SCHEMA_VERSION
        assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        for suffix in ("", "-wal", "-shm"):
            f = path.with_name(path.name + suffix)
            assert f.exists(), f
            assert stat.S_IMODE(f.stat().st_mode) == 0o600, f


def test_conversation_life_cycle(store):
    conv = store.create_conversation("Diabetes", settings={"temperature": 0.2}, model={"base": "bundled"})
    store.add_message(conv.id, "user", "What is diabetes?", guard={"ood_level": "in_domain"})
    store.add_message(conv.id, "assistant", "A disease…", status="stopped", stats={"tokens": 3})
    got = store.get_conversation(conv.id)
    assert got.settings == {"temperature": 0.2} and got.model == {"base": "bundled"}
    assert got.message_count == 2
    msgs = store.messages(conv.id)
    assert [m.role for m in msgs] == ["user", "assistant"]
    assert msgs[0].guard == {"ood_level": "in_domain"}
    assert msgs[1].status == "stopped" and msgs[1].stats == {"tokens": 3}
    assert store.rename_conversation(conv.id, "  Sugar  ").title == "Sugar"
    store.delete_conversation(conv.id)
    assert store.list_conversations() == []
    assert store._db.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 0
    with pytest.raises(HistoryError, match="No conversation with id"):
        store.get_conversation(conv.id)


def test_list_is_most_recent_first_and_search_finds_titles_and_messages(store):
    a = store.create_conversation("Asthma")
    b = store.create_conversation("Migraine")
    store.add_message(a.id, "user", "Does 100% of asthma_x need inhalers?")
    store._db.execute("UPDATE conversations SET updated = '2000-01-01' WHERE id = ?", (a.id,))
    store._db.commit()
    assert [c.title for c in store.list_conversations()] == ["Migraine", "Asthma"]
    assert [h.conversation.id for h in store.search("migr")] == [b.id]
    hits = store.search("100% of ASTHMA_x")
    assert [h.conversation.id for h in hits] == [a.id]
    assert "100% of asthma_x" in hits[0].snippet
    assert store.search("50%") == []  # LIKE wildcards are escaped
    assert len(store.search("")) == 2


def test_hostile_text_round_trips(store):
    text = "emoji 🩺🙂, RTL עברית العربية, nul-free control \x1b[31mred\x1b[0m, quote ' \" ; DROP TABLE x;" * 2000
    conv = store.create_conversation(text[:50])
    store.add_message(conv.id, "user", text)
    assert store.messages(conv.id)[0].content == text
    assert store.search("العربية")[0].conversation.id == conv.id


def test_migrates_a_version_1_database_in_place(tmp_path):
    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(MIGRATIONS[0])
    db.execute("INSERT INTO conversations (title, created, updated) VALUES ('old', 'c', 'u')")
    db.execute("INSERT INTO messages (conversation_id, role, content, created) VALUES (1, 'user', 'hi', 'c')")
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    with HistoryStore(path) as store:
        assert store.schema_version == SCHEMA_VERSION
        [msg] = store.messages(1)
        assert msg.content == "hi" and msg.guard is None
        store.update_message_guard(msg.id, {"ood_level": "uncertain"})
        assert store.messages(1)[0].guard == {"ood_level": "uncertain"}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_newer_schema_and_garbage_files_are_clear_errors(tmp_path):
    newer = tmp_path / "newer.sqlite3"
    db = sqlite3.connect(newer)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 5}")
    db.close()
    with pytest.raises(HistoryError, match="newer than this medchat"):
        HistoryStore(newer)
    garbage = tmp_path / "garbage.sqlite3"
    garbage.write_bytes(b"this is not a database" * 100)
    with pytest.raises(HistoryError, match="unreadable.*--no-history"):
        HistoryStore(garbage)


def test_export_markdown_and_json(store, tmp_path):
    conv = store.create_conversation("Chest pain", settings={"system_prompt": "Be careful."})
    store.add_message(
        conv.id, "user", "I have chest pain", guard={"ood_level": "in_domain", "red_flags": [{"notice": "CALL 911"}]}
    )
    store.add_message(conv.id, "assistant", "Partial", status="stopped",
                      stats={"ttft_s": 0.5, "tokens": 4, "tokens_per_s": 8.0, "stop_reason": "cancelled"})
    md = store.export_markdown(conv.id, reminder="See a physician.")
    assert md.startswith("# Chest pain\n")
    assert "## You (in domain)\n\nI have chest pain" in md
    assert md.index("CALL 911") < md.index("Partial") < md.index("*(stopped)*") < md.index("See a physician.")
    assert md.count("See a physician.") == 1
    assert "first token 0.50 s · 4 tokens · 8.0 tok/s · stopped" in md
    out = store.export(conv.id, tmp_path / "x" / export_filename(conv, "json"), fmt="json")
    assert out.name == f"medchat-{conv.id}-chest-pain.json"
    data = json.loads(out.read_text(encoding="utf-8"))
    assert data["title"] == "Chest pain" and [m["content"] for m in data["messages"]] == ["I have chest pain", "Partial"]



def test_every_answer_reads_back_with_one_model_shape_old_rows_too(store):
    conv = store.create_conversation("Old rows")
    stats = {"ttft_s": 0.1, "tokens": 2, "tokens_per_s": 20.0, "stop_reason": "eos"}
    written = [
        "fake-upstream",  # `medchat ask` / `serve` sessions saved the endpoint's name
        {"base": "bundled", "adapter": "/runs/r/adapter"},  # the chat app saved base and adapter
        {"base": "bundled", "adapter": None, "name": None},  # what ChatSession saves now
    ]
    for model in written:
        store.add_message(conv.id, "assistant", "An answer.", stats=stats | {"model": model})
    store.add_message(conv.id, "assistant", "No stats.")
    read = [m.stats for m in store.messages(conv.id)]
    assert [s["model"] for s in read[:3]] == [
        {"base": "fake-upstream", "adapter": None, "name": "fake-upstream"},
        {"base": "bundled", "adapter": "/runs/r/adapter", "name": None},
        {"base": "bundled", "adapter": None, "name": None},
    ]
    assert read[3] is None
    exported = store.export_dict(conv.id)["messages"]
    assert [m["stats"]["model"]["base"] for m in exported[:3]] == ["fake-upstream", "bundled", "bundled"]
    assert store.export_markdown(conv.id).count("first token 0.10 s") == 3


WRITER = textwrap.dedent(
    """
    import sys
    from medchat.core.history import HistoryStore
    store = HistoryStore(sys.argv[1])
    conv = store.create_conversation("crash test")
    i = 0
    while True:
        store.add_message(conv.id, "user", f"question {i}")
        store.add_message(conv.id, "assistant", f"answer {i} " * 500)
        print(i, flush=True)
        i += 1
    """
)


def test_killing_a_writer_mid_answer_leaves_a_readable_database(tmp_path):
    path = tmp_path / "crash.sqlite3"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:
            if int(line) >= 30:
                break
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    with HistoryStore(path) as store:
        assert store._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        [conv] = store.list_conversations()
        msgs = store.messages(conv.id)
        assert len(msgs) >= 62
        for n, msg in enumerate(msgs):
            i = n // 2
            assert msg.content == (f"question {i}" if msg.role == "user" else f"answer {i} " * 500)
        assert msgs[-1].role in ("user", "assistant")


def test_history_cli_list_export_delete(isolated_user_dirs, tmp_path):
    from click.testing import CliRunner

    from medchat.app.cli import main

    runner = CliRunner()
    result = runner.invoke(main, ["history", "list"])
    assert result.exit_code == 0 and "No conversations yet." in result.output
    assert runner.invoke(main, ["history", "list", "--json"]).output == ""
    from medchat.core.paths import history_db_path

    assert not history_db_path().exists()  # listing creates nothing
    result = runner.invoke(main, ["history", "export", "1"])
    assert result.exit_code == 1 and "No history yet" in result.output
    with HistoryStore() as store:
        a = store.create_conversation("Asthma \x1b[31mred")
        store.add_message(a.id, "user", "inhaler question")
        store.add_message(a.id, "assistant", "Use it as prescribed.")
        b = store.create_conversation("Migraine")
    with HistoryStore() as store:
        store.create_conversation("A very long title about headaches " * 6)
    result = runner.invoke(main, ["history", "list"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    assert max(len(line) for line in result.output.splitlines()) <= 80 and "…" in result.output
    assert "Migraine" in result.output and "Asthma [31m" not in result.output and "\x1b" not in result.output
    result = runner.invoke(main, ["history", "list", "--search", "INHALER", "--json"])
    [line] = result.output.splitlines()
    assert json.loads(line)["id"] == a.id
    result = runner.invoke(main, ["history", "export", str(a.id)])
    assert "Use it as prescribed." in result.output and "\x1b" not in result.output
    out = tmp_path / "a.json"
    result = runner.invoke(main, ["history", "export", str(a.id), "-o", str(out)])
    assert result.exit_code == 0 and json.loads(out.read_text())["id"] == a.id
    out.write_text("keep me")
    result = runner.invoke(main, ["history", "export", str(a.id), "-o", str(out)])
    assert result.exit_code == 1 and "--force" in result.output and out.read_text() == "keep me"
    result = runner.invoke(main, ["history", "export", str(a.id), "-o", str(out), "--force"])
    assert result.exit_code == 0 and json.loads(out.read_text())["id"] == a.id
    missing = tmp_path / "no" / "such" / "dir" / "a.md"
    result = runner.invoke(main, ["history", "export", str(a.id), "-o", str(missing)])
    assert result.exit_code == 1 and "does not exist" in result.output and not missing.parent.exists()
    result = runner.invoke(main, ["history", "export", "999"])
    assert result.exit_code == 1 and "No conversation with id 999" in result.output
    result = runner.invoke(main, ["history", "delete", str(b.id)], input="n\n")
    assert result.exit_code == 1
    result = runner.invoke(main, ["history", "delete", str(b.id), "--yes"])
    assert result.exit_code == 0 and "Deleted 1 conversation." in result.output
    with HistoryStore() as store:
        assert b.id not in [c.id for c in store.list_conversations()]


def _version_2_file(path):
    """A history file as medchat wrote it before answers were saved while streaming (schema 2)."""
    db = sqlite3.connect(path)
    for script in MIGRATIONS[:2]:
        db.executescript(script)
    db.execute("INSERT INTO conversations (title, created, updated) VALUES ('old', 'c', 'u')")
    db.execute("INSERT INTO messages (conversation_id, role, content, created) VALUES (1, 'user', 'hi', 'c')")
    db.execute("INSERT INTO messages (conversation_id, role, content, created, status) "
               "VALUES (1, 'assistant', 'Half', 'c', 'stopped')")
    db.execute("PRAGMA user_version = 2")
    db.commit()
    db.close()


def test_migrates_a_version_2_database_to_answers_saved_while_streaming(tmp_path):
    path = tmp_path / "v2.sqlite3"
    _version_2_file(path)
    with HistoryStore(path) as store:
        assert store.schema_version == SCHEMA_VERSION == 3
        assert [(m.content, m.status, m.updated) for m in store.messages(1)] == [
            ("hi", "complete", None), ("Half", "stopped", None)]
        live = store.add_message(1, "assistant", "", status="streaming")
        store.save_partial(live.id, "Growing")
        assert store.messages(1)[-1].content == "Growing"
        store.finish_message(live.id, "Grown.", "complete", {"stop_reason": "eos"})
        store.save_partial(live.id, "late partial")  # a finished answer is never rewritten as partial
        assert [(m.content, m.status, m.stats) for m in store.messages(1)][-1] == (
            "Grown.", "complete", {"stop_reason": "eos"})


def _leave_streaming(path, text, writer):
    """An answer as a medchat killed mid-answer leaves it: streaming, written by `writer`."""
    with HistoryStore(path) as store:
        conv = store.create_conversation("Crash")
        store.add_message(conv.id, "user", "Why does my knee hurt?")
        msg = store.add_message(conv.id, "assistant", "", status="streaming")
        store.save_partial(msg.id, text)
        store._db.execute("UPDATE messages SET writer = ? WHERE id = ?", (writer, msg.id))
        store._db.commit()
        return conv.id


def test_an_answer_left_streaming_by_a_dead_process_is_marked_interrupted_on_open(tmp_path):
    path = tmp_path / "h.sqlite3"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    conv_id = _leave_streaming(path, "It may be", f"{dead.stdout.strip()}:0.00")
    with HistoryStore(path) as store:
        answer = store.messages(conv_id)[-1]
        assert (answer.status, answer.content) == ("interrupted", "It may be")
        md = store.export_markdown(conv_id)
        assert md.index("It may be") < md.index("*(interrupted: medchat ended while this answer was being written")
    # a reused pid is not its writer: the start time differs
    other = _leave_streaming(tmp_path / "reused.sqlite3", "x", f"{os.getpid()}:1.00")
    with HistoryStore(tmp_path / "reused.sqlite3") as store:
        assert store.messages(other)[-1].status == "interrupted"


def test_history_show_and_export_say_an_answer_was_interrupted(isolated_user_dirs):
    from click.testing import CliRunner

    from medchat.app.cli import main
    from medchat.core.paths import history_db_path

    history_db_path().parent.mkdir(parents=True)
    conv_id = _leave_streaming(history_db_path(), "Rest and ice", "1:0.00")
    runner = CliRunner()
    result = runner.invoke(main, ["history", "show", str(conv_id)])
    assert result.exit_code == 0, result.output
    assert "Rest and ice" in result.output and "*(interrupted: medchat ended while" in result.output
    assert "consult" in result.output.lower().split("interrupted", 1)[1]  # the reminder still follows
    result = runner.invoke(main, ["history", "export", str(conv_id), "-f", "json"])
    answer = json.loads(result.output)["messages"][-1]
    assert (answer["status"], answer["content"]) == ("interrupted", "Rest and ice")
    result = runner.invoke(main, ["history", "show", "999"])
    assert result.exit_code == 1 and "No conversation with id 999" in result.output
