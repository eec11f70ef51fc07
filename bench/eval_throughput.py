"""Evaluation throughput: answers per second for held-out questions, one at a time vs batched.

Same questions, same model (the bundled base, or --adapter), the evaluation's decoding settings
(metrics.evaluate.default_settings: greedy, 128 new tokens, repetition penalty 1.1, no repeated
4-grams), one process, side by side:

  one-at-a-time     Engine.generate per question (what a loop over `medchat ask` would do)
  batched bs=N      Engine.generate_batch, questions sorted longest first, as `medchat-metrics` does
  llama.cpp serial  medchat's llama.cpp engine, one question after the other (when installed)

Also reported: how many batched answers are identical to the one-at-a-time answers (left padding
must not change greedy answers much; bf16 rounding can flip a few late tokens).

    nice -n 10 .venv/bin/python bench/eval_throughput.py [--n 64] [--batch-sizes 8,16] [--max-new-tokens 128]
                                                          [--dtype fp32]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

DATA_FILE = _common.SHARED_DATA / "train" / "medical_meadow_wikidoc_patient_info.jsonl"


def held_out_questions(n: int, seed: int = 1234) -> tuple[list[str], str]:
    if DATA_FILE.is_file():
        rows = [json.loads(line) for line in DATA_FILE.read_text().splitlines() if line.strip()]
        questions = [r.get("input") or r.get("question") for r in rows]
        questions = [q.strip() for q in questions if q and len(q.strip()) >= 10]
        random.Random(seed).shuffle(questions)
        return questions[:n], f"{DATA_FILE.name} (shuffled with seed {seed})"
    sample = _common.REPO / "assets" / "sample_data" / "medical_qa_sample.jsonl"
    rows = [json.loads(line) for line in sample.read_text().splitlines() if line.strip()]
    questions = [(r.get("question") or r.get("input") or "").strip() for r in rows]
    questions = [q for q in questions if q]
    return (questions * (n // max(1, len(questions)) + 1))[:n], f"{sample.name} (shared data absent)"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--batch-sizes", default="8,16")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--adapter", default=None, help="adapter directory (default: the shipped one, if any)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32"],
                        help="torch dtype (auto: bf16 on CPUs with bf16, as medchat-metrics runs by default)")
    parser.add_argument("--no-llamacpp", action="store_true")
    args = parser.parse_args(argv)
    _common.setup()

    from medchat.core import fastdecode
    from medchat.core.engine import Engine
    from medchat.core.model import ModelSpec, load
    from medchat.core.prompting import build_messages
    from metrics.evaluate import default_settings

    adapter, adapter_note = (args.adapter, f"adapter {args.adapter}") if args.adapter else _common.shipped_adapter()
    questions, source = held_out_questions(args.n)
    settings = default_settings(max_new_tokens=args.max_new_tokens)
    conversations = [build_messages(q) for q in questions]
    loaded = load(ModelSpec(adapter=adapter, dtype=args.dtype))
    engine = Engine(loaded)
    _common.log(f"{len(questions)} questions from {source}; {loaded.info.summary()}")
    engine.generate(conversations[0], settings)  # warm-up

    rows, answers = [], {}

    def record(name, seconds, produced):
        tokens = sum(len(loaded.tokenizer(a, add_special_tokens=False)["input_ids"]) for a in produced)
        rows.append({"name": name, "seconds": seconds, "answers_s": len(produced) / seconds,
                     "answer_tokens_s": tokens / seconds, "answers": len(produced)})
        answers[name] = produced
        _common.log(f"{name}: {seconds:.1f}s, {len(produced) / seconds:.3f} answers/s")

    started = time.perf_counter()
    one = [engine.generate(c, settings)[0].strip() for c in conversations]
    record("one-at-a-time", time.perf_counter() - started, one)
    for size in [int(s) for s in args.batch_sizes.split(",") if s]:
        order = sorted(range(len(conversations)), key=lambda i: -len(questions[i]))  # as metrics sorts
        started = time.perf_counter()
        out = engine.generate_batch([conversations[i] for i in order], settings, batch_size=size)
        batched = [""] * len(order)
        for position, index in enumerate(order):
            batched[index] = out[position]
        record(f"batched bs={size}", time.perf_counter() - started, batched)
    notes = [f"model: {loaded.info.summary()} ({adapter_note})", f"questions: {source}",
             f"settings: {settings.as_dict()}"]
    if not args.no_llamacpp and fastdecode.llamacpp_available():
        fast = fastdecode.LlamaCppEngine.load(ModelSpec(adapter=adapter))
        fast.generate(conversations[0], settings)
        started = time.perf_counter()
        serial = [fast.generate(c, settings)[0].strip() for c in conversations]
        record("llama.cpp serial", time.perf_counter() - started, serial)
    elif not args.no_llamacpp:
        notes.append("llama.cpp row skipped: llama-cpp-python is not installed")

    for row in rows:
        same = sum(a == b for a, b in zip(answers[row["name"]], one))
        row["same_as_one_at_a_time"] = f"{same}/{len(one)}"
    table = _common.ratio_table(rows, [("seconds", "seconds"), ("answers_s", "answers/s"),
                                       ("answer_tokens_s", "answer tok/s"), ("same_as_one_at_a_time", "same answers")],
                                baseline="one-at-a-time", ratio_of=[("answers_s", True)])
    print(f"\nEvaluation throughput, {len(questions)} held-out questions, {args.max_new_tokens} new tokens max, CPU\n")
    print(table)
    for note in notes:
        print(f"- {note}")
    path = _common.write_json("eval_throughput", {"rows": rows, "notes": notes, "table": table,
                                                  "settings": settings.as_dict(), "questions": questions,
                                                  "answers": answers})
    print(f"\nJSON: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
