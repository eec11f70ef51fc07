"""Export an adapter-merged model as a GGUF file that llama.cpp runs, cached by content hash.

The base we ship is itself a GGUF (SmolLM2-135M-Instruct, Q4_1). We merge the LoRA adapter into a
full-precision (fp32) copy of the base -- never into the 4-bit weights -- and write a new GGUF that
keeps everything of the base file (architecture and tokenizer metadata, chat template, tensor order
and quantization types) except the tensors the adapter changed, which are quantized again from the
merged fp32 weights with the base's own type (Q4_1 here). Tensors the adapter does not touch are
copied byte for byte. Pure Python (the `gguf` package + numpy): no llama.cpp needed to export.

    path = merged_gguf(base_gguf, adapter_dir)   # cache_dir()/gguf/<base>-<hash>.gguf

Supported: Llama-architecture GGUF bases (SmolLM2, TinyLlama, Llama 2/3, Mistral-style).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from medchat import paths

EXPORTER_VERSION = 1  # bump when the output for the same inputs changes: invalidates the cache
SUPPORTED_ARCHITECTURES = ("llama",)

# GGUF tensor name -> Hugging Face Llama parameter name
_LAYER_MAP = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GLOBAL_MAP = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK = re.compile(r"^blk\.(\d+)\.(\w+)\.weight$")


class ExportError(Exception):
    """The model cannot be exported to GGUF; the message says why and what to do."""


def hf_name(gguf_name: str) -> str:
    if gguf_name in _GLOBAL_MAP:
        return _GLOBAL_MAP[gguf_name]
    match = _BLOCK.match(gguf_name)
    if not match or match.group(2) not in _LAYER_MAP:
        raise ExportError(f"Tensor {gguf_name!r} has no known Llama counterpart; only Llama GGUFs can be exported.")
    return f"model.layers.{match.group(1)}.{_LAYER_MAP[match.group(2)]}.weight"


def permute_qk(weights, n_head: int, n_head_kv: int | None = None):
    """llama.cpp's rotary layout for q/k projections (the inverse of what transformers does on load)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def adapter_targets(adapter: str | os.PathLike) -> set[str]:
    """HF parameter names (e.g. model.layers.0.self_attn.q_proj.weight) that merging the adapter changes."""
    from safetensors import safe_open

    weights = Path(adapter) / "adapter_model.safetensors"
    changed: set[str] = set()
    with safe_open(str(weights), framework="pt") as handle:
        for key in handle.keys():
            name = key.removeprefix("base_model.model.")
            if ".lora_A." in name or ".lora_B." in name or ".lora_embedding_A" in name or ".lora_embedding_B" in name:
                module = re.split(r"\.lora_(?:embedding_)?[AB]", name)[0]
                changed.add(f"{module}.weight")
            elif ".modules_to_save." in name or name.endswith((".weight", ".bias")):
                changed.add(name.replace(".modules_to_save.default", "").replace(".modules_to_save", ""))
    return changed


def _sha256(path: Path) -> str:
    from medchat.bundled import file_sha256

    return file_sha256(path)


def cache_key(base_gguf: Path, adapter: str | os.PathLike) -> str:
    adapter = Path(adapter)
    digest = hashlib.sha256()
    digest.update(f"v{EXPORTER_VERSION}|".encode())
    digest.update(_sha256(base_gguf).encode())
    digest.update(_sha256(adapter / "adapter_model.safetensors").encode())
    digest.update((adapter / "adapter_config.json").read_bytes())
    return digest.hexdigest()[:16]


def merged_gguf_path(base_gguf: Path, adapter: str | os.PathLike) -> Path:
    return paths.cache_dir() / "gguf" / f"{Path(base_gguf).stem}-merged-{cache_key(Path(base_gguf), adapter)}.gguf"


def merged_gguf(base_gguf: str | os.PathLike, adapter: str | os.PathLike | None) -> Path:
    """The GGUF to run for base (+ adapter): the base file itself without an adapter, else the merged
    export (made once, then reused while the base and adapter files are unchanged)."""
    base_gguf = Path(base_gguf)
    if adapter is None:
        return base_gguf
    target = merged_gguf_path(base_gguf, adapter)
    if target.is_file():
        return target
    return export_merged(base_gguf, adapter, target)


def _merged_state_dict(base_gguf: Path, adapter: str | os.PathLike) -> dict[str, Any]:
    from medchat.model import ModelSpec, load

    spec = ModelSpec(base=str(base_gguf), adapter=str(adapter), merge=True, quantization="none", device="cpu",
                     dtype="fp32")
    loaded = load(spec)
    return {k: v.detach() for k, v in loaded.model.state_dict().items()}


def export_merged(base_gguf: str | os.PathLike, adapter: str | os.PathLike, target: str | os.PathLike,
                  state_dict: dict[str, Any] | None = None) -> Path:
    """Write `target`: the base GGUF with the adapter merged in (see the module doc). Atomic."""
    import gguf
    import numpy as np

    base_gguf, target = Path(base_gguf), Path(target)
    reader = gguf.GGUFReader(str(base_gguf))
    arch_field = reader.get_field(gguf.Keys.General.ARCHITECTURE)
    arch = arch_field.contents() if arch_field else None
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ExportError(f"{base_gguf} is a {arch!r} model; the GGUF export supports {', '.join(SUPPORTED_ARCHITECTURES)}.")
    n_head = int(reader.get_field(f"{arch}.attention.head_count").contents())
    kv_field = reader.get_field(f"{arch}.attention.head_count_kv")
    n_head_kv = int(kv_field.contents()) if kv_field else n_head

    changed = adapter_targets(adapter)
    if state_dict is None:
        state_dict = _merged_state_dict(base_gguf, adapter)
    unknown = sorted(name for name in changed if name not in state_dict)
    if unknown:
        raise ExportError(f"The adapter changes {unknown[0]!r}, which the base model does not have; wrong --base?")

    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        writer = gguf.GGUFWriter(str(tmp), arch=arch, endianess=reader.endianess)
        for field in reader.fields.values():
            if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
                continue
            value_type = field.types[0]
            sub_type = field.types[-1] if value_type == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(field.name, field.contents(), value_type, sub_type=sub_type)
        writer.add_key_value("medchat.adapter_sha256", _sha256(Path(adapter) / "adapter_model.safetensors"),
                             gguf.GGUFValueType.STRING)
        writer.add_key_value("medchat.exporter_version", EXPORTER_VERSION, gguf.GGUFValueType.UINT32)

        for tensor in reader.tensors:
            name = hf_name(tensor.name)
            if name not in changed:
                writer.add_tensor(tensor.name, np.asarray(tensor.data), raw_dtype=tensor.tensor_type)
                continue
            weights = state_dict[name].float().numpy()
            if tensor.name.startswith("blk.") and ".attn_q." in tensor.name:
                weights = permute_qk(weights, n_head, n_head)
            elif tensor.name.startswith("blk.") and ".attn_k." in tensor.name:
                weights = permute_qk(weights, n_head, n_head_kv)
            data, raw_dtype = _encode(weights, tensor.tensor_type)
            writer.add_tensor(tensor.name, data, raw_dtype=raw_dtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    (target.parent / (target.name + ".json")).write_text(json.dumps({
        "base": str(base_gguf), "adapter": str(Path(adapter).resolve()), "changed_tensors": len(changed),
        "exporter_version": EXPORTER_VERSION,
    }, indent=2))
    return target


def _encode(weights, qtype):
    """(data, raw_dtype) for GGUFWriter.add_tensor in the given GGML type (Q8_0 if numpy can't make it)."""
    import gguf
    import numpy as np

    T = gguf.GGMLQuantizationType
    if qtype == T.F32:
        return weights.astype(np.float32), None
    if qtype == T.F16:
        return weights.astype(np.float16), None
    try:
        return gguf.quants.quantize(np.ascontiguousarray(weights, dtype=np.float32), qtype), qtype
    except (NotImplementedError, gguf.quants.QuantError):
        return gguf.quants.quantize(np.ascontiguousarray(weights, dtype=np.float32), T.Q8_0), T.Q8_0
