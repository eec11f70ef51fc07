"""The fast path: backend choice, transformers-equivalent logits processors, the llama.cpp engine."""

from __future__ import annotations

import os
import threading

import numpy as np
import click
import pytest
from click.testing import CliRunner

from medchat.core import fastdecode
from medchat.core.engine import Engine, GenerationSettings
from medchat.core.model import ModelError, ModelSpec

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
    import medchat.core.model

    monkeypatch.setattr(fastdecode, "llamacpp_available", lambda: False)
    monkeypatch.setattr(medchat.core.model, "cuda_available", lambda: False)
    backend, why = fastdecode.choose_backend(ModelSpec())
    assert backend == "onnx" and "ONNX Runtime" in why  # installed by default: the fresh clone's fast path
    with pytest.raises(ModelError, match=r"medchat\[llamacpp\]"):
        fastdecode.choose_backend(ModelSpec(), "llamacpp")
    with pytest.raises(ModelError, match="cannot run"):
        fastdecode.choose_backend(ModelSpec(backend="llamacpp"))
    with pytest.raises(ModelError, match="Unknown backend 'fastest'"):
        ModelSpec(backend="fastest")


def test_backend_flag_reads_the_environment(monkeypatch):
    from medchat.app.cli_options import model_options

    seen = {}

    @click.command()
    @model_options
    def show(spec):
        seen["spec"] = spec

    monkeypatch.setenv("MEDCHAT_BACKEND", "torch")
    assert CliRunner().invoke(show, []).exit_code == 0 and seen["spec"].backend == "torch"
    assert CliRunner().invoke(show, ["--backend", "llamacpp"]).exit_code == 0
    assert seen["spec"].backend == "llamacpp"


def test_backend_choice_rules(monkeypatch, tiny_model_dir, tiny_nf4_model_dir, tmp_path):
    monkeypatch.setattr(fastdecode, "llamacpp_available", lambda: True)
    import medchat.core.model
    from medchat.core import onnx_engine

    monkeypatch.setattr(medchat.core.model, "cuda_available", lambda: False)
    assert fastdecode.choose_backend(ModelSpec())[0] == "llamacpp"
    # explicit torch-level choices keep transformers
    assert fastdecode.choose_backend(ModelSpec(dtype="fp32"))[0] == "torch"
    assert fastdecode.choose_backend(ModelSpec(device="cpu"))[0] == "torch"
    assert fastdecode.choose_backend(ModelSpec(), "torch")[0] == "torch"
    # a Llama checkpoint that is not a GGUF goes to ONNX Runtime, not llama.cpp (head size 16 here)
    assert fastdecode.choose_backend(ModelSpec(base=str(tiny_nf4_model_dir))) == (
        "onnx", "ONNX Runtime: fastest installed backend on CPU")
    backend, why = fastdecode.choose_backend(ModelSpec(base=str(tiny_model_dir)))  # head size 8
    assert backend == "torch" and "multiple of 16, not 8" in why
    with pytest.raises(ModelError, match="not a GGUF"):
        fastdecode.choose_backend(ModelSpec(base=str(tiny_model_dir)), "llamacpp")
    # an architecture the ONNX conversion was not checked on stays on transformers, or fails when forced
    other = tmp_path / "gpt2"
    other.mkdir()
    (other / "config.json").write_text('{"architectures": ["GPT2LMHeadModel"]}')
    backend, why = fastdecode.choose_backend(ModelSpec(base=str(other)))
    assert backend == "torch" and "supports LlamaForCausalLM, not GPT2LMHeadModel" in why
    with pytest.raises(ModelError, match="The ONNX Runtime backend cannot run: .*GPT2LMHeadModel"):
        fastdecode.choose_backend(ModelSpec(base=str(other), backend="onnx"))
    with pytest.raises(ModelError, match="NF4"):
        fastdecode.choose_backend(ModelSpec(base=str(tiny_model_dir), quantization="nf4"), "onnx")
    monkeypatch.setattr(onnx_engine, "available", lambda: False)
    monkeypatch.setattr(fastdecode, "llamacpp_available", lambda: False)
    backend, why = fastdecode.choose_backend(ModelSpec())
    assert backend == "torch" and "onnxruntime-genai is not installed" in why
    monkeypatch.setattr(medchat.core.model, "cuda_available", lambda: True)
    assert fastdecode.choose_backend(ModelSpec())[0] == "torch"


def test_load_engine_on_transformers(tiny_model_dir):
    engine = fastdecode.load_engine(ModelSpec(base=str(tiny_model_dir), backend="torch"))
    assert type(engine) is Engine
    assert engine.info.extra["backend"] == "transformers"
    text, stats = engine.generate([{"role": "user", "content": "hi"}], GenerationSettings(max_new_tokens=3))
    assert stats.tokens <= 3


# ---------------------------------------------------------------- llama.cpp engine on the bundled model


@pytest.fixture(scope="module")
def llama_engine():
    if not HAS_LLAMA_CPP:
        pytest.skip("llama-cpp-python is not installed (optional extra medchat[llamacpp])")
    # the base's own type: the very file (and weights) transformers loads, so answers can be compared
    return fastdecode.LlamaCppEngine.load(ModelSpec(), n_threads=1, gguf_type="q4_1")


@pytest.mark.bundled
def test_llama_engine_streams_like_the_torch_engine(llama_engine, bundled_spec):
    from medchat.core.model import load
    from medchat.core.prompting import build_messages

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
def test_llama_engine_runs_the_default_layout(llama_engine, monkeypatch):
    from medchat.core import gguf_export
    from medchat.core.prompting import build_messages

    engine = fastdecode.LlamaCppEngine.load(ModelSpec(), n_threads=1)
    assert engine.info.quantization == gguf_export.DEFAULT_RUN_TYPE
    assert "".join(engine.stream(build_messages("What is asthma?"), GenerationSettings(max_new_tokens=8))).strip()


@pytest.mark.bundled
def test_llama_engine_cancel_stops_the_model(llama_engine):
    from medchat.core.prompting import build_messages

    cancel = threading.Event()
    stream = llama_engine.stream(build_messages("Explain how vaccines work."), GenerationSettings(max_new_tokens=200),
                                 cancel=cancel)
    chunks = []
    for chunk in stream:
        chunks.append(chunk)
        cancel.set()
    assert stream.stats.stop_reason == "cancelled"
    assert stream.stats.tokens < 200


# ---------------------------------------------------------------- the decode loop, without llama.cpp


class TransformersLlama:
    """Stands in for llama_cpp.Llama (not installed in CI) with the same small surface the engine uses:
    n_tokens / input_ids / eval / n_vocab / reset / _ctx.get_logits_ith, computed by a real tiny model."""

    def __init__(self, model, n_ctx=256):
        import ctypes

        self.model = model
        self.n_tokens = 0
        self.input_ids = np.zeros(n_ctx, dtype=np.intc)
        self.evaluated = 0  # tokens pushed through eval(), to see the prompt prefix reused
        self._logits = (ctypes.c_float * model.config.vocab_size)()
        outer = self

        class _Ctx:
            def get_logits_ith(self, i):
                assert i == -1
                return ctypes.cast(outer._logits, ctypes.POINTER(ctypes.c_float))

        self._ctx = _Ctx()

    def n_vocab(self):
        return self.model.config.vocab_size

    def reset(self):
        self.n_tokens = 0

    def eval(self, tokens):
        import torch

        tokens = list(tokens)
        self.input_ids[self.n_tokens:self.n_tokens + len(tokens)] = tokens
        self.n_tokens += len(tokens)
        self.evaluated += len(tokens)
        with torch.inference_mode():
            ids = torch.tensor([self.input_ids[: self.n_tokens].tolist()])
            logits = self.model(input_ids=ids).logits[0, -1].float().numpy()
        for i, value in enumerate(logits):
            self._logits[i] = float(value)


@pytest.fixture
def tiny_pair(tiny_model_dir):
    from medchat.core.model import load

    loaded = load(ModelSpec(base=str(tiny_model_dir), dtype="fp32"))
    torch_engine = Engine(loaded)
    stand_in = TransformersLlama(loaded.model)
    fast = fastdecode.LlamaCppEngine(stand_in, loaded.tokenizer, loaded.info,
                                     eos_ids=[loaded.tokenizer.eos_token_id])
    return torch_engine, fast, stand_in


def test_decode_loop_matches_the_transformers_engine(tiny_pair):
    torch_engine, fast, stand_in = tiny_pair
    messages = [{"role": "user", "content": "What are the symptoms of diabetes?"}]
    for settings in (GenerationSettings(max_new_tokens=24, repetition_penalty=1.3, no_repeat_ngram_size=2),
                     GenerationSettings(max_new_tokens=24, repetition_penalty=1.0, no_repeat_ngram_size=0)):
        expected, expected_stats = torch_engine.generate(messages, settings)
        stream = fast.stream(messages, settings)
        chunks = list(stream)
        assert "".join(chunks) == expected
        assert stream.stats.tokens == expected_stats.tokens
        assert stream.stats.stop_reason == expected_stats.stop_reason
        assert fast.generate_batch([messages], settings) == [expected.strip()]


def test_decode_loop_reuses_the_prompt_prefix(tiny_pair):
    _, fast, stand_in = tiny_pair
    settings = GenerationSettings(max_new_tokens=5)
    first = [{"role": "user", "content": "How does aspirin work?"}]
    answer, _ = fast.generate(first, settings)
    prompt = fast.prompt_ids(first)
    follow_up = first + [{"role": "assistant", "content": answer}, {"role": "user", "content": "And ibuprofen?"}]
    before = stand_in.evaluated
    again, stats = fast.generate(follow_up, settings)
    new_prompt = fast.prompt_ids(follow_up)
    shared = next(i for i, (a, b) in enumerate(zip(new_prompt, prompt + [None] * len(new_prompt))) if a != b)
    assert stand_in.evaluated - before <= len(new_prompt) - shared + stats.tokens
    # a fresh context gives the same answer: reuse changes the cost, not the result
    stand_in.reset()
    assert fast.generate(follow_up, settings)[0] == again


def test_prefill_keeps_the_system_prompt_ready(tiny_pair):
    torch_engine, fast, stand_in = tiny_pair
    settings = GenerationSettings(max_new_tokens=6)
    system = [{"role": "system", "content": "You are a careful medical assistant."}]
    question = system + [{"role": "user", "content": "What causes gout?"}]
    expected, _ = torch_engine.generate(question, settings)
    prefix = fast.next_turn_prefix(system)
    prompt = fast.prompt_ids(question)
    assert len(prefix) > 5 and prompt[:len(prefix)] == prefix and len(prefix) < len(prompt)
    stand_in.reset()
    fast.prefill(system)
    assert stand_in.n_tokens == len(prefix) and stand_in.input_ids[:len(prefix)].tolist() == prefix
    before = stand_in.evaluated
    answer, stats = fast.generate(question, settings)
    # the first question only evaluates its own tokens (and the generated ones), and answers the same
    assert stand_in.evaluated - before == len(prompt) - len(prefix) + stats.tokens - (stats.stop_reason == "length")
    assert answer == expected
    # a draft read ahead: the conversation so far and the words typed, a longer shared prefix
    stand_in.reset()
    fast.prefill(system, draft="What causes")
    draft_prefix = fast.next_turn_prefix(system, "What causes")
    assert len(draft_prefix) > len(prefix) and prompt[:len(draft_prefix)] == draft_prefix
    assert stand_in.input_ids[:stand_in.n_tokens].tolist() == draft_prefix
    before = stand_in.evaluated
    assert fast.generate(question, settings)[0] == expected
    assert stand_in.evaluated - before == len(prompt) - len(draft_prefix) + stats.tokens - 1
    # a draft the user then rewrote costs nothing but the difference
    fast.prefill(system, draft="How long does gout")
    assert fast.generate(question, settings)[0] == expected
    torch_engine.prefill(system, draft="What causes")  # transformers keeps no cache: nothing to do
    assert torch_engine.generate(question, settings)[0] == expected


def test_decode_loop_cancel_and_errors(tiny_pair):
    _, fast, stand_in = tiny_pair
    cancel = threading.Event()
    cancel.set()
    stream = fast.stream([{"role": "user", "content": "hello"}], GenerationSettings(max_new_tokens=50), cancel=cancel)
    assert list(stream) == []
    assert stream.stats.stop_reason == "cancelled" and stream.stats.tokens == 0

    def broken(tokens):
        raise RuntimeError("llama_decode returned -1")

    stand_in.eval = broken
    stand_in.reset()
    from medchat.core.engine import EngineError

    stream = fast.stream([{"role": "user", "content": "hello"}], GenerationSettings(max_new_tokens=5))
    with pytest.raises(EngineError, match="llama_decode returned -1"):
        list(stream)
    assert stream.stats.stop_reason == "error"


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_chat_app_reads_the_system_prompt_and_the_draft_ahead(tiny_pair, anyio_backend):
    import dataclasses

    from medchat.app.chat.app import MedchatApp

    _, fast, stand_in = tiny_pair
    stand_in.reset()
    app = MedchatApp(None, engine_factory=lambda: fast, guard_factory=lambda: None, no_history=True,
                     cursor_blink=False)
    async with app.run_test(size=(100, 30)) as pilot:
        # the system prompt is read once "Ready" is painted: model_settled says that read is done
        for _ in range(400):
            if app.loader.model_settled.is_set():
                break
            await pilot.pause(0.01)
        assert app.loader.model_status == "ready"
        system = [{"role": "system", "content": app.settings.effective_system_prompt}]
        prefix = fast.next_turn_prefix(system)
        assert stand_in.n_tokens == len(prefix) and stand_in.input_ids[:len(prefix)].tolist() == prefix
        # typing, then a pause: the draft is read ahead, and Enter reuses it
        for key in "What causes gout":
            await pilot.press("space" if key == " " else key)
        draft_prefix = fast.next_turn_prefix(system, "What causes gout")
        for _ in range(300):  # on a loaded machine a slow key press is a pause too: wait for the whole draft
            await pilot.pause(0.02)
            if stand_in.input_ids[:stand_in.n_tokens].tolist() == draft_prefix:
                break
        assert stand_in.input_ids[:stand_in.n_tokens].tolist() == draft_prefix
        app.settings = dataclasses.replace(app.settings, max_new_tokens=8)
        before = stand_in.evaluated
        await pilot.press("question_mark", "enter")
        for _ in range(1000):
            await pilot.pause(0.02)
            if not app.generating and app.turns and app.turns[-1]["role"] == "assistant":
                break
        assert app.turns[-1]["role"] == "assistant"
        prompt = fast.prompt_ids(system + [{"role": "user", "content": "What causes gout?"}])
        assert prompt[:len(draft_prefix)] == draft_prefix
        # only the question's last tokens and the answer were evaluated after Enter
        answer_tokens = stand_in.evaluated - before - (len(prompt) - len(draft_prefix))
        assert 0 <= answer_tokens <= 8


@pytest.mark.parametrize("usable, logical, physical, expected", [
    (2, 2, 2, 2),     # a VM with one CPU per core: both (the old half-the-CPUs rule gave 1)
    (16, 16, 8, 8),   # two hyperthreads per core: one per core
    (4, 16, 8, 2),    # affinity limited to 4 hyperthreads
    (1, 2, 1, 1),
    (6, None, None, 3),  # counts unknown: assume hyperthreads
])
def test_threads_one_per_physical_core(usable, logical, physical, expected):
    assert fastdecode.threads_for(usable, logical, physical) == expected


def test_chosen_threads_win():
    assert fastdecode.cpu_threads(3) == 3
    assert 1 <= fastdecode.cpu_threads() <= (os.cpu_count() or 1)
