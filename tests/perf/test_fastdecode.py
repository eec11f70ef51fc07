"""The fast path: backend choice, transformers-equivalent logits processors, the llama.cpp engine."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from medchat import fastdecode
from medchat.engine import Engine, GenerationSettings
from medchat.model import ModelError, ModelSpec

HAS_LLAMA_CPP = fastdecode.llamacpp_available()


# ---------------------------------------------------------------- logits processors match transformers


@pytest.mark.parametrize("size", [2, 3, 4])
def test_ngram_blocker_matches_transformers(size):
    import torch
    from transformers.generation.logits_process import NoRepeatNGramLogitsProcessor

    rng = np.random.default_rng(size)
    seq = rng.integers(0, 6, size=40).tolist()  # a small alphabet: many repeats
    blocker = fastdecode.NgramBlocker(size)
    reference = NoRepeatNGramLogitsProcessor(size)
    for cut in range(1, len(seq) + 1):
        blocker.seq, blocker.seen = [], {}
        blocker.extend(seq[:cut])
        scores = reference(torch.tensor([seq[:cut]]), torch.zeros(1, 6))
        expected = sorted(torch.nonzero(torch.isinf(scores[0])).flatten().tolist())
        assert blocker.banned() == expected, (cut, seq[:cut])


def test_ngram_blocker_incremental_equals_batch():
    seq = [1, 2, 3, 1, 2, 3, 1, 2]
    incremental = fastdecode.NgramBlocker(3)
    for token in seq:
        incremental.extend([token])
    batch = fastdecode.NgramBlocker(3)
    batch.extend(seq)
    assert incremental.banned() == batch.banned() == [3]
    assert fastdecode.NgramBlocker(0).banned() == []


def test_repetition_penalty_matches_transformers():
    import torch
    from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

    rng = np.random.default_rng(0)
    logits = rng.normal(size=50).astype(np.float32)
    ids = [3, 7, 7, 20, 49, 0]
    ours = fastdecode.apply_repetition_penalty(logits.copy(), ids, 1.3)
    theirs = RepetitionPenaltyLogitsProcessor(1.3)(torch.tensor([ids]), torch.tensor(logits)[None])[0].numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-6)
    untouched = fastdecode.apply_repetition_penalty(logits.copy(), ids, 1.0)
    np.testing.assert_array_equal(untouched, logits)


def test_pick_token_greedy_and_sampling():
    logits = np.array([0.0, 5.0, 1.0, -2.0], dtype=np.float32)
    rng = np.random.default_rng(0)
    assert fastdecode.pick_token(logits, GenerationSettings(temperature=0.0), rng) == 1
    # top_p small enough keeps only the most likely token, whatever the temperature
    picks = {fastdecode.pick_token(logits, GenerationSettings(temperature=2.0, top_p=0.01), rng) for _ in range(20)}
    assert picks == {1}
    picks = {fastdecode.pick_token(logits, GenerationSettings(temperature=5.0, top_p=1.0), rng) for _ in range(200)}
    assert len(picks) > 1


# ---------------------------------------------------------------- backend choice


def test_backend_choice_without_llama_cpp(monkeypatch, tiny_model_dir):
    monkeypatch.setattr(fastdecode, "llamacpp_available", lambda: False)
    monkeypatch.delenv("MEDCHAT_BACKEND", raising=False)
    backend, why = fastdecode.choose_backend(ModelSpec())
    assert backend == "torch" and "llama-cpp-python is not installed" in why
    with pytest.raises(ModelError, match=r"medchat\[llamacpp\]"):
        fastdecode.choose_backend(ModelSpec(), "llamacpp")
    monkeypatch.setenv("MEDCHAT_BACKEND", "llamacpp")
    with pytest.raises(ModelError, match="cannot run"):
        fastdecode.choose_backend(ModelSpec())
    monkeypatch.setenv("MEDCHAT_BACKEND", "fastest")
    with pytest.raises(ModelError, match="Unknown backend 'fastest'"):
        fastdecode.choose_backend(ModelSpec())


def test_backend_choice_rules(monkeypatch, tiny_model_dir):
    monkeypatch.setattr(fastdecode, "llamacpp_available", lambda: True)
    monkeypatch.delenv("MEDCHAT_BACKEND", raising=False)
    import medchat.model

    monkeypatch.setattr(medchat.model, "cuda_available", lambda: False)
    assert fastdecode.choose_backend(ModelSpec())[0] == "llamacpp"
    # explicit torch-level choices keep transformers
    assert fastdecode.choose_backend(ModelSpec(dtype="fp32"))[0] == "torch"
    assert fastdecode.choose_backend(ModelSpec(device="cpu"))[0] == "torch"
    assert fastdecode.choose_backend(ModelSpec(), "torch")[0] == "torch"
    # a base that is not a GGUF cannot go to llama.cpp
    backend, why = fastdecode.choose_backend(ModelSpec(base=str(tiny_model_dir)))
    assert backend == "torch" and "not a GGUF" in why
    with pytest.raises(ModelError, match="not a GGUF"):
        fastdecode.choose_backend(ModelSpec(base=str(tiny_model_dir)), "llamacpp")
    monkeypatch.setattr(medchat.model, "cuda_available", lambda: True)
    assert fastdecode.choose_backend(ModelSpec())[0] == "torch"


def test_load_engine_falls_back_to_transformers(tiny_model_dir, monkeypatch):
    monkeypatch.delenv("MEDCHAT_BACKEND", raising=False)
    engine = fastdecode.load_engine(ModelSpec(base=str(tiny_model_dir)))
    assert type(engine) is Engine
    assert engine.info.extra["backend"] == "transformers"
    text, stats = engine.generate([{"role": "user", "content": "hi"}], GenerationSettings(max_new_tokens=3))
    assert stats.tokens <= 3


# ---------------------------------------------------------------- llama.cpp engine on the bundled model


@pytest.fixture(scope="module")
def llama_engine():
    if not HAS_LLAMA_CPP:
        pytest.skip("llama-cpp-python is not installed (optional extra medchat[llamacpp])")
    return fastdecode.LlamaCppEngine.load(ModelSpec(), n_threads=2)


@pytest.mark.bundled
def test_llama_engine_streams_like_the_torch_engine(llama_engine, bundled_spec):
    from medchat.model import load
    from medchat.prompting import build_messages

    messages = build_messages("What are common symptoms of iron deficiency anaemia?")
    settings = GenerationSettings(max_new_tokens=24)
    stream = llama_engine.stream(messages, settings)
    text = "".join(stream)
    assert text.strip()
    assert stream.stats.tokens > 0 and stream.stats.stop_reason in ("eos", "length")
    assert stream.stats.ttft_s is not None
    assert llama_engine.info.extra["backend"] == "llama.cpp" and llama_engine.info.quantization == "q4_1"
    # same prompt tokens, same processors, same 4-bit weights: the first words agree with transformers
    torch_engine = Engine(load(ModelSpec(dtype="fp32")))
    reference, _ = torch_engine.generate(messages, settings)
    assert text.split()[:4] == reference.split()[:4]
    # the prompt prefix is reused from the KV cache and the answer is the same
    again = "".join(llama_engine.stream(messages, settings))
    assert again == text
    assert llama_engine.generate_batch([messages], settings) == [text.strip()]


@pytest.mark.bundled
def test_llama_engine_cancel_stops_the_model(llama_engine):
    from medchat.prompting import build_messages

    cancel = threading.Event()
    stream = llama_engine.stream(build_messages("Explain how vaccines work."), GenerationSettings(max_new_tokens=200),
                                 cancel=cancel)
    chunks = []
    for chunk in stream:
        chunks.append(chunk)
        cancel.set()
    assert stream.stats.stop_reason == "cancelled"
    assert stream.stats.tokens < 200
