"""Evaluation on the tiny model: batched, cached, resumable; bad input gives clear messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from metrics.evaluate import PROBES, EvalError, default_settings, evaluate, resolve_target
from metrics_fixtures import QA, make_run, write_jsonl, no_shipped_default_run  # noqa: F401

SETTINGS = dict(max_new_tokens=5)


@pytest.fixture(scope="module")
def tiny_adapter(tiny_model_dir, tmp_path_factory) -> Path:
    """A LoRA adapter for the tiny model with non-zero B, so fine-tuned differs from base."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                  init_lora_weights=False, task_type="CAUSAL_LM"))
    out = tmp_path_factory.mktemp("tiny_adapter")
    peft_model.save_pretrained(out, safe_serialization=True)
    return out


@pytest.fixture
def tiny_run(tmp_path, tiny_model_dir, tiny_adapter) -> Path:
    return make_run(tmp_path / "runs", "20261120-100000-tiny", base=str(tiny_model_dir), adapter_from=tiny_adapter)


def _eval(run, **kw):
    target = resolve_target(run)
    return evaluate(target, default_settings(**SETTINGS), device="cpu", dtype="fp32", batch_size=2, **kw)


def test_evaluate_writes_results_and_reuses_the_cache(tiny_run):
    first = _eval(tiny_run, limit=3)
    n_questions = 3 + len(PROBES)
    assert first.generated == {"base": n_questions, "finetuned": n_questions}
    assert first.loaded == ["base", "finetuned"]

    results = json.loads((tiny_run / "eval" / "results.json").read_text())
    assert results["n_examples"] == 3
    assert results["run_status"] == "complete"
    assert results["settings"]["max_new_tokens"] == 5
    assert results["settings"]["repetition_penalty"] == 1.1
    assert results["settings"]["no_repeat_ngram_size"] == 4
    assert results["settings"]["temperature"] == 0.0
    assert {"torch", "transformers", "sacrebleu"} <= set(results["versions"])
    for which in ("base", "finetuned"):
        assert set(results[which]) >= {"rouge1", "rouge2", "rougeL", "bleu", "token_f1", "set_f1", "perplexity"}
        assert results[which]["perplexity"] > 1
    assert results["base"]["perplexity"] != results["finetuned"]["perplexity"]  # the adapter changed the model
    assert [p["question"] for p in results["probes"]] == [q for q, _ in PROBES]
    assert results["probes"][3]["kind"] == "out_of_domain"

    rows = [json.loads(line) for line in (tiny_run / "eval" / "examples.jsonl").read_text().splitlines()]
    assert [r["question"] for r in rows] == [q for q, _ in QA[:3]]
    assert rows[0]["reference"] == QA[0][1]
    for r in rows:
        assert r["delta"]["rougeL"] == pytest.approx(r["finetuned"]["rougeL"] - r["base"]["rougeL"])
        assert isinstance(r["base"]["prediction"], str)

    # rerunning costs nothing: no model is even loaded, and the numbers are the same
    again = _eval(tiny_run, limit=3)
    assert again.loaded == []
    assert again.generated == {"base": 0, "finetuned": 0}
    assert again.results["finetuned"] == results["finetuned"]

    # more examples: only the new ones are generated
    more = _eval(tiny_run, limit=5)
    assert more.generated == {"base": 2, "finetuned": 2}
    assert more.results["n_examples"] == 5


def test_changed_generation_settings_are_a_different_cache(tiny_run):
    _eval(tiny_run, limit=2, probes=False)
    target = resolve_target(tiny_run)
    other = evaluate(target, default_settings(max_new_tokens=3), device="cpu", dtype="fp32", limit=2, probes=False)
    assert other.generated == {"base": 2, "finetuned": 2}
    assert other.results["settings"]["max_new_tokens"] == 3
    # another batch size too: in bf16 it changes the answers, so its answers are its own
    batch3 = evaluate(target, default_settings(**SETTINGS), device="cpu", dtype="fp32", batch_size=3, limit=2,
                      probes=False)
    assert batch3.generated == {"base": 2, "finetuned": 2} and batch3.results["batch_size"] == 3


def test_interrupted_evaluation_resumes(tiny_run):
    calls = []

    def stop_after_first_batch(which, phase, done, total):
        calls.append((which, phase, done))
        if phase == "generate" and done >= 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _eval(tiny_run, limit=4, probes=False, progress=stop_after_first_batch)
    assert not (tiny_run / "eval" / "results.json").exists()  # never a half-scored result

    resumed = _eval(tiny_run, limit=4, probes=False)
    assert resumed.generated == {"base": 2, "finetuned": 4}
    assert resumed.results["n_examples"] == 4


def test_bad_inputs_have_clear_messages(tmp_path, tiny_model_dir, tiny_adapter):
    runs = tmp_path / "runs"
    interrupted = make_run(runs, "20261120-110000-stopped", status="interrupted", base=str(tiny_model_dir),
                           adapter_from=tiny_adapter)
    with pytest.raises(EvalError, match="interrupted.*--allow-incomplete"):
        resolve_target(interrupted)
    target = resolve_target(interrupted, allow_incomplete=True)
    assert target.run_status == "interrupted"

    empty = write_jsonl(tmp_path / "empty.jsonl", [])
    with pytest.raises(EvalError, match="holds no examples"):
        evaluate(resolve_target(tiny_adapter, data=empty, base=str(tiny_model_dir)))

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "a"}\n{not json\n')
    with pytest.raises(EvalError, match=r"bad.jsonl, line 2"):
        evaluate(resolve_target(tiny_adapter, data=bad, base=str(tiny_model_dir)))

    with pytest.raises(EvalError, match="pass --data"):
        resolve_target(tiny_adapter)

    with pytest.raises(EvalError, match="neither a run directory"):
        resolve_target(tmp_path)

    no_split = make_run(runs, "20261120-120000-nosplit", base=str(tiny_model_dir), adapter_from=tiny_adapter)
    (no_split / "splits" / "eval.jsonl").unlink()
    with pytest.raises(EvalError, match="no held-out split"):
        resolve_target(no_split)


def test_mismatched_base_and_adapter(tmp_path, tiny_adapter, tiny_tokenizer_dir):
    """An adapter trained on one base does not load onto a base of another shape: a readable error."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    other = tmp_path / "other-base"
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2)).save_pretrained(other)
    tok.save_pretrained(other)
    data = write_jsonl(tmp_path / "d.jsonl", [{"question": QA[0][0], "answer": QA[0][1]}])
    target = resolve_target(tiny_adapter, data=data, base=str(other))
    with pytest.raises(EvalError, match="does not fit the base"):
        evaluate(target, default_settings(**SETTINGS), device="cpu", dtype="fp32", probes=False)


def test_cli_evaluates_a_bare_adapter_with_data(tmp_path, tiny_model_dir, tiny_adapter):
    from click.testing import CliRunner

    from medchat.app.metrics_cli import main

    data = write_jsonl(tmp_path / "held_out.jsonl", [{"question": q, "answer": a} for q, a in QA[:2]])
    out = tmp_path / "out"
    args = ["evaluate", str(tiny_adapter), "--data", str(data), "--base", str(tiny_model_dir), "--out", str(out),
            "--max-new-tokens", "3", "--no-probes", "--device", "cpu", "--dtype", "fp32"]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "Base vs fine-tuned" in result.output and "ROUGE-L" in result.output
    results = json.loads((out / "results.json").read_text())
    assert results["run_id"] is None and results["n_examples"] == 2
    assert results["base_model_name"] == str(tiny_model_dir)
    again = CliRunner().invoke(main, args, catch_exceptions=False)
    assert "all cached, nothing generated" in again.output
