"""The shipped default adapter: a complete run card that loads on the bundled base and answers."""

import json

import pytest

from medchat.engine import Engine, GenerationSettings
from medchat.model import ModelSpec, load
from medchat.paths import DEFAULT_RUN_DIR, default_adapter_dir
from medchat.prompting import build_messages


def test_the_run_card_is_complete_and_small():
    run = json.loads((DEFAULT_RUN_DIR / "run.json").read_text())
    assert run["status"] == "complete" and run["base"] == "bundled"
    for name in ("config.yaml", "data_manifest.json", "loss_log.jsonl", "eval/results.json", "guard_index/index.json"):
        assert (DEFAULT_RUN_DIR / name).is_file(), name
    manifest = json.loads((DEFAULT_RUN_DIR / "data_manifest.json").read_text())
    assert manifest["split"]["eval"] >= 200 and all(s["sha256"] for s in manifest["sources"])
    results = json.loads((DEFAULT_RUN_DIR / "eval" / "results.json").read_text())
    base, tuned = results["base"], results["finetuned"]
    assert results["n_examples"] >= 200
    # The claim the README makes: the adapter beats its base on these three.
    assert tuned["rougeL"] > base["rougeL"] and tuned["token_f1"] > base["token_f1"]
    assert tuned["perplexity"] < base["perplexity"]
    weights = default_adapter_dir() / "adapter_model.safetensors"
    assert weights.stat().st_size < 30 * 2**20  # LoRA weights only
    assert not (DEFAULT_RUN_DIR / "checkpoints").exists()


@pytest.mark.bundled
def test_shipped_adapter_merges_into_the_bundled_base_and_answers():
    loaded = load(ModelSpec(base="bundled", adapter=str(default_adapter_dir())))
    assert loaded.info.merged and loaded.info.adapter.endswith("adapter")
    stream = Engine(loaded).stream(build_messages("What are the common symptoms of type 2 diabetes?"),
                                   GenerationSettings(max_new_tokens=24))
    chunks = list(stream)
    assert len(chunks) > 1 and "".join(chunks).strip()
    assert stream.stats.tokens > 0
