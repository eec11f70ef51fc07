"""The default CPU engine: ONNX Runtime (onnxruntime-genai, prebuilt wheels) behind the `Engine` interface.

onnxruntime-genai runs the model converted by medchat.core.onnx_export and keeps its KV cache; medchat
drives it one token at a time (append_tokens / get_logits / rewind_to) and picks every token itself with
the transformers engine's logits processors (medchat.core.fastdecode.TokenEngine). Its own search
options cannot do that: its repetition penalty and n-gram ban are not transformers' rules (nor can its
built-in speculative search, for the same reason). A precision such as int8+fp32 loads both models: the
int8 one drafts, the fp32 one checks each pass of drafts at once (its model output "logits" has a row per
token fed) and keeps only its own picks, so greedy answers are fp32's (TokenEngine, speculative decoding).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import time
from pathlib import Path

from medchat.core import onnx_export
from medchat.core.fastdecode import (BackendInfo, TokenEngine, checkpoint_context_length, checkpoint_eos_ids, cpu_threads,
                                     load_tokenizer)
from medchat.core.model import ModelError, ModelSpec, ResolvedModel, resolve

INSTALL_HINT = "pip install onnxruntime-genai onnx onnx-ir (medchat installs them by default)"
DRAFT_TOKENS = 6  # drafts per verification pass with a "+" precision: the fastest of 3, 4, 6, 8 (bench/decode.py)


def available() -> bool:
    return importlib.util.find_spec("onnxruntime_genai") is not None


def problems(resolved: ResolvedModel) -> list[str]:
    """Why this model cannot run on the ONNX backend (empty: it can)."""
    if not available():
        return [f"onnxruntime-genai is not installed ({INSTALL_HINT})"]
    if onnx_export.is_converted(onnx_export.runnable_onnx_dir(resolved)):
        return []
    if resolved.gguf is not None:
        return _gguf_problems(resolved.gguf)
    config_file = Path(resolved.base_path) / "config.json"
    if not config_file.is_file():
        return [f"the base {resolved.spec.base!r} is not a local checkpoint (ONNX converts local directories)"]
    config = json.loads(config_file.read_text())
    architecture = (config.get("architectures") or ["unknown"])[0]
    heads = config.get("num_attention_heads") or 1
    return _shape_problems(architecture, config.get("head_dim") or (config.get("hidden_size") or 0) // heads)


def _gguf_problems(path: Path) -> list[str]:
    """The same checks on a GGUF's metadata, without converting it."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    field = reader.get_field("general.architecture")
    arch = field.contents() if field else "unknown"
    width, heads = (reader.get_field(f"{arch}.{key}") for key in ("embedding_length", "attention.head_count"))
    head_size = int(width.contents()) // int(heads.contents()) if width and heads else 0
    return _shape_problems({"llama": "LlamaForCausalLM"}.get(arch, arch), head_size)


def _shape_problems(architecture: str, head_size: int) -> list[str]:
    if architecture not in onnx_export.SUPPORTED_ARCHITECTURES:
        return [f"the ONNX conversion supports {', '.join(onnx_export.SUPPORTED_ARCHITECTURES)}, not {architecture}"]
    if head_size % 16:
        return [f"ONNX Runtime's CPU attention needs a head size that is a multiple of 16, not {head_size}"]
    return []


class OnnxEngine(TokenEngine):
    """`TokenEngine` on onnxruntime-genai: one Generator, whose KV cache is kept across turns."""

    def __init__(self, og_model, tokenizer, info, eos: list[int], prompt_style: str = "chat"):
        super().__init__(tokenizer, info, eos, prompt_style=prompt_style)
        self._og_model = og_model
        self._generator = None
        self._ids: list[int] = []  # the tokens the cache holds for medchat
        self._computed = 0  # the tokens the generator holds: more while a truncation waits for the next feed

    @classmethod
    def load(cls, spec: ModelSpec | ResolvedModel, prompt_style: str = "chat", n_threads: int | None = None,
             precision: str | None = None, draft_tokens: int | None = None) -> "OnnxEngine":
        """`precision`: int8 (default), int4, fp32, or a draft's and the model's joined by '+' (int8+fp32:
        the fp32 model's greedy answers, drafted by the int8 model `draft_tokens` at a time; see
        TokenEngine) (default spec.onnx_precision, else int8)."""
        started = time.perf_counter()
        try:
            import onnxruntime_genai as og
        except ImportError as exc:
            raise ModelError(f"The ONNX backend needs onnxruntime-genai: {INSTALL_HINT}.") from exc
        og.disable_telemetry_events()  # medical text stays local: nothing optional leaves the machine
        resolved = spec if isinstance(spec, ResolvedModel) else resolve(spec)
        try:
            verified, draft = onnx_export.precisions(precision or resolved.spec.onnx_precision)
            folder = onnx_export.runnable_onnx(resolved, verified)
            draft_folder = onnx_export.runnable_onnx(resolved, draft) if draft else None
        except onnx_export.OnnxExportError as exc:
            raise ModelError(str(exc)) from exc
        converted = onnx_export.record(folder)
        tokenizer = load_tokenizer(folder / "hf", resolved.trust_remote_code)
        threads = n_threads or cpu_threads(resolved.spec.threads)
        context = checkpoint_context_length(tokenizer, folder / "hf")
        eos = checkpoint_eos_ids(tokenizer, folder / "hf")
        info = BackendInfo(
            base=resolved.spec.base,
            base_path=str(folder),
            adapter=str(resolved.adapter) if resolved.adapter else None,
            merged=bool(resolved.adapter),
            quantization=f"{draft}+{verified}" if draft else converted["precision"],
            device="cpu",
            dtype="onnxruntime",
            params_total=int(converted["params"]),
            params_trainable=0,
            load_seconds=0.0,
            context_length=context,
            extra={"backend": "onnxruntime", "onnx": str(folder), "n_threads": threads,
                   "builder": converted["builder"]},
        )
        engine = cls(_og_model(og, folder, threads), tokenizer, info, eos, prompt_style)
        if draft_folder is not None:
            draft_info = dataclasses.replace(info, base_path=str(draft_folder), quantization=draft,
                                             extra={**info.extra, "onnx": str(draft_folder)})
            engine.drafter = cls(_og_model(og, draft_folder, threads), tokenizer, draft_info, eos, prompt_style)
            engine.draft_tokens = draft_tokens or DRAFT_TOKENS
            info.extra.update(draft_onnx=str(draft_folder), draft_tokens=engine.draft_tokens)
        info.load_seconds = round(time.perf_counter() - started, 3)
        return engine

    def _cached_ids(self) -> list[int]:
        return self._ids

    def _truncate(self, keep: int) -> None:
        # The rewind itself waits for the next _feed: onnxruntime-genai (seen on 0.18) rewinds its KV cache by copying
        # the last run's output with the stride of the length the cache had at its last rewind, so a second
        # rewind_to before the next append_tokens copies wrong rows (every KV head but the first). That
        # happened when a speculative answer ended on a pass whose drafts were not all kept (the cache
        # rewound) and the next prompt rewound it again: that answer was wrong from its first token.
        if self._generator is None:
            import onnxruntime_genai as og

            params = og.GeneratorParams(self._og_model)
            params.set_search_options(max_length=self.info.context_length, batch_size=1)
            self._generator = og.Generator(self._og_model, params)
        self._ids = self._ids[:keep]

    def _feed(self, ids: list[int]) -> None:
        import numpy as np

        if len(self._ids) < self._computed:  # one rewind, to the shortest length asked since the last feed
            self._generator.rewind_to(len(self._ids))
        self._generator.append_tokens(np.asarray(ids, dtype=np.int32))
        self._ids = self._ids + list(ids)
        self._computed = len(self._ids)

    def _logits(self):
        logits = self._generator.get_logits()
        return logits.reshape(-1, logits.shape[-1])[-1].copy()

    def _feed_logits(self, ids: list[int]):
        # get_logits() has only the last position's; the model output "logits" has one row per token fed.
        self._feed(ids)
        logits = self._generator.get_output("logits")
        return logits.reshape(-1, logits.shape[-1])[-len(ids):].copy()


def _og_model(og, folder: Path, threads: int):
    config = og.Config(str(folder))
    # A KV cache that grows with the text instead of one preallocated for the whole context: creating
    # the generator then costs nothing, and decoding was measured no slower (bench/decode.py).
    config.overlay(json.dumps({
        "model": {"decoder": {"session_options": {"intra_op_num_threads": threads, "inter_op_num_threads": 1}}},
        "search": {"past_present_share_buffer": False},
    }))
    try:
        return og.Model(config)
    except Exception as exc:  # onnxruntime-genai raises RuntimeError/OrtException for a damaged folder
        raise ModelError(f"ONNX Runtime could not load {folder}: {exc}. Delete the folder to convert again.") from exc
