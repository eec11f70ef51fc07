"""One chat against the real bundled SmolLM2-135M: a short answer, then Esc stops a long one."""

from __future__ import annotations

from dataclasses import replace

import pytest

from medchat.core.history import HistoryStore
from medchat.core.settings import ChatSettings, save_defaults
from medchat.app.chat.widgets import AssistantMessage

from .conftest import send, wait_idle, wait_ready

pytestmark = [pytest.mark.anyio, pytest.mark.bundled]


async def test_bundled_model_answers_and_stops(bundled_spec):
    from medchat.app.chat.app import MedchatApp

    save_defaults(ChatSettings(max_new_tokens=6))
    # The torch engine: slow enough on CPU that Esc lands mid-answer. ONNX Runtime, the default, can finish a
    # short answer before the key is handled; its cancel is tested in tests/perf/test_onnx_engine.py.
    app = MedchatApp(replace(bundled_spec, backend="torch"), guard_factory=lambda: None, cursor_blink=False)
    async with app.run_test(size=(100, 30)) as pilot:
        for _ in range(60):  # the first load converts the GGUF (tens of seconds); later ones are quick
            await wait_ready(app, pilot)
            if app.loader.model_status != "loading":
                break
        assert app.loader.model_status == "ready", app.loader.model_error
        await send(app, pilot, "What is asthma?")
        await wait_idle(app, pilot)
        [answer] = app.query(AssistantMessage)
        assert answer.text.strip() and answer.status == "complete"
        assert answer.stats["tokens"] <= 6 and answer.stats["stop_reason"] in ("length", "eos")

        app.settings = ChatSettings(max_new_tokens=400)
        await send(app, pilot, "Explain in detail how the heart works.")
        for _ in range(3000):  # the second answer's widget may mount a moment after the send
            answers = list(app.query(AssistantMessage))
            if len(answers) == 2 and answers[1].text:
                break
            await pilot.pause(0.01)
        second = answers[1]
        await pilot.press("escape")
        await wait_idle(app, pilot)
        if app.chat_view.draining is not None:  # a loaded CPU may take longer than the UI waits for one step
            await app.chat_view.draining
            await pilot.pause()
        assert second.status == "stopped"
        assert second.stats["stop_reason"] == "cancelled" and second.stats["tokens"] < 400
    with HistoryStore() as store:
        [conv] = store.list_conversations()
        assert [m.status for m in store.messages(conv.id)] == ["complete", "complete", "complete", "stopped"]
