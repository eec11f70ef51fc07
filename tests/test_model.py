import json

import pytest
import torch

from medchat.core import model as model_mod
from medchat.core.model import ModelError, ModelSpec, load, resolve_dtype


def _make_adapter(base_dir, out_dir, seed=1):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft_model = get_peft_model(base, config)
    peft_model.save_pretrained(out_dir, safe_serialization=True)
    return out_dir


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir, tmp_path_factory):
    return _make_adapter(tiny_model_dir, tmp_path_factory.mktemp("adapter"))


def _logits(loaded, text="What is aspirin?"):
    ids = loaded.tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        return loaded.model(**ids).logits


def test_loads_a_local_model_and_reports_info(tiny_model_dir):
    loaded = load(ModelSpec(base=str(tiny_model_dir), device="cpu", dtype="fp32"))
    info = loaded.info
    assert (info.device, info.dtype, info.quantization, info.adapter) == ("cpu", "fp32", "none", None)
    assert info.params_total == sum(p.numel() for p in loaded.model.parameters()) > 0
    assert info.context_length == 256
    assert next(loaded.model.parameters()).dtype == torch.float32
    assert "tiny_model" in info.summary() or str(tiny_model_dir) in info.summary()


def test_merged_adapter_gives_the_same_output_as_the_attached_one(tiny_model_dir, adapter_dir):
    base = load(ModelSpec(base=str(tiny_model_dir), device="cpu", dtype="fp32"))
    attached = load(ModelSpec(base=str(tiny_model_dir), adapter=str(adapter_dir), merge=False, dtype="fp32"))
    merged = load(ModelSpec(base=str(tiny_model_dir), adapter=str(adapter_dir), merge=True, dtype="fp32"))
    assert merged.info.merged and not attached.info.merged
    assert type(merged.model).__name__ == "LlamaForCausalLM"
    assert torch.allclose(_logits(attached), _logits(merged), atol=1e-5)
    assert not torch.allclose(_logits(base), _logits(merged), atol=1e-3)  # the adapter does something


def test_dtype_choice(tiny_model_dir):
    expected = "bf16" if model_mod.cpu_supports_bf16() else "fp32"
    assert resolve_dtype("auto", "cpu") == expected
    assert resolve_dtype("fp16", "cpu") == "fp16"
    loaded = load(ModelSpec(base=str(tiny_model_dir), device="cpu", dtype="bf16"))
    assert next(loaded.model.parameters()).dtype == torch.bfloat16


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU messages")
def test_cuda_and_nf4_without_gpu_are_clear_errors(tiny_model_dir):
    with pytest.raises(ModelError, match="no CUDA GPU"):
        load(ModelSpec(base=str(tiny_model_dir), device="cuda"))
    with pytest.raises(ModelError, match="NF4.*without a CUDA GPU.*--device cpu"):
        load(ModelSpec(base=str(tiny_model_dir), quantization="nf4"))
    assert model_mod.resolve_quantization("auto", "cpu") == "none"


def test_bad_spec_values():
    with pytest.raises(ModelError, match="Unknown dtype"):
        ModelSpec(dtype="int3")


def test_missing_path(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        load(ModelSpec(base=str(tmp_path / "nowhere")))
    with pytest.raises(ModelError, match="GGUF file not found"):
        load(ModelSpec(base=str(tmp_path / "nowhere.gguf")))


def test_directory_without_config(tmp_path):
    with pytest.raises(ModelError, match="no config.json"):
        load(ModelSpec(base=str(tmp_path)))


def test_hub_id_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="Hugging Face Hub.*HF_HUB_OFFLINE=1.*pass the local directory"):
        load(ModelSpec(base="medchat-tests/no-such-model", device="cpu"))


def test_gguf_that_is_not_a_model(tmp_path):
    bogus = tmp_path / "notes.gguf"
    bogus.write_bytes(b"this is not a gguf file at all" * 10)
    with pytest.raises(ModelError, match="not a loadable GGUF"):
        load(ModelSpec(base=str(bogus)))


def test_adapter_for_another_base(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    other = tmp_path / "other"
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2)).save_pretrained(other)
    tok.save_pretrained(other)
    adapter = _make_adapter(other, tmp_path / "adapter")
    with pytest.raises(ModelError, match="does not fit the base"):
        load(ModelSpec(base=str(tiny_model_dir), adapter=str(adapter)))


def test_corrupt_and_unsafe_adapters(tiny_model_dir, adapter_dir, tmp_path):
    import shutil

    corrupt = tmp_path / "corrupt"
    shutil.copytree(adapter_dir, corrupt)
    weights = corrupt / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ModelError, match="corrupt"):
        load(ModelSpec(base=str(tiny_model_dir), adapter=str(corrupt)))

    pickled = tmp_path / "pickled"
    shutil.copytree(adapter_dir, pickled)
    (pickled / "adapter_model.safetensors").rename(pickled / "adapter_model.bin")
    with pytest.raises(ModelError, match="refuses to load"):
        load(ModelSpec(base=str(tiny_model_dir), adapter=str(pickled)))

    broken_config = tmp_path / "broken"
    shutil.copytree(adapter_dir, broken_config)
    (broken_config / "adapter_config.json").write_text("{not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        load(ModelSpec(base=str(tiny_model_dir), adapter=str(broken_config)))

    with pytest.raises(ModelError, match="Adapter directory not found"):
        load(ModelSpec(base=str(tiny_model_dir), adapter=str(tmp_path / "missing")))


def test_remote_code_is_off_by_default():
    assert ModelSpec().trust_remote_code is False


def test_adapter_records_its_base(adapter_dir, tiny_model_dir):
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"]


def test_model_info_names_the_adapter_by_its_run():
    from medchat.core.model import ModelInfo

    def info(adapter, merged=True):
        return ModelInfo(base="bundled", base_path="/b", adapter=adapter, merged=merged, quantization="none",
                         device="cpu", dtype="bf16", params_total=135_000_000, params_trainable=0,
                         load_seconds=0.5, context_length=2048)

    assert info("/runs/default-run/adapter").summary().startswith("bundled + default-run (merged) | none | cpu bf16")
    assert info("/x/my-lora", merged=False).adapter_name == "my-lora (unmerged)"
    assert info(None).adapter_name == "no adapter"


def test_hub_id_without_network_fails_at_once_without_retry_noise(monkeypatch, capfd):
    """An unreachable Hub is noticed once (a 127.0.0.1 port nobody listens on stands in for it): the Hub id is
    read from the local cache alone, and the error says why, without a minute of retries."""
    import socket

    from medchat.core import model as model_module

    with socket.socket() as probe:  # a free port, closed again: connecting to it is refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    model_module.hub_unreachable.cache_clear()
    try:
        assert model_module.hub_kwargs("some-org/no-such-model") == {"local_files_only": True}
        with pytest.raises(ModelError, match=r"127\.0\.0\.1 is not reachable, and it is not in the local cache"):
            model_module.load(ModelSpec(base="some-org/no-such-model", adapter=None, device="cpu"))
    finally:
        model_module.hub_unreachable.cache_clear()
    captured = capfd.readouterr()
    assert "Retrying" not in captured.out + captured.err


def test_the_merged_model_is_cached_by_content(tiny_model_dir, adapter_dir, tmp_path, monkeypatch):
    import shutil

    from medchat.core.model import resolve

    from medchat.core import paths

    paths.configure(cache=tmp_path / "cache")  # until the next test's start (conftest)
    spec = ModelSpec(base=str(tiny_model_dir), adapter=str(adapter_dir), dtype="fp32")
    attached = load(ModelSpec(base=str(tiny_model_dir), adapter=str(adapter_dir), merge=False, dtype="fp32"))
    first = load(spec)
    (cached,) = (tmp_path / "cache" / "merged").iterdir()
    assert first.info.base_path == str(cached) and first.info.merged
    weights = cached / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    second = load(spec)  # warm: loads the cached merge as a plain model, writes nothing
    assert second.info.base_path == str(cached) and weights.stat().st_mtime_ns == stamp
    assert [p.name for p in (tmp_path / "cache" / "merged").iterdir()] == [cached.name]
    assert type(second.model).__name__ == "LlamaForCausalLM"
    assert torch.allclose(_logits(attached), _logits(second), atol=1e-5)
    # the key is the content: a copy of the adapter is the same entry, a changed one another
    copy = tmp_path / "copy"
    shutil.copytree(adapter_dir, copy)
    key = resolve(spec).key()
    assert resolve(ModelSpec(base=str(tiny_model_dir), adapter=str(copy))).key() == key
    (copy / "adapter_config.json").write_text((copy / "adapter_config.json").read_text() + "\n")
    assert resolve(ModelSpec(base=str(tiny_model_dir), adapter=str(copy))).key() != key
    assert resolve(ModelSpec(base=str(tiny_model_dir))).key() != key


def test_resolution_reads_the_spec_once(tiny_model_dir, adapter_dir):
    from medchat.core.model import resolve

    resolved = resolve(ModelSpec(base=str(tiny_model_dir), adapter=str(adapter_dir), trust_remote_code=True))
    assert resolved.gguf is None and resolved.base_path == str(tiny_model_dir)
    assert resolved.adapter_config["r"] == 4 and resolved.trust_remote_code is True
    assert resolved.tokenizer_dir() == str(tiny_model_dir)
    assert load(resolved).info.adapter == str(adapter_dir)  # load takes the resolved model as it is
