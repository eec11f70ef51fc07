"""Adapter merge -> 4-bit GGUF export: what changes, what stays byte-identical, the run type, the cache."""

from __future__ import annotations

import numpy as np
import pytest

from medchat.core import gguf_export

pytestmark = pytest.mark.bundled


def _resolved(base, adapter):
    from medchat.core.model import ModelSpec, resolve

    return resolve(ModelSpec(base=str(base), adapter=str(adapter) if adapter is not None else None))


@pytest.fixture(scope="module")
def small_adapter(tmp_path_factory):
    """A LoRA with non-zero weights on layer 0's q/k/v projections of the bundled model."""
    import torch
    from peft import LoraConfig, get_peft_model

    from medchat.core.model import ModelSpec, load

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


def _within_one_step(values, target, qtype):
    """Each 32-value block of `values` is within the rounding error of one quantization of `target`."""
    import gguf

    T = gguf.GGMLQuantizationType
    blocks = target.reshape(-1, 32)
    if qtype == T.Q4_1:  # step (max - min) / 15, rounded to the nearest level
        bound = (blocks.max(axis=1) - blocks.min(axis=1)) / 15 * 0.51
    elif qtype == T.Q8_0:  # step max|x| / 127, rounded to the nearest level
        bound = np.abs(blocks).max(axis=1) / 127 * 0.51
    else:  # Q4_0: step max|x| / 8 and levels -8..7, so the value opposite the extreme may be a whole step off
        bound = np.abs(blocks).max(axis=1) / 8 * 1.01
    error = np.abs(values.reshape(-1, 32) - blocks).max(axis=1)
    return bool((error <= bound + 1e-3).all())


def _dequantized(tensor):
    import gguf

    return gguf.quants.dequantize(np.asarray(tensor.data), tensor.tensor_type).reshape(tensor.data.shape[0], -1)


def test_export_in_the_base_type_changes_only_adapted_tensors(small_adapter):
    import gguf
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    from medchat.core import bundled

    adapter, merged = small_adapter
    base = bundled.find_bundled_gguf()
    first = gguf_export.runnable_gguf(_resolved(base, adapter), "q4_1")
    assert first.is_file() and first.parent.name == "gguf"
    stamp = first.stat().st_mtime_ns
    assert gguf_export.runnable_gguf(_resolved(base, adapter), "q4_1") == first and first.stat().st_mtime_ns == stamp  # cached
    assert gguf_export.runnable_gguf(_resolved(base, None), "q4_1") == base  # no adapter, already that type: the base itself

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
        values = processor.process(_dequantized(tensor), tensor.name).weights
        target = merged[gguf_export.hf_name(tensor.name)].numpy()
        assert _within_one_step(values, target, tensor.tensor_type), tensor.name
    assert changed == 3


@pytest.mark.parametrize("qtype", ["q8_0", "q4_0"])
def test_run_type_applies_to_every_layer_matrix(small_adapter, qtype):
    import gguf
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    from medchat.core import bundled

    wanted = gguf.GGMLQuantizationType[qtype.upper()]
    adapter, merged = small_adapter
    base = bundled.find_bundled_gguf()
    original = {t.name: t for t in gguf.GGUFReader(str(base)).tensors}
    processor = LlamaTensorProcessor(config={"num_attention_heads": 9, "num_key_value_heads": 3})
    for path, adapted in ((gguf_export.runnable_gguf(_resolved(base, adapter), qtype), True),
                          (gguf_export.runnable_gguf(_resolved(base, None), qtype), False)):
        assert path != base and path.name.endswith(".gguf") and f"-{qtype}-" in path.name
        reader = gguf.GGUFReader(str(path))
        assert gguf.LlamaFileType(int(reader.get_field("general.file_type").contents())).name == f"MOSTLY_{qtype.upper()}"
        for tensor in reader.tensors:
            before = original[tensor.name]
            if not (tensor.name.startswith("blk.") and len(tensor.shape) == 2 and "_norm" not in tensor.name):
                # the 8-bit embedding and the fp32 norms are copied byte for byte
                assert tensor.tensor_type == before.tensor_type, tensor.name
                assert np.array_equal(np.asarray(tensor.data), np.asarray(before.data)), tensor.name
                continue
            assert tensor.tensor_type == wanted, tensor.name
            if adapted and tensor.name in ("blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.0.attn_v.weight"):
                values = processor.process(_dequantized(tensor), tensor.name).weights
                target = merged[gguf_export.hf_name(tensor.name)].numpy()
            else:  # unchanged by the adapter: the base's own values, in llama.cpp's layout
                values, target = _dequantized(tensor), _dequantized(before)
            assert _within_one_step(values, target, wanted), tensor.name


def test_default_run_type_is_8_bit(monkeypatch):
    monkeypatch.setenv("MEDCHAT_GGUF_TYPE", "q4_0")  # the core reads no MEDCHAT_* variable; the spec carries it
    assert gguf_export.run_type() == "q8_0"


def test_run_type_choice():
    assert gguf_export.run_type("Q8_0") == "q8_0"
    assert gguf_export.run_type("q4_1") == "q4_1"
    with pytest.raises(gguf_export.ExportError, match="MEDCHAT_GGUF_TYPE.*q4_0, q4_1, q8_0"):
        gguf_export.run_type("q3_k")


def test_the_specs_gguf_type_names_the_runnable_file(small_adapter):
    from medchat.core.model import ModelSpec, resolve

    adapter, _ = small_adapter
    assert "-q4_1-" in gguf_export.runnable_gguf_path(resolve(ModelSpec(adapter=str(adapter), gguf_type="q4_1"))).name
    assert "-q8_0-" in gguf_export.runnable_gguf_path(resolve(ModelSpec(adapter=str(adapter)))).name


def test_cache_key_follows_the_adapter(small_adapter, tmp_path):
    import shutil

    from medchat.core import bundled

    adapter, _ = small_adapter
    base = bundled.find_bundled_gguf()
    copy = tmp_path / "adapter"
    shutil.copytree(adapter, copy)
    assert gguf_export.runnable_gguf_path(_resolved(base, copy)) == gguf_export.runnable_gguf_path(_resolved(base, adapter))
    config = (copy / "adapter_config.json").read_text().replace('"r": 4', '"r": 4 ')
    (copy / "adapter_config.json").write_text(config)
    assert gguf_export.runnable_gguf_path(_resolved(base, copy)) != gguf_export.runnable_gguf_path(_resolved(base, adapter))
    assert gguf_export.runnable_gguf_path(_resolved(base, adapter), "q4_0") != gguf_export.runnable_gguf_path(_resolved(base, adapter), "q8_0")
    assert gguf_export.runnable_gguf_path(_resolved(base, None)) != gguf_export.runnable_gguf_path(_resolved(base, adapter))
