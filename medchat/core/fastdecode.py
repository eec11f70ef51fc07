"""The fast decoding path: llama.cpp (through llama-cpp-python) behind the same interface as `Engine`.

On CPU, llama.cpp runs the GGUF several times faster than transformers runs the bf16 model.
`load_engine(spec)` picks the backend:

    auto      llama.cpp when llama-cpp-python is installed (`pip install 'medchat[llamacpp]'`), the base
              is a GGUF (the bundled model, or --base FILE.gguf), and the device, dtype and quantization are
              left on auto on a machine without CUDA; transformers otherwise
    llamacpp  llama.cpp or a clear error saying what is missing
    torch     the transformers engine (medchat.core.engine.Engine)

The backend comes from the argument, else `spec.backend` (the --backend flag, which also reads the
environment variable MEDCHAT_BACKEND).

What runs is a GGUF made once by medchat.core.gguf_export (cached by hash): with an adapter, the adapter is
merged into an fp32 copy of the base and the layers are written in 8 bits (Q8_0; MEDCHAT_GGUF_TYPE=q4_0
for the fastest, less faithful 4-bit layout), so what runs is the adapter-merged model.

A question only pays for its own tokens: every turn reuses the KV cache of the prompt prefix it shares
with the previous one, and `prefill` reads the system prompt once the model is loaded and the user's
draft while they type (the chat app calls it). Prompts are built and tokenized by the same Hugging Face
tokenizer and chat template as the transformers engine, and decoding applies the same logits processors
as transformers (repetition penalty over the whole sequence, then no repeated n-grams, then
temperature/top-p), so greedy answers match the transformers engine's token for token as long as the
quantized arithmetic does.
"""

from __future__ import annotations

import importlib.util
import json
import os
import queue
import threading
import time
from pathlib import Path
from typing import Iterator

from medchat.core.engine import BaseStream, Engine, GenerationSettings, shared_prefix_length
from medchat.core.model import BACKENDS, BUNDLED, Loaded, ModelError, ModelInfo, ModelSpec
from medchat.core.tokens import context_length, ensure_pad_token, eos_ids

INSTALL_HINT = "pip install 'medchat[llamacpp]' (or: pip install llama-cpp-python)"


# ---------------------------------------------------------------- choosing a backend


def llamacpp_available() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def gguf_source(spec: ModelSpec) -> Path | None:
    """The GGUF file behind the spec's base, if it has one."""
    if spec.base == BUNDLED:
        from medchat.core import bundled

        try:
            return bundled.find_bundled_gguf()
        except bundled.BundledModelError:
            return None
    if spec.base.endswith(".gguf") and Path(spec.base).expanduser().is_file():
        return Path(spec.base).expanduser()
    return None


def requested_backend(spec: ModelSpec, backend: str | None = None) -> str:
    chosen = backend or spec.backend
    if chosen not in BACKENDS:
        raise ModelError(f"Unknown backend {chosen!r}; choose one of {', '.join(BACKENDS)} (--backend / MEDCHAT_BACKEND).")
    return chosen


def choose_backend(spec: ModelSpec, backend: str | None = None) -> tuple[str, str]:
    """("torch"|"llamacpp", why). Raises ModelError when llamacpp is forced but cannot run."""
    wanted = requested_backend(spec, backend)
    if wanted == "torch":
        return "torch", "transformers backend requested"
    problems = []
    if not llamacpp_available():
        problems.append(f"llama-cpp-python is not installed ({INSTALL_HINT})")
    if gguf_source(spec) is None:
        problems.append(f"the base {spec.base!r} is not a GGUF file (use the bundled model or --base FILE.gguf)")
    if spec.quantization == "nf4":
        problems.append("4-bit NF4 (bitsandbytes) is a transformers-only format")
    if spec.device == "cuda":
        problems.append("the llama.cpp backend in medchat runs on the CPU; --device cuda uses transformers")
    if wanted == "llamacpp":
        if problems:
            raise ModelError("The llama.cpp backend cannot run: " + "; ".join(problems) + ".")
        return "llamacpp", "llama.cpp backend requested"
    # auto: only when nothing torch-specific was asked for, and no GPU would do better.
    if spec.device == "auto" and spec.dtype == "auto" and spec.quantization == "auto" and not problems:
        from medchat.core.model import cuda_available

        if not cuda_available():
            return "llamacpp", "llama.cpp: fastest on CPU for a GGUF base"
        return "torch", "CUDA GPU present: transformers"
    if problems:
        return "torch", "transformers (" + problems[0] + ")"
    return "torch", "transformers (device/dtype/quantization chosen explicitly)"


def load_engine(spec: ModelSpec, prompt_style: str = "chat", backend: str | None = None):
    """An engine for the spec on the fastest available backend (see the module doc)."""
    chosen, reason = choose_backend(spec, backend)
    if chosen == "llamacpp":
        engine = LlamaCppEngine.load(spec, prompt_style=prompt_style)
    else:
        from medchat.core.model import load

        engine = Engine(load(spec), prompt_style=prompt_style)
    engine.info.extra.setdefault("backend", "llama.cpp" if chosen == "llamacpp" else "transformers")
    engine.info.extra.setdefault("backend_reason", reason)
    return engine


# ---------------------------------------------------------------- logits processors (numpy, as transformers)


class NgramBlocker:
    """transformers' NoRepeatNGramLogitsProcessor, incremental: tokens that would repeat an n-gram."""

    def __init__(self, size: int):
        self.size = size
        self.seen: dict[tuple[int, ...], set[int]] = {}
        self.seq: list[int] = []

    def extend(self, tokens) -> None:
        for token in tokens:
            self.seq.append(int(token))
            if self.size > 0 and len(self.seq) >= self.size:
                gram = tuple(self.seq[-self.size:])
                self.seen.setdefault(gram[:-1], set()).add(gram[-1])

    def banned(self) -> list[int]:
        if self.size <= 0 or len(self.seq) + 1 < self.size:
            return []
        key = tuple(self.seq[len(self.seq) - self.size + 1:]) if self.size > 1 else ()
        return sorted(self.seen.get(key, ()))


def apply_repetition_penalty(logits, token_ids, penalty: float):
    """In place, as transformers: logits of every token seen so far divided (if > 0) or multiplied by penalty."""
    import numpy as np

    if penalty == 1.0 or len(token_ids) == 0:
        return logits
    ids = np.unique(np.asarray(token_ids, dtype=np.int64))
    picked = logits[ids]
    logits[ids] = np.where(picked < 0, picked * penalty, picked / penalty)
    return logits


def pick_token(logits, settings: GenerationSettings, rng) -> int:
    """Greedy argmax, or temperature + top-p sampling (transformers' order)."""
    import numpy as np

    if settings.temperature <= 0:
        return int(np.argmax(logits))
    scaled = logits.astype(np.float64) / settings.temperature
    scaled -= scaled.max()
    probs = np.exp(scaled)
    probs /= probs.sum()
    if settings.top_p < 1.0:
        order = np.argsort(-probs)
        cumulative = np.cumsum(probs[order])
        keep = order[: int(np.searchsorted(cumulative, settings.top_p) + 1)]
        mask = np.zeros_like(probs)
        mask[keep] = probs[keep]
        probs = mask / mask.sum()
    return int(rng.choice(len(probs), p=probs))


# ---------------------------------------------------------------- engine


class BackendInfo(ModelInfo):
    def summary(self) -> str:
        return super().summary() + f" | {self.extra.get('backend', 'llama.cpp')}"


def _config_value(model_dir: str, file: str, key: str):
    """A value of the converted checkpoint's config.json / generation_config.json, as the torch engine reads it."""
    try:
        return json.loads((Path(model_dir) / file).read_text()).get(key)
    except (OSError, ValueError):
        return None


def _threads() -> int:
    """MEDCHAT_THREADS, else llama-cpp-python's own default (half the logical CPUs: the physical cores).
    More threads than free cores is catastrophic for llama.cpp (its threads spin-wait on each other):
    measured here on 2 busy cores, 2 threads took 147 s for a 7-token prompt, 1 thread 1.2 s."""
    try:
        return max(1, int(os.environ.get("MEDCHAT_THREADS", "")))
    except ValueError:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return max(1, cpus // 2)


class LlamaCppEngine(Engine):
    """`Engine` on llama.cpp: same `stream`/`generate`/`generate_batch`/`fit_prompt`/`info`."""

    def __init__(self, llama, tokenizer, info: ModelInfo, eos_ids: list[int], prompt_style: str = "chat"):
        super().__init__(Loaded(model=None, tokenizer=tokenizer, info=info), prompt_style=prompt_style)
        self.llama = llama
        self.eos_ids = set(eos_ids)
        self._lock = threading.Lock()  # one llama.cpp context: one generation at a time

    @classmethod
    def load(cls, spec: ModelSpec, prompt_style: str = "chat", n_threads: int | None = None,
             gguf_type: str | None = None) -> "LlamaCppEngine":
        """`gguf_type`: the layers' weight type (q8_0, q4_0, q4_1; default MEDCHAT_GGUF_TYPE, else q8_0)."""
        started = time.perf_counter()
        try:
            import llama_cpp
        except ImportError as exc:
            raise ModelError(f"The llama.cpp backend needs llama-cpp-python: {INSTALL_HINT}.") from exc
        from transformers import AutoTokenizer

        from medchat.core import gguf_export
        from medchat.core.model import _quiet_transformers, read_adapter_config, resolve_base

        _quiet_transformers()
        source = gguf_source(spec)
        if source is None:
            raise ModelError(f"The llama.cpp backend needs a GGUF base; {spec.base!r} is not one.")
        if spec.adapter:
            read_adapter_config(spec.adapter)
        tokenizer_dir = resolve_base(spec.base)  # the converted checkpoint: same tokenizer + template as torch
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        ensure_pad_token(tokenizer)
        try:
            gguf_path = gguf_export.runnable_gguf(source, spec.adapter, gguf_type)
        except gguf_export.ExportError as exc:
            raise ModelError(str(exc)) from exc
        context = context_length(_config_value(tokenizer_dir, "config.json", "max_position_embeddings"), tokenizer)
        threads = n_threads or _threads()
        try:
            llama = llama_cpp.Llama(model_path=str(gguf_path), n_ctx=context, n_batch=512, n_threads=threads,
                                    n_threads_batch=threads, logits_all=False, verbose=False)
        except Exception as exc:  # llama-cpp-python raises ValueError/RuntimeError for unreadable files
            raise ModelError(f"llama.cpp could not load {gguf_path}: {exc}. Delete it to export it again.") from exc
        file_type = llama.metadata.get("general.file_type")
        quant = _file_type_name(file_type)
        info = BackendInfo(
            base=spec.base,
            base_path=str(gguf_path),
            adapter=str(Path(spec.adapter).expanduser()) if spec.adapter else None,
            merged=bool(spec.adapter),
            quantization=quant,
            device="cpu",
            dtype="llama.cpp",  # shown as "cpu llama.cpp · q8_0" in the status line
            params_total=int(llama_cpp.llama_model_n_params(llama.model)),
            params_trainable=0,
            load_seconds=round(time.perf_counter() - started, 3),
            context_length=context,
            extra={"backend": "llama.cpp", "gguf": str(gguf_path), "n_threads": threads,
                   "llama_cpp_version": getattr(llama_cpp, "__version__", None)},
        )
        eos = eos_ids(tokenizer, _config_value(tokenizer_dir, "generation_config.json", "eos_token_id"))
        return cls(llama, tokenizer, info, eos, prompt_style)

    # -- generation

    def stream(self, messages: list[dict], settings: GenerationSettings | None = None,
               cancel: threading.Event | None = None) -> "LlamaStream":
        return LlamaStream(self, messages, settings or GenerationSettings(), cancel)

    def generate_batch(self, conversations: list[list[dict]], settings: GenerationSettings | None = None,
                       batch_size: int = 16) -> list[str]:
        """One after the other (llama.cpp's single sequence is already fast); same answers as stream()."""
        settings = settings or GenerationSettings()
        answers = []
        for messages in conversations:
            ids = self.fit_prompt(messages, settings.max_new_tokens)
            tokens: list[int] = []
            for token in self.decode_tokens(ids, settings, threading.Event()):
                tokens.append(token)
            answers.append(self.tokenizer.decode(tokens, skip_special_tokens=True).strip())
        return answers

    def prefill(self, messages: list[dict], draft: str = "") -> None:
        """Evaluate the start of the next turn's prompt now (see Engine.prefill): the system prompt once
        the model is loaded, the user's draft while they type. Whatever of it the real prompt shares is
        kept by the prefix reuse in decode_tokens."""
        ids = self.next_turn_prefix(messages, draft)
        if ids and len(ids) < self.info.context_length:  # longer: fit_prompt will cut it when it is sent
            with self._lock:
                self._evaluate(ids)

    def _evaluate(self, ids: list[int]) -> None:
        """Bring the KV cache to `ids`, keeping the part of it that already matches. Hold the lock."""
        llama = self.llama
        keep = shared_prefix_length(llama.input_ids[: llama.n_tokens].tolist(), ids)
        keep = min(keep, len(ids) - 1)  # the last token is always evaluated again: its logits are needed
        llama.n_tokens = keep
        llama.eval(ids[keep:])

    def decode_tokens(self, prompt_ids: list[int], settings: GenerationSettings, cancel: threading.Event,
                      seed: int | None = None) -> Iterator[int]:
        """Yield generated token ids (EOS excluded). Reuses the KV cache of a shared prompt prefix."""
        import numpy as np

        llama = self.llama
        rng = np.random.default_rng(seed)
        n_vocab = llama.n_vocab()
        with self._lock:
            self._evaluate(prompt_ids)
            history = list(prompt_ids)
            blocker = NgramBlocker(settings.no_repeat_ngram_size)
            blocker.extend(prompt_ids)
            for step in range(settings.max_new_tokens):
                if cancel.is_set():
                    return
                pointer = llama._ctx.get_logits_ith(-1)
                logits = np.ctypeslib.as_array(pointer, shape=(n_vocab,)).copy()
                apply_repetition_penalty(logits, history, settings.repetition_penalty)
                banned = blocker.banned()
                if banned:
                    logits[banned] = -np.inf
                token = pick_token(logits, settings, rng)
                if token in self.eos_ids:
                    return
                yield token
                if step + 1 == settings.max_new_tokens:
                    return  # the answer is complete: no need to evaluate its last token
                history.append(token)
                blocker.extend([token])
                llama.eval([token])


def _file_type_name(file_type) -> str:
    try:
        import gguf

        return gguf.LlamaFileType(int(file_type)).name.removeprefix("MOSTLY_").lower()
    except Exception:
        return "gguf"


_END = object()


class LlamaStream(BaseStream):
    """The llama.cpp backend: tokens decoded in a thread, text handed over through a queue."""

    def __init__(self, engine: LlamaCppEngine, messages: list[dict], settings: GenerationSettings,
                 cancel: threading.Event | None = None):
        super().__init__(settings, cancel)
        self._engine = engine
        self._ids = engine.fit_prompt(messages, settings.max_new_tokens, self)
        self._settings = settings
        self._queue: queue.Queue = queue.Queue()
        self._started = time.perf_counter()
        self._thread = threading.Thread(target=self._run, daemon=True, name="medchat-generate-llamacpp")
        self._thread.start()

    def _run(self) -> None:
        tokenizer = self._engine.tokenizer
        window: list[int] = []  # tokens not yet fully printed (decoded together: multi-byte characters)
        printed = 0
        try:
            for token in self._engine.decode_tokens(self._ids, self._settings, self._cancel):
                if self._first_token_at is None:
                    self._first_token_at = time.perf_counter()
                self._tokens += 1
                window.append(token)
                text = tokenizer.decode(window, skip_special_tokens=True)
                if text.endswith("\ufffd"):
                    continue  # an incomplete UTF-8 character: wait for the next token
                if len(text) > printed:
                    self._queue.put(text[printed:])
                printed = len(text)
                if text.endswith("\n"):
                    window, printed = [], 0
        except BaseException as exc:  # surfaced to the consumer
            self.error = exc
        finally:
            self._queue.put(_END)

    def _chunks(self) -> Iterator[str]:
        return iter(self._queue.get, _END)
