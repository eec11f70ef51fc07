"""Multiple-choice scoring (tiny model vs a manual computation), prompts, bad input, bootstrap, evaluate's output."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from metrics.bootstrap import BootstrapConfig, paired_mean, verdict
from metrics.mcq import build_requests, mean_stderr, predictions, score_requests
from metrics.mcq_tasks import (
    FewshotPlan,
    TaskError,
    build_context,
    choose_shots,
    continuations,
    load_questions,
    resolve_task,
)
from metrics_fixtures import QA, make_run, write_jsonl, no_shipped_default_run  # noqa: F401
from test_metrics_evaluate import tiny_adapter  # noqa: F401

MCQ_ROWS = [
    {"question": "What fights bacteria?", "options": {"A": "White blood cells", "B": "Salt", "C": "Sugar", "D": "Air"},
     "answer": "A"},
    {"question": "What is a fever?", "options": {"A": "Low temperature", "B": "High temperature", "C": "A rash",
                                                 "D": "A cough"}, "answer": "B"},
    {"question": "Aspirin blocks", "options": {"A": "insulin", "B": "cyclooxygenase", "C": "water", "D": "iron"},
     "answer": "B"},
]


def test_medmcqa_prompt_and_one_shot_context(tmp_path):
    spec = resolve_task("medmcqa")
    qs = load_questions(spec, write_jsonl(tmp_path / "q.jsonl", MCQ_ROWS))
    assert build_context(spec, qs[0], []) == (
        "Question: What fights bacteria?\nChoices:\nA. White blood cells\nB. Salt\nC. Sugar\nD. Air\nAnswer:")
    assert continuations(spec, qs[0]) == [" A", " B", " C", " D"]
    pool = load_questions(spec, write_jsonl(tmp_path / "shots.jsonl", MCQ_ROWS[1:]))
    plan = FewshotPlan(k=1, path=tmp_path / "shots.jsonl", seed=1234, sampler="random", same_file=False)
    shots = choose_shots(spec, qs, pool, plan)
    import random

    rnd = random.Random(1234)  # lm-eval's sampler: one Random(seed), sample(pool, k) per question in order
    assert [s[0].question for s in shots] == [rnd.sample(pool, 1)[0].question for _ in qs]
    context = build_context(spec, qs[0], shots[0])
    shot = shots[0][0]
    assert context.startswith(f"Question: {shot.question}\nChoices:\n")
    assert f"Answer: {shot.gold_label}\n\nQuestion: What fights bacteria?" in context
    assert choose_shots(spec, qs, pool, plan) == shots  # seeded


def test_mmlu_and_pubmedqa_prompts(tmp_path):
    mmlu = resolve_task("mmlu-medical")
    q = load_questions(mmlu, write_jsonl(tmp_path / "m.jsonl", [{**MCQ_ROWS[0], "subject": "clinical_knowledge"}]))[0]
    assert build_context(mmlu, q, []).startswith(
        "The following are multiple choice questions (with answers) about clinical knowledge.\n\nWhat fights bacteria?\nA. ")
    pub = resolve_task("pubmedqa")
    row = {"question": "Does it work?", "context": ["Part one.", "Part two."], "answer": "maybe"}
    q = load_questions(pub, write_jsonl(tmp_path / "p.jsonl", [row]))[0]
    assert build_context(pub, q, []) == "Abstract: Part one.\nPart two.\nQuestion: Does it work?\nAnswer:"
    assert continuations(pub, q) == [" yes", " no", " maybe"] and q.gold == 2


@pytest.mark.parametrize("row, message", [
    ({"question": "Q?", "answer": "A"}, "line 2: no \"options\""),
    ({"question": "Q?", "options": {"A": "x", "B": "y"}, "answer": "E"}, "line 2: answer 'E' is not among its options"),
])
def test_bad_mcq_rows_name_file_and_line(tmp_path, row, message):
    path = write_jsonl(tmp_path / "bad.jsonl", [MCQ_ROWS[0], row])
    with pytest.raises(TaskError, match=message) as err:
        load_questions(resolve_task("medmcqa"), path)
    assert str(path) in str(err.value)


def test_pubmedqa_row_without_context_and_unknown_task(tmp_path):
    path = write_jsonl(tmp_path / "pub.jsonl", [{"question": "Q?", "answer": "yes"}])
    with pytest.raises(TaskError, match=r"pub.jsonl, line 1: a PubMedQA row needs its \"context\""):
        load_questions(resolve_task("pubmedqa"), path)
    with pytest.raises(TaskError, match="Known tasks: medmcqa, medqa, mmlu-medical, pubmedqa"):
        resolve_task("medqaa")
    result = CliRunner().invoke(__import__("medchat.app.metrics_cli", fromlist=["main"]).main,
                                ["mcq", str(tmp_path), "--task", "medqaa", "--data", str(path)])
    assert result.exit_code != 0 and "Known tasks" in result.output and "Traceback" not in result.output


def test_loglikelihood_scoring_matches_a_manual_computation(tmp_path, tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    spec = resolve_task("medmcqa")
    qs = load_questions(spec, write_jsonl(tmp_path / "q.jsonl", MCQ_ROWS))
    # multi-token choices exercise the shared-prefix KV path, letters the one-pass path
    words = resolve_task("pubmedqa")
    pq = load_questions(words, write_jsonl(tmp_path / "p.jsonl", [
        {"question": "Does aspirin work?", "context": "Aspirin blocks cyclooxygenase.", "answer": "yes"}]))
    for task, items in ((spec, qs), (words, pq)):
        contexts = [build_context(task, q, []) for q in items]
        reqs = build_requests(tok, contexts, [continuations(task, q) for q in items])
        got = score_requests(model, reqs, max_batch_tokens=64)
        for q, ctx, lls in zip(items, contexts, got):
            manual = []
            for cont in continuations(task, q):
                c_ids = tok(ctx)["input_ids"]
                o_ids = tok(ctx + cont)["input_ids"][len(c_ids):]
                with torch.no_grad():
                    logp = torch.log_softmax(model(torch.tensor([c_ids + o_ids])).logits[0].float(), -1)
                manual.append(sum(float(logp[len(c_ids) - 1 + j, t]) for j, t in enumerate(o_ids)))
            assert lls == pytest.approx(manual, abs=1e-4)
            acc_pred, norm_pred = predictions(lls, q.labels)
            assert acc_pred == int(np.argmax(manual))
            assert norm_pred == int(np.argmax([m / len(label) for m, label in zip(manual, q.labels)]))


def test_stderr_and_bootstrap_against_hand_computation():
    assert mean_stderr([1, 0, 1, 1]) == pytest.approx(np.std([1, 0, 1, 1], ddof=1) / 2)
    base, tuned = [0.0, 1.0, 0.0, 1.0, 0.0], [1.0, 1.0, 0.0, 1.0, 1.0]
    config = BootstrapConfig(resamples=200, seed=7)
    got = paired_mean(base, tuned, config)
    rng = np.random.default_rng(7)  # the same draws, by hand: mean of (tuned - base) over resampled indices
    idx = rng.integers(0, 5, size=(200, 5))
    diffs = np.array(tuned) - np.array(base)
    deltas = [diffs[row].mean() for row in idx]
    assert got["delta"] == pytest.approx(0.4)
    assert got["low"] == pytest.approx(np.quantile(deltas, 0.025))
    assert got["high"] == pytest.approx(np.quantile(deltas, 0.975))
    assert got["verdict"] == ("better" if got["low"] > 0 else "no clear change")
    assert paired_mean([0.0] * 4, [1.0] * 4, config)["verdict"] == "better"
    assert verdict(-0.1, 0.2) == "no clear change"
    assert verdict(0.1, 0.2, lower_is_better=True) == "worse"


def test_evaluate_prints_what_it_just_measured(tmp_path, tiny_model_dir, tiny_adapter):  # noqa: F811
    from medchat.app.metrics_cli import main

    run = make_run(tmp_path / "runs", "20261120-100000-tiny", base=str(tiny_model_dir), adapter_from=tiny_adapter)
    stored = {"schema": 1, "n_examples": 233, "data": {"path": str(run / "splits" / "eval.jsonl")},
              "base": {"rougeL": 0.5}, "finetuned": {"rougeL": 0.6},
              "probes": [{"question": "STORED PROBE", "kind": "in_domain", "base": "x", "finetuned": "y"}]}
    (run / "eval").mkdir()
    (run / "eval" / "results.json").write_text(json.dumps(stored))
    data = write_jsonl(tmp_path / "mine.jsonl", [{"question": q, "answer": a} for q, a in QA[:2]])
    out = tmp_path / "OUT"
    result = CliRunner().invoke(main, ["evaluate", str(run / "adapter"), "--data", str(data), "--out", str(out),
                                       "--no-probes", "--max-new-tokens", "3", "--device", "cpu", "--dtype", "fp32"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "2 held-out examples from " in result.output and "mine.jsonl" in result.output
    assert "233" not in result.output and "STORED PROBE" not in result.output
    written = json.loads((out / "results.json").read_text())
    assert written["n_examples"] == 2 and written["probes"] == []
    assert set(written["intervals"]) >= {"rouge1", "rouge2", "rougeL", "bleu", "token_f1", "perplexity"}
    assert written["bootstrap"]["resamples"] == 1000


def test_a_line_separator_inside_a_json_string_is_not_a_line_break(tmp_path):
    """JSON strings may hold U+2028 unescaped (a PubMedQA abstract does); str.splitlines() would break there."""
    from metrics.mcq_tasks import load_questions, resolve_task

    path = tmp_path / "pubmedqa.jsonl"
    rows = [{"question": "Is it?", "context": "First part.\u2028Second part.", "answer": "yes"},
            {"question": "Is it not?", "context": "Only part.\u0085", "answer": "no"}]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    questions = load_questions(resolve_task("pubmedqa"), path)
    assert [(q.line, q.context) for q in questions] == [(1, "First part.\u2028Second part."), (2, "Only part.\u0085")]
