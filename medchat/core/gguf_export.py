"""The GGUF that llama.cpp runs: the base with the adapter merged, layers in the run type; cached by hash.

The base we ship is itself a GGUF (SmolLM2-135M-Instruct, Q4_1). With an adapter, the adapter is merged
into a full-precision (fp32) copy of the base and the layers' weight matrices are written in the run
type; without one, they are converted from the base's own weights. The run type is Q8_0 unless
MEDCHAT_GGUF_TYPE says q4_0 or q4_1, because a LoRA's change to a weight is far smaller than a 4-bit
step: quantizing the merged weights to 4 bits again rounds most of the fine-tune away. Measured with
the shipped adapter (`bench/gguf_formats.py`): answer perplexity 6.93 in Q8_0 against 6.91 for the
merged model in fp32, but 10.82 in Q4_1 and 9.21 in Q4_0, with the base alone at 11.36. Q8_0 is also
the faster of the faithful choices (llama.cpp has no repacked Q4_1 kernels on x86); Q4_0 is the fastest
of all, at that cost. Everything else of the base file is kept: architecture and tokenizer metadata,
chat template, tensor order, the 8-bit token embedding and the fp32 norms (byte for byte). A base whose
layers already have the run type and no adapter is used as it is. Pure Python (the `gguf` package +
numpy): no llama.cpp needed to export.

    path = runnable_gguf(resolve(spec))   # cache_dir()/gguf/<base>-<merged|base>-<type>-<key>.gguf

Supported: Llama-architecture GGUF bases (SmolLM2, TinyLlama, Llama 2/3, Mistral-style).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medchat.core import paths
from medchat.core.fileio import file_sha256, staged_file, write_text_atomic

if TYPE_CHECKING:
    from medchat.core.model import ResolvedModel

EXPORTER_VERSION = 2  # bump when the output for the same inputs changes: invalidates the cache
SUPPORTED_ARCHITECTURES = ("llama",)
RUN_TYPES = ("q4_0", "q4_1", "q8_0")  # what MEDCHAT_GGUF_TYPE may choose for the layers' weight matrices
DEFAULT_RUN_TYPE = "q8_0"  # faithful to the merged model; see the module doc

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


def run_type(name: str | None = None) -> str:
    """The layers' weight type: the argument (ModelSpec.gguf_type, from MEDCHAT_GGUF_TYPE), else q8_0."""
    chosen = (name or DEFAULT_RUN_TYPE).lower()
    if chosen not in RUN_TYPES:
        raise ExportError(f"Unknown GGUF type {chosen!r} (MEDCHAT_GGUF_TYPE); choose one of {', '.join(RUN_TYPES)}.")
    return chosen


def _ggml_type(name: str):
    import gguf

    return gguf.GGMLQuantizationType[name.upper()]


def _is_layer_matrix(tensor) -> bool:
    """A transformer block's weight matrix (attention/MLP projection): what the run type applies to."""
    return tensor.name.startswith("blk.") and len(tensor.shape) == 2 and "_norm" not in tensor.name


def runnable_gguf_path(model: ResolvedModel, qtype: str | None = None) -> Path:
    qtype = run_type(qtype or model.spec.gguf_type)
    kind = "merged" if model.adapter is not None else "base"
    key = hashlib.sha256(f"v{EXPORTER_VERSION}|{qtype}|{model.key()}".encode()).hexdigest()[:16]
    return paths.cache_dir() / "gguf" / f"{model.gguf.stem}-{kind}-{qtype}-{key}.gguf"


def runnable_gguf(model: ResolvedModel, qtype: str | None = None) -> Path:
    """The GGUF to run for the resolved GGUF base (+ adapter) in the run type (see the module doc): made
    once, then reused while the base and adapter files are unchanged. Without an adapter, a base already
    in the run type is returned as it is."""
    import gguf

    qtype = run_type(qtype or model.spec.gguf_type)
    if model.gguf is None:
        raise ExportError(f"{model.spec.base!r} is not a GGUF file; the GGUF export starts from one.")
    if model.adapter is None:
        layers = [t.tensor_type for t in gguf.GGUFReader(str(model.gguf)).tensors if _is_layer_matrix(t)]
        if layers and all(t == _ggml_type(qtype) for t in layers):
            return model.gguf
    target = runnable_gguf_path(model, qtype)
    if target.is_file():
        return target
    return export_gguf(model, target, qtype)


def _merged_state_dict(model: ResolvedModel) -> dict[str, Any]:
    """The adapter-merged weights in fp32, from the resolved model's merged-checkpoint cache."""
    from safetensors.torch import load_file

    folder = Path(model.merged_checkpoint("fp32"))
    state: dict[str, Any] = {}
    for shard in sorted(folder.glob("*.safetensors")):
        state.update(load_file(str(shard)))
    return state


def export_gguf(model: ResolvedModel, target: str | os.PathLike, qtype: str | None = None) -> Path:
    """Write `target`: the base GGUF, layers in `qtype`, the adapter (if any) merged in. Atomic.
    One function for one pass in file order (metadata, then every tensor) through one reader and one writer:
    split, the pieces would hand the open reader, writer and merged weights to each other."""
    import gguf
    import numpy as np

    base_gguf, adapter, target, qtype = model.gguf, model.adapter, Path(target), run_type(qtype)
    layer_type = _ggml_type(qtype)
    reader = gguf.GGUFReader(str(base_gguf))
    arch_field = reader.get_field(gguf.Keys.General.ARCHITECTURE)
    arch = arch_field.contents() if arch_field else None
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ExportError(f"{base_gguf} is a {arch!r} model; the GGUF export supports {', '.join(SUPPORTED_ARCHITECTURES)}.")
    n_head = int(reader.get_field(f"{arch}.attention.head_count").contents())
    kv_field = reader.get_field(f"{arch}.attention.head_count_kv")
    n_head_kv = int(kv_field.contents()) if kv_field else n_head

    changed = adapter_targets(adapter) if adapter is not None else set()
    state_dict = _merged_state_dict(model) if changed else {}
    unknown = sorted(name for name in changed if name not in state_dict)
    if unknown:
        raise ExportError(f"The adapter changes {unknown[0]!r}, which the base model does not have; wrong --base?")

    with staged_file(target) as tmp:
        writer = gguf.GGUFWriter(str(tmp), arch=arch, endianess=reader.endianess)
        for field in reader.fields.values():
            if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
                continue
            if field.name == gguf.Keys.General.FILE_TYPE:
                writer.add_file_type(int(gguf.LlamaFileType[f"MOSTLY_{qtype.upper()}"]))
                continue
            value_type = field.types[0]
            sub_type = field.types[-1] if value_type == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(field.name, field.contents(), value_type, sub_type=sub_type)
        if adapter is not None:
            writer.add_key_value("medchat.adapter_sha256", file_sha256(adapter / "adapter_model.safetensors", memo=paths.hash_memo_file()),
                                 gguf.GGUFValueType.STRING)
        writer.add_key_value("medchat.exporter_version", EXPORTER_VERSION, gguf.GGUFValueType.UINT32)

        for tensor in reader.tensors:
            name = hf_name(tensor.name)
            wanted = layer_type if _is_layer_matrix(tensor) else tensor.tensor_type
            if name in changed:
                weights = state_dict[name].float().numpy()
                if tensor.name.startswith("blk.") and ".attn_q." in tensor.name:
                    weights = permute_qk(weights, n_head, n_head)
                elif tensor.name.startswith("blk.") and ".attn_k." in tensor.name:
                    weights = permute_qk(weights, n_head, n_head_kv)
            elif tensor.tensor_type == wanted:
                writer.add_tensor(tensor.name, np.asarray(tensor.data), raw_dtype=tensor.tensor_type)
                continue
            else:  # unchanged, but in another type: through full precision (llama.cpp layout already)
                weights = gguf.quants.dequantize(np.asarray(tensor.data), tensor.tensor_type)
                weights = weights.reshape(tuple(int(d) for d in reversed(tensor.shape)))
            data, raw_dtype = _encode(weights, wanted)
            writer.add_tensor(tensor.name, data, raw_dtype=raw_dtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    write_text_atomic(target.parent / (target.name + ".json"), json.dumps({
        "base": str(base_gguf), "adapter": str(Path(adapter).resolve()) if adapter is not None else None,
        "changed_tensors": len(changed), "layer_type": qtype, "exporter_version": EXPORTER_VERSION,
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
