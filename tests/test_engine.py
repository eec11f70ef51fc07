import threading

import pytest

from medchat.core.engine import Engine, EngineError, GenerationSettings
from medchat.core.model import ModelSpec, load
from medchat.core.prompting import build_messages


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return Engine(load(ModelSpec(base=str(tiny_model_dir), device="cpu", dtype="fp32")))


def test_stream_yields_text_and_stats(engine):
    stream = engine.stream(build_messages("What is aspirin?"), GenerationSettings(max_new_tokens=12))
    text = "".join(stream)
    stats = stream.stats
    assert text
    assert 1 <= stats.tokens <= 12
    assert stats.stop_reason in ("length", "eos")
    assert stats.stop_reason == "length" or stats.tokens < 12
    assert stats.ttft_s is not None and stats.elapsed_s >= stats.ttft_s


def test_cancel_before_start_stops_at_once(engine):
    cancel = threading.Event()
    cancel.set()
    stream = engine.stream(build_messages("What is aspirin?"), GenerationSettings(max_new_tokens=200), cancel)
    "".join(stream)
    assert stream.stats.stop_reason == "cancelled"
    assert stream.stats.tokens <= 1


def test_cancel_midway_stops_the_model(engine):
    stream = engine.stream(build_messages("What is aspirin?"), GenerationSettings(max_new_tokens=200, no_repeat_ngram_size=0))
    for index, _ in enumerate(stream):
        if index == 2:
            stream.cancel()
    assert stream.stats.stop_reason == "cancelled"
    assert stream.stats.tokens < 200


def test_sampling_settings_are_validated(engine):
    with pytest.raises(EngineError, match="top_p"):
        engine.stream(build_messages("Q?"), GenerationSettings(temperature=0.7, top_p=0))


def test_sampling_runs(engine):
    text, stats = engine.generate(build_messages("Q?"), GenerationSettings(max_new_tokens=5, temperature=0.8))
    assert stats.tokens >= 1


def test_settings_round_trip():
    settings = GenerationSettings(max_new_tokens=7, temperature=0.3)
    assert GenerationSettings.from_dict({**settings.as_dict(), "unknown": 1}) == settings


def test_long_history_drops_oldest_turns(engine):
    history = []
    for i in range(30):
        history += [{"role": "user", "content": f"question {i} about aspirin"},
                    {"role": "assistant", "content": f"answer {i} about the immune system"}]
    stream = engine.stream(build_messages("Last question?", history=history), GenerationSettings(max_new_tokens=8))
    "".join(stream)
    assert stream.truncated_turns > 0
    assert stream.truncated_chars == 0


def test_huge_message_is_cut_to_fit(engine):
    ids = engine.fit_prompt(build_messages("aspirin " * 2000), 16)
    assert len(ids) <= engine.info.context_length - 16
    stream = engine.stream(build_messages("aspirin " * 2000), GenerationSettings(max_new_tokens=4))
    "".join(stream)
    assert stream.truncated_chars > 0


def test_no_room_for_a_prompt(engine):
    with pytest.raises(EngineError, match="leaves no room"):
        engine.fit_prompt(build_messages("Q?"), 250)


def test_batched_generation_matches_one_at_a_time(engine):
    settings = GenerationSettings(max_new_tokens=6, repetition_penalty=1.0, no_repeat_ngram_size=0)
    conversations = [build_messages(q) for q in ["What is aspirin?", "Fever?", "How does the immune system fight bacteria?"]]
    batched = engine.generate_batch(conversations, settings, batch_size=3)
    single = [engine.generate_batch([c], settings)[0] for c in conversations]
    assert batched == single
    assert len(batched) == 3


@pytest.mark.bundled
def test_bundled_model_cancels_early(bundled_spec):
    engine = Engine(load(bundled_spec))
    stream = engine.stream(build_messages("What is the mechanism of action of aspirin?"),
                           GenerationSettings(max_new_tokens=300))
    chunks = []
    for chunk in stream:
        chunks.append(chunk)
        if len(chunks) == 3:
            stream.cancel()
    assert stream.stats.stop_reason == "cancelled"
    assert stream.stats.tokens < 40
    assert "".join(chunks).strip()
