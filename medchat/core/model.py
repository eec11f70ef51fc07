"""The one model loader shared by the chat app, the trainer and the metrics.

    resolve(ModelSpec(base=..., adapter=...)) -> ResolvedModel   # what every backend and the trainer take
    load(spec or resolved) -> Loaded(model, tokenizer, info)     # the transformers model

A spec is resolved once: the base (a GGUF base becomes a safetensors checkpoint, converted once), the
adapter and its config (read once), the cache key of base + adapter, and the trust setting. With an
adapter, the merged model is cached on disk (`ResolvedModel.merged_checkpoint`), so only the first start
merges. Safe by default: safetensors only, trust_remote_code=False unless the spec asks for it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import socket
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from medchat.core import bundled, paths
from medchat.core.errors import MedchatError
from medchat.core.fileio import file_sha256, staged_dir
from medchat.core.tokens import context_length, ensure_pad_token

QUANTIZATIONS = ("auto", "nf4", "none")
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "bf16", "fp16", "fp32")
BACKENDS = ("auto", "torch", "onnx", "llamacpp")  # generation backend; see medchat.core.fastdecode
BUNDLED = "bundled"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


class ModelError(MedchatError):
    """A model could not be loaded. The message names the thing and says what to do."""


@dataclass(frozen=True)
class ModelSpec:
    base: str = BUNDLED  # "bundled", a Hub id, a local directory or a .gguf file
    adapter: str | None = None  # a LoRA adapter directory
    merge: bool = True  # merge the adapter into the (bf16/fp32) base weights; see quantize_merged for NF4
    quantization: str = "auto"  # auto = 4-bit NF4 on CUDA, none on CPU; nf4 on CPU only with device="cpu"
    device: str = "auto"
    dtype: str = "auto"
    trust_remote_code: bool = False
    backend: str = "auto"  # auto = on CPU llama.cpp when installed for a GGUF base, else ONNX Runtime; torch on CUDA
    # With NF4 the adapter stays unmerged on the 4-bit base (as QLoRA trains it): merging first and then
    # quantizing rounds most of a LoRA's delta away (bench/nf4_fidelity.py). True = merge in full precision,
    # cache that, quantize it (one model, no LoRA matmuls, at that cost). Never merged into 4-bit weights.
    quantize_merged: bool = False
    # The fast backends' own choices (None: their defaults): decoding threads, the llama.cpp GGUF's layer
    # weight type (gguf_export.RUN_TYPES), the ONNX weights' precision (onnx_export.PRECISIONS).
    threads: int | None = None
    gguf_type: str | None = None
    onnx_precision: str | None = None

    def __post_init__(self) -> None:
        for name, allowed in (("quantization", QUANTIZATIONS), ("device", DEVICES), ("dtype", DTYPES),
                              ("backend", BACKENDS)):
            if getattr(self, name) not in allowed:
                raise ModelError(f"Unknown {name} {getattr(self, name)!r}; choose one of {', '.join(allowed)}.")


@dataclass
class ModelInfo:
    base: str
    base_path: str
    adapter: str | None
    merged: bool
    quantization: str
    device: str
    dtype: str
    params_total: int
    params_trainable: int
    load_seconds: float
    context_length: int
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def adapter_name(self) -> str:
        """The adapter as people name it: its run when the folder is a run's `adapter/` (else the folder)."""
        if not self.adapter:
            return "no adapter"
        path = Path(self.adapter)
        name = path.parent.name if path.name == "adapter" and path.parent.name else path.name
        return f"{name} ({'merged' if self.merged else 'unmerged'})"

    def summary(self) -> str:
        quantization = self.quantization + (" (slow on CPU)" if self.quantization == "nf4" and self.device == "cpu" else "")
        return (
            f"{self.base} + {self.adapter_name} | {quantization} | {self.device} {self.dtype} | "
            f"{self.params_total / 1e6:.1f}M params | loaded in {self.load_seconds:.1f}s"
        )


@dataclass
class Loaded:
    model: Any
    tokenizer: Any
    info: ModelInfo


# ---------------------------------------------------------------- choices


def cuda_available() -> bool:
    """Without a GPU driver's device nodes no CUDA (or ROCm) device can be used: answered without importing
    torch, which alone takes seconds (the chat's start on CPU needs no torch at all)."""
    if "torch" not in sys.modules and not any(Path(p).exists() for p in _GPU_NODES):
        return False
    import torch

    return torch.cuda.is_available()


_GPU_NODES = ("/dev/nvidiactl", "/dev/nvidia0", "/proc/driver/nvidia", "/dev/kfd", "/dev/dxg")


def cpu_supports_bf16() -> bool:
    """bf16 is fast on CPUs with native bf16 instructions (AVX512-BF16 / AMX); elsewhere it is emulated."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if cuda_available() else "cpu"
    if device == "cuda" and not cuda_available():
        raise ModelError("CUDA was requested (--device cuda) but no CUDA GPU is visible; use --device cpu.")
    return device


def resolve_dtype(dtype: str, device: str) -> str:
    if dtype != "auto":
        return dtype
    if device == "cuda":
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_supports_bf16() else "fp32"


CPU_NF4_NOTE = "4-bit NF4 on CPU runs on bitsandbytes' CPU kernels, which are slow; --quantization none is faster here."


def resolve_quantization(quantization: str, device: str, requested_device: str | None = None) -> str:
    """auto = NF4 only on CUDA. Explicit nf4 on CPU is allowed when the CPU was asked for too (it is slow)."""
    if quantization == "auto":
        return "nf4" if device == "cuda" and _bitsandbytes_ok() else "none"
    if quantization == "nf4":
        if not _bitsandbytes_ok():
            raise ModelError("4-bit NF4 needs bitsandbytes: `pip install bitsandbytes`, or use --quantization none.")
        if device != "cuda" and (requested_device or device) != "cpu":
            raise ModelError(
                "4-bit NF4 (--quantization nf4) without a CUDA GPU runs on bitsandbytes' slow CPU kernels; "
                "pass --device cpu as well to use it anyway, or use --quantization none."
            )
    return quantization


def _bitsandbytes_ok() -> bool:
    try:
        import bitsandbytes  # noqa: F401
    except Exception:
        return False
    return True


def torch_dtype(name: str):
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


# ---------------------------------------------------------------- resolution

MERGE_VERSION = 1  # bump when a merge writes something else for the same inputs: invalidates the cache


@dataclass
class ResolvedModel:
    """A spec resolved once: the base, the adapter and its config, the key that names what is derived from
    them (merged checkpoint, GGUF, ONNX model) and the trust setting. Every backend and the trainer take it."""

    spec: ModelSpec
    gguf: Path | None  # the GGUF file the base comes from (the bundled model, --base FILE.gguf), else None
    adapter: Path | None
    adapter_config: dict[str, Any] | None
    _base_path: str | None = field(default=None, repr=False)  # a GGUF base is converted on first use

    @property
    def trust_remote_code(self) -> bool:
        return self.spec.trust_remote_code

    @property
    def base_path(self) -> str:
        """The base as from_pretrained takes it: a checkpoint directory or a Hub id."""
        if self._base_path is None:
            self._base_path = str(_bundled_call(bundled.ensure_converted, self.gguf))
        return self._base_path

    def tokenizer_dir(self) -> str:
        """Where the tokenizer (and chat template, EOS and context length) is read from. A GGUF base whose
        weights were never converted gives its tokenizer alone (small and quick), not a whole checkpoint."""
        if self.gguf is not None and self._base_path is None and not bundled.is_converted(self.gguf):
            return str(_bundled_call(bundled.ensure_tokenizer, self.gguf))
        return self.base_path

    def key(self) -> str:
        """Names base + adapter in the caches of what is made from them: content hashes, not paths."""
        digest = hashlib.sha256(self._base_identity().encode())
        if self.adapter is not None:
            digest.update(file_sha256(self.adapter / "adapter_model.safetensors", memo=paths.hash_memo_file()).encode())
            digest.update((self.adapter / "adapter_config.json").read_bytes())
        return digest.hexdigest()[:16]

    def _base_identity(self) -> str:
        if self.gguf is not None:
            return "gguf:" + file_sha256(self.gguf, memo=paths.hash_memo_file())
        folder = Path(self.base_path)
        if folder.is_dir():  # a local checkpoint: its weight files as they are now
            stamps = [f"{w.name}:{w.stat().st_size}:{w.stat().st_mtime_ns}" for w in sorted(folder.glob("*.safetensors"))]
            return f"dir:{folder.resolve()}|" + "|".join(stamps)
        return "hub:" + self.base_path

    def merged_checkpoint(self, dtype: str = "fp32") -> str:
        """The base with the adapter merged (in fp32), saved in `dtype` once and reused while base and
        adapter are unchanged: a warm start loads it as a plain model, with no LoRA and no merge."""
        if self.adapter is None:
            return self.base_path
        target = paths.cache_dir() / "merged" / f"{self.key()}-{dtype}-v{MERGE_VERSION}"
        if (target / "config.json").is_file():
            return str(target)
        _quiet_transformers()
        model, tokenizer = _from_pretrained(self.spec, self.base_path, "fp32", "none", "cpu")
        model = _attach_adapter(model, self).merge_and_unload()
        write_merged(Loaded(model=model.to(torch_dtype(dtype)), tokenizer=tokenizer, info=None), target)
        return str(target)


def resolve(spec: ModelSpec) -> ResolvedModel:
    """Check the spec's files and say where everything is (cheap: nothing is converted or loaded here)."""
    adapter = config = None
    if spec.adapter:
        adapter = Path(spec.adapter).expanduser()
        config = read_adapter_config(adapter)
        _check_adapter_weights(adapter)
    gguf, base_path = _locate_base(spec.base)
    return ResolvedModel(spec=spec, gguf=gguf, adapter=adapter, adapter_config=config, _base_path=base_path)


def _bundled_call(function, *args):
    try:
        return function(*args)
    except bundled.BundledModelError as exc:
        raise ModelError(str(exc)) from exc


def _locate_base(base: str) -> tuple[Path | None, str | None]:
    """(the GGUF file, None) for a GGUF base, else (None, a local directory or a Hub id)."""
    if base == BUNDLED:
        return _bundled_call(bundled.find_bundled_gguf), None
    path = Path(base).expanduser()
    if base.endswith(".gguf"):
        if not path.is_file():
            raise ModelError(f"GGUF file not found: {path}. Check the path passed as --base.")
        return path, None
    if path.exists():
        if not path.is_dir():
            raise ModelError(f"{path} is neither a model directory nor a .gguf file.")
        if not (path / "config.json").is_file():
            raise ModelError(f"{path} has no config.json, so it is not a model directory.")
        return None, str(path)
    if _HUB_ID.match(base) and not base.startswith((".", "/", "~")):
        return None, base
    raise ModelError(f"Model path does not exist: {path}. Pass an existing directory, a .gguf file or a Hub id.")


def resolve_base(base: str) -> str:
    """The spec's base as from_pretrained takes it (a GGUF base converted once)."""
    return resolve(ModelSpec(base=base)).base_path


@functools.cache
def hub_unreachable(timeout: float = 3.0) -> str | None:
    """Why the Hub cannot be used (HF_HUB_OFFLINE, or its host does not answer within `timeout`), else None.

    Asked once per process: without it, an offline machine retries every file for about a minute, printing
    each retry, before it fails."""
    # HF_* are huggingface_hub's own variables: read here to say in advance what the library will do.
    offline = os.environ.get("HF_HUB_OFFLINE", "")
    if offline.lower() in ("1", "true", "yes", "on"):
        return f"HF_HUB_OFFLINE={offline} is set"
    from urllib.parse import urlparse

    from huggingface_hub import constants

    url = urlparse(os.environ.get("HF_ENDPOINT") or constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
    except OSError:
        return f"{url.hostname} is not reachable"
    return None


def hub_kwargs(base_path: str) -> dict[str, Any]:
    """from_pretrained arguments for `base_path`: a Hub id is read from the local cache alone when the Hub is
    unreachable (a local directory needs nothing)."""
    if Path(base_path).exists() or hub_unreachable() is None:
        return {}
    return {"local_files_only": True}


def _hub_error(base: str, exc: Exception) -> ModelError:
    why = hub_unreachable()
    return ModelError(
        f"Could not load {base!r} from the Hugging Face Hub"
        f"{f' ({why}, and it is not in the local cache)' if why else ' (no such model, or no access)'}: "
        f"{str(exc).splitlines()[0]} "
        "Download it where you have internet (`hf download " + base + "`) and pass the local directory, "
        "or use the bundled default (--base bundled)."
    )


# ---------------------------------------------------------------- adapters


def read_adapter_config(adapter: str | Path) -> dict[str, Any]:
    folder = Path(adapter).expanduser()
    if not folder.is_dir():
        raise ModelError(f"Adapter directory not found: {folder}. Pass a directory made by `medchat-train`.")
    config_file = folder / "adapter_config.json"
    if not config_file.is_file():
        raise ModelError(f"{folder} holds no adapter_config.json, so it is not a LoRA adapter directory.")
    if not (folder / "adapter_model.safetensors").is_file():
        pickled = (folder / "adapter_model.bin").is_file()
        raise ModelError(
            f"{folder} has no adapter_model.safetensors"
            + (" (only a pickle .bin, which medchat refuses to load for safety; re-save it with safetensors)" if pickled else "")
            + "."
        )
    try:
        return json.loads(config_file.read_text())
    except ValueError as exc:
        raise ModelError(f"{config_file} is not valid JSON ({exc}); the adapter is corrupt, re-export it.") from exc


def _check_adapter_weights(adapter: str | Path) -> None:
    from safetensors import safe_open

    weights = Path(adapter).expanduser() / "adapter_model.safetensors"
    try:
        with safe_open(str(weights), framework="numpy") as handle:  # "pt" would import torch: seconds
            for key in handle.keys():
                handle.get_slice(key)
    except Exception as exc:
        raise ModelError(f"{weights} is corrupt ({exc}); re-export the adapter or train it again.") from exc


def _attach_adapter(model, resolved: ResolvedModel):
    from peft import PeftModel

    trained_on = resolved.adapter_config.get("base_model_name_or_path") or "unknown"
    try:
        return PeftModel.from_pretrained(model, str(resolved.adapter), is_trainable=False)
    except (RuntimeError, ValueError, KeyError) as exc:
        raise ModelError(
            f"The adapter {resolved.adapter} does not fit the base {resolved.spec.base!r} (it was trained on "
            f"{trained_on!r}): {str(exc).splitlines()[0][:300]}. Pass the matching --base."
        ) from exc


# ---------------------------------------------------------------- load


def load(model: ModelSpec | ResolvedModel) -> Loaded:
    """Load base (+ adapter) as the spec says. Raises ModelError with a readable message.

    A merged adapter comes from the merged-model cache; unmerged (merge=False, or on an NF4 base as QLoRA
    trains it) it is attached with PEFT."""
    started = time.perf_counter()
    _quiet_transformers()
    resolved = model if isinstance(model, ResolvedModel) else resolve(model)
    spec = resolved.spec
    device = resolve_device(spec.device)
    dtype = resolve_dtype(spec.dtype, device)
    quantization = resolve_quantization(spec.quantization, device, spec.device)
    extra: dict[str, Any] = {}
    if quantization == "nf4" and device == "cpu":
        extra["notes"] = [CPU_NF4_NOTE]

    # Never merge into 4-bit weights: with quantize_merged the full-precision merge is quantized instead.
    merged = bool(resolved.adapter) and spec.merge and (quantization != "nf4" or spec.quantize_merged)
    if merged:
        base_path = resolved.merged_checkpoint(dtype if quantization != "nf4" else ("fp32" if dtype == "fp32" else "bf16"))
    else:
        base_path = resolved.base_path
    model, tokenizer = _from_pretrained(spec, base_path, dtype, quantization, device)
    if resolved.adapter and not merged:
        model = _attach_adapter(model, resolved)
        if quantization == "nf4":
            extra["adapter_mode"] = "LoRA kept unmerged on the NF4 base (as QLoRA trains it)"
    model.eval()
    info = ModelInfo(
        base=spec.base,
        base_path=base_path,
        adapter=str(resolved.adapter) if resolved.adapter else None,
        merged=merged,
        quantization=quantization,
        device=device,
        dtype=dtype,
        params_total=sum(p.numel() for p in model.parameters()),
        params_trainable=sum(p.numel() for p in model.parameters() if p.requires_grad),
        load_seconds=round(time.perf_counter() - started, 3),
        context_length=context_length(getattr(model.config, "max_position_embeddings", None), tokenizer),
        extra=extra,
    )
    return Loaded(model=model, tokenizer=tokenizer, info=info)


def _from_pretrained(spec: ModelSpec, base_path: str, dtype: str, quantization: str, device: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {
        "dtype": torch_dtype(dtype),
        "trust_remote_code": spec.trust_remote_code,
        "use_safetensors": True,
    }
    if quantization == "nf4":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch_dtype(dtype),
            # FSDP shards the 4-bit weights together with the others only if they are stored in the same dtype
            # (ACCELERATE_USE_FSDP and LOCAL_RANK are set per process by the launcher, not by the user).
            **({"bnb_4bit_quant_storage": torch_dtype(dtype)} if os.environ.get("ACCELERATE_USE_FSDP") == "true"
               else {}),
        )
        # Under `accelerate launch` each process loads onto its own GPU.
        kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", "0")) if device == "cuda" else "cpu"}
    try:
        hub = hub_kwargs(base_path)
        tokenizer = AutoTokenizer.from_pretrained(base_path, trust_remote_code=spec.trust_remote_code, **hub)
        model = AutoModelForCausalLM.from_pretrained(base_path, **kwargs, **hub)
    except OSError as exc:
        if not Path(base_path).exists():
            raise _hub_error(spec.base, exc) from exc
        raise ModelError(f"Could not load the model in {base_path}: {exc}") from exc
    except ValueError as exc:
        raise ModelError(f"Could not load {spec.base!r}: {exc}") from exc
    if quantization != "nf4":
        model.to(device)
    elif device == "cpu":
        _guard_cpu_packing(model)
    return model, ensure_pad_token(tokenizer)


def _guard_cpu_packing(model) -> None:
    """bitsandbytes repacks a 4-bit layer for its AVX512-BF16 CPU kernel on the first eval-mode forward.
    That kernel needs out_features % 32 == 0 and in_features % blocksize == 0 (else the repack crashes),
    and it has no backward: a layer repacked by an evaluation inside a QLoRA run trains no more (measured:
    the loss freezes). Keep the generic kernel where the shape does not fit; the trainer turns the
    repack off everywhere (disable_cpu_packing)."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            weight = module.weight
            state = getattr(weight, "quant_state", None)
            blocksize = getattr(state, "blocksize", 64) or 64
            if module.out_features % 32 or module.in_features % blocksize:
                module.support_avx512bf16_for_cpu = False


def disable_cpu_packing(model) -> int:
    """Training on CPU in NF4: keep every 4-bit layer on the kernel that has a backward (see above)."""
    count = 0
    for module in model.modules():
        if getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False
            count += 1
    return count


def write_merged(loaded: Loaded, target: Path) -> Path:
    """Save a merged model + tokenizer atomically (the trainer's `merge` command uses this too)."""
    with staged_dir(target) as staging:
        loaded.model.save_pretrained(staging, safe_serialization=True)
        loaded.tokenizer.save_pretrained(staging)
    return target


def _quiet_transformers() -> None:
    """Progress bars for a sub-second load are noise in a terminal app."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
