"""The fast decoding paths behind the same interface as `Engine`, and the choice between backends.

On CPU, ONNX Runtime and llama.cpp run the model several times faster than transformers does.
`load_engine(spec)` picks the backend:

    auto      on a machine without CUDA, with device, dtype and quantization left on auto:
              llama.cpp when llama-cpp-python is installed (`make fast`) and the base is a GGUF,
              else ONNX Runtime (onnxruntime-genai, a prebuilt wheel installed by default) for a
              Llama-architecture base; transformers otherwise
    onnx      ONNX Runtime (medchat.core.onnx_engine) or a clear error saying why not
    llamacpp  llama.cpp or a clear error saying what is missing
    torch     the transformers engine (medchat.core.engine.Engine)

The backend comes from the argument, else `spec.backend` (the --backend flag, which also reads the
environment variable MEDCHAT_BACKEND).

Both fast engines are `TokenEngine`s: the runtime only computes the next token's logits, and medchat
picks every token itself with the same logits processors as transformers (repetition penalty over the
whole sequence, then no repeated n-grams, then temperature/top-p), from prompts built by the same
Hugging Face tokenizer and chat template, so greedy answers match the transformers engine's token for
token as long as the runtime's arithmetic does. A question only pays for its own tokens: every turn
reuses the KV cache of the prompt prefix it shares with the previous one, and `prefill` reads the system
prompt once the model is loaded and the user's draft while they type (the chat app calls it).

llama.cpp runs a GGUF made once by medchat.core.gguf_export (cached by hash): with an adapter, the adapter
is merged in fp32 and the layers are written in 8 bits (Q8_0; MEDCHAT_GGUF_TYPE=q4_0 for the fastest,
less faithful 4-bit layout), so what runs is the adapter-merged model.
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

import psutil

from medchat.core.engine import BaseStream, Engine, GenerationSettings, shared_prefix_length
from medchat.core.model import BACKENDS, Loaded, ModelError, ModelInfo, ModelSpec, ResolvedModel, resolve
from medchat.core.tokens import context_length, ensure_pad_token, eos_ids

INSTALL_HINT = "pip install 'medchat[llamacpp]' (or: pip install llama-cpp-python)"


# ---------------------------------------------------------------- choosing a backend


def llamacpp_available() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def requested_backend(spec: ModelSpec, backend: str | None = None) -> str:
    chosen = backend or spec.backend
    if chosen not in BACKENDS:
        raise ModelError(f"Unknown backend {chosen!r}; choose one of {', '.join(BACKENDS)} (--backend / MEDCHAT_BACKEND).")
    return chosen


def _torch_only(spec: ModelSpec) -> list[str]:
    """What in the spec only the transformers backend does."""
    problems = []
    if spec.quantization == "nf4":
        problems.append("4-bit NF4 (bitsandbytes) is a transformers-only format")
    if spec.device == "cuda":
        problems.append("medchat's ONNX and llama.cpp backends run on the CPU; --device cuda uses transformers")
    return problems


def _llamacpp_problems(resolved: ResolvedModel) -> list[str]:
    problems = [] if llamacpp_available() else [f"llama-cpp-python is not installed ({INSTALL_HINT})"]
    if resolved.gguf is None:
        problems.append(f"the base {resolved.spec.base!r} is not a GGUF file (use the bundled model or --base FILE.gguf)")
    return problems + _torch_only(resolved.spec)


def _onnx_problems(resolved: ResolvedModel) -> list[str]:
    from medchat.core import onnx_engine

    return onnx_engine.problems(resolved) + _torch_only(resolved.spec)


def choose_backend(spec: ModelSpec | ResolvedModel, backend: str | None = None) -> tuple[str, str]:
    """("torch"|"onnx"|"llamacpp", why). Raises ModelError when a fast backend is forced but cannot run."""
    resolved = spec if isinstance(spec, ResolvedModel) else resolve(spec)
    spec = resolved.spec
    wanted = requested_backend(spec, backend)
    if wanted == "torch":
        return "torch", "transformers backend requested"
    checks = {"llamacpp": ("llama.cpp", _llamacpp_problems), "onnx": ("ONNX Runtime", _onnx_problems)}
    if wanted in checks:
        name, check = checks[wanted]
        problems = check(resolved)
        if problems:
            raise ModelError(f"The {name} backend cannot run: " + "; ".join(problems) + ".")
        return wanted, f"{name} backend requested"
    # auto: only when nothing torch-specific was asked for, and no GPU would do better.
    if not (spec.device == "auto" and spec.dtype == "auto" and spec.quantization == "auto"):
        return "torch", "transformers (device/dtype/quantization chosen explicitly)"
    from medchat.core.model import cuda_available

    if cuda_available():
        return "torch", "CUDA GPU present: transformers"
    if not _llamacpp_problems(resolved):
        return "llamacpp", "llama.cpp: installed, and fastest on CPU for a GGUF base"
    problems = _onnx_problems(resolved)
    if not problems:
        return "onnx", "ONNX Runtime: fastest installed backend on CPU"
    return "torch", "transformers (" + problems[0] + ")"


def load_engine(spec: ModelSpec | ResolvedModel, prompt_style: str = "chat", backend: str | None = None):
    """An engine for the spec on the fastest available backend (see the module doc)."""
    resolved = spec if isinstance(spec, ResolvedModel) else resolve(spec)
    chosen, reason = choose_backend(resolved, backend)
    if chosen == "llamacpp":
        engine = LlamaCppEngine.load(resolved, prompt_style=prompt_style)
    elif chosen == "onnx":
        from medchat.core.onnx_engine import OnnxEngine

        engine = OnnxEngine.load(resolved, prompt_style=prompt_style)
    else:
        from medchat.core.model import load

        engine = Engine(load(resolved), prompt_style=prompt_style)
    names = {"llamacpp": "llama.cpp", "onnx": "onnxruntime", "torch": "transformers"}
    engine.info.extra.setdefault("backend", names[chosen])
    engine.info.extra.setdefault("backend_reason", reason)
    return engine


# ---------------------------------------------------------------- logits processors (numpy, as transformers)


class NgramBlocker:
    """transformers' NoRepeatNGramLogitsProcessor, incremental: tokens that would repeat an n-gram."""

    def __init__(self, size: int):
        self.size = size
        self.seen: dict[tuple[int, ...], set[int]] = {}
        self.seq: list[int] = []
        self._new: list[tuple | None] = []  # per token: the n-gram it added first (for truncate)

    def extend(self, tokens) -> None:
        for token in tokens:
            self.seq.append(int(token))
            added = None
            if self.size > 0 and len(self.seq) >= self.size:
                gram = tuple(self.seq[-self.size:])
                followers = self.seen.setdefault(gram[:-1], set())
                if gram[-1] not in followers:
                    followers.add(gram[-1])
                    added = gram
            self._new.append(added)

    def truncate(self, length: int) -> None:
        """Forget the tokens after the first `length` (speculative decoding takes back rejected drafts)."""
        while len(self.seq) > length:
            self.seq.pop()
            gram = self._new.pop()
            if gram is not None:
                followers = self.seen[gram[:-1]]
                followers.discard(gram[-1])
                if not followers:
                    del self.seen[gram[:-1]]

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


# ---------------------------------------------------------------- token-by-token engines


class BackendInfo(ModelInfo):
    def summary(self) -> str:
        return super().summary() + f" | {self.extra.get('backend', 'llama.cpp')}"


def _config_value(model_dir: str | Path, file: str, key: str):
    """A value of the checkpoint's config.json / generation_config.json, as the torch engine reads it."""
    try:
        return json.loads((Path(model_dir) / file).read_text()).get(key)
    except (OSError, ValueError):
        return None


def checkpoint_eos_ids(tokenizer, model_dir: str | Path) -> list[int]:
    """The tokenizer's EOS and those of the checkpoint's generation_config.json (as transformers stops)."""
    return eos_ids(tokenizer, _config_value(model_dir, "generation_config.json", "eos_token_id"))


def checkpoint_context_length(tokenizer, model_dir: str | Path) -> int:
    """The same limit the transformers engine uses: min(max_position_embeddings, tokenizer limit)."""
    return context_length(_config_value(model_dir, "config.json", "max_position_embeddings"), tokenizer)


def load_tokenizer(model_dir: str | Path, trust_remote_code: bool = False):
    """The folder's tokenizer; without transformers where `tokenizers` reads it the same (its import alone
    was most of a warm start: medchat.core.light_tokenizer)."""
    from medchat.core import light_tokenizer

    light = light_tokenizer.load(model_dir, trust_remote_code)
    if light is not None:
        return light
    from transformers import AutoTokenizer

    return ensure_pad_token(AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=trust_remote_code))


def cpu_threads(chosen: int | None = None) -> int:
    """`chosen` (ModelSpec.threads, from MEDCHAT_THREADS), else one per physical core this process may use.
    More threads than free cores is catastrophic for llama.cpp (its threads spin-wait on each other), and a
    second hyperthread on a core adds little; but a VM whose CPUs are one per core gets them all."""
    if chosen:
        return max(1, int(chosen))
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return threads_for(usable, psutil.cpu_count(logical=True), psutil.cpu_count(logical=False))


def threads_for(usable: int, logical: int | None, physical: int | None) -> int:
    """One thread per physical core among `usable` logical CPUs, with `logical` / `physical` CPUs per
    machine (psutil's counts, None where unknown: then assume two hyperthreads per core)."""
    per_core = logical // physical if logical and physical else 2
    return max(1, usable // max(1, per_core))


class TokenEngine(Engine):
    """`Engine` on a runtime that computes next-token logits: medchat picks each token (see the module doc).

    A runtime supplies four primitives over its one KV cache: `_cached_ids` (the tokens in it),
    `_truncate(n)` (keep the first n), `_feed(ids)` (evaluate more tokens) and `_logits()` (of the last).

    Exact speculative decoding, for greedy answers: a runtime that also supplies `_feed_logits(ids)` (the
    logits after each of the tokens fed) can be given a `drafter`, a cheaper TokenEngine on the same
    tokenizer (the int8 model beside the fp32 one). The drafter proposes `draft_tokens` tokens one at a
    time; this engine evaluates them all in one forward pass and keeps the longest prefix that equals its
    own pick at each position, plus its own pick at the first difference. Every token kept is this
    engine's pick under the same rules and history, so the answer is the one this engine alone gives;
    the drafter only decides how many tokens one forward pass yields. With sampling it is not used."""

    def __init__(self, tokenizer, info: ModelInfo, eos_ids: list[int], prompt_style: str = "chat"):
        super().__init__(Loaded(model=None, tokenizer=tokenizer, info=info), prompt_style=prompt_style)
        self.eos_ids = set(eos_ids)
        self._lock = threading.Lock()  # one KV cache: one generation at a time
        self.drafter: TokenEngine | None = None
        self.draft_tokens = 4
        # The last speculative answer: tokens drafted, drafts kept, forward passes of this engine.
        self.speculation = {"drafted": 0, "accepted": 0, "verify_passes": 0}

    def _cached_ids(self) -> list[int]:
        raise NotImplementedError

    def _truncate(self, keep: int) -> None:
        raise NotImplementedError

    def _feed(self, ids: list[int]) -> None:
        raise NotImplementedError

    def _logits(self):
        raise NotImplementedError

    def _feed_logits(self, ids: list[int]):
        """Evaluate more tokens and return the logits after each of them: shape (len(ids), vocab)."""
        raise NotImplementedError

    # -- generation

    def stream(self, messages: list[dict], settings: GenerationSettings | None = None,
               cancel: threading.Event | None = None) -> "TokenStream":
        return TokenStream(self, messages, settings or GenerationSettings(), cancel)

    def generate_batch(self, conversations: list[list[dict]], settings: GenerationSettings | None = None,
                       batch_size: int = 16) -> list[str]:
        """One after the other (a single sequence is already fast here); same answers as stream()."""
        settings = settings or GenerationSettings()
        answers = []
        for messages in conversations:
            ids = self.fit_prompt(messages, settings.max_new_tokens)
            tokens = list(self.decode_tokens(ids, settings, threading.Event()))
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
            if self.drafter is not None:  # else the drafter reads the prompt after the first token
                self.drafter.prefill(messages, draft)

    def reset(self) -> None:
        """Empty the KV cache(s): the next prompt is read from its start."""
        with self._lock:
            self._truncate(0)
        if self.drafter is not None:
            self.drafter.reset()

    def _evaluate(self, ids: list[int]) -> None:
        """Bring the KV cache to `ids`, keeping the part of it that already matches. Hold the lock."""
        keep = shared_prefix_length(self._cached_ids(), ids)
        keep = min(keep, len(ids) - 1)  # the last token is always evaluated again: its logits are needed
        self._truncate(keep)
        self._feed(ids[keep:])

    def _pick(self, logits, history: list[int], blocker: NgramBlocker, settings: GenerationSettings, rng) -> int:
        """The next token from the logits after `history` (the blocker holds the same tokens): the
        transformers engine's rules, in its order. Modifies `logits`."""
        import numpy as np

        apply_repetition_penalty(logits, history, settings.repetition_penalty)
        banned = blocker.banned()
        if banned:
            logits[banned] = -np.inf
        return pick_token(logits, settings, rng)

    def decode_tokens(self, prompt_ids: list[int], settings: GenerationSettings, cancel: threading.Event,
                      seed: int | None = None) -> Iterator[int]:
        """Yield generated token ids (EOS excluded). Reuses the KV cache of a shared prompt prefix."""
        import numpy as np

        if self.drafter is not None and settings.temperature <= 0:
            yield from self._speculative_tokens(prompt_ids, settings, cancel)
            return
        rng = np.random.default_rng(seed)
        with self._lock:
            self._evaluate(prompt_ids)
            history = list(prompt_ids)
            blocker = NgramBlocker(settings.no_repeat_ngram_size)
            blocker.extend(prompt_ids)
            for step in range(settings.max_new_tokens):
                if cancel.is_set():
                    return
                token = self._pick(self._logits(), history, blocker, settings, rng)
                if token in self.eos_ids:
                    return
                yield token
                if step + 1 == settings.max_new_tokens:
                    return  # the answer is complete: no need to evaluate its last token
                history.append(token)
                blocker.extend([token])
                self._feed([token])

    def _speculative_tokens(self, prompt_ids: list[int], settings: GenerationSettings,
                            cancel: threading.Event) -> Iterator[int]:
        """decode_tokens for greedy decoding with the drafter (see the class doc): the same tokens."""
        drafter, eos, budget = self.drafter, self.eos_ids, settings.max_new_tokens
        stats = self.speculation = {"drafted": 0, "accepted": 0, "verify_passes": 0}
        with self._lock, drafter._lock:
            self._evaluate(prompt_ids)
            history = list(prompt_ids)  # the answer so far; this engine's KV cache holds all but its last
            blocker = NgramBlocker(settings.no_repeat_ngram_size)
            blocker.extend(prompt_ids)
            picks = [self._pick(self._logits(), history, blocker, settings, None)]  # no drafter: first token sooner
            produced = 0
            while True:
                for token in picks:  # every one is this engine's own pick
                    if cancel.is_set() or token in eos:
                        return
                    yield token
                    produced += 1
                    if produced == budget:
                        return
                    history.append(token)
                    blocker.extend([token])
                committed = len(history)
                # Drafts: no more than the answer has room for after the pick that follows them.
                drafts: list[int] = []
                room = min(self.draft_tokens, budget - produced - 1)
                if room > 0:
                    drafter._evaluate(history)
                while len(drafts) < room:
                    draft = self._pick(drafter._logits(), history, blocker, settings, None)
                    if draft in eos:
                        # Not fed to this engine: the pick after the drafts decides whether the answer ends.
                        # (Next turns decoded garbage after a fed EOS was kept; the cause was onnxruntime-
                        # genai's KV cache after two rewinds in a row, see OnnxEngine._truncate.)
                        break
                    drafts.append(draft)
                    history.append(draft)
                    blocker.extend([draft])
                    if len(drafts) < room:
                        drafter._feed([draft])
                history[committed:] = []
                blocker.truncate(committed)
                # One forward pass over the last kept token and the drafts: the logits after each of them.
                rows = self._feed_logits([history[-1]] + drafts)
                stats["drafted"] += len(drafts)
                stats["verify_passes"] += 1
                picks = []
                for position, logits in enumerate(rows):
                    token = self._pick(logits, history, blocker, settings, None)
                    picks.append(token)
                    if position == len(drafts) or token != drafts[position] or token in eos:
                        break
                    history.append(token)  # the draft was this engine's pick: the next position counts
                    blocker.extend([token])
                stats["accepted"] += sum(1 for a, b in zip(picks, drafts) if a == b)
                history[committed:] = []
                blocker.truncate(committed)
                # Keep in the KV cache what precedes the last pick, as the plain loop would have it.
                self._truncate(committed - 1 + len(picks))

class LlamaCppEngine(TokenEngine):
    """`TokenEngine` on llama.cpp (llama-cpp-python's `Llama`)."""

    def __init__(self, llama, tokenizer, info: ModelInfo, eos_ids: list[int], prompt_style: str = "chat"):
        super().__init__(tokenizer, info, eos_ids, prompt_style=prompt_style)
        self.llama = llama
        self._n_vocab = llama.n_vocab()

    @classmethod
    def load(cls, spec: ModelSpec | ResolvedModel, prompt_style: str = "chat", n_threads: int | None = None,
             gguf_type: str | None = None) -> "LlamaCppEngine":
        """`gguf_type`: the layers' weight type (q8_0, q4_0, q4_1; default spec.gguf_type, else q8_0)."""
        started = time.perf_counter()
        try:
            import llama_cpp
        except ImportError as exc:
            raise ModelError(f"The llama.cpp backend needs llama-cpp-python: {INSTALL_HINT}.") from exc
        from medchat.core import gguf_export
        from medchat.core.model import _quiet_transformers

        _quiet_transformers()
        resolved = spec if isinstance(spec, ResolvedModel) else resolve(spec)
        if resolved.gguf is None:
            raise ModelError(f"The llama.cpp backend needs a GGUF base; {resolved.spec.base!r} is not one.")
        tokenizer_dir = resolved.tokenizer_dir()  # same tokenizer + template as the transformers engine
        tokenizer = load_tokenizer(tokenizer_dir, resolved.trust_remote_code)
        try:
            gguf_path = gguf_export.runnable_gguf(resolved, gguf_type)
        except gguf_export.ExportError as exc:
            raise ModelError(str(exc)) from exc
        context = checkpoint_context_length(tokenizer, tokenizer_dir)
        threads = n_threads or cpu_threads(resolved.spec.threads)
        try:
            llama = llama_cpp.Llama(model_path=str(gguf_path), n_ctx=context, n_batch=512, n_threads=threads,
                                    n_threads_batch=threads, logits_all=False, verbose=False)
        except Exception as exc:  # llama-cpp-python raises ValueError/RuntimeError for unreadable files
            raise ModelError(f"llama.cpp could not load {gguf_path}: {exc}. Delete it to export it again.") from exc
        info = BackendInfo(
            base=resolved.spec.base,
            base_path=str(gguf_path),
            adapter=str(resolved.adapter) if resolved.adapter else None,
            merged=bool(resolved.adapter),
            quantization=_file_type_name(llama.metadata.get("general.file_type")),
            device="cpu",
            dtype="llama.cpp",  # shown as "cpu llama.cpp · q8_0" in the status line
            params_total=int(llama_cpp.llama_model_n_params(llama.model)),
            params_trainable=0,
            load_seconds=round(time.perf_counter() - started, 3),
            context_length=context,
            extra={"backend": "llama.cpp", "gguf": str(gguf_path), "n_threads": threads,
                   "llama_cpp_version": getattr(llama_cpp, "__version__", None)},
        )
        return cls(llama, tokenizer, info, checkpoint_eos_ids(tokenizer, tokenizer_dir), prompt_style)

    def _cached_ids(self) -> list[int]:
        return self.llama.input_ids[: self.llama.n_tokens].tolist()

    def _truncate(self, keep: int) -> None:
        self.llama.n_tokens = keep

    def _feed(self, ids: list[int]) -> None:
        self.llama.eval(ids)

    def _logits(self):
        import numpy as np

        pointer = self.llama._ctx.get_logits_ith(-1)
        return np.ctypeslib.as_array(pointer, shape=(self._n_vocab,)).copy()


def _file_type_name(file_type) -> str:
    try:
        import gguf

        return gguf.LlamaFileType(int(file_type)).name.removeprefix("MOSTLY_").lower()
    except Exception:
        return "gguf"


_END = object()


class TokenStream(BaseStream):
    """A TokenEngine's answer: tokens decoded in a thread, text handed over through a queue."""

    def __init__(self, engine: TokenEngine, messages: list[dict], settings: GenerationSettings,
                 cancel: threading.Event | None = None):
        super().__init__(settings, cancel)
        self._engine = engine
        self._ids = engine.fit_prompt(messages, settings.max_new_tokens, self)
        self._settings = settings
        self._queue: queue.Queue = queue.Queue()
        self._started = time.perf_counter()
        self._thread = threading.Thread(target=self._run, daemon=True, name="medchat-generate-tokens")
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
            text = tokenizer.decode(window, skip_special_tokens=True)
            if len(text) > printed:  # an answer that ends inside a character: show what it has, as transformers does
                self._queue.put(text[printed:])
        except BaseException as exc:  # surfaced to the consumer
            self.error = exc
        finally:
            self._queue.put(_END)

    def _chunks(self) -> Iterator[str]:
        return iter(self._queue.get, _END)
