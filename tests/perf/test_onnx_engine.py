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


# ---------------------------------------------------------------- exact speculative decoding (int8 drafts, fp32 verifies)

PROMPTS_TINY = [MESSAGES, [{"role": "user", "content": "How does aspirin work?"}],
                [{"role": "system", "content": "You are a careful medical assistant."},
                 {"role": "user", "content": "The immune system fights bacteria"}]]
CHAT = GenerationSettings(max_new_tokens=40, repetition_penalty=1.3, no_repeat_ngram_size=2)
PLAIN = GenerationSettings(max_new_tokens=40, repetition_penalty=1.0, no_repeat_ngram_size=0)


@pytest.fixture(scope="module")
def tiny_spec(tiny_dir):
    from medchat.core.onnx_engine import OnnxEngine

    return OnnxEngine.load(ModelSpec(base=str(tiny_dir)), n_threads=1, precision="int8+fp32")


class Corrupted:
    """A drafter that repeats another engine's runtime but proposes a wrong token wherever `wrong(n)`
    says so (n: tokens in its cache): drafts rejected at known places."""

    def __new__(cls, inner, wrong, token=None):
        from medchat.core.fastdecode import TokenEngine

        class _Drafter(TokenEngine):
            def _cached_ids(self):
                return inner._cached_ids()

            def _truncate(self, keep):
                inner._truncate(keep)

            def _feed(self, ids):
                inner._feed(ids)

            def _logits(self):
                logits = inner._logits()
                if wrong(len(inner._cached_ids())):
                    bad = (int(logits.argmax()) + 7) % len(logits) if token is None else token
                    logits[bad] = logits.max() + 100.0
                return logits

        return _Drafter(inner.tokenizer, inner.info, list(inner.eos_ids))


def _tokens(engine, messages, settings, cancel=None):
    ids = engine.fit_prompt(messages, settings.max_new_tokens)
    return list(engine.decode_tokens(ids, settings, cancel or threading.Event()))


def _consistent(engine):
    """The KV caches hold the tokens the engine thinks they hold (and, until the next feed, those of a
    truncation not yet applied: see OnnxEngine._truncate)."""
    for one in (engine, engine.drafter):
        if one is not None and getattr(one, "_generator", None) is not None:
            cached = one._cached_ids()
            assert one._generator.token_count() == one._computed >= len(cached)
            assert list(one._generator.get_sequence(0))[:len(cached)] == cached


@pytest.fixture
def drafter_of(tiny_spec, tiny_dir):
    """Swap the speculative engine's drafter for a while: int8 (its own), fp32 (always right), corrupted."""
    from medchat.core.onnx_engine import OnnxEngine

    own, k = tiny_spec.drafter, tiny_spec.draft_tokens
    fp32 = OnnxEngine.load(ModelSpec(base=str(tiny_dir)), n_threads=1, precision="fp32")

    def use(kind, draft_tokens=4):
        tiny_spec.drafter = {"int8": own, "fp32": fp32,
                             "every-3rd-wrong": Corrupted(fp32, lambda n: n % 3 == 0),
                             "always-wrong": Corrupted(fp32, lambda n: True),
                             # the model's real EOS: onnxruntime-genai ends a sequence it is fed
                             "proposes-eos": Corrupted(fp32, lambda n: n % 4 == 0, token=min(own.eos_ids))}[kind]
        tiny_spec.draft_tokens = draft_tokens
        return tiny_spec

    yield use
    tiny_spec.drafter, tiny_spec.draft_tokens = own, k


def test_speculative_precision_is_parsed_and_loaded(tiny_spec):
    assert onnx_export.precisions("int8+fp32") == ("fp32", "int8")
    assert onnx_export.precisions("int4+FP32") == ("fp32", "int4")
    assert onnx_export.precisions(None) == ("int8", None) and onnx_export.precision("int8+fp32") == "fp32"
    for bad in ("fp32+fp32", "int9+fp32", "int8+", "+fp32x"):
        with pytest.raises(onnx_export.OnnxExportError):
            onnx_export.precisions(bad)
    assert tiny_spec.info.quantization == "int8+fp32" and tiny_spec.drafter.info.quantization == "int8"
    assert tiny_spec.info.extra["draft_tokens"] == tiny_spec.draft_tokens
    assert "-fp32-" in tiny_spec.info.base_path and "-int8-" in tiny_spec.info.extra["draft_onnx"]


@pytest.mark.parametrize("kind,k", [("int8", 1), ("int8", 3), ("int8", 4), ("int8", 8), ("fp32", 4),
                                    ("every-3rd-wrong", 4), ("always-wrong", 3), ("proposes-eos", 4)])
def test_speculative_answers_equal_the_fp32_engine(tiny_onnx, drafter_of, kind, k):
    engine = drafter_of(kind, k)
    drafted = accepted = 0
    for messages in PROMPTS_TINY:
        for settings in (CHAT, PLAIN):
            expected = _tokens(tiny_onnx, messages, settings)
            assert _tokens(engine, messages, settings) == expected, (kind, k, messages[-1]["content"])
            _consistent(engine)
            stats = engine.speculation
            drafted, accepted = drafted + stats["drafted"], accepted + stats["accepted"]
            assert stats["verify_passes"] <= len(expected)
    if kind == "fp32":  # always right: every pass yields its drafts and one more
        assert accepted == drafted > 0
    elif kind == "always-wrong":
        assert accepted == 0 and drafted > 0
    elif kind == "every-3rd-wrong":
        assert 0 < accepted < drafted
    # the text through the stream, and its stats, too
    expected, expected_stats = tiny_onnx.generate(MESSAGES, CHAT)
    stream = engine.stream(MESSAGES, CHAT)
    assert "".join(stream) == expected
    assert (stream.stats.tokens, stream.stats.stop_reason) == (expected_stats.tokens, expected_stats.stop_reason)


@pytest.mark.parametrize("kind", ["int8", "fp32", "every-3rd-wrong"])
def test_speculative_stops_at_max_new_tokens_inside_a_block(tiny_onnx, drafter_of, kind):
    engine = drafter_of(kind, 4)
    for length in (1, 2, 3, 5, 6, 7, 9, 12):
        settings = GenerationSettings(max_new_tokens=length, repetition_penalty=1.3, no_repeat_ngram_size=2)
        expected = _tokens(tiny_onnx, MESSAGES, settings)
        got = _tokens(engine, MESSAGES, settings)
        assert got == expected and len(got) == length, (kind, length)
        _consistent(engine)


@pytest.mark.parametrize("kind", ["int8", "fp32", "every-3rd-wrong"])
def test_speculative_stops_at_eos_inside_a_block(tiny_onnx, drafter_of, kind):
    """The random model never writes its EOS: other tokens of its answer are made EOS, on both engines."""
    engine = drafter_of(kind, 4)
    answer = _tokens(tiny_onnx, MESSAGES, PLAIN)
    saved = (set(tiny_onnx.eos_ids), set(engine.eos_ids), set(engine.drafter.eos_ids))
    try:
        for position in (0, 1, 3, 5, 6, 9):
            stop = answer[position]
            first = answer.index(stop)  # where the answer ends when that token is an EOS
            for one in (tiny_onnx, engine, engine.drafter):
                one.eos_ids = saved[0] | {stop}
            expected = _tokens(tiny_onnx, MESSAGES, PLAIN)
            assert expected == answer[:first]
            assert _tokens(engine, MESSAGES, PLAIN) == expected, (kind, position)
            _consistent(engine)
    finally:
        tiny_onnx.eos_ids, engine.eos_ids, engine.drafter.eos_ids = saved


@pytest.mark.parametrize("after", [1, 2, 5, 6])
def test_speculative_cancel_mid_answer(tiny_onnx, tiny_spec, after):
    expected = _tokens(tiny_onnx, MESSAGES, PLAIN)
    cancel = threading.Event()
    ids = tiny_spec.fit_prompt(MESSAGES, PLAIN.max_new_tokens)
    got = []
    for token in tiny_spec.decode_tokens(ids, PLAIN, cancel):
        got.append(token)
        if len(got) == after:
            cancel.set()  # no token after this one, even those already verified in the same pass
    assert got == expected[:after]
    _consistent(tiny_spec)
    # the caches are left usable: the next answer is the full one
    assert _tokens(tiny_spec, MESSAGES, PLAIN) == expected
    # and through the stream: set before it starts, nothing is written
    cancel = threading.Event()
    cancel.set()
    stream = tiny_spec.stream(MESSAGES, PLAIN, cancel=cancel)
    assert "".join(stream) == "" and stream.stats.stop_reason == "cancelled"


def test_speculative_multi_turn_reuses_both_caches(tiny_onnx, tiny_spec):
    settings = GenerationSettings(max_new_tokens=12)
    tiny_spec.reset()
    conversation = list(MESSAGES)
    fed: list[int] = []
    feed = type(tiny_spec)._feed

    def counting_feed(self, ids):
        fed.append(len(ids))
        feed(self, ids)

    for follow_up in ("And aspirin?", "What about fatigue?", "Thanks"):
        answer, _ = tiny_spec.generate(conversation, settings)
        assert answer == tiny_onnx.generate(conversation, settings)[0]
        conversation = conversation + [{"role": "assistant", "content": answer}]
        tiny_spec.prefill(conversation, follow_up[:3])  # the chat reads the draft while the user types
        conversation = conversation + [{"role": "user", "content": follow_up}]
        prompt = tiny_spec.fit_prompt(conversation, settings.max_new_tokens)
        fed.clear()
        type(tiny_spec)._feed = counting_feed
        try:
            answer, _ = tiny_spec.generate(conversation, settings)
        finally:
            type(tiny_spec)._feed = feed
        assert answer == tiny_onnx.generate(conversation, settings)[0]
        # the prefilled part was not read again by either model: each fed well under the prompt
        assert fed[0] < len(prompt) // 2 and max(fed) < len(prompt) // 2, (fed, len(prompt))
        assert tiny_spec._cached_ids()[:len(prompt)] == prompt
        assert tiny_spec.drafter._cached_ids()[:len(prompt)] == prompt
        _consistent(tiny_spec)


def test_speculative_sampling_takes_the_plain_path(tiny_onnx, tiny_spec):
    settings = GenerationSettings(max_new_tokens=16, temperature=0.8, top_p=0.9)
    ids = tiny_spec.fit_prompt(MESSAGES, settings.max_new_tokens)
    before = dict(tiny_spec.speculation)
    drafter_ids = list(tiny_spec.drafter._cached_ids())
    got = list(tiny_spec.decode_tokens(ids, settings, threading.Event(), seed=3))
    assert got == list(tiny_onnx.decode_tokens(ids, settings, threading.Event(), seed=3))
    assert tiny_spec.speculation == before and tiny_spec.drafter._cached_ids() == drafter_ids


def test_speculative_never_verifies_a_drafted_eos(tiny_onnx, drafter_of, monkeypatch):
    """A drafted EOS is not fed to the fp32 model: the pick after the last draft decides whether the answer
    ends. (A fed EOS that was kept was rewound away at the answer's end, and the next turn's rewind then
    corrupted the cache: the two-rewinds bug test_truncations_in_a_row_keep_the_cache_right covers.)"""
    from medchat.core.onnx_engine import OnnxEngine

    engine = drafter_of("proposes-eos", 4)
    blocks: list[list[int]] = []
    feed_logits = OnnxEngine._feed_logits
    monkeypatch.setattr(OnnxEngine, "_feed_logits", lambda self, ids: (blocks.append(list(ids)), feed_logits(self, ids))[1])
    for settings in (CHAT, PLAIN):
        assert _tokens(engine, MESSAGES, settings) == _tokens(tiny_onnx, MESSAGES, settings)
    assert blocks and not any(set(block[1:]) & engine.eos_ids for block in blocks)


@pytest.mark.bundled
def test_bundled_speculative_answers_equal_the_fp32_engines():
    """int8+fp32 against the fp32 transformers engine: the same answers, also on a warm cache (each prompt
    asked twice: its answer, which ends at EOS, is in both KV caches the second time)."""
    from medchat.core import paths
    from medchat.core.onnx_engine import OnnxEngine
    from medchat.core.prompting import build_messages

    spec = ModelSpec(adapter=str(paths.default_adapter_dir()), dtype="fp32")
    torch_engine = Engine(load(spec))
    fast = OnnxEngine.load(spec, n_threads=1, precision="int8+fp32")
    settings = GenerationSettings(max_new_tokens=128)
    for prompt in PROMPTS:
        messages = build_messages(prompt)
        expected, _ = torch_engine.generate(messages, settings)
        assert fast.generate(messages, settings)[0] == expected, prompt
        assert fast.generate(messages, settings)[0] == expected, prompt
        assert fast.speculation["accepted"] > 0


@pytest.mark.parametrize("kind", ["int8", "always-wrong", "every-3rd-wrong"])
def test_speculative_next_prompt_after_another(tiny_onnx, drafter_of, kind):
    """A new question after another one's answer (the cache shares only the start of the prompt)."""
    engine = drafter_of(kind, 6)
    engine.reset()
    for messages in PROMPTS_TINY + PROMPTS_TINY[::-1]:
        for settings in (CHAT, PLAIN):
            assert _tokens(engine, messages, settings) == _tokens(tiny_onnx, messages, settings), kind


def test_truncations_in_a_row_keep_the_cache_right(tiny_onnx):
    """onnxruntime-genai's rewind_to twice before the next append_tokens corrupted its KV cache (it copies
    the last run's output with the stride of the last rewind's length): OnnxEngine applies only one."""
    import numpy as np

    ids = tiny_onnx.fit_prompt(MESSAGES, 8)
    assert len(ids) > 12
    tiny_onnx.reset()
    expected = tiny_onnx._feed_logits(ids)
    for first, second in ((len(ids) - 2, len(ids) - 5), (len(ids) - 1, 3), (len(ids) - 6, len(ids) - 7)):
        tiny_onnx.reset()
        tiny_onnx._feed(ids)
        tiny_onnx._truncate(first)
        tiny_onnx._truncate(second)
        got = tiny_onnx._feed_logits(ids[second:])
        np.testing.assert_allclose(got, expected[second:], rtol=0, atol=1e-5, err_msg=f"{first}, {second}")
        assert tiny_onnx._generator.token_count() == len(ids)


def test_speculative_next_prompt_after_an_answer_ending_on_rejected_drafts(tiny_onnx, drafter_of):
    """An answer whose last pass kept fewer drafts than it verified leaves the fp32 cache rewound; the next
    prompt rewinds it again. That next prompt's logits are the plain engine's (they were not, on the
    bundled model: int4+fp32 answered a second question wrong from its first token)."""
    import numpy as np

    engine = drafter_of("always-wrong", 6)  # every pass keeps none of its drafts
    answer = _tokens(tiny_onnx, MESSAGES, CHAT)
    saved = (set(tiny_onnx.eos_ids), set(engine.eos_ids), set(engine.drafter.eos_ids))
    other = tiny_onnx.fit_prompt(PROMPTS_TINY[1], PLAIN.max_new_tokens)
    try:
        for position in (4, 9, 13):
            for one in (tiny_onnx, engine, engine.drafter):
                one.eos_ids = saved[0] | {answer[position]}
            engine.reset()
            assert _tokens(engine, MESSAGES, CHAT) == answer[:answer.index(answer[position])]
            # every pass, the last one too (the answer is far from max_new_tokens), verified drafts it dropped
            assert engine.speculation["drafted"] > 0 == engine.speculation["accepted"]
            with engine._lock:
                engine._evaluate(other)
                got = engine._logits()
            tiny_onnx.reset()
            with tiny_onnx._lock:
                tiny_onnx._evaluate(other)
                expected = tiny_onnx._logits()
            np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5, err_msg=str(position))
            _consistent(engine)
    finally:
        tiny_onnx.eos_ids, engine.eos_ids, engine.drafter.eos_ids = saved
