"""Adapter merge -> 4-bit GGUF export: what changes, what stays byte-identical, the cache."""

from __future__ import annotations

import numpy as np
import pytest

from medchat import gguf_export

pytestmark = pytest.mark.bundled


@pytest.fixture(scope="module")
def small_adapter(tmp_path_factory):
    """A LoRA with non-zero weights on layer 0's q/k/v projections of the bundled model."""
    import torch
    from peft import LoraConfig, get_peft_model

    from medchat.model import ModelSpec, load

    loaded = load(ModelSpec(dtype="fp32"))
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj"], layers_to_transform=[0],
                        init_lora_weights=False)
    model = get_peft_model(loaded.model, config)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    out = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(out)
    merged = {k: v.detach().clone() for k, v in model.merge_and_unload().state_dict().items()}
    return out, merged


def test_adapter_targets(small_adapter):
    adapter, _ = small_adapter
    assert gguf_export.adapter_targets(adapter) == {
        f"model.layers.0.self_attn.{p}.weight" for p in ("q_proj", "k_proj", "v_proj")
    }


def test_hf_names():
    assert gguf_export.hf_name("blk.3.attn_q.weight") == "model.layers.3.self_attn.q_proj.weight"
    assert gguf_export.hf_name("token_embd.weight") == "model.embed_tokens.weight"
    with pytest.raises(gguf_export.ExportError, match="Llama"):
        gguf_export.hf_name("blk.0.ssm_conv.weight")


def test_export_changes_only_adapted_tensors(small_adapter):
    import gguf
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    from medchat import bundled

    adapter, merged = small_adapter
    base = bundled.find_bundled_gguf()
    first = gguf_export.merged_gguf(base, adapter)
    assert first.is_file() and first.parent.name == "gguf"
    stamp = first.stat().st_mtime_ns
    assert gguf_export.merged_gguf(base, adapter) == first and first.stat().st_mtime_ns == stamp  # cached
    assert gguf_export.merged_gguf(base, None) == base  # no adapter: the base file itself

    exported, original = gguf.GGUFReader(str(first)), gguf.GGUFReader(str(base))
    assert exported.get_field("tokenizer.chat_template").contents() == original.get_field("tokenizer.chat_template").contents()
    assert [t.name for t in exported.tensors] == [t.name for t in original.tensors]
    processor = LlamaTensorProcessor(config={"num_attention_heads": 9, "num_key_value_heads": 3})
    by_name = {t.name: t for t in original.tensors}
    changed = 0
    for tensor in exported.tensors:
        before = by_name[tensor.name]
        assert tensor.tensor_type == before.tensor_type
        same = np.array_equal(np.asarray(tensor.data), np.asarray(before.data))
        if not tensor.name.startswith("blk.0.attn_") or tensor.name == "blk.0.attn_output.weight" \
                or tensor.name == "blk.0.attn_norm.weight":
            assert same, tensor.name
            continue
        changed += 1
        assert not same, tensor.name
        # dequantize, undo llama.cpp's rotary permutation the way transformers does on load,
        # and compare with the merged weights: within one 4-bit quantization step
        values = gguf.quants.dequantize(np.asarray(tensor.data), tensor.tensor_type).reshape(tensor.data.shape[0], -1)
        values = processor.process(values, tensor.name).weights
        target = merged[gguf_export.hf_name(tensor.name)].numpy()
        blocks = target.reshape(-1, 32)
        step = (blocks.max(axis=1) - blocks.min(axis=1)) / 15
        error = np.abs(values.reshape(-1, 32) - blocks).max(axis=1)
        assert (error <= step * 0.51 + 1e-3).all(), tensor.name
    assert changed == 3


def test_cache_key_follows_the_adapter(small_adapter, tmp_path):
    import shutil

    from medchat import bundled

    adapter, _ = small_adapter
    base = bundled.find_bundled_gguf()
    copy = tmp_path / "adapter"
    shutil.copytree(adapter, copy)
    assert gguf_export.merged_gguf_path(base, copy) == gguf_export.merged_gguf_path(base, adapter)
    config = (copy / "adapter_config.json").read_text().replace('"r": 4', '"r": 4 ')
    (copy / "adapter_config.json").write_text(config)
    assert gguf_export.merged_gguf_path(base, copy) != gguf_export.merged_gguf_path(base, adapter)
