"""The ONNX Runtime engine: conversion (once, cached), generation under the chat's decoding rules, stop,
KV-cache reuse, and the same greedy answers as the transformers engine (tiny model; bundled model)."""

from __future__ import annotations

import threading

import pytest

from medchat.core import onnx_export
from medchat.core.engine import Engine, GenerationSettings
from medchat.core.model import ModelSpec, load

pytest.importorskip("onnxruntime_genai")

MESSAGES = [{"role": "user", "content": "What are the symptoms of diabetes?"}]


@pytest.fixture(scope="module")
def tiny_dir(tiny_nf4_model_dir):
    """A random 2-layer Llama with head size 16 (ONNX Runtime's attention kernel needs a multiple of 16)."""
    return tiny_nf4_model_dir


@pytest.fixture(scope="module")
def tiny_onnx(tiny_dir):
    from medchat.core.onnx_engine import OnnxEngine

    return OnnxEngine.load(ModelSpec(base=str(tiny_dir)), n_threads=1, precision="fp32")


@pytest.fixture(scope="module")
def tiny_torch(tiny_dir):
    return Engine(load(ModelSpec(base=str(tiny_dir), dtype="fp32")))


def test_conversion_is_cached_and_recorded(tiny_onnx, tiny_dir):
    from medchat.core.model import resolve
    from medchat.core.onnx_engine import OnnxEngine

    folder = onnx_export.runnable_onnx_dir(resolve(ModelSpec(base=str(tiny_dir))), "fp32")
    assert tiny_onnx.info.base_path == str(folder) and tiny_onnx.info.quantization == "fp32"
    record = onnx_export.record(folder)
    assert record["precision"] == "fp32" and record["adapter"] is None and record["params"] > 0
    assert (folder / "model.onnx").is_file() and (folder / "hf" / "tokenizer_config.json").is_file()
    stamp = (folder / onnx_export.RECORD).stat().st_mtime_ns
    siblings = sorted(p.name for p in folder.parent.iterdir())
    again = OnnxEngine.load(ModelSpec(base=str(tiny_dir)), n_threads=1, precision="fp32")
    # the second load converted nothing: same folder, same record, no new (staging) folders
    assert again.info.base_path == str(folder)
    assert (folder / onnx_export.RECORD).stat().st_mtime_ns == stamp
    assert sorted(p.name for p in folder.parent.iterdir()) == siblings
    # another precision is another cache entry
    assert onnx_export.runnable_onnx_dir(resolve(ModelSpec(base=str(tiny_dir))), "int8") != folder


@pytest.mark.parametrize("settings", [
    GenerationSettings(max_new_tokens=24, repetition_penalty=1.3, no_repeat_ngram_size=2),
    GenerationSettings(max_new_tokens=24, repetition_penalty=1.0, no_repeat_ngram_size=0),
], ids=["chat-rules", "plain-greedy"])
def test_greedy_answers_equal_the_transformers_engine(tiny_onnx, tiny_torch, settings):
    expected, expected_stats = tiny_torch.generate(MESSAGES, settings)
    stream = tiny_onnx.stream(MESSAGES, settings)
    assert "".join(stream) == expected
    assert (stream.stats.tokens, stream.stats.stop_reason) == (expected_stats.tokens, expected_stats.stop_reason)
    assert tiny_onnx.generate_batch([MESSAGES], settings) == [expected.strip()]


def test_follow_up_turns_reuse_the_kv_cache(tiny_onnx, tiny_torch):
    settings = GenerationSettings(max_new_tokens=8)
    first, _ = tiny_onnx.generate(MESSAGES, settings)
    conversation = MESSAGES + [{"role": "assistant", "content": first}, {"role": "user", "content": "And aspirin?"}]
    tiny_onnx.prefill(MESSAGES + [{"role": "assistant", "content": first}], "And")
    prefilled = list(tiny_onnx._cached_ids())
    answer, _ = tiny_onnx.generate(conversation, settings)
    prompt = tiny_onnx.fit_prompt(conversation, settings.max_new_tokens)
    assert prompt[:len(prefilled)] == prefilled  # the draft read ahead is the start of the real prompt
    assert tiny_onnx._cached_ids()[:len(prompt)] == prompt
    assert answer == tiny_torch.generate(conversation, settings)[0]


def test_cancel_stops_the_model(tiny_onnx):
    # Set before the stream starts: the tiny model writes 200 tokens in milliseconds, faster than a consumer
    # could set it after the first chunk, so only this order says that the decode loop honours it.
    cancel = threading.Event()
    cancel.set()
    stream = tiny_onnx.stream(MESSAGES, GenerationSettings(max_new_tokens=200, repetition_penalty=1.0,
                                                           no_repeat_ngram_size=0), cancel=cancel)
    list(stream)
    assert stream.stats.stop_reason == "cancelled" and stream.stats.tokens < 200


def test_load_engine_picks_onnx_on_cpu(tiny_dir, monkeypatch):
    import medchat.core.model
    from medchat.core import fastdecode

    monkeypatch.setattr(medchat.core.model, "cuda_available", lambda: False)
    engine = fastdecode.load_engine(ModelSpec(base=str(tiny_dir)))
    assert engine.info.extra["backend"] == "onnxruntime" and engine.info.quantization == "int8"
    assert "onnxruntime" in engine.info.summary()
    text, stats = engine.generate(MESSAGES, GenerationSettings(max_new_tokens=4))
    assert stats.tokens <= 4 and stats.ttft_s is not None


# ---------------------------------------------------------------- the bundled model with the shipped adapter

PROMPTS = ["What are common symptoms of iron deficiency anaemia?", "How is high blood pressure treated?",
           "What should I do after a minor burn?"]


@pytest.mark.bundled
def test_bundled_greedy_answers_equal_the_transformers_engine():
    """fp32 ONNX against the fp32 transformers engine: the same answers, token for token, with the
    shipped adapter merged and the chat's decoding rules (the int8 default is compared in bench/decode.py)."""
    from medchat.core import paths
    from medchat.core.onnx_engine import OnnxEngine
    from medchat.core.prompting import build_messages

    spec = ModelSpec(adapter=str(paths.default_adapter_dir()), dtype="fp32")
    torch_engine = Engine(load(spec))
    fast = OnnxEngine.load(spec, n_threads=1, precision="fp32")
    assert fast.info.merged and torch_engine.info.merged
    settings = GenerationSettings(max_new_tokens=40)
    for prompt in PROMPTS:
        messages = build_messages(prompt)
        expected, _ = torch_engine.generate(messages, settings)
        assert fast.generate(messages, settings)[0] == expected, prompt
