"""Real HTTP servers on 127.0.0.1 for the endpoint tests: any ASGI app under uvicorn in a thread, and a
scripted OpenAI-compatible upstream (a tiny FastAPI app) that can be slow, fail or drop its stream."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running(app, port: int | None = None):
    """Serve `app` on 127.0.0.1 in a thread; yields the base URL; stops the server afterwards."""
    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"uvicorn did not start on port {port}")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def _chunk(model: str, delta: dict, finish=None, usage=None) -> str:
    data = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}] if usage is None else []}
    if usage is not None:
        data["usage"] = usage
    return f"data: {json.dumps(data)}\n\n"


def scripted_upstream(mode: str = "ok", words=("Drink ", "water ", "often."), delay_s: float = 0.0) -> FastAPI:
    """An OpenAI-compatible server whose /v1/chat/completions behaves as `mode` says:
    ok (streams `words`, then usage), no_usage, http_500, reject_repetition_penalty (400 when the request has
    that field), slow (waits `delay_s` before answering), stall (streams one word, then goes silent),
    drop (streams one word, then closes the connection without finishing), error_event (an SSE error object).
    `app.state.requests` keeps every request body (and its Authorization header)."""
    app = FastAPI()
    app.state.requests = []
    app.state.disconnected = threading.Event()

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": "fake-upstream", "object": "model", "created": 0, "owned_by": "t"}]}

    @app.post("/v1/chat/completions")
    async def completions(request: Request):
        body = await request.json()
        app.state.requests.append(body | {"authorization": request.headers.get("authorization")})
        if mode == "http_500":
            return JSONResponse({"error": {"message": "the GPU caught fire", "type": "server_error"}}, status_code=500)
        if mode == "reject_repetition_penalty" and "repetition_penalty" in body:
            return JSONResponse({"error": {"message": "Unrecognized request argument: repetition_penalty",
                                           "type": "invalid_request_error"}}, status_code=400)
        if mode == "slow":
            await asyncio.sleep(delay_s)
        model = body.get("model", "fake-upstream")

        async def events():
            try:
                yield _chunk(model, {"role": "assistant", "content": ""})
                for i, word in enumerate(words):
                    yield _chunk(model, {"content": word})
                    if i == 0 and mode in ("stall", "drop"):
                        if mode == "stall":
                            await asyncio.sleep(delay_s)
                        raise RuntimeError("upstream died")  # uvicorn closes the connection mid-stream
                    if mode == "error_event":
                        yield f"data: {json.dumps({'error': {'message': 'out of KV cache', 'type': 'server_error'}})}\n\n"
                        return
                    await asyncio.sleep(0.01)
                yield _chunk(model, {}, finish="stop")
                if mode != "no_usage":
                    yield _chunk(model, {}, usage={"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12})
                yield "data: [DONE]\n\n"
            except asyncio.CancelledError:
                app.state.disconnected.set()
                raise

        return StreamingResponse(events(), media_type="text/event-stream")

    return app
