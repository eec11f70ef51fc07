"""The seams between the chat session and what it drives: an engine, its stream, and the guard.

The real classes (medchat.core.engine.Engine, medchat.core.fastdecode.LlamaCppEngine, the OpenAI-compatible client
engine, medchat.core.guard.Guard) and the test fakes all implement these, so a front end or the session calls
them directly instead of probing objects with getattr/hasattr. They are `runtime_checkable` so that a test
can assert that a class implements one (isinstance checks that the members exist, not their types).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Iterator, Protocol, runtime_checkable

if TYPE_CHECKING:  # the guard pulls numpy in; the session only needs the names for typing
    from medchat.core.engine import GenerationSettings, GenerationStats
    from medchat.core.guard.guard import GuardResult
    from medchat.core.model import ModelInfo

__all__ = ["Engine", "GuardChecker", "Stream"]


@runtime_checkable
class Stream(Protocol):
    """One answer being generated. Iterate for text chunks; raises medchat.core.engine.EngineError on failure.

    `stats` is set when the iteration ends (also after a failure or a cancel). `truncated_turns` and
    `truncated_chars` say how much of the prompt was left out to fit the model's context (oldest turns
    dropped; characters cut from the end of the newest message); both are known before the first chunk."""

    stats: GenerationStats | None
    truncated_turns: int
    truncated_chars: int

    def __iter__(self) -> Iterator[str]: ...

    def cancel(self) -> None:
        """Stop the model (not just the reading): the iteration ends soon after."""


@runtime_checkable
class Engine(Protocol):
    """A loaded model that streams answers to a conversation."""

    info: ModelInfo

    def stream(self, messages: list[dict], settings: GenerationSettings | None = None,
               cancel: threading.Event | None = None) -> Stream:
        """Start answering `messages` ([{"role", "content"}], the last one the user's); setting `cancel`
        stops the model like Stream.cancel()."""

    def prefill(self, messages: list[dict], draft: str = "") -> None:
        """Read the start of the next prompt ahead of time (engines without a KV cache do nothing)."""


@runtime_checkable
class GuardChecker(Protocol):
    """What the session needs from the guard (medchat.core.guard.Guard implements it)."""

    ood_error: str | None  # why the out-of-domain score (and the semantic red-flag layer) is unavailable

    @property
    def ready(self) -> bool:
        """True once the embedder and the index are loaded: check() is then fast."""

    def warm_up(self) -> object:
        """Load the embedder and the index (seconds; blocks; safe to call from several threads)."""

    def check(self, text: str) -> GuardResult:
        """The whole verdict: red-flag rules, the semantic red-flag layer, the out-of-domain score."""

    def check_rules(self, text: str) -> GuardResult:
        """The text rules only (instant, no model): red flags and the dosing note."""
