"""Streaming generation: a background thread runs the model, the caller iterates over text chunks.

Cancelling sets an Event that a StoppingCriteria checks between tokens, so the model itself stops
(not just the display). Every answer reports time to first token, tokens, tokens/s and why it stopped.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, fields
from typing import Any, Iterator

from medchat.core.errors import MedchatError
from medchat.core.model import Loaded, ModelInfo
from medchat.core.prompting import prompt_token_ids, render_prompt
from medchat.core.tokens import eos_ids


class EngineError(MedchatError, RuntimeError):
    """Generation failed; the message is readable."""


@dataclass
class GenerationSettings:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 0.95
    repetition_penalty: float = 1.1
    no_repeat_ngram_size: int = 4  # small models loop without it; recorded with every result

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "GenerationSettings":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def validate(self) -> None:
        if self.max_new_tokens < 1:
            raise EngineError("max_new_tokens must be at least 1.")
        if self.temperature < 0:
            raise EngineError("temperature must be 0 (greedy) or positive.")
        if not 0 < self.top_p <= 1:
            raise EngineError("top_p must be in (0, 1].")
        if self.repetition_penalty <= 0:
            raise EngineError("repetition_penalty must be positive (1.0 = off).")


@dataclass
class GenerationStats:
    ttft_s: float | None
    tokens: int
    tokens_per_s: float
    elapsed_s: float
    stop_reason: str  # "eos" | "length" | "cancelled" | "error"
    model: str | None = None  # the model that answered, when a server names it (medchat.core.remote)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        ttft = f"{self.ttft_s:.2f}s" if self.ttft_s is not None else "-"
        return (
            f"first token {ttft} · {self.tokens} tokens · {self.tokens_per_s:.1f} tok/s · {self.stop_reason}"
        )


def generation_kwargs(settings: GenerationSettings, tokenizer, model) -> dict[str, Any]:
    settings.validate()
    kwargs: dict[str, Any] = {
        "max_new_tokens": settings.max_new_tokens,
        "repetition_penalty": settings.repetition_penalty,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": eos_ids(tokenizer, getattr(model.generation_config, "eos_token_id", None)),
    }
    if settings.no_repeat_ngram_size > 0:
        kwargs["no_repeat_ngram_size"] = settings.no_repeat_ngram_size
    if settings.temperature > 0:
        kwargs.update(do_sample=True, temperature=settings.temperature, top_p=settings.top_p)
    else:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    return kwargs


class BaseStream:
    """What every backend's stream shares: iterate for text chunks; afterwards `stats` says how it went;
    `cancel()` stops the model. A backend starts `_thread`, counts `_tokens`, sets `_first_token_at`,
    records `error`, and yields text from `_chunks()`."""

    def __init__(self, settings: GenerationSettings, cancel: threading.Event | None):
        settings.validate()
        self._cancel = cancel or threading.Event()
        self._max_new_tokens = settings.max_new_tokens
        self.stats: GenerationStats | None = None
        self.error: BaseException | None = None
        self.truncated_turns = 0
        self.truncated_chars = 0
        self._tokens = 0
        self._first_token_at: float | None = None
        self._started = time.perf_counter()
        self._thread: threading.Thread | None = None

    def _chunks(self) -> Iterator[str]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[str]:
        try:
            for chunk in self._chunks():
                if chunk:
                    yield chunk
        finally:
            self._thread.join()
            if self.stats is None:
                self.stats = finished_stats(self._started, self._first_token_at, self._tokens,
                                            self._max_new_tokens, cancelled=self._cancel.is_set(),
                                            failed=self.error is not None)
        if self.error is not None:
            raise EngineError(f"Generation failed: {type(self.error).__name__}: {self.error}") from self.error

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()


class Stream(BaseStream):
    """The transformers backend: model.generate in a thread, text through a TextIteratorStreamer."""

    def __init__(self, engine: "Engine", messages: list[dict], settings: GenerationSettings,
                 cancel: threading.Event | None = None):
        import torch
        from transformers import StoppingCriteria, TextIteratorStreamer

        super().__init__(settings, cancel)
        tokenizer, model = engine.tokenizer, engine.model
        ids = engine.fit_prompt(messages, settings.max_new_tokens, self)
        cancel_event = self._cancel

        class _Cancelled(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return torch.full((input_ids.shape[0],), cancel_event.is_set(), dtype=torch.bool,
                                  device=input_ids.device)

        stream = self

        class _CountingStreamer(TextIteratorStreamer):
            def put(self, value):
                if not self.next_tokens_are_prompt:
                    stream._tokens += value.numel()
                    if stream._first_token_at is None:
                        stream._first_token_at = time.perf_counter()
                super().put(value)

        self._streamer = _CountingStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        input_ids = torch.tensor([ids], device=model.device)
        kwargs = generation_kwargs(settings, tokenizer, model)
        kwargs.update(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            streamer=self._streamer,
            stopping_criteria=[_Cancelled()],
        )
        self._started = time.perf_counter()
        self._thread = threading.Thread(target=self._run, args=(model, kwargs), daemon=True, name="medchat-generate")
        self._thread.start()

    def _run(self, model, kwargs) -> None:
        import torch

        try:
            with torch.inference_mode():
                model.generate(**kwargs)
        except BaseException as exc:  # surfaced to the consumer, never lost in the thread
            self.error = exc
            self._streamer.end()

    def _chunks(self) -> Iterator[str]:
        return iter(self._streamer)


def finished_stats(started: float, first_token_at: float | None, tokens: int, max_new_tokens: int, *,
                   cancelled: bool, failed: bool) -> GenerationStats:
    """Stats of a finished generation; decode speed excludes the first token (that is the TTFT)."""
    ended = time.perf_counter()
    if failed:
        reason = "error"
    elif cancelled:
        reason = "cancelled"
    elif tokens >= max_new_tokens:
        reason = "length"
    else:
        reason = "eos"
    ttft = first_token_at - started if first_token_at else None
    decode_time = ended - (first_token_at or started)
    rate = (tokens - 1) / decode_time if tokens > 1 and decode_time > 0 else 0.0
    return GenerationStats(
        ttft_s=round(ttft, 4) if ttft is not None else None,
        tokens=tokens,
        tokens_per_s=round(rate, 2),
        elapsed_s=round(ended - started, 4),
        stop_reason=reason,
    )


def shared_prefix_length(first: list[int], second: list[int]) -> int:
    """How many leading tokens the two sequences have in common."""
    shared = 0
    for a, b in zip(first, second):
        if a != b:
            break
        shared += 1
    return shared


class Engine:
    """Generation for one loaded model: streamed (chat, ask) or batched (metrics)."""

    def __init__(self, loaded: Loaded, prompt_style: str = "chat"):
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.info: ModelInfo = loaded.info
        self.prompt_style = prompt_style

    def stream(self, messages: list[dict], settings: GenerationSettings | None = None,
               cancel: threading.Event | None = None) -> Stream:
        return Stream(self, messages, settings or GenerationSettings(), cancel)

    def generate(self, messages: list[dict], settings: GenerationSettings | None = None) -> tuple[str, GenerationStats]:
        stream = self.stream(messages, settings)
        text = "".join(stream)
        return text, stream.stats

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        return prompt_token_ids(self.tokenizer, render_prompt(self.tokenizer, messages, self.prompt_style),
                                self.prompt_style)

    def next_turn_prefix(self, messages: list[dict], draft: str = "") -> list[int]:
        """The prompt tokens that the next user turn after `messages` will start with if it begins with
        `draft`, whatever follows: the tokens two different continuations share."""
        first = self.prompt_ids(messages + [{"role": "user", "content": draft + " a"}])
        second = self.prompt_ids(messages + [{"role": "user", "content": draft + " b"}])
        return first[:shared_prefix_length(first, second)]

    def prefill(self, messages: list[dict], draft: str = "") -> None:
        """Read the start of the next turn's prompt (the conversation so far and the user's draft) while
        the user types, so that sending it only costs the rest. Engines that keep a KV cache between
        turns do it (medchat.core.fastdecode); transformers' generate keeps none, so here it does nothing."""

    def fit_prompt(self, messages: list[dict], max_new_tokens: int, report=None) -> list[int]:
        """Token ids for the prompt, dropping the oldest turns (then the end of the newest message)
        so that prompt + answer fit the model's context. `report` gets truncated_turns/_chars."""
        budget = self.info.context_length - max_new_tokens
        if budget < 16:
            raise EngineError(
                f"max_new_tokens={max_new_tokens} leaves no room for a prompt in a "
                f"{self.info.context_length}-token context; lower it."
            )
        system = [m for m in messages[:1] if m["role"] == "system"]
        turns = messages[len(system):]
        dropped = 0
        ids = self.prompt_ids(system + turns)
        while len(ids) > budget and len(turns) > 1:
            turns = turns[1:]
            dropped += 1
            ids = self.prompt_ids(system + turns)
        cut_chars = 0
        if len(ids) > budget:  # the newest message alone is too long: keep its beginning
            last = turns[-1]["content"]
            overflow = len(ids) - budget
            keep = len(self.tokenizer.decode(self.tokenizer(last, add_special_tokens=False)["input_ids"][:-overflow - 8]))
            cut_chars = len(last) - keep
            turns = turns[:-1] + [{"role": turns[-1]["role"], "content": last[:keep]}]
            ids = self.prompt_ids(system + turns)[-budget:]
        if report is not None:
            report.truncated_turns, report.truncated_chars = dropped, cut_chars
        return ids

    def generate_batch(self, conversations: list[list[dict]], settings: GenerationSettings | None = None,
                       batch_size: int = 16) -> list[str]:
        """Answers for many prompts, batched with left padding (longest first, original order kept)."""
        import torch

        settings = settings or GenerationSettings()
        kwargs = generation_kwargs(settings, self.tokenizer, self.model)
        encoded = [self.fit_prompt(messages, settings.max_new_tokens) for messages in conversations]
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
        answers: list[str] = [""] * len(encoded)
        pad = self.tokenizer.pad_token_id
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            width = max(len(encoded[i]) for i in chunk)
            input_ids = torch.tensor([[pad] * (width - len(encoded[i])) + encoded[i] for i in chunk])
            mask = torch.tensor([[0] * (width - len(encoded[i])) + [1] * len(encoded[i]) for i in chunk])
            with torch.inference_mode():
                out = self.model.generate(input_ids=input_ids.to(self.model.device),
                                          attention_mask=mask.to(self.model.device), **kwargs)
            for row, index in enumerate(chunk):
                answers[index] = self.tokenizer.decode(out[row, width:], skip_special_tokens=True).strip()
        return answers
