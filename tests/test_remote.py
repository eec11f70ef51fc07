"""medchat.core.remote against real HTTP servers on 127.0.0.1 (scripted upstreams from serve_fakes): the
happy path, every failure the chat must survive, Esc, and the API key that must never reach the history."""

from __future__ import annotations

import threading
import time

import pytest
from serve_fakes import free_port, running, scripted_upstream
from session_fakes import FakeGuard

from medchat.core.engine import EngineError, GenerationSettings
from medchat.core.protocols import Engine, Stream
from medchat.core.remote import RemoteEngine, RemoteError, api_base
from medchat.core.session import ChatSession, Finished, Reminder, Stats, Token

pytestmark = pytest.mark.timeout(120)


def answer(engine, text="How much water should I drink?", **settings):
    stream = engine.stream([{"role": "user", "content": text}], GenerationSettings(**settings))
    return "".join(stream), stream


def test_api_base_adds_v1_only_to_a_bare_host():
    assert api_base("http://127.0.0.1:8000") == "http://127.0.0.1:8000/v1"
    assert api_base("http://h:1/v1/") == "http://h:1/v1"
    assert api_base("https://h/openai/v1") == "https://h/openai/v1"
    with pytest.raises(EngineError, match="not an http"):
        api_base("127.0.0.1:8000")


def test_streams_with_usage_and_the_servers_model(monkeypatch):
    monkeypatch.setenv("MY_KEY", "sk-secret")
    upstream = scripted_upstream("ok")
    with running(upstream) as url:
        engine = RemoteEngine(url, api_key_env="MY_KEY")
        assert isinstance(engine, Engine)
        text, stream = answer(engine, max_new_tokens=9, temperature=0.5, top_p=0.8, repetition_penalty=1.2)
    assert isinstance(stream, Stream)
    assert text == "Drink water often."
    assert stream.stats.tokens == 7  # the server's usage, not the three chunks
    assert stream.stats.stop_reason == "eos" and stream.stats.model == "fake-upstream"
    assert stream.stats.ttft_s is not None
    sent = upstream.state.requests[0]
    assert sent["model"] == "fake-upstream"  # none given: the first one /v1/models lists
    assert (sent["max_tokens"], sent["temperature"], sent["top_p"], sent["repetition_penalty"]) == (9, 0.5, 0.8, 1.2)
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    assert sent["authorization"] == "Bearer sk-secret"
    assert engine.info.base == "fake-upstream" and "sk-secret" not in repr(engine.info.as_dict())


def test_without_usage_tokens_are_counted_chunks():
    with running(scripted_upstream("no_usage")) as url:
        text, stream = answer(RemoteEngine(url, "named-model"))
    assert stream.stats.tokens == 3 and stream.stats.model == "named-model"


def test_a_server_that_refuses_repetition_penalty_is_asked_again_without_it():
    upstream = scripted_upstream("reject_repetition_penalty")
    with running(upstream) as url:
        engine = RemoteEngine(url, "m")
        assert answer(engine, repetition_penalty=1.1)[0] == "Drink water often."
        answer(engine, repetition_penalty=1.1)
    assert ["repetition_penalty" in r for r in upstream.state.requests] == [True, False, False]


def test_server_down_is_a_clear_error():
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(RemoteError, match="Cannot reach the model server .* Is it running") as caught:
        answer(RemoteEngine(url, "m"))
    assert caught.value.status == 502


def test_http_error_carries_the_servers_message():
    with running(scripted_upstream("http_500")) as url:
        with pytest.raises(RemoteError, match="answered HTTP 500: the GPU caught fire"):
            answer(RemoteEngine(url, "m"))


def test_a_slow_server_times_out_as_504():
    with running(scripted_upstream("slow", delay_s=1.5)) as url:
        with pytest.raises(RemoteError, match="did not answer within 0.5 s") as caught:
            answer(RemoteEngine(url, "m", timeout_s=0.5))
    assert caught.value.status == 504


@pytest.mark.parametrize("mode, message", [("drop", "dropped the connection mid-answer"),
                                           ("stall", "did not answer within 0.5 s mid-answer"),
                                           ("error_event", "reported an error: out of KV cache")])
def test_a_broken_stream_keeps_the_partial_answer_in_the_session(mode, message):
    with running(scripted_upstream(mode, delay_s=1.5)) as url:
        session = ChatSession(RemoteEngine(url, "m", timeout_s=0.5), FakeGuard())
        events = list(session.send("How much water should I drink?"))
    finished = events[-1]
    assert isinstance(finished, Finished) and finished.stop_reason == "error"
    assert message in finished.error
    assert finished.answer == "Drink"  # what came before the break is kept (the app marks it failed)
    assert any(isinstance(e, Reminder) for e in events)
    assert session.messages[-1] == {"role": "assistant", "content": "Drink"}


def test_cancel_returns_at_once_and_closes_the_stream():
    upstream = scripted_upstream("stall", delay_s=30)
    with running(upstream) as url:
        stream = RemoteEngine(url, "m").stream([{"role": "user", "content": "hi"}], GenerationSettings())
        chunks = iter(stream)
        assert next(chunks) == "Drink "
        threading.Timer(0.2, stream.cancel).start()
        started = time.monotonic()
        assert list(chunks) == []
        waited = time.monotonic() - started
        assert upstream.state.disconnected.wait(10)  # the server saw the client go
    assert waited < 10 and stream.stats.stop_reason == "cancelled"


def test_history_records_the_model_per_answer_and_never_the_key(tmp_path, monkeypatch):
    from medchat.core.history import HistoryStore

    monkeypatch.setenv("OPENAI_API_KEY", "sk-never-stored")
    store = HistoryStore(tmp_path / "history.db")
    with running(scripted_upstream("ok")) as url:
        engine = RemoteEngine(url)
        session = ChatSession(engine, FakeGuard(), store=store)
        events = list(session.send("How much water should I drink?"))
    assert [e.text for e in events if isinstance(e, Token)] == ["Drink ", "water ", "often."]
    assert next(e for e in events if isinstance(e, Stats)).stats.model == "fake-upstream"
    conversation = store.get_conversation(session.conversation_id)
    assert conversation.model["device"] == api_base(url)
    answer_row = store.messages(session.conversation_id)[-1]
    assert answer_row.stats["model"] == {"base": "fake-upstream", "adapter": None, "name": "fake-upstream"}
    store.close()
    assert b"sk-never-stored" not in (tmp_path / "history.db").read_bytes()


def test_ask_takes_the_endpoint_from_config_and_flags_win(isolated_user_dirs, monkeypatch):
    import json

    from click.testing import CliRunner

    from medchat.app.cli import main

    monkeypatch.setenv("CONFIGURED_KEY", "sk-from-config-var")
    monkeypatch.setattr("medchat.app.ask.load_guard", lambda adapter: FakeGuard())  # the endpoint is under test
    config = isolated_user_dirs / "config" / "config.toml"
    config.parent.mkdir(parents=True)
    upstream = scripted_upstream("ok")
    with running(upstream) as url:
        config.write_text(f'[endpoint]\nurl = "{url}"\nmodel = "configured"\napi_key_env = "CONFIGURED_KEY"\n')
        result = CliRunner().invoke(main, ["ask", "--json", "How much water should I drink?"])
        flagged = CliRunner().invoke(main, ["ask", "--json", "--model", "flagged", "How much water?"])
    assert result.exit_code == 0 and flagged.exit_code == 0, result.output + flagged.output
    record = json.loads(result.stdout)
    assert record["answer"] == "Drink water often." and record["stats"]["model"] == "configured"
    assert [r["model"] for r in upstream.state.requests] == ["configured", "flagged"]
    assert upstream.state.requests[0]["authorization"] == "Bearer sk-from-config-var"


def test_a_bad_endpoint_table_is_a_one_line_error(isolated_user_dirs):
    from click.testing import CliRunner

    from medchat.app.cli import main

    config = isolated_user_dirs / "config" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text('[endpoint]\nurl = "http://127.0.0.1:1/v1"\nkey = "sk-do-not-put-keys-here"\n')
    result = CliRunner().invoke(main, ["ask", "hi"])
    assert result.exit_code == 1
    assert f"In {config}: [endpoint] has no setting 'key'" in result.output and "Traceback" not in result.output
