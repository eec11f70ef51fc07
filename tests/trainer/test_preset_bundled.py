"""One short run of the shipped cpu-smollm2 preset on the real bundled SmolLM2-135M."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from medchat.core.paths import ASSETS_DIR
from medchat.app.train_cli import main

SAMPLE = ASSETS_DIR / "sample_data" / "medical_qa_sample.jsonl"


@pytest.mark.bundled
def test_cpu_smollm2_preset_end_to_end(bundled_spec, tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", "--preset", "cpu-smollm2", "--data", str(SAMPLE), "--limit", "6",
                                       "--max-steps", "1", "--batch-size", "2", "--max-length", "256",
                                       "--no-guard-index", "--output-dir", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    card = json.loads((out / "run.json").read_text())
    assert card["status"] == "complete" and card["base"] == "bundled" and card["preset"] == "cpu-smollm2"
    assert card["hyperparameters"]["target_modules"] == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                         "up_proj", "down_proj"]
    assert card["final"]["steps"] == 1 and card["final"]["eval_loss"] < 10
    adapter_cfg = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter_cfg["r"] == 16 and adapter_cfg["lora_alpha"] == 32
    assert (out / "adapter" / "chat_template.jinja").is_file() or "chat_template" in (
        out / "adapter" / "tokenizer_config.json").read_text()

    # the adapter loads back through the shared loader
    from medchat.core.model import ModelSpec, load

    loaded = load(ModelSpec(base="bundled", adapter=str(out / "adapter"), device="cpu", dtype="fp32"))
    assert loaded.info.merged and loaded.info.adapter


def test_inspect_data_shows_mask_and_counts(tiny_model_dir):
    result = CliRunner().invoke(main, ["inspect-data", "--base", str(tiny_model_dir), "--data", str(SAMPLE), "-n",
                                       "1", "--max-length", "256", "--system-prompt", "Be careful."],
                                env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    out = result.output
    assert "train example 1" in out and "loss on" in out and "carry the loss" in out
    assert "dropped: duplicate" in out and "question_too_short" in out and "28 / 4" in out
    js = CliRunner().invoke(main, ["inspect-data", "--base", str(tiny_model_dir), "--data", str(SAMPLE), "--json",
                                   "--max-length", "256", "--system-prompt", "Be careful."])
    data = json.loads(js.output)
    assert data["dropped"]["spam"] == 1 and data["tokens"]["train"]["examples"] == 28


def test_guard_hook_failure_becomes_a_note(tmp_path, monkeypatch):
    import medchat.core.guard as guard
    from medchat.core.runs import RunDir
    from trainer.train import _build_guard_index

    def fail(*args, **kwargs):
        raise RuntimeError("the embedder is not installed")

    monkeypatch.setattr(guard, "build_reference_index", fail)
    note = _build_guard_index(RunDir(tmp_path), [], None)
    assert note.startswith("warning: guard index not built") and "embedder is not installed" in note
