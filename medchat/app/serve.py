"""`medchat serve`: an OpenAI-compatible endpoint with medchat's chat session in front of the model.

    GET  /v1/models             the one served model (--served-model-name, default "medchat")
    POST /v1/chat/completions   streaming (SSE) and not

Every request runs one turn of medchat.core.session.ChatSession, so an API caller gets the same safety path
as the chat app. Where each part goes (the README's "Serving and remote models" documents it for clients):

    choices[0].message.content  the notices ("⚠ ..." emergency first, "ⓘ ..." notes), a blank line, the
                                answer (or the decline text), a blank line, the physician reminder: a plain
                                client shows all of it, in that order
    medchat                     an extension object: notices [{kind, text}], verdict (ood_level, ood_score,
                                red_flags, dosing_note, declined, degraded), answer (the model's text alone),
                                reminder, stop_reason, stats
    streaming                   the first chunk carries the notices as content and `medchat` with the verdict;
                                then the answer's chunks; then the reminder; the last chunk has finish_reason
                                and `medchat` with stop_reason and stats (an error: an OpenAI error event)

The model is medchat's own engine or an upstream OpenAI-compatible server (medchat.core.remote), so vLLM
can do the serving at scale while medchat adds the safety. Errors are OpenAI-shaped bodies
({"error": {"message", "type", "param", "code"}}): 400 bad JSON or fields, 404 unknown model or route,
413 request too large, 429 too many concurrent generations, 502/504 upstream problems.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from medchat.app.cli_options import DEFAULT_MAX_CONCURRENT, DEFAULT_MAX_REQUEST_BYTES
from medchat.core.engine import EngineError, GenerationSettings
from medchat.core.guard.notices import PHYSICIAN_REMINDER
from medchat.core.protocols import Engine, GuardChecker
from medchat.core.remote import RemoteError
from medchat.core.session import ChatSession, Checked, Declined, Finished, Notice, Reminder, Stats, Token, Waiting

MARKS = {"emergency": "⚠"}
_END = object()


class ApiError(Exception):
    """An OpenAI-style error response."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


# ---------------------------------------------------------------- the request


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        parts = []
        for part in self.content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ApiError(400, "medchat serve reads text only: every content part must be "
                                    '{"type": "text", "text": "..."}.', param="messages")
            parts.append(part["text"])
        return "".join(parts)


class ChatRequest(BaseModel):
    # OpenAI fields medchat has no use for (user, seed, logprobs...) are accepted and ignored.
    model_config = ConfigDict(extra="allow")
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    repetition_penalty: float | None = Field(None, gt=0)  # not OpenAI's; vLLM and transformers serve take it
    n: int = Field(1, ge=1, le=1)

    def settings(self, defaults: GenerationSettings) -> GenerationSettings:
        values = defaults.as_dict()
        for name, value in (("temperature", self.temperature), ("top_p", self.top_p),
                            ("max_new_tokens", self.max_completion_tokens or self.max_tokens),
                            ("repetition_penalty", self.repetition_penalty)):
            if value is not None:
                values[name] = value
        return GenerationSettings.from_dict(values)

    def conversation(self) -> tuple[str | None, list[dict], str]:
        """(system prompt or None, earlier turns, the new user message)."""
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                    for m in self.messages]
        system = None
        if messages[0]["role"] == "system":
            system = messages.pop(0)["content"]
        if any(m["role"] == "system" for m in messages):
            raise ApiError(400, "Only the first message may be a system message.", param="messages")
        if not messages or messages[-1]["role"] != "user":
            raise ApiError(400, "The last message must be the user's.", param="messages")
        for message in messages[:-1]:
            if message["role"] == "assistant":
                message["content"] = answer_only(message["content"])
        return system, messages[:-1], messages[-1]["content"]


def answer_only(content: str) -> str:
    """An earlier answer as a client sends it back, without the notices and the reminder medchat added to it
    (the model should read its own answers, not learn to repeat the safety texts)."""
    content = content.removesuffix(f"\n\n{PHYSICIAN_REMINDER}")
    paragraphs = content.split("\n\n")
    while len(paragraphs) > 1 and paragraphs[0][:2] in ("⚠ ", "ⓘ "):
        paragraphs.pop(0)
    return "\n\n".join(paragraphs).strip()


async def read_request(request: Request, limit: int) -> ChatRequest:
    """The body, refused past `limit` bytes (also when it comes chunked, without a Content-Length)."""
    too_large = ApiError(413, f"The request is larger than this server's limit of {limit:,} bytes "
                              "(medchat serve --max-request-bytes).", code="request_too_large")
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise too_large
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > limit:
            raise too_large
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise ApiError(400, f"The request body is not valid JSON: {exc}.") from None
    if not isinstance(data, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    try:
        return ChatRequest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ApiError(400, f"{where}: {first['msg']}", param=where) from None


# ---------------------------------------------------------------- one turn


class _CapturingStream:
    """The engine's stream, remembering the exception it raised: the session keeps only its text, and the
    HTTP status depends on its kind (an upstream timeout is a 504)."""

    def __init__(self, inner, owner: "_CapturingEngine"):
        self.inner, self.owner = inner, owner
        self.truncated_turns, self.truncated_chars = inner.truncated_turns, inner.truncated_chars

    @property
    def stats(self):
        return self.inner.stats

    def __iter__(self):
        try:
            yield from self.inner
        except Exception as exc:
            self.owner.error = exc
            raise

    def cancel(self) -> None:
        self.inner.cancel()


class _CapturingEngine:
    def __init__(self, engine: Engine):
        self.engine, self.info, self.error = engine, engine.info, None

    def stream(self, messages, settings=None, cancel=None):
        try:
            return _CapturingStream(self.engine.stream(messages, settings, cancel), self)
        except Exception as exc:
            self.error = exc
            raise

    def prefill(self, messages, draft="") -> None:
        """Requests are independent: nothing to read ahead."""


@dataclass
class Turn:
    """What the events of one turn said, gathered for the response."""

    checked: Checked | None = None
    notices: list[Notice] = field(default_factory=list)
    declined: bool = False
    answer: list[str] = field(default_factory=list)
    reminder: str = ""
    stats: dict | None = None
    finished: Finished | None = None

    def take(self, event) -> str:
        """Record the event; return the text it adds to the message content."""
        if isinstance(event, Checked):
            self.checked = event
        elif isinstance(event, Notice):
            self.notices.append(event)
            return f"{MARKS.get(event.kind, 'ⓘ')} {event.text}\n\n"
        elif isinstance(event, (Token, Declined)):
            self.declined = self.declined or isinstance(event, Declined)
            self.answer.append(event.text)
            return event.text
        elif isinstance(event, Stats):
            self.stats = event.stats.as_dict()
        elif isinstance(event, Reminder):
            self.reminder = event.text
            return f"\n\n{event.text}"
        elif isinstance(event, Finished):
            self.finished = event
        return ""

    def verdict(self) -> dict:
        result = self.checked.result if self.checked is not None else None
        data = result.as_dict() if result is not None else {
            "ood_score": None, "ood_level": None, "red_flags": [], "dosing_note": False}
        return data | {"declined": self.declined, "degraded": self.checked.degraded if self.checked else None}

    def finish_reason(self) -> str:
        return "length" if self.finished is not None and self.finished.stop_reason == "length" else "stop"

    def usage(self) -> dict:
        tokens = (self.stats or {}).get("tokens") or 0
        return {"prompt_tokens": 0, "completion_tokens": tokens, "total_tokens": tokens}


def turn_error(error: BaseException | None, message: str) -> ApiError:
    """The API error for a failed generation: the upstream's own status (502/504), else 500."""
    if isinstance(error, RemoteError):
        return ApiError(error.status, message, "upstream_error", code=f"upstream_{error.status}")
    if isinstance(error, EngineError) and "max_new_tokens" in str(error):
        return ApiError(400, message, param="max_tokens")
    return ApiError(500, message, "server_error")


# ---------------------------------------------------------------- the app


class Gateway:
    """The state the routes share: the engine, the guard, the limits."""

    def __init__(self, engine: Engine, guard: GuardChecker | None, *, served_model: str = "medchat",
                 policy: str = "note", defaults: GenerationSettings | None = None,
                 max_concurrent: int = DEFAULT_MAX_CONCURRENT, max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
                 serialize: bool = False):
        self.engine, self.guard, self.served_model, self.policy = engine, guard, served_model, policy
        self.defaults = defaults or GenerationSettings()
        self.max_concurrent, self.max_request_bytes = max_concurrent, max_request_bytes
        self.slots = threading.BoundedSemaphore(max_concurrent)
        # An engine with one KV cache (llama.cpp) answers one request at a time; the others wait their turn.
        self.engine_lock = threading.Lock() if serialize else None
        self.created = int(time.time())

    def models(self) -> dict:
        return {"object": "list", "data": [{"id": self.served_model, "object": "model", "created": self.created,
                                            "owned_by": "medchat"}]}

    def start_turn(self, request: ChatRequest, loop: asyncio.AbstractEventLoop):
        """Check the request, take a generation slot and run the turn in a thread; events arrive on the queue."""
        if request.model not in (None, "", self.served_model):
            raise ApiError(404, f"The model {request.model!r} does not exist here; this server serves "
                                f"{self.served_model!r} (GET /v1/models).", param="model", code="model_not_found")
        system, history, text = request.conversation()
        settings = request.settings(self.defaults)
        if not self.slots.acquire(blocking=False):
            raise ApiError(429, f"{self.max_concurrent} generations are already running (medchat serve "
                                "--max-concurrent); retry shortly.", "rate_limit_error", code="too_many_concurrent")
        engine = _CapturingEngine(self.engine)
        session = ChatSession(engine, self.guard, policy=self.policy, settings=settings, system_prompt=system,
                              messages=history)
        events: asyncio.Queue = asyncio.Queue()

        def put(item) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is gone (the server is shutting down)
                loop.call_soon_threadsafe(events.put_nowait, item)

        def run() -> None:
            try:
                with self.engine_lock or contextlib.nullcontext():
                    for event in session.send(text):
                        put(event)
            except BaseException as exc:
                put(exc)
            finally:
                self.slots.release()  # only once the model has stopped, not when the client leaves
                put(_END)

        threading.Thread(target=run, daemon=True, name="medchat-serve-turn").start()
        return session, engine, events


def create_app(gateway: Gateway) -> FastAPI:
    app = FastAPI(title="medchat", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        kind = "not_found" if exc.status_code == 404 else None
        return JSONResponse(ApiError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}",
                                     code=kind).body(), status_code=exc.status_code)

    @app.get("/v1/models")
    async def models():
        return gateway.models()

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await read_request(request, gateway.max_request_bytes)
        session, engine, events = gateway.start_turn(body, asyncio.get_running_loop())
        meta = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": gateway.served_model}
        if body.stream:
            include_usage = bool((body.stream_options or {}).get("include_usage"))
            return StreamingResponse(_sse(session, engine, events, meta, include_usage),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        return await _complete(request, session, engine, events, meta)

    return app


async def _next(events: asyncio.Queue):
    item = await events.get()
    if isinstance(item, BaseException):
        raise item
    return item


async def _complete(request: Request, session: ChatSession, engine: _CapturingEngine, events: asyncio.Queue,
                    meta: dict) -> JSONResponse:
    """The whole turn as one chat.completion; a client that hangs up cancels the model."""
    turn, content = Turn(), []
    try:
        while True:
            try:
                item = await asyncio.wait_for(_next(events), timeout=0.5)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    session.cancel()
                    return JSONResponse({}, status_code=499)
                continue
            if item is _END:
                break
            content.append(turn.take(item))
    except asyncio.CancelledError:
        session.cancel()
        raise
    extension = {"notices": [n.as_dict() for n in turn.notices], "verdict": turn.verdict(),
                 "answer": "".join(turn.answer).strip(), "reminder": turn.reminder,
                 "stop_reason": turn.finished.stop_reason, "stats": turn.stats}
    if turn.finished.error is not None:
        error = turn_error(engine.error, turn.finished.error)
        return JSONResponse(error.body() | {"medchat": extension}, status_code=error.status)
    message = {"role": "assistant", "content": "".join(content)}
    return JSONResponse(meta | {"object": "chat.completion", "usage": turn.usage(), "medchat": extension,
                                "choices": [{"index": 0, "message": message, "finish_reason": turn.finish_reason()}]})


async def _sse(session: ChatSession, engine: _CapturingEngine, events: asyncio.Queue, meta: dict,
               include_usage: bool):
    """Server-sent chat.completion.chunk events (see the module doc for what each carries)."""
    turn, opened = Turn(), False

    def chunk(delta: dict, finish: str | None = None, **extra) -> str:
        data = meta | {"object": "chat.completion.chunk", **extra,
                       "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"

    try:
        while (item := await _next(events)) is not _END:
            text = turn.take(item)
            if isinstance(item, (Waiting, Checked, Notice)) and not opened:
                continue  # the verdict and its notices open the answer together
            if not opened:
                opened = True
                head = "".join(f"{MARKS.get(n.kind, 'ⓘ')} {n.text}\n\n" for n in turn.notices)
                yield chunk({"role": "assistant", "content": head}, medchat={
                    "notices": [n.as_dict() for n in turn.notices], "verdict": turn.verdict()})
            if isinstance(item, Finished):
                if item.error is not None:
                    yield f"data: {json.dumps(turn_error(engine.error, item.error).body(), ensure_ascii=False)}\n\n"
                else:
                    yield chunk({}, turn.finish_reason(), medchat={"stop_reason": item.stop_reason,
                                                                  "stats": turn.stats})
            elif text:
                yield chunk({"content": text})
        if include_usage:
            yield f"data: {json.dumps(meta | {'object': 'chat.completion.chunk', 'choices': [], 'usage': turn.usage()})}\n\n"
        yield "data: [DONE]\n\n"
    finally:  # also when the client hung up (Starlette cancels the response): stop the model
        if turn.finished is None:
            session.cancel()


# ---------------------------------------------------------------- `medchat serve`


def load_gateway(spec, *, upstream: str | None, model: str | None, api_key_env: str, served_model: str,
                 policy: str, max_concurrent: int, max_request_bytes: int) -> Gateway:
    """The engine (own or upstream) and the warmed-up guard, so that no request waits for the embedder."""
    from medchat.core.fastdecode import load_engine
    from medchat.core.remote import RemoteEngine
    from medchat.core.session import load_guard
    from medchat.core.settings import load_defaults

    if upstream:
        engine = RemoteEngine(upstream, model, api_key_env=api_key_env)
        engine.resolve_model()  # fail now (a clear line) rather than on the first request
    else:
        engine = load_engine(spec)
    guard = load_guard(None if upstream else spec.adapter)
    if guard.ood_error is None:
        guard.warm_up()
    return Gateway(engine, guard, served_model=served_model, policy=policy,
                   defaults=load_defaults().to_generation(), max_concurrent=max_concurrent,
                   max_request_bytes=max_request_bytes,
                   serialize=engine.info.extra.get("backend") == "llama.cpp")


def run_server(gateway: Gateway, host: str, port: int) -> None:
    import uvicorn

    print(f"medchat serve: http://{host}:{port}/v1 (model {gateway.served_model!r}: {gateway.engine.info.summary()}; "
          f"at most {gateway.max_concurrent} generations at once). Ctrl-C stops.", flush=True)
    uvicorn.run(create_app(gateway), host=host, port=port, log_level="warning")
