"""Loading the model and the guard in worker threads while the user can already type.

The loader owns what was loaded and how that went; the app runs its two methods in thread workers and
hears back through the callbacks (called on the app's thread)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Callable

from medchat.core.model import ModelError, ModelInfo
from medchat.core.protocols import Engine, GuardChecker
from medchat.core.session import load_guard

EngineFactory = Callable[[], Engine]
GuardFactory = Callable[[], "GuardChecker | None"]


def default_engine_factory(spec, prompt_style: str = "chat") -> EngineFactory:
    def factory() -> Engine:
        from medchat.core.fastdecode import load_engine

        return load_engine(spec, prompt_style=prompt_style)

    return factory


def default_guard_factory(spec) -> GuardFactory:
    adapter = spec.adapter if spec is not None else None
    return lambda: load_guard(adapter)


def load_failure(exc: BaseException) -> str:
    """One readable line for a model that did not load: ModelError says what to do itself."""
    if isinstance(exc, ModelError):
        return str(exc)
    return (f"{type(exc).__name__}: {exc}. Try --device cpu, --no-adapter or another --base; "
            "`medchat --paths` shows where the model cache is.")


def compact_summary(info: ModelInfo) -> str:
    """base [+ adapter] · device dtype [· quantization] · params · load time: fits an 80-column status line."""
    parts = [Path(str(info.base)).name or str(info.base)]
    if info.adapter:
        parts[0] += f" + {Path(str(info.adapter)).parent.name or Path(str(info.adapter)).name}"
    if info.params_total is None:  # a model behind an endpoint: its size and dtype are the server's business
        parts.append(str(info.device))
    else:
        parts.append(f"{info.device} {info.dtype}")
        if info.quantization not in (None, "none"):
            parts.append(str(info.quantization))
        parts.append(f"{info.params_total / 1e6:.0f}M")
        parts.append(f"{info.load_seconds:.1f} s")
    return " · ".join(parts) + " · F2 details"


class Loader:
    """The engine and the guard, and where their loading stands."""

    def __init__(self, engine_factory: EngineFactory, guard_factory: GuardFactory,
                 call_on_app: Callable[..., object],
                 after_paint: Callable[[Callable[[], object]], object] | None = None) -> None:
        self.engine_factory = engine_factory
        self.guard_factory = guard_factory
        self._call = call_on_app  # App.call_from_thread
        self._after_paint = after_paint or (lambda callback: callback())  # App.call_after_refresh
        self.engine: Engine | None = None
        self.model_status = "loading"  # "loading" | "ready" | "failed"
        self.model_error: str | None = None
        self.guard: GuardChecker | None = None
        self.guard_status = "loading"
        self.guard_ready = asyncio.Event()  # the guard object is there (its embedder may still load)
        self.model_shown = threading.Event()  # "Ready" (or the failure) is on the screen
        self.model_settled = threading.Event()  # the model loaded (and shown) or failed: the embedder may load

    def load_model(self, context: list[dict], on_loaded: Callable[[], object],
                   on_failed: Callable[[], object]) -> None:
        """Thread body. Any failure becomes a readable message: torch, the Hub and llama.cpp raise far
        more than ModelError, and a traceback would hide the advice."""
        try:
            engine = self.engine_factory()
        except Exception as exc:
            self._call(self._model_failed, load_failure(exc), on_failed)
            return
        self._call(self._model_loaded, engine, on_loaded)
        # The system prompt is read once "Ready" is on the screen, while the user types: the first question
        # then pays only for itself. Before it, it delayed "Ready" by 0.2-0.5 s, and ONNX Runtime holds the
        # GIL while it computes, so started at once it delayed the paint too (bench/startup.py).
        self.model_shown.wait(timeout=2.0)
        try:
            engine.prefill(context)
        except Exception as exc:
            self._call(self._model_failed, load_failure(exc), on_failed)
            return
        # The embedder's load (torch's import: seconds, mostly holding the GIL) comes after both.
        self.model_settled.set()

    def _model_loaded(self, engine: Engine, on_loaded: Callable[[], object]) -> None:
        self.engine, self.model_status = engine, "ready"
        try:
            on_loaded()
        finally:  # the guard's load waits for this: a failing status line must not hold it for ever
            self._after_paint(self.model_shown.set)

    def _model_failed(self, message: str, on_failed: Callable[[], object]) -> None:
        self.model_status, self.model_error = "failed", message
        self.model_shown.set()
        self.model_settled.set()
        on_failed()

    def load_guard(self) -> None:
        """Thread body. The guard's rules are usable at once; its embedder loads once the model has (the
        session waits for it if a message comes first). A guard that fails to build leaves the chat
        without one, and the session says so before every answer. It is built once "Ready" is shown:
        built beside the model load, it slowed that by about 0.5 s, and no answer can start before it."""
        self.model_shown.wait()
        try:
            guard = self.guard_factory()
        except Exception as exc:
            self._call(self._guard_loaded, None, f"unavailable ({type(exc).__name__}: {exc})")
            return
        if guard is None or guard.ood_error is not None:
            self._call(self._guard_loaded, guard, "off" if guard is None else f"rules only ({guard.ood_error})")
            return
        self._call(self._guard_loaded, guard, "rules ready; loading the out-of-domain scorer…")
        self.model_settled.wait()  # do not compete with the model load for the CPU
        try:
            guard.warm_up()
            status = f"rules only ({guard.ood_error})" if guard.ood_error else "ready"
        except Exception as exc:  # the session finds the same failure and falls back to the rules
            status = f"rules only (out-of-domain scorer failed: {type(exc).__name__}: {exc})"
        self._call(setattr, self, "guard_status", status)

    def _guard_loaded(self, guard: GuardChecker | None, status: str) -> None:
        self.guard, self.guard_status = guard, status
        self.guard_ready.set()
