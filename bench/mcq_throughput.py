"""Multiple-choice scoring speed: the prompt encoded once per question against one forward pass per option.

Same MedMCQA rows (../shared/data/mcq/medmcqa_dev_subset.jsonl), same model (the bundled base with the shipped
adapter merged, as `medchat-metrics mcq` scores the fine-tuned side), one process, side by side:

  one option at a time   metrics.mcq.score_one_option_at_a_time: prompt + option per forward pass
  shared prefix          metrics.mcq.score_requests: the options of a question share its prompt, which runs once
                         (many prompts per right-padded batch, only the last position's logits)

Both score the same --n rows; the log-likelihoods must agree (printed: the largest difference and how many
predictions differ). Then the shared-prefix path alone scores --full rows (1,000 by default): the wall time of
a MedMCQA evaluation of one model.

    nice -n 5 .venv/bin/python bench/mcq_throughput.py [--n 100] [--full 1000] [--dtype bf16]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

DATA_FILE = _common.SHARED_DATA / "mcq" / "medmcqa_dev_subset.jsonl"


def requests_for(tokenizer, n: int):
    from metrics.mcq import build_requests
    from metrics.mcq_tasks import build_context, continuations, load_questions, resolve_task

    spec = resolve_task("medmcqa")
    questions = load_questions(spec, DATA_FILE, n)
    return questions, build_requests(tokenizer, [build_context(spec, q, []) for q in questions],
                                     [continuations(spec, q) for q in questions])


def timed(label: str, fn):
    t0 = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t0
    _common.log(f"{label}: {seconds:.1f}s")
    return out, seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100, help="Rows scored both ways.")
    parser.add_argument("--full", type=int, default=1000, help="Rows scored by the shared-prefix path alone.")
    parser.add_argument("--dtype", default="bf16", help="What the shipped results used (auto = bf16 on CPU).")
    args = parser.parse_args(argv)
    _common.setup(niceness=5)
    if not DATA_FILE.is_file():
        print(f"{DATA_FILE} is missing: this bench needs the shared MedMCQA file.", file=sys.stderr)
        return 1

    from medchat.core.model import ModelSpec, load
    from metrics.mcq import predictions, score_one_option_at_a_time, score_requests

    adapter, adapter_note = _common.shipped_adapter()
    loaded = load(ModelSpec(base="bundled", adapter=adapter, merge=True, device="cpu", dtype=args.dtype))
    _common.log(f"{loaded.info.summary()}; {adapter_note}")
    questions, requests = requests_for(loaded.tokenizer, max(args.n, args.full))
    few = requests[: args.n]

    naive, naive_s = timed(f"one option at a time, {len(few)} rows", lambda: score_one_option_at_a_time(loaded.model, few))
    shared, shared_s = timed(f"shared prefix, {len(few)} rows", lambda: score_requests(loaded.model, few))
    full, full_s = timed(f"shared prefix, {len(requests)} rows", lambda: score_requests(loaded.model, requests))

    max_diff = max(abs(a - b) for x, y in zip(naive, shared) for a, b in zip(x, y))
    differ = sum(predictions(x, q.labels) != predictions(y, q.labels) for x, y, q in zip(naive, shared, questions))
    rows = [
        {"name": "one option at a time", "rows": len(few), "seconds": naive_s, "rows_s": len(few) / naive_s},
        {"name": "shared prefix", "rows": len(few), "seconds": shared_s, "rows_s": len(few) / shared_s},
        {"name": f"shared prefix, {len(requests)} rows", "rows": len(requests), "seconds": full_s,
         "rows_s": len(requests) / full_s},
    ]
    table = _common.ratio_table(rows, [("rows", "rows"), ("seconds", "seconds"), ("rows_s", "rows/s")],
                                baseline="one option at a time", ratio_of=[("rows_s", True)])
    agreement = {"max_abs_loglikelihood_diff": max_diff, "predictions_differing": differ, "rows_compared": len(few)}
    print(table)
    print(f"agreement on {len(few)} rows: largest log-likelihood difference {max_diff:.2e}, "
          f"{differ} of {len(few)} (acc, acc_norm) predictions differ")
    print(f"{len(requests)} MedMCQA rows, one model: {full_s:.1f} s")
    path = _common.write_json("mcq_throughput", {
        "data": str(DATA_FILE.name), "model": loaded.info.summary(), "adapter": adapter_note, "dtype": args.dtype,
        "rows": rows, "speedup": rows[1]["rows_s"] / rows[0]["rows_s"], "full_rows": len(requests),
        "full_seconds": full_s, "agreement": agreement, "table": table,
    })
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
