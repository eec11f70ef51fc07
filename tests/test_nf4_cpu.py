"""The 4-bit NF4 path on CPU (bitsandbytes' CPU kernels): load, adapters on top, the merged-then-quantized
variant, and generation. Tiny random Llamas; no GPU."""

from __future__ import annotations

import pytest
import torch

from medchat.core.engine import Engine, GenerationSettings
from medchat.core.model import CPU_NF4_NOTE, ModelError, ModelSpec, load, resolve_quantization
from medchat.core.prompting import build_messages

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU 4-bit path")


def _linear4bit():
    import bitsandbytes as bnb

    return bnb.nn.Linear4bit


def _make_adapter(base_dir, out_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(3)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir),
                           LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"],
                                      init_lora_weights=False))
    with torch.no_grad():  # a large delta, so that "the adapter does something" is unambiguous
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.mul_(20)
    model.save_pretrained(out_dir, safe_serialization=True)
    return out_dir


@pytest.fixture(scope="module")
def nf4_adapter(tiny_nf4_model_dir, tmp_path_factory):
    return _make_adapter(tiny_nf4_model_dir, tmp_path_factory.mktemp("nf4_adapter"))


def _logits(loaded, text="What is aspirin?"):
    ids = loaded.tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        return loaded.model(**ids).logits.float()


def test_auto_is_never_nf4_on_cpu_and_nf4_needs_an_explicit_cpu(tiny_nf4_model_dir):
    assert resolve_quantization("auto", "cpu") == "none"
    assert resolve_quantization("nf4", "cpu", "cpu") == "nf4"
    with pytest.raises(ModelError, match="slow CPU kernels; pass --device cpu"):
        load(ModelSpec(base=str(tiny_nf4_model_dir), quantization="nf4"))  # device auto on a CPU machine


def test_loads_in_nf4_with_double_quantization_and_generates(tiny_nf4_model_dir):
    full = load(ModelSpec(base=str(tiny_nf4_model_dir), device="cpu", dtype="fp32"))
    loaded = load(ModelSpec(base=str(tiny_nf4_model_dir), quantization="nf4", device="cpu", dtype="bf16"))
    info = loaded.info
    assert (info.quantization, info.device, info.dtype) == ("nf4", "cpu", "bf16")
    assert info.extra["notes"] == [CPU_NF4_NOTE] and "nf4 (slow on CPU)" in info.summary()
    layers = [m for m in loaded.model.modules() if isinstance(m, _linear4bit())]
    assert len(layers) == 2 * 7  # every projection of both blocks; the tied head stays in full precision
    state = layers[0].weight.quant_state
    assert layers[0].weight.dtype == torch.uint8 and state.quant_type == "nf4" and state.nested  # double quant
    a, b = _logits(full), _logits(loaded)
    assert a.shape == b.shape and not torch.allclose(a, b)  # really quantized ...
    assert torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.95  # ... and still the model
    stream = Engine(loaded).stream(build_messages("What is aspirin?"), GenerationSettings(max_new_tokens=6))
    text = "".join(stream)
    assert stream.stats.tokens == 6 and text


def test_layers_that_do_not_fit_the_fast_cpu_kernel_use_the_generic_one(tiny_model_dir):
    # hidden size 32: smaller than the 64-value quantization block the AVX512-BF16 repack needs
    loaded = load(ModelSpec(base=str(tiny_model_dir), quantization="nf4", device="cpu", dtype="bf16"))
    layers = [m for m in loaded.model.modules() if isinstance(m, _linear4bit())]
    misfits = [m for m in layers if m.in_features % 64 or m.out_features % 32]
    assert misfits and not any(m.support_avx512bf16_for_cpu for m in misfits)
    stream = Engine(loaded).stream(build_messages("What is aspirin?"), GenerationSettings(max_new_tokens=4))
    "".join(stream)
    assert stream.stats.tokens == 4


def test_adapter_stays_unmerged_on_the_nf4_base_unless_asked(tiny_nf4_model_dir, nf4_adapter):
    from peft import PeftModel

    reference = load(ModelSpec(base=str(tiny_nf4_model_dir), adapter=str(nf4_adapter), device="cpu", dtype="fp32"))
    plain = load(ModelSpec(base=str(tiny_nf4_model_dir), quantization="nf4", device="cpu", dtype="bf16"))
    unmerged = load(ModelSpec(base=str(tiny_nf4_model_dir), adapter=str(nf4_adapter), quantization="nf4",
                              device="cpu", dtype="bf16"))
    assert isinstance(unmerged.model, PeftModel) and not unmerged.info.merged
    assert "unmerged" in unmerged.info.extra["adapter_mode"] and "(unmerged)" in unmerged.info.summary()
    assert any(isinstance(m, _linear4bit()) for m in unmerged.model.modules())

    merged = load(ModelSpec(base=str(tiny_nf4_model_dir), adapter=str(nf4_adapter), quantization="nf4",
                            device="cpu", dtype="bf16", quantize_merged=True))
    assert merged.info.merged and type(merged.model).__name__ == "LlamaForCausalLM"
    assert "merged" in merged.info.base_path  # the full-precision merge, cached, then quantized at load
    cached = merged.info.base_path
    from safetensors import safe_open

    with safe_open(f"{cached}/model.safetensors", framework="pt") as handle:  # merged in bf16, never 4-bit
        assert {handle.get_slice(k).get_dtype() for k in handle.keys()} == {"BF16"}

    ref, base = _logits(reference), _logits(plain)
    for candidate in (unmerged, merged):
        out = _logits(candidate)
        # both carry the fine-tune: much closer to the fp32 merged model than the 4-bit base alone is
        assert (out - ref).abs().mean() < 0.5 * (base - ref).abs().mean()
    again = load(ModelSpec(base=str(tiny_nf4_model_dir), adapter=str(nf4_adapter), quantization="nf4",
                           device="cpu", dtype="bf16", quantize_merged=True))
    assert again.info.base_path == cached  # merged once
