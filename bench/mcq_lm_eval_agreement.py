"""Our multiple-choice scores against lm-evaluation-harness's own, on the same rows and the same loaded model.

medchat implements lm-eval's multiple-choice scoring itself (metrics/mcq.py: the prompt encoded once per
question, which lm-eval does not do). This bench runs lm-eval 0.4 as the reference, offline:

- lm-eval's own task configs (lm_eval/tasks/medmcqa/medmcqa.yaml, pubmedqa/pubmedqa.yaml, with their
  doc_to_text functions) are included by a task file written to a temporary directory that only points the
  dataset at a local JSON Lines copy of the rows (in the field names of the Hub data sets lm-eval expects:
  opa..opd and cop; QUESTION, CONTEXTS, final_decision) and asks for acc_norm as well as acc;
- the model is the one `medchat.core.model.load` returns (bundled base + shipped adapter, merged), wrapped
  with `lm_eval.models.huggingface.HFLM(pretrained=model, tokenizer=tokenizer)`;
- ours: metrics.mcq on the shared files themselves, as `medchat-metrics mcq` reads them.

It prints acc and acc_norm both ways, their difference in points (target: within 0.5), how many questions
get a different prediction, and the largest log-likelihood difference; writes
bench/results/mcq_lm_eval_agreement.json. fp32 by default: the check is of the scoring, and in bf16 two
correct implementations that batch differently round differently.

    nice -n 5 .venv/bin/python bench/mcq_lm_eval_agreement.py [--medmcqa 100] [--pubmedqa 40] [--dtype fp32]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

MCQ_DIR = _common.SHARED_DATA / "mcq"
TASKS = {  # our task name: (shared file, lm-eval's task directory and yaml, converter to lm-eval's field names)
    "medmcqa": ("medmcqa_dev_subset.jsonl", "medmcqa/medmcqa.yaml"),
    "pubmedqa": ("pubmedqa_labeled_nontest.jsonl", "pubmedqa/pubmedqa.yaml"),
}


def lm_eval_row(task: str, q) -> dict:
    """A question in the field names of the Hub data set lm-eval's task config reads."""
    if task == "medmcqa":
        return {"question": q.question, "opa": q.options[0], "opb": q.options[1], "opc": q.options[2],
                "opd": q.options[3], "cop": q.gold}
    return {"QUESTION": q.question, "CONTEXTS": [q.context], "final_decision": q.gold_label}


def task_file(folder: Path, task: str, questions) -> str:
    """A task that includes lm-eval's own config and only swaps the Hub data set for local rows."""
    import lm_eval

    rows = folder / f"{task}.jsonl"
    rows.write_text("".join(json.dumps(lm_eval_row(task, q), ensure_ascii=False) + "\n" for q in questions),
                    encoding="utf-8")
    included = Path(lm_eval.__file__).parent / "tasks" / TASKS[task][1]
    name = f"medchat_check_{task}"
    config = {
        "include": str(included), "task": name, "dataset_path": "json", "dataset_name": None,
        "dataset_kwargs": {"data_files": {"test": str(rows)}},
        "training_split": None, "validation_split": None, "test_split": "test", "fewshot_split": None,
        "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True} for m in ("acc", "acc_norm")],
    }
    import yaml

    (folder / f"{name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return name


def run_lm_eval(loaded, folder: Path, names: list[str]) -> dict:
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(pretrained=loaded.model, tokenizer=loaded.tokenizer, batch_size=16)
    return simple_evaluate(model=lm, tasks=names, task_manager=TaskManager(include_path=str(folder)), num_fewshot=0,
                           log_samples=True, bootstrap_iters=0, random_seed=0, numpy_random_seed=0,
                           torch_random_seed=0, fewshot_random_seed=1234)


def ours(loaded, task: str, questions) -> list[list[float]]:
    from metrics.mcq import build_requests, score_requests
    from metrics.mcq_tasks import build_context, continuations, resolve_task

    spec = resolve_task(task)
    requests = build_requests(loaded.tokenizer, [build_context(spec, q, []) for q in questions],
                              [continuations(spec, q) for q in questions])
    return score_requests(loaded.model, requests)


def compare(task: str, questions, our_lls: list[list[float]], output: dict, name: str) -> dict:
    from metrics.mcq import predictions

    samples = sorted(output["samples"][name], key=lambda s: s["doc_id"])
    their_lls = [[float(r[0]) for r in s["filtered_resps"]] for s in samples]
    acc = {"ours": [], "lm_eval": []}
    norm = {"ours": [], "lm_eval": []}
    differ = 0
    for q, mine, theirs, sample in zip(questions, our_lls, their_lls, samples):
        p, pn = predictions(mine, q.labels)
        acc["ours"].append(int(p == q.gold))
        norm["ours"].append(int(pn == q.gold))
        acc["lm_eval"].append(int(sample["acc"]))
        norm["lm_eval"].append(int(sample["acc_norm"]))
        differ += int((p, pn) != predictions(theirs, q.labels))
    mean = lambda v: sum(v) / len(v)  # noqa: E731
    reported = output["results"][name]
    row = {
        "task": task, "rows": len(questions),
        "acc_ours": mean(acc["ours"]), "acc_lm_eval": reported["acc,none"],
        "acc_norm_ours": mean(norm["ours"]), "acc_norm_lm_eval": reported["acc_norm,none"],
        "questions_predicted_differently": differ,
        "max_abs_loglikelihood_diff": max(abs(a - b) for x, y in zip(our_lls, their_lls) for a, b in zip(x, y)),
    }
    row["acc_diff_pt"] = 100 * (row["acc_ours"] - row["acc_lm_eval"])
    row["acc_norm_diff_pt"] = 100 * (row["acc_norm_ours"] - row["acc_norm_lm_eval"])
    row["within_0_5_pt"] = abs(row["acc_diff_pt"]) <= 0.5 and abs(row["acc_norm_diff_pt"]) <= 0.5
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--medmcqa", type=int, default=100, help="MedMCQA rows (0 = skip).")
    parser.add_argument("--pubmedqa", type=int, default=40, help="PubMedQA rows (0 = skip).")
    parser.add_argument("--dtype", default="fp32")
    args = parser.parse_args(argv)
    _common.setup(niceness=5)
    import os

    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    counts = {t: n for t, n in (("medmcqa", args.medmcqa), ("pubmedqa", args.pubmedqa)) if n}
    missing = [MCQ_DIR / TASKS[t][0] for t in counts if not (MCQ_DIR / TASKS[t][0]).is_file()]
    if missing:
        print(f"{missing[0]} is missing: this bench needs the shared MCQ files.", file=sys.stderr)
        return 1

    import lm_eval

    from medchat.core.model import ModelSpec, load
    from metrics.mcq_tasks import load_questions, resolve_task

    adapter, adapter_note = _common.shipped_adapter()
    loaded = load(ModelSpec(base="bundled", adapter=adapter, merge=True, device="cpu", dtype=args.dtype))
    _common.log(f"{loaded.info.summary()}; {adapter_note}; lm-eval {lm_eval.__version__}")
    questions = {t: load_questions(resolve_task(t), MCQ_DIR / TASKS[t][0], n) for t, n in counts.items()}
    timing = {}
    with tempfile.TemporaryDirectory(prefix="medchat-lm-eval-") as tmp:
        names = {t: task_file(Path(tmp), t, qs) for t, qs in questions.items()}
        t0 = time.perf_counter()
        output = run_lm_eval(loaded, Path(tmp), list(names.values()))
        timing["lm_eval_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    our_lls = {t: ours(loaded, t, qs) for t, qs in questions.items()}
    timing["ours_s"] = time.perf_counter() - t0
    rows = [compare(t, questions[t], our_lls[t], output, names[t]) for t in questions]

    print(f"{'task':<10}{'rows':>6}{'acc ours':>10}{'lm-eval':>9}{'Δ pt':>7}{'acc_norm ours':>15}{'lm-eval':>9}"
          f"{'Δ pt':>7}{'differ':>8}{'max |Δ ll|':>12}")
    for r in rows:
        print(f"{r['task']:<10}{r['rows']:>6}{100 * r['acc_ours']:>10.1f}{100 * r['acc_lm_eval']:>9.1f}"
              f"{r['acc_diff_pt']:>+7.1f}{100 * r['acc_norm_ours']:>15.1f}{100 * r['acc_norm_lm_eval']:>9.1f}"
              f"{r['acc_norm_diff_pt']:>+7.1f}{r['questions_predicted_differently']:>8}"
              f"{r['max_abs_loglikelihood_diff']:>12.2e}")
    ok = all(r["within_0_5_pt"] for r in rows)
    print(f"within 0.5 points on every task: {'yes' if ok else 'NO'}; lm-eval {timing['lm_eval_s']:.0f} s, "
          f"ours {timing['ours_s']:.0f} s")
    path = _common.write_json("mcq_lm_eval_agreement", {
        "lm_eval_version": lm_eval.__version__, "model": loaded.info.summary(), "adapter": adapter_note,
        "dtype": args.dtype, "num_fewshot": 0, "rows": rows, "within_0_5_pt": ok, "timing": timing,
    })
    print(f"wrote {path}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
