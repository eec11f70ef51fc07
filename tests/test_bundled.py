"""End-to-end: the bundled GGUF is converted once, cached, and loads fast with identical logits."""

import pytest
import torch

from medchat.core import bundled
from medchat.core.model import ModelSpec, load

pytestmark = pytest.mark.bundled


def test_first_load_converts_and_caches_second_load_reuses(tmp_path, monkeypatch):
    from medchat.core import paths

    paths.configure(cache=tmp_path / "cache")  # until the next test's start (conftest)
    conversions = []
    real_convert = bundled._convert
    monkeypatch.setattr(bundled, "_convert", lambda *a: conversions.append(a) or real_convert(*a))

    spec = ModelSpec(base="bundled", dtype="fp32")
    first = load(spec)
    second = load(spec)
    assert len(conversions) == 1
    cached = bundled.converted_dir_for(bundled.find_bundled_gguf())
    assert (cached / "model.safetensors").is_file() and (cached / "tokenizer.json").is_file()
    assert second.tokenizer.chat_template  # the chat template travels with the checkpoint
    assert not list(cached.parent.glob(".converting-*"))  # nothing half-written left behind

    ids = first.tokenizer("What is the mechanism of action of aspirin?", return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(first.model(**ids).logits, second.model(**ids).logits)

    # ...and the cached checkpoint computes what transformers' own GGUF reader computes.
    from transformers import AutoModelForCausalLM

    gguf = bundled.find_bundled_gguf()
    reference = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    with torch.no_grad():
        assert torch.allclose(reference(**ids).logits, second.model(**ids).logits, atol=1e-4)
