"""`medchat serve` as a real server on 127.0.0.1, called with the real `openai` client (and httpx for the
malformed requests a client library would not send): the safety parts in the OpenAI response shape, the
decline policy, the error bodies and limits, and cancellation when the client hangs up.

The model behind it is a tiny random Llama (medchat's own engine) or a scripted upstream (serve_fakes);
the guard is the scripted FakeGuard, so that a verdict is known in advance."""

from __future__ import annotations

import threading
import time

import httpx
import openai
import pytest
from serve_fakes import free_port, running, scripted_upstream
from session_fakes import FakeGuard

from medchat.app.serve import Gateway, create_app
from medchat.core.engine import Engine, GenerationSettings
from medchat.core.guard.notices import DECLINE_MESSAGE, PHYSICIAN_REMINDER
from medchat.core.remote import RemoteEngine

pytestmark = pytest.mark.timeout(120)
EMERGENCY = "I have chest pain, what should I do?"


@pytest.fixture(scope="module")
def tiny_engine(tiny_model_dir):
    from medchat.core.model import ModelSpec, load

    return Engine(load(ModelSpec(base=str(tiny_model_dir), device="cpu", dtype="fp32")))


@pytest.fixture
def serve(tiny_engine):
    """Start `medchat serve` around an engine (the tiny model by default); yields an openai client."""
    def start(engine=None, **options):
        gateway = Gateway(engine or tiny_engine, FakeGuard(), defaults=GenerationSettings(max_new_tokens=8),
                          **options)
        return running(create_app(gateway))

    return start


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=30)


def ask(text: str) -> list[dict]:
    return [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}]


def test_models_lists_the_served_name(serve):
    with serve(served_model="medchat-run7") as url:
        assert [m.id for m in client(url).models.list()] == ["medchat-run7"]


def test_completion_puts_the_notice_first_and_the_reminder_last(serve):
    with serve() as url:
        completion = client(url).chat.completions.create(model="medchat", messages=ask(EMERGENCY), max_tokens=6)
    content = completion.choices[0].message.content
    extension = completion.model_extra["medchat"]
    assert content.startswith("⚠ ") and content.endswith(PHYSICIAN_REMINDER)
    assert [n["kind"] for n in extension["notices"]] == ["emergency"]
    assert extension["verdict"]["red_flags"][0]["rule_id"] == "chest_pain"
    assert extension["answer"] and extension["answer"] in content
    assert content.index(extension["notices"][0]["text"]) < content.index(extension["answer"])
    assert completion.choices[0].finish_reason in ("stop", "length")
    assert completion.usage.completion_tokens == extension["stats"]["tokens"] > 0


def test_streaming_sends_the_verdict_first_and_the_reminder_last(serve):
    with serve() as url:
        chunks = list(client(url).chat.completions.create(
            model="medchat", messages=ask(EMERGENCY), max_tokens=6, stream=True,
            stream_options={"include_usage": True}))
    texts = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert texts[0].startswith("⚠ ") and texts[-1] == f"\n\n{PHYSICIAN_REMINDER}"
    assert len(texts) > 2  # the answer streams between them
    first = chunks[0].model_extra["medchat"]
    assert first["verdict"]["red_flags"] and first["notices"][0]["kind"] == "emergency"
    last = [c for c in chunks if c.choices][-1]
    assert last.choices[0].finish_reason in ("stop", "length")
    assert last.model_extra["medchat"]["stats"]["tokens"] > 0
    assert chunks[-1].usage.completion_tokens == last.model_extra["medchat"]["stats"]["tokens"]


def test_decline_policy_answers_without_the_model(serve):
    upstream = scripted_upstream("ok")
    with running(upstream) as up, serve(RemoteEngine(up, "m"), policy="decline") as url:
        completion = client(url).chat.completions.create(model="medchat", messages=ask("Who won the football?"))
        noted = client(url).chat.completions.create(model="medchat", messages=ask("How much water?"))
    content = completion.choices[0].message.content
    assert content == f"{DECLINE_MESSAGE}\n\n{PHYSICIAN_REMINDER}"
    assert completion.model_extra["medchat"]["verdict"]["declined"] is True
    assert completion.model_extra["medchat"]["stop_reason"] == "declined"
    assert len(upstream.state.requests) == 1  # only the medical question reached the model
    assert "Drink water often." in noted.choices[0].message.content


def test_the_request_reaches_an_upstream_with_the_system_prompt_and_settings(serve):
    upstream = scripted_upstream("ok")
    with running(upstream) as up, serve(RemoteEngine(up, "m")) as url:
        client(url).chat.completions.create(model="medchat", messages=ask("How much water?"), temperature=0.3,
                                            max_completion_tokens=5, extra_body={"repetition_penalty": 1.3})
    sent = upstream.state.requests[0]
    assert sent["messages"] == ask("How much water?")
    assert (sent["temperature"], sent["max_tokens"], sent["repetition_penalty"]) == (0.3, 5, 1.3)


def error_of(response: httpx.Response) -> dict:
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


@pytest.mark.parametrize("body, status, fragment", [
    (b"{not json", 400, "not valid JSON"),
    (b"[1, 2]", 400, "JSON object"),
    (b'{"messages": []}', 400, "messages"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "temperature": 5}', 400, "temperature"),
    (b'{"messages": [{"role": "assistant", "content": "hi"}]}', 400, "last message must be the user"),
    (b'{"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}', 400, "text only"),
    (b'{"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]}', 404, "gpt-9"),
])
def test_bad_requests_get_openai_error_bodies(serve, body, status, fragment):
    with serve() as url:
        response = httpx.post(f"{url}/v1/chat/completions", content=body,
                              headers={"content-type": "application/json"})
    assert response.status_code == status
    assert fragment in error_of(response)["message"]


def test_unknown_route_and_too_large_body(serve):
    with serve(max_request_bytes=2000) as url:
        missing = httpx.get(f"{url}/v1/nothing")
        large = httpx.post(f"{url}/v1/chat/completions",
                           json={"messages": [{"role": "user", "content": "x" * 5000}]})

        def chunked():  # no Content-Length: the limit holds while reading
            yield b'{"messages": [{"role": "user", "content": "'
            for _ in range(10):
                yield b"y" * 500
            yield b'"}]}'

        streamed = httpx.post(f"{url}/v1/chat/completions", content=chunked())
    assert missing.status_code == 404 and error_of(missing)["code"] == "not_found"
    assert large.status_code == streamed.status_code == 413
    assert "2,000 bytes" in error_of(large)["message"]


def test_too_many_concurrent_generations_get_429_and_a_hangup_cancels(serve):
    upstream = scripted_upstream("stall", delay_s=30)
    with running(upstream) as up, serve(RemoteEngine(up, "m"), max_concurrent=1) as url:
        api = client(url)
        first = api.chat.completions.create(model="medchat", messages=ask("How much water?"), stream=True)
        next(iter(first))  # the first generation holds the only slot
        with pytest.raises(openai.RateLimitError) as caught:
            api.chat.completions.create(model="medchat", messages=ask("How much water?"))
        assert caught.value.body["code"] == "too_many_concurrent"
        first.close()  # the client hangs up: medchat cancels its upstream request
        assert upstream.state.disconnected.wait(15)
        for _ in range(100):  # the slot comes back once the model has stopped
            try:
                api.models.list()
                api.chat.completions.create(model="medchat", messages=ask("How much water?"), timeout=0.5)
            except openai.APITimeoutError:
                break  # got the slot: the stalled upstream answers slowly, so the call times out
            except openai.RateLimitError:
                time.sleep(0.1)
        else:
            pytest.fail("the slot was never released")


def test_upstream_down_is_502_and_slow_is_504(serve):
    down = RemoteEngine(f"http://127.0.0.1:{free_port()}/v1", "m")
    with serve(down) as url:
        response = httpx.post(f"{url}/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 502 and error_of(response)["code"] == "upstream_502"
    assert "Cannot reach the model server" in response.json()["error"]["message"]
    assert response.json()["medchat"]["reminder"] == PHYSICIAN_REMINDER

    with running(scripted_upstream("slow", delay_s=1.5)) as up, serve(RemoteEngine(up, "m", timeout_s=0.5)) as url:
        with pytest.raises(openai.APIStatusError) as caught:
            client(url).chat.completions.create(model="medchat", messages=ask("How much water?"))
    assert caught.value.status_code == 504


def test_a_stream_that_breaks_upstream_ends_with_an_error_event(serve):
    with running(scripted_upstream("drop")) as up, serve(RemoteEngine(up, "m")) as url:
        received = []
        with pytest.raises(openai.APIError, match="dropped the connection mid-answer"):
            for chunk in client(url).chat.completions.create(model="medchat", messages=ask("How much water?"),
                                                             stream=True):
                received.append(chunk.choices[0].delta.content or "")
    assert "Drink " in received and received[-1] == f"\n\n{PHYSICIAN_REMINDER}"  # partial answer, then reminder


def test_serve_cli_rejects_run_with_upstream():
    from click.testing import CliRunner

    from medchat.app.cli import main

    result = CliRunner().invoke(main, ["serve", "some-run", "--upstream", "http://127.0.0.1:1/v1"])
    assert result.exit_code == 2 and "not both" in result.output


def test_threads_are_not_left_behind(serve):
    before = threading.active_count()
    with serve() as url:
        client(url).chat.completions.create(model="medchat", messages=ask("How much water?"), max_tokens=3)
    for _ in range(100):
        if threading.active_count() <= before:
            break
        time.sleep(0.05)
    assert threading.active_count() <= before


def test_earlier_answers_reach_the_model_without_the_safety_texts(serve):
    from medchat.core.guard.notices import EMERGENCY_NOTICE

    upstream = scripted_upstream("ok")
    earlier = f"⚠ {EMERGENCY_NOTICE['emergency']}\n\nCall for help.\n\nThen rest.\n\n{PHYSICIAN_REMINDER}"
    with running(upstream) as up, serve(RemoteEngine(up, "m")) as url:
        client(url).chat.completions.create(model="medchat", messages=[
            {"role": "user", "content": EMERGENCY}, {"role": "assistant", "content": earlier},
            {"role": "user", "content": "How much water?"}])
    sent = upstream.state.requests[0]["messages"]
    assert sent[2] == {"role": "assistant", "content": "Call for help.\n\nThen rest."}
