"""The chat app with `--endpoint` (a RemoteEngine) against `medchat serve` on 127.0.0.1: a server that is not
up yet gives a message and leaves the app usable; once it is up the answer streams; F2 names the endpoint."""

from __future__ import annotations

import pytest
from serve_fakes import free_port, running

from medchat.app.chat.screens import ModelInfoScreen
from medchat.app.chat.widgets import AssistantMessage
from medchat.app.serve import Gateway, create_app
from medchat.core.engine import Engine, GenerationSettings
from medchat.core.guard.notices import PHYSICIAN_REMINDER
from medchat.core.history import HistoryStore
from medchat.core.remote import RemoteEngine

from .conftest import FakeGuard, send, wait_idle, wait_ready

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(90)]


async def test_chat_through_medchat_serve_survives_a_server_that_is_down(make_app, tiny_model_dir,
                                                                         isolated_user_dirs):
    from medchat.core.model import ModelSpec, load

    config = isolated_user_dirs / "config" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text("[generation]\nmax_new_tokens = 6\n")  # the tiny model has a 256-token context
    port = free_port()
    engine = RemoteEngine(f"http://127.0.0.1:{port}", "medchat")
    app = make_app(engine)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_ready(app, pilot)
        # the endpoint has no parameter count or load time of its own: Ready names the URL instead
        assert app.status_bar.ready_text == f"Ready · medchat · http://127.0.0.1:{port}/v1 · F2 details"
        assert app.loader.guard_ready.is_set()
        await send(app, pilot, "How much water should I drink?")
        await wait_idle(app, pilot)
        [failed] = app.query(AssistantMessage)
        assert failed.status == "error"
        assert any("Cannot reach the model server" in n.message for n in app._notifications)

        tiny = Engine(load(ModelSpec(base=str(tiny_model_dir), device="cpu", dtype="fp32")))
        gateway = Gateway(tiny, FakeGuard(), defaults=GenerationSettings(max_new_tokens=6))
        with running(create_app(gateway), port=port):
            await send(app, pilot, "How much water should I drink?")
            await wait_idle(app, pilot)
        answer = list(app.query(AssistantMessage))[-1]
        assert answer.status == "complete", [n.message for n in app._notifications]
        assert answer.text.endswith(PHYSICIAN_REMINDER)  # medchat serve's reminder inside the content
        footer = str(answer.query_one(".footer").render())
        assert "first token" in footer and "tok/s" in footer

        await pilot.press("f2")
        await pilot.pause()
        assert isinstance(app.screen, ModelInfoScreen)
        assert f"medchat at http://127.0.0.1:{port}/v1" in app.screen.status
    with HistoryStore() as store:
        [conversation] = store.list_conversations()
        assert conversation.model["device"] == f"http://127.0.0.1:{port}/v1"
        assert store.messages(conversation.id)[-1].stats["model"]["base"] == "medchat"
