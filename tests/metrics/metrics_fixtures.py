"""Fixture run directories for the metrics tests (the layout of the team contract, fixed timestamps)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

QA = [
    ("What are the symptoms of diabetes?", "Thirst, frequent urination and fatigue."),
    ("How does aspirin work?", "Aspirin blocks cyclooxygenase and lowers prostaglandins."),
    ("What fights bacteria?", "White blood cells and antibodies."),
    ("What is a fever?", "A body temperature above normal."),
    ("What causes anemia?", "Too few red blood cells or too little hemoglobin."),
]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def make_run(
    root: Path,
    run_id: str,
    *,
    status: str = "complete",
    base: str = "bundled",
    lr: float = 2e-4,
    epochs: int = 1,
    batch_size: int = 8,
    grad_accum: int = 1,
    elapsed_s: float = 754.0,
    notes: str = "",
    created: str = "2026-11-20T10:00:00+00:00",
    qa: list[tuple[str, str]] | None = None,
    loss_steps: int = 6,
    adapter_from: Path | None = None,
) -> Path:
    run = root / run_id
    (run / "splits").mkdir(parents=True, exist_ok=True)
    meta = {
        "id": run_id,
        "status": status,
        "preset": run_id.split("-")[-1],
        "created": created,
        "finished": created if status == "complete" else None,
        "base": base,
        "prompt_style": "chat",
        "system_prompt": "You are a careful medical assistant.",
        "seed": 42,
        "git_commit": "0" * 40,
        "versions": {"torch": "2.13.0"},
        "elapsed_s": elapsed_s,
        "hyperparameters": {
            "learning_rate": lr, "epochs": epochs, "batch_size": batch_size, "grad_accum": grad_accum,
            "effective_batch": batch_size * grad_accum, "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.05,
            "target_modules": ["q_proj", "v_proj"], "max_length": 256,
        },
        "final": {"train_loss": 1.5, "eval_loss": 1.7, "tokens_per_s": 250.0, "train_tokens": 10000, "steps": loss_steps},
        "notes": notes,
    }
    (run / "run.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    rows = []
    for step in range(1, loss_steps + 1):
        rows.append({"step": step, "epoch": step / loss_steps * epochs, "train_loss": 3.0 - 0.25 * step,
                     "learning_rate": lr, "tokens_per_s": 250.0})
        if step % 3 == 0:
            rows.append({"step": step, "epoch": step / loss_steps * epochs, "eval_loss": 3.1 - 0.2 * step})
    write_jsonl(run / "loss_log.jsonl", rows)
    write_jsonl(run / "splits" / "eval.jsonl", [{"question": q, "answer": a} for q, a in (qa or QA)])
    write_jsonl(run / "splits" / "train.jsonl", [{"question": q, "answer": a} for q, a in (qa or QA)])
    if adapter_from is not None:
        import shutil

        shutil.copytree(adapter_from, run / "adapter")
    else:
        (run / "adapter").mkdir(exist_ok=True)
        (run / "adapter" / "adapter_config.json").write_text("{}", encoding="utf-8")
    return run


def fake_results(run: Path, *, base: dict[str, float], finetuned: dict[str, float], examples: list[dict] | None = None,
                 run_status: str = "complete") -> None:
    """Write eval/results.json + examples.jsonl as `medchat-metrics evaluate` would (for report/view tests)."""
    ev = run / "eval"
    ev.mkdir(parents=True, exist_ok=True)
    results = {
        "schema": 1, "created": "2026-11-20T12:00:00+00:00", "run_id": run.name, "run_status": run_status,
        "run_dir": str(run),
        "base_model_name": "bundled", "adapter": str(run / "adapter"), "prompt_style": "chat",
        "data": {"path": str(run / "splits" / "eval.jsonl"), "sha256": "ab" * 32, "limit": None},
        "n_examples": len(examples or []),
        "settings": {"max_new_tokens": 128, "temperature": 0.0, "top_p": 1.0, "repetition_penalty": 1.1,
                     "no_repeat_ngram_size": 4},
        "versions": {"torch": "2.13.0"},
        "base": base, "finetuned": finetuned,
        "probes": [
            {"question": "What is the mechanism of action of aspirin?", "kind": "in_domain",
             "base": "Aspirin is a pain killer.", "finetuned": "Aspirin irreversibly inhibits COX-1 and COX-2."},
            {"question": "What is the capital of France?", "kind": "out_of_domain",
             "base": "Paris.", "finetuned": "Paris is the capital of France."},
        ],
    }
    (ev / "results.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    write_jsonl(ev / "examples.jsonl", examples or [])


def example_row(i: int, question: str, reference: str, base_pred: str, ft_pred: str) -> dict[str, Any]:
    from metrics import scores

    row: dict[str, Any] = {"index": i, "id": f"id{i}", "question": question, "reference": reference}
    for which, pred, ppl in (("base", base_pred, 20.0 + i), ("finetuned", ft_pred, 15.0 + i)):
        row[which] = {"prediction": pred, **scores.score_pair(pred, reference), "perplexity": ppl,
                      "nll": 1.0, "answer_tokens": 10}
    row["delta"] = {m: row["finetuned"][m] - row["base"][m] for m in scores.ALL_METRICS}
    return row


BASE_SCORES = {"rouge1": 0.20, "rouge2": 0.05, "rougeL": 0.15, "bleu": 2.0, "token_f1": 0.18, "set_f1": 0.16,
               "perplexity": 20.0}
FT_SCORES = {"rouge1": 0.25, "rouge2": 0.07, "rougeL": 0.18, "bleu": 3.0, "token_f1": 0.21, "set_f1": 0.19,
             "perplexity": 15.0}


def populated_runs_root(root: Path) -> list[Path]:
    """Three runs: an evaluated complete one, a complete one not evaluated, an interrupted one."""
    a = make_run(root, "20261120-100000-qv", lr=2e-4, epochs=2, batch_size=2, grad_accum=4,
                 notes="seed recipe (q/v)", created="2026-11-20T10:00:00+00:00")
    rows = [example_row(i, q, r, b, f) for i, (q, r, b, f) in enumerate([
        (QA[0][0], QA[0][1], "Thirst and hunger.", "Thirst, frequent urination and fatigue."),
        (QA[1][0], QA[1][1], "Aspirin blocks cyclooxygenase.", "It is a pill."),
        (QA[2][0], QA[2][1], "Antibiotics.", "White blood cells."),
    ])]
    fake_results(a, base=BASE_SCORES, finetuned=FT_SCORES, examples=rows)
    # MedMCQA: the base at chance (10 of 40), the fine-tune clearly better (22 of 40);
    # PubMedQA: 20 then 21 of 30, no clear change
    fake_mcq(a, "medmcqa", base_hits=[1] * 10 + [0] * 30, tuned_hits=[1] * 10 + [0] * 18 + [1] * 12)
    fake_mcq(a, "pubmedqa", base_hits=[1] * 20 + [0] * 10, tuned_hits=[1] * 21 + [0] * 9, answers=["yes", "no", "maybe"],
             chance=1 / 3)
    b = make_run(root, "20261121-090000-all-linear", lr=1e-4, epochs=1, batch_size=8, grad_accum=1,
                 notes="all linear layers", created="2026-11-21T09:00:00+00:00", elapsed_s=3725)
    c = make_run(root, "20261122-080000-long", status="interrupted", created="2026-11-22T08:00:00+00:00",
                 notes="stopped with Ctrl-C", loss_steps=3)
    return [a, b, c]


import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def no_shipped_default_run(tmp_path, monkeypatch):
    """Tests see only their own runs, whether or not this checkout ships assets/default-run."""
    from medchat.core import paths

    monkeypatch.setattr(paths, "DEFAULT_RUN_DIR", tmp_path / "no-default-run")


def fake_mcq(run: Path, task: str = "medmcqa", *, base_hits: list[int], tuned_hits: list[int], answers: Any = "ABCD",
             chance: float = 0.25) -> Path:
    """eval/mcq_<task>.json as `medchat-metrics mcq` writes it, from per-question hits (1 = right), with the
    standard errors and the paired bootstrap interval computed by the real code."""
    from metrics.bootstrap import BootstrapConfig
    from metrics.mcq import summarize

    gold = [answers[i % len(answers)] for i in range(len(base_hits))]
    rows = [{"base": {"acc": b, "acc_norm": b}, "finetuned": {"acc": t, "acc_norm": t}}
            for b, t in zip(base_hits, tuned_hits)]
    counts = {label: gold.count(label) for label in sorted(set(gold))}
    majority_label = max(counts, key=counts.get)
    lines = {"chance": chance, "majority": counts[majority_label] / len(gold), "majority_label": majority_label,
             "answer_counts": counts}
    config = BootstrapConfig()
    summary = summarize(rows, config, lines)
    results = {
        "schema": 1, "kind": "mcq", "task": task, "created": "2026-11-20T13:00:00+00:00", "run_id": run.name,
        "n_examples": len(rows), "fewshot": {"k": 0, "sampler": "random", "seed": 1234},
        "baselines": lines, "bootstrap": config.as_dict(), "base": summary["base"], "finetuned": summary["finetuned"],
        "intervals": summary["intervals"],
    }
    path = run / "eval" / f"mcq_{task}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2), encoding="utf-8")
    return path
