"""End to end on the bundled model: `transformers serve` (a real OpenAI-compatible server, as vLLM would be)
as the upstream, `medchat serve --upstream` in front of it, and the real `openai` client and `medchat ask
--endpoint` as the callers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest
from click.testing import CliRunner
from serve_fakes import free_port, running

from medchat.app.cli import main
from medchat.app.serve import create_app, load_gateway
from medchat.core.guard.notices import EMERGENCY_NOTICE, PHYSICIAN_REMINDER

pytestmark = [pytest.mark.bundled, pytest.mark.timeout(300)]
EMERGENCY = "I have crushing chest pain and my left arm is numb"


@pytest.fixture(scope="module")
def transformers_serve(tmp_path_factory):
    """`transformers serve` on the bundled model's safetensors checkpoint, on a free port."""
    from medchat.core.bundled import ensure_converted, find_bundled_gguf

    checkpoint = ensure_converted(find_bundled_gguf())
    port = free_port()
    log = (tmp_path_factory.mktemp("tserve") / "log.txt").open("w")
    command = [str(Path(sys.executable).parent / "transformers"), "serve", str(checkpoint), "--host", "127.0.0.1",
               "--port", str(port), "--device", "cpu", "--dtype", "float32"]
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                               env=os.environ | {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 240
        while True:
            if process.poll() is not None:
                pytest.fail(f"transformers serve exited ({process.returncode}); see {log.name}")
            try:
                if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("transformers serve did not start within 240 s")
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def test_medchat_serve_guards_transformers_serve(transformers_serve, bundled_spec):
    gateway = load_gateway(bundled_spec, upstream=transformers_serve, model=None, api_key_env="OPENAI_API_KEY",
                           served_model="medchat", policy="note", max_concurrent=2, max_request_bytes=100_000)
    gateway.defaults.max_new_tokens = 12
    with running(create_app(gateway)) as url:
        api = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
        messages = [{"role": "user", "content": EMERGENCY}]
        completion = api.chat.completions.create(model="medchat", messages=messages)
        chunks = [c.choices[0].delta.content or "" for c in
                  api.chat.completions.create(model="medchat", messages=messages, stream=True) if c.choices]
    content = completion.choices[0].message.content
    assert content.startswith(f"⚠ {EMERGENCY_NOTICE['emergency']}") and content.endswith(PHYSICIAN_REMINDER)
    answer = completion.model_extra["medchat"]["answer"]
    assert answer.strip() and answer in content
    assert completion.model_extra["medchat"]["stats"]["model"] == gateway.engine.model  # the upstream's name
    streamed = [c for c in chunks if c]
    assert streamed[0].startswith("⚠ ") and streamed[-1] == f"\n\n{PHYSICIAN_REMINDER}" and len(streamed) > 3


def test_ask_endpoint_against_transformers_serve(transformers_serve):
    result = CliRunner().invoke(main, ["ask", "--endpoint", transformers_serve, "--max-new-tokens", "8", "--json",
                                       EMERGENCY])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["notices"][0]["kind"] == "emergency" and record["reminder"] == PHYSICIAN_REMINDER
    assert record["answer"] and record["stop_reason"] in ("length", "eos")
    assert record["stats"]["tokens"] == 8 or record["stop_reason"] == "eos"
