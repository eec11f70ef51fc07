"""The ONNX model that ONNX Runtime runs: the (adapter-merged) checkpoint converted once, then cached.

The conversion is onnxruntime-genai's own model builder (`python -m onnxruntime_genai.models.builder`),
run in a child process: it imports its helper modules under generic top-level names (`builders`,
`quantization`) and prints a progress line per tensor, neither of which belongs in the chat's process.
Its input is the resolved model's merged fp32 checkpoint (medchat.core.model.ResolvedModel), so what
runs is the adapter-merged model. The layers' weights are stored in 8 bits by default (MatMulNBits,
block-wise int8): a LoRA's change to a weight is far smaller than a 4-bit step, so 4 bits would round
the fine-tune away (the same reason the GGUF export uses Q8_0); MEDCHAT_ONNX_PRECISION=int4 is faster and
less faithful, fp32 the exact one, and int8+fp32 fp32's greedy answers with int8 drafts (speculative
decoding, onnx_engine: about 1.5x fp32's speed, 0.65x int8's in bench/decode.py; both folders are made, each cached
as below).

    folder = runnable_onnx(resolve(spec))  # cache_dir()/onnx/<name>-<merged|base>-<precision>-<key>/

The key covers the base and adapter contents, the precision, the builder's version and CONVERTER_VERSION.
Beside the ONNX files the folder keeps the Hugging Face tokenizer, config and generation config of the
source (`hf/`), so a warm start reads nothing else, and `medchat_onnx.json` records what was converted.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from medchat.core import paths
from medchat.core.fileio import staged_dir, write_text_atomic

if TYPE_CHECKING:
    from medchat.core.model import ResolvedModel

CONVERTER_VERSION = 1  # bump when the output for the same inputs changes: invalidates the cache
PRECISIONS = ("int8", "int4", "fp32")
DEFAULT_PRECISION = "int8"
# The builder knows more architectures; these are the ones medchat has converted and compared.
SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM",)
RECORD = "medchat_onnx.json"
HF_FILES = ("config.json", "generation_config.json")


class OnnxExportError(Exception):
    """The model cannot be converted to ONNX; the message says why and what to do."""


def precisions(name: str | None = None) -> tuple[str, str | None]:
    """(the precision whose model picks the tokens, that of a draft model or None): the argument
    (ModelSpec.onnx_precision, from MEDCHAT_ONNX_PRECISION), else int8. "DRAFT+PRECISION", e.g.
    int8+fp32: the fp32 model's greedy answers, drafted by the int8 one (onnx_engine: speculative)."""
    chosen = (name or DEFAULT_PRECISION).lower()
    draft, _, verified = chosen.rpartition("+")
    if verified not in PRECISIONS or (draft and (draft not in PRECISIONS or draft == verified)):
        raise OnnxExportError(
            f"Unknown ONNX precision {chosen!r} (MEDCHAT_ONNX_PRECISION); choose one of {', '.join(PRECISIONS)}, "
            "or a draft's and the model's joined by '+' (int8+fp32).")
    return verified, draft or None


def precision(name: str | None = None) -> str:
    """The precision of the model that picks the tokens (see precisions: for int8+fp32, fp32)."""
    return precisions(name)[0]


def builder_version() -> str:
    from importlib.metadata import version

    return version("onnxruntime-genai")


def runnable_onnx_dir(model: ResolvedModel, chosen: str | None = None) -> Path:
    chosen = precision(chosen or model.spec.onnx_precision)
    key = hashlib.sha256(f"v{CONVERTER_VERSION}|{builder_version()}|{chosen}|{model.key()}".encode()).hexdigest()[:16]
    name = model.gguf.stem if model.gguf is not None else Path(model.base_path).name
    kind = "merged" if model.adapter is not None else "base"
    return paths.cache_dir() / "onnx" / f"{name}-{kind}-{chosen}-{key}"


def is_converted(folder: Path) -> bool:
    return (folder / RECORD).is_file()


def runnable_onnx(model: ResolvedModel, chosen: str | None = None) -> Path:
    """The converted model folder for base (+ adapter): made once, then reused while nothing changed."""
    chosen = precision(chosen or model.spec.onnx_precision)
    target = runnable_onnx_dir(model, chosen)
    if is_converted(target):
        return target
    source = Path(model.merged_checkpoint("fp32"))  # the base itself when there is no adapter
    if not source.is_dir():
        raise OnnxExportError(f"The ONNX backend converts a local checkpoint; {model.spec.base!r} is not one "
                              "(download it with `hf download` and pass the directory, or use --backend torch).")
    with staged_dir(target) as staging:  # over an earlier, unfinished or concurrent conversion
        seconds = _build(source, staging, precision(chosen), model.trust_remote_code)
        _save_hf_side(source, staging / "hf", model.trust_remote_code)
        write_text_atomic(staging / RECORD, json.dumps({
            "source": str(source), "base": model.spec.base,
            "adapter": str(model.adapter) if model.adapter is not None else None,
            "precision": precision(chosen), "builder": f"onnxruntime-genai {builder_version()}",
            "converter_version": CONVERTER_VERSION, "params": _count_params(source),
            "convert_seconds": round(seconds, 1),
        }, indent=2))
    return target


def _build(source: Path, out: Path, chosen: str, trust_remote_code: bool) -> float:
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="medchat-onnx-") as scratch:
        command = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(source), "-o", str(out),
                   "-p", chosen, "-e", "cpu", "-c", scratch]
        if trust_remote_code:
            command += ["--extra_options", "hf_remote=true"]
        done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if done.returncode != 0:
        lines = [line for line in (done.stderr or done.stdout).splitlines() if line.strip()]
        raise OnnxExportError(f"Converting {source} to ONNX failed: {lines[-1] if lines else f'exit {done.returncode}'}. "
                              "Use --backend torch for this model.")
    return time.perf_counter() - started


def _save_hf_side(source: Path, out: Path, trust_remote_code: bool) -> None:
    """What the engine reads through transformers: the tokenizer and chat template, EOS and context length."""
    from transformers import AutoTokenizer

    from medchat.core.model import _quiet_transformers

    _quiet_transformers()
    AutoTokenizer.from_pretrained(str(source), trust_remote_code=trust_remote_code).save_pretrained(out)
    for name in HF_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, out / name)


def _count_params(source: Path) -> int:
    from safetensors import safe_open

    total = 0
    for shard in sorted(source.glob("*.safetensors")):
        with safe_open(str(shard), framework="np") as handle:
            for key in handle.keys():
                count = 1
                for size in handle.get_slice(key).get_shape():
                    count *= size
                total += count
    return total


def record(folder: Path) -> dict:
    return json.loads((folder / RECORD).read_text())
