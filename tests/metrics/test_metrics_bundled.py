"""End to end on the real bundled SmolLM2-135M: `medchat-metrics evaluate` on a run, then the report."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from medchat.app.metrics_cli import main
from metrics_fixtures import QA, make_run, no_shipped_default_run  # noqa: F401

pytestmark = pytest.mark.bundled


@pytest.fixture(scope="module")
def bundled_adapter(tmp_path_factory):
    """A small LoRA on the bundled base with slightly perturbed B, so the fine-tuned model differs a little."""
    import torch
    from peft import LoraConfig, get_peft_model

    from medchat.core.model import ModelSpec, load

    loaded = load(ModelSpec(base="bundled", device="cpu", dtype="fp32"))
    model = get_peft_model(loaded.model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"],
                                                    task_type="CAUSAL_LM"))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=2e-3)
    out = tmp_path_factory.mktemp("bundled_adapter")
    model.save_pretrained(out, safe_serialization=True)
    return out


def test_evaluate_bundled_end_to_end(isolated_user_dirs, bundled_adapter):
    run = make_run(isolated_user_dirs / "runs", "20261129-120000-e2e", base="bundled", qa=QA[:2],
                   adapter_from=bundled_adapter)
    # few tokens and no probes keep this affordable on 2 shared cores (probes are covered on the tiny model)
    args = ["evaluate", run.name, "--max-new-tokens", "6", "--batch-size", "2", "--no-probes",
            "--device", "cpu", "--dtype", "fp32"]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "Base vs fine-tuned: 20261129-120000-e2e" in result.output

    results = json.loads((run / "eval" / "results.json").read_text())
    assert results["n_examples"] == 2
    assert results["settings"] == {"max_new_tokens": 6, "temperature": 0.0, "top_p": 1.0,
                                   "repetition_penalty": 1.1, "no_repeat_ngram_size": 4}
    assert results["model_info"]["finetuned"]["merged"] is True
    for which in ("base", "finetuned"):
        # a real instruct model answers in English: some overlap with the references, a sane perplexity
        assert 1.0 < results[which]["perplexity"] < 1000
        assert 0.0 <= results[which]["rougeL"] <= 1.0
    rows = [json.loads(line) for line in (run / "eval" / "examples.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["base"]["prediction"].strip() for r in rows)

    again = CliRunner().invoke(main, args, catch_exceptions=False)
    assert again.exit_code == 0
    assert json.loads((run / "eval" / "results.json").read_text())["finetuned"] == results["finetuned"]

    md = CliRunner().invoke(main, ["report", run.name, "--format", "markdown"]).output
    assert "| ROUGE-L |" in md and "20261129-120000-e2e" in md


def test_mcq_bundled_end_to_end(isolated_user_dirs, bundled_adapter, tmp_path):
    """`medchat-metrics mcq` on the real bundled model: three MedMCQA-shaped rows written here, base and fine-tuned."""
    run = make_run(isolated_user_dirs / "runs", "20261129-130000-mcq", base="bundled", qa=QA[:2],
                   adapter_from=bundled_adapter)
    rows = [
        {"question": "Which organ pumps blood around the body?",
         "options": {"A": "Liver", "B": "Heart", "C": "Kidney", "D": "Lung"}, "answer": "B"},
        {"question": "Insulin is made in the",
         "options": {"A": "Pancreas", "B": "Spleen", "C": "Stomach", "D": "Skin"}, "answer": "A"},
        {"question": "Which vitamin deficiency causes scurvy?",
         "options": {"A": "Vitamin A", "B": "Vitamin D", "C": "Vitamin C", "D": "Vitamin K"}, "answer": "C"},
    ]
    data = tmp_path / "medmcqa.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    result = CliRunner(env={"COLUMNS": "120"}).invoke(
        main, ["mcq", run.name, "--task", "medmcqa", "--data", str(data), "--device", "cpu", "--dtype", "fp32"],
        catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "Multiple choice: 20261129-130000-mcq" in result.output

    results = json.loads((run / "eval" / "mcq_medmcqa.json").read_text())
    assert results["n_examples"] == 3 and results["baselines"]["chance"] == 0.25
    assert results["model_info"]["finetuned"]["merged"] is True
    per_question = [json.loads(line) for line in (run / "eval" / "mcq_medmcqa.examples.jsonl").read_text().splitlines()]
    assert [r["line"] for r in per_question] == [1, 2, 3] and [r["gold"] for r in per_question] == ["B", "A", "C"]
    for which in ("base", "finetuned"):
        hits = [r[which]["acc"] for r in per_question]
        assert results[which]["acc"] == pytest.approx(sum(hits) / 3)
        for r in per_question:  # real log-likelihoods of " A".." D": negative, finite, not all equal
            lls = r[which]["loglikelihoods"]
            assert len(lls) == 4 and all(-50 < ll < 0 for ll in lls) and len(set(lls)) > 1
    assert "Which organ" not in (run / "eval" / "mcq_medmcqa.examples.jsonl").read_text()  # no question text copied
    assert results["intervals"]["acc"]["verdict"] in ("better", "worse", "no clear change")

    md = CliRunner().invoke(main, ["report", run.name, "--format", "markdown"]).output
    assert "### Multiple choice" in md and "| medmcqa | 3 | 0 |" in md
