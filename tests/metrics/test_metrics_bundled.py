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
