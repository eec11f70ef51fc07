"""An engine that generates through any OpenAI-compatible server (vLLM, llama.cpp server, `transformers
serve`, Ollama, `medchat serve`), streaming `/v1/chat/completions` with the `openai` client.

Only the model runs remotely: the chat session in front of it (the guard, the notices, the reminder) stays
local. The API key is read from the environment variable the user names (never stored: not in the history,
not in the engine's info). Every failure becomes a RemoteError (an EngineError, which the session shows as
the turn's error while keeping what was streamed so far):

    server down / refused       -> status 502, "Cannot reach the model server at URL ..."
    no answer within the timeout -> status 504, "... did not answer within N s"
    HTTP error from the server   -> status 502, "... answered HTTP 4xx/5xx: <its message>"
    stream dropped mid-answer    -> status 502, "... dropped the connection mid-answer"
    an error event in the stream -> status 502, "... reported an error: ..."

A reader thread runs the request on an event loop of its own, so that cancel() (Esc) returns at once even
while the server is silent: it cancels the request, which closes the connection (a server that watches for
disconnects stops generating).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import threading
import time
from dataclasses import dataclass
from typing import Iterator
from urllib.parse import urlsplit

from medchat.core.engine import EngineError, GenerationSettings, GenerationStats, finished_stats
from medchat.core.model import ModelInfo

__all__ = ["DEFAULT_API_KEY_ENV", "RemoteEngine", "RemoteError", "api_base"]

DEFAULT_API_KEY_ENV = "OPENAI_API_KEY"
DEFAULT_TIMEOUT_S = 60.0
_END = object()


class RemoteError(EngineError):
    """The server could not give an answer; `status` is the HTTP status a gateway should answer with."""

    def __init__(self, message: str, status: int = 502):
        super().__init__(message)
        self.status = status


def api_base(url: str) -> str:
    """The client's base URL: `http://host:port` means `http://host:port/v1`; any other path is kept."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise EngineError(f"--endpoint {url!r} is not an http(s) URL; give e.g. http://127.0.0.1:8000/v1.")
    path = parts.path.rstrip("/")
    return f"{parts.scheme}://{parts.netloc}{path or '/v1'}"


@dataclass
class RemoteModelInfo(ModelInfo):
    """ModelInfo for a model behind an endpoint: base is the model's name, device the endpoint URL;
    parameters and load time are the server's business (None)."""

    def summary(self) -> str:
        return f"{self.base} at {self.device} (OpenAI-compatible endpoint)"


class RemoteEngine:
    """Streams answers from `/v1/chat/completions` at `url`. `model` None: the server's first listed model,
    asked on the first answer (so a server that is still starting does not stop the app from opening)."""

    def __init__(self, url: str, model: str | None = None, *, api_key_env: str = DEFAULT_API_KEY_ENV,
                 timeout_s: float = DEFAULT_TIMEOUT_S):
        import openai

        self.url = api_base(url)
        self.timeout_s = timeout_s
        # No retries: a retry after a dropped stream would silently answer twice; the user sends again.
        # The key is read here, from the variable the user named, so that no settings object ever holds it.
        self.client_options = dict(base_url=self.url, api_key=os.environ.get(api_key_env) or "not-needed",
                                   timeout=openai.Timeout(timeout_s, connect=min(timeout_s, 10.0)), max_retries=0)
        self.client = openai.OpenAI(**self.client_options)
        self.model = model
        self.repetition_penalty_accepted = True  # cleared when the server rejects the extra field
        self.info = RemoteModelInfo(
            base=model or "(the server's default model)", base_path=self.url, adapter=None, merged=False,
            quantization="n/a", device=self.url, dtype="n/a", params_total=None, params_trainable=0,
            load_seconds=0.0, context_length=None,
            extra={"backend": "openai-compatible endpoint", "endpoint": self.url, "api_key_env": api_key_env})

    def resolve_model(self) -> str:
        """The model to ask for: the one given, else the first that the server lists."""
        if self.model is None:
            try:
                listed = [m.id for m in self.client.models.list()]
            except Exception as exc:
                raise as_remote_error(exc, self.url, self.timeout_s) from exc
            if not listed:
                raise RemoteError(f"The model server at {self.url} lists no models; pass --model NAME.")
            self.model = listed[0]
            self.info.base = self.model
        return self.model

    def stream(self, messages: list[dict], settings: GenerationSettings | None = None,
               cancel: threading.Event | None = None) -> "RemoteStream":
        return RemoteStream(self, messages, settings or GenerationSettings(), cancel)

    def prefill(self, messages: list[dict], draft: str = "") -> None:
        """Nothing to do: the server keeps its own cache (vLLM's prefix caching reads the prompt again fast)."""

    async def request(self, client, messages: list[dict], settings: GenerationSettings):
        """Open the streaming request; asked again without repetition_penalty if the server refuses it."""
        import openai

        kwargs = dict(model=self.resolve_model(), messages=messages, stream=True, max_tokens=settings.max_new_tokens,
                      temperature=settings.temperature, top_p=settings.top_p,
                      stream_options={"include_usage": True})
        if self.repetition_penalty_accepted and settings.repetition_penalty != 1.0:
            try:  # not an OpenAI field: vLLM and llama.cpp take it; OpenAI (400) and transformers serve (422) refuse it
                return await client.chat.completions.create(
                    **kwargs, extra_body={"repetition_penalty": settings.repetition_penalty})
            except (openai.BadRequestError, openai.UnprocessableEntityError) as exc:
                if "repetition_penalty" not in _server_message(exc):
                    raise
                self.repetition_penalty_accepted = False
        return await client.chat.completions.create(**kwargs)


class RemoteStream:
    """One streamed answer (implements medchat.core.protocols.Stream). Tokens are the server's usage count
    when it sends one, else the number of content chunks (one token each on vLLM and llama.cpp)."""

    def __init__(self, engine: RemoteEngine, messages: list[dict], settings: GenerationSettings,
                 cancel: threading.Event | None):
        settings.validate()
        self.engine = engine
        self.stats: GenerationStats | None = None
        self.truncated_turns = 0  # the server fits the prompt to its context (or answers an error)
        self.truncated_chars = 0
        self._cancel = cancel or threading.Event()
        self._settings = settings
        self._queue: queue.Queue = queue.Queue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None
        self._started = time.perf_counter()
        self._thread = threading.Thread(target=self._read, args=(messages,), daemon=True, name="medchat-remote")
        self._thread.start()

    def cancel(self) -> None:
        self._cancel.set()
        loop, task = self._loop, self._task
        if loop is not None and task is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.call_soon_threadsafe(task.cancel)

    def _read(self, messages: list[dict]) -> None:
        """The reader thread: an event loop of its own, so that cancel() can abort a read that waits on a
        silent server (cancelling the task closes the connection; a sync read cannot be interrupted)."""
        try:
            asyncio.run(self._aread(messages))
        except BaseException as exc:  # cancelled, or what the client raised: the consumer decides
            self._queue.put(exc)
        finally:
            self._queue.put(_END)

    async def _aread(self, messages: list[dict]) -> None:
        import openai

        self._loop, self._task = asyncio.get_running_loop(), asyncio.current_task()
        if self._cancel.is_set():
            return
        usage = finish = model = None
        async with openai.AsyncOpenAI(**self.engine.client_options) as client:
            async with await self.engine.request(client, messages, self._settings) as response:
                async for chunk in response:
                    model = chunk.model or model
                    if chunk.usage is not None:
                        usage = chunk.usage.completion_tokens
                    for choice in chunk.choices[:1]:
                        if choice.delta is not None and choice.delta.content:
                            self._queue.put(choice.delta.content)
                        finish = choice.finish_reason or finish
        self._queue.put((usage, finish, model))

    def __iter__(self) -> Iterator[str]:
        chunks = 0
        first_at = None
        outcome = None
        while True:
            if self._cancel.is_set():
                self.cancel()  # also when the caller set the shared Event rather than calling cancel()
                break
            try:
                item = self._queue.get(timeout=0.05)
            except queue.Empty:
                continue
            if item is _END:
                break
            if isinstance(item, str):
                chunks += 1
                first_at = first_at or time.perf_counter()
                yield item
            else:
                outcome = item
        cancelled = self._cancel.is_set()
        failed = isinstance(outcome, BaseException) and not cancelled
        usage, finish, model = outcome if isinstance(outcome, tuple) else (None, None, None)
        tokens = usage if usage is not None else chunks
        stats = finished_stats(self._started, first_at, tokens, self._settings.max_new_tokens,
                               cancelled=cancelled, failed=failed)
        if not (failed or cancelled):
            stats.stop_reason = "length" if finish == "length" else "eos"
        stats.model = model or self.engine.model
        self.stats = stats
        if failed:
            raise as_remote_error(outcome, self.engine.url, self.engine.timeout_s, mid_answer=chunks > 0) from outcome


def as_remote_error(exc: BaseException, url: str, timeout_s: float, mid_answer: bool = False) -> RemoteError:
    """One readable message (and the status a gateway answers with) for whatever the client raised."""
    import openai

    if isinstance(exc, RemoteError):
        return exc
    where = f"The model server at {url}"
    if isinstance(exc, openai.APITimeoutError) or "Timeout" in type(exc).__name__:  # httpx's ReadTimeout too
        return RemoteError(f"{where} did not answer within {timeout_s:g} s"
                           + (" mid-answer; the answer is incomplete." if mid_answer else "."), status=504)
    if isinstance(exc, openai.APIStatusError):
        return RemoteError(f"{where} answered HTTP {exc.status_code}: {_server_message(exc)}")
    if isinstance(exc, openai.APIError) and not isinstance(exc, openai.APIConnectionError):
        return RemoteError(f"{where} reported an error: {exc.message}")  # an error event inside the stream
    if mid_answer:
        return RemoteError(f"{where} dropped the connection mid-answer ({_cause(exc)}); the answer is incomplete.")
    if isinstance(exc, openai.APIConnectionError):
        return RemoteError(f"Cannot reach the model server at {url} ({_cause(exc)}). Is it running? "
                           "Check --endpoint.")
    return RemoteError(f"{where}: {type(exc).__name__}: {exc}")


def _server_message(exc) -> str:
    """What the server said: OpenAI's {"error": {"message"}}, FastAPI's {"detail"}, or the body as it is."""
    body = exc.body
    if isinstance(body, dict):
        body = body.get("error", body)
        body = body.get("message") or body.get("detail") or body if isinstance(body, dict) else body
    return str(body) if body else exc.message


def _cause(exc: BaseException) -> str:
    inner = exc.__cause__ or exc.__context__
    return f"{type(inner).__name__}: {inner}" if inner is not None and str(inner) else str(exc) or type(exc).__name__
