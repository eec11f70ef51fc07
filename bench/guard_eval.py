"""The guard on what it never saw: every out-of-domain number on a group left out of fitting AND calibration.

    nice -n 5 python bench/guard_eval.py [--data-dir ../shared/data] [--cache /tmp/guard_cache]
    nice -n 5 python bench/guard_eval.py --sweep     # the fit settings tried, same protocol: guard_sweep.json

Groups: each medical source (Wikidoc, MedQuAD, MedMCQA, MMLU medical, PubMedQA, medchat's own lay medical
messages), each general source (Natural Questions, WebQuestions, MMLU non-medical exam questions), each
CLINC150 domain, and medchat's own general requests and exam questions (assets/guard). For each group G:
the score is fitted on all other groups, its thresholds are calibrated on those other groups only (grouped
cross-fitting, as `medchat.app.guard_build` does), and G is scored. AUROC and FPR at 95% recall set G
against every left-out score of the other side. Candidates (linear alone, contrastive kNN alone, both) are
compared on the same left-out scores; the shipped index uses the winner, fitted on every group.
Red flags: the shipped guard on bench/data/red_flags_heldout_v10.jsonl (fresh: written apart from the tuning,
never learned from, measured once), v9-v7 (never learned from, but each has since guided a choice) and the
older v6-v1 sets (the semantic layer's classifier learns from them now).
Latency: one check (embed + score + rules + semantic layer) on one thread, median.
Writes bench/results/guard_eval.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

# One thread for numpy's BLAS too (set before numpy loads): the latency is "one check on one thread", and
# a second BLAS thread spinning on 2 shared cores tripled the measured wall time.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

from _common import REPO, SHARED_DATA, log, machine, ratio_table, setup, write_json
from medchat.core.guard.build import DEFAULT_FIT, calibrate
from medchat.core.guard.calibration import LEVELS, auroc, fpr_at_recall, level_counts
from medchat.core.guard.embedder import Embedder, embed_cached
from medchat.core.guard.index import GuardIndex, default_index_dir
from medchat.core.guard.questions import asset_groups, data_groups, read_questions
from medchat.app.guard_build import MAX_PER_GROUP
from medchat.core.guard.score import DEFAULT_K, REFERENCE_PER_GROUP, fit_score, knn_mean

RED_FLAG_SETS = {  # name: (file, how it relates to the tuning of the rules and the semantic layer)
    "heldout_v10": (REPO / "bench" / "data" / "red_flags_heldout_v10.jsonl",
                    "written by a separate writer that saw nothing of the project, after the last change to the "
                    "semantic layer; measured once"),
    "heldout_v9": (REPO / "bench" / "data" / "red_flags_heldout_v9.jsonl",
                   "written the same way after the all-layer classifier was chosen (one row equal to a learned-from "
                   "example removed: 100 + 99); measured once (100.0% / 10.1%, commit after 4213b16), then its false "
                   "alarms (idioms: 'I could literally die') led to the figurative-speech examples, never learned from"),
    "heldout_v8": (REPO / "bench" / "data" / "red_flags_heldout_v8.jsonl",
                   "written the same way; measured once (last-layer classifier: 96.0% / 12.0%, commit 3c93cf7), "
                   "then it chose the all-layer classifier"),
    "heldout_v7": (REPO / "bench" / "data" / "red_flags_heldout_v7.jsonl",
                   "written by a separate writer that saw neither the rules nor the examples nor the other sets; "
                   "measured once after the classifier (recall 95.0%, false alarms 18.0%, commit 1376438); since "
                   "then one pattern (thinking about jumping from a bridge) came from its misses"),
    "heldout_v6_learned": (REPO / "bench" / "data" / "red_flags_heldout_v6.jsonl",
                           "written the same way; measured once fresh (recall 93.0%, false alarms 18.0%, commit "
                           "088ca95); then the dev set that chose the classifier's settings, and one of its examples"),
    "heldout_v5_learned": (REPO / "bench" / "data" / "red_flags_heldout_v5.jsonl",
                           "measured once fresh (97.0% / 18.0%, commit fe6022f); then tuned on and learned from"),
    "heldout_v4_learned": (REPO / "bench" / "data" / "red_flags_heldout_v4.jsonl",
                           "measured once fresh (97.0% / 20.0%); then tuned on and learned from"),
    "heldout_v3_learned": (REPO / "bench" / "data" / "red_flags_heldout_v3.jsonl",
                           "measured once fresh (84.6% / 7.8%, commit eef9624); then tuned on and learned from"),
    "heldout_v2_learned": (REPO / "bench" / "data" / "red_flags_heldout_v2.jsonl",
                           "measured once fresh (64.3% / 1.5%, commit 59f9cfe); then tuned on and learned from"),
    "heldout_v1_learned": (REPO / "bench" / "data" / "red_flags_heldout.jsonl",
                           "the first held-out set; tuned on and learned from"),
}
PROBES = {  # issue 13's look-alikes, and one plain medical question
    "How do I fix a flat bicycle tire?": "out_of_domain",
    "My car engine is overheating, what should I do?": "out_of_domain",
    "What does a p-value mean?": "out_of_domain",
    "Write a Python function that reverses a linked list": "out_of_domain",
    "What are the symptoms of type 2 diabetes?": "in_domain",
}
TARGETS = {"auroc_overall": 0.98, "auroc_every_group": 0.97, "fpr_at_95_recall": 0.10,
           "general_requests_in_domain": 0.03, "medical_out_of_domain": 0.02, "check_ms_median": 30,
           "red_flag_recall": 0.95, "red_flag_false_alarms": 0.10}


def left_out(vectors, medical, fit_args, start, with_thresholds):
    """{group: (scores, thresholds or None)}, each from a fit (and calibration) without that group."""
    out = {}
    for g in vectors:
        rest = {h: v for h, v in vectors.items() if h != g}
        score = fit_score(rest, medical, start=start, **fit_args)
        thr = calibrate(rest, medical, start=start, **fit_args)[0] if with_thresholds else None
        out[g] = (score.scores(vectors[g]), thr)
        log(f"  left out {g}")
    return out


SWEEP = [  # fit settings compared on the same leave-one-group-out scores; the defaults are the first
    {}, {"per_group": 250}, {"per_group": 250, "k": 10, "l2": 1.5e-3}, {"per_group": 750}, {"k": 10}, {"k": 30},
    {"l2": 1e-3}, {"l2": 1e-2}, {"knn_weight": 5.0}, {"knn_weight": 15.0},
]


def sweep(vectors, medical, full, requests) -> int:
    rows = []
    for fa in SWEEP:
        s = summary(json.dumps(fa) if fa else "defaults", left_out(vectors, medical, fa, full, False), medical, requests)
        rows.append({"fit": {**DEFAULT_FIT, **fa}, **{k: s[k] for k in ("auroc_overall", "auroc_min_group", "fpr_at_95_recall")},
                     "groups": {g: p["auroc"] for g, p in s["groups"].items()}})
        print(f"{s['name']}: AUROC {s['auroc_overall']:.4f}, worst group {s['auroc_min_group']:.4f}, "
              f"FPR@95 {s['fpr_at_95_recall']:.4f}", flush=True)
    print(f"wrote {write_json('guard_sweep', {'protocol': 'leave-one-group-out scores as in guard_eval.json (no thresholds)', 'settings': rows})}",
          file=sys.stderr)
    return 0


def knn_only(vectors, medical, k=DEFAULT_K, per_group=REFERENCE_PER_GROUP):
    out = {}
    for g in vectors:
        ref = lambda side: np.concatenate([v[:per_group] for h, v in vectors.items() if h != g and (h in medical) == side])  # noqa: E731
        out[g] = (knn_mean(vectors[g], ref(True), k) - knn_mean(vectors[g], ref(False), k), None)
    return out


def summary(name, res, medical, general_requests):
    pos = np.concatenate([s for g, (s, _) in res.items() if g in medical])
    neg = np.concatenate([s for g, (s, _) in res.items() if g not in medical])
    per = {}
    for g, (s, thr) in res.items():
        a = auroc(s, neg) if g in medical else auroc(pos, s)
        f = fpr_at_recall(s, neg) if g in medical else fpr_at_recall(pos, s)
        per[g] = {"side": "medical" if g in medical else "general", "n": int(len(s)), "auroc": round(a, 4),
                  "fpr_at_95_recall": round(f, 4)}
        if thr is not None:
            per[g]["thresholds"] = {"in_domain": thr.in_domain, "out_of_domain": thr.out_of_domain}
            per[g]["levels"] = level_counts(s, thr)
    out = {"name": name, "auroc_overall": round(auroc(pos, neg), 4), "fpr_at_95_recall": round(fpr_at_recall(pos, neg), 4),
           "auroc_min_group": min(p["auroc"] for p in per.values()), "groups": per}
    if all(thr is not None for _, thr in res.values()):
        def share(groups, level):
            n = sum(per[g]["n"] for g in groups)
            return round(sum(per[g]["levels"][level] * per[g]["n"] for g in groups) / n, 4)
        out["medical_out_of_domain"] = share([g for g in res if g in medical], "out_of_domain")
        out["medical_uncertain"] = share([g for g in res if g in medical], "uncertain")
        out["general_in_domain"] = share([g for g in res if g not in medical], "in_domain")
        out["general_requests_in_domain"] = share(general_requests, "in_domain")
    return out


def red_flags(guard, path: Path, note: str) -> dict:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    texts = [r["text"] for r in rows]
    rules = [bool(guard.check_rules(t).red_flags) for t in texts]
    both = [bool(r.red_flags) for r in guard.check_many(texts)]
    out = {"file": str(path.relative_to(REPO)), "note": note}
    for label, flags in (("rules", rules), ("rules_and_semantic", both)):
        em = [f for f, r in zip(flags, rows) if r["emergency"]]
        calm = [f for f, r in zip(flags, rows) if not r["emergency"]]
        out[label] = {"recall": round(float(np.mean(em)), 4), "false_alarms": round(float(np.mean(calm)), 4),
                      "n_emergency": len(em), "n_non_urgent": len(calm),
                      "missed": [t for t, f, r in zip(texts, flags, rows) if r["emergency"] and not f],
                      "false_alarm_texts": [t for t, f, r in zip(texts, flags, rows) if not r["emergency"] and f]}
    return out


def latency(guard, texts, n=200) -> dict:
    import torch

    torch.set_num_threads(1)
    texts = (texts * (n // len(texts) + 1))[:n]
    for t in texts[:5]:
        guard.check(t)
    wall, cpu = [], []
    for t in texts:
        w0, c0 = time.perf_counter(), time.thread_time()
        guard.check(t)
        cpu.append((time.thread_time() - c0) * 1000)
        wall.append((time.perf_counter() - w0) * 1000)
    return {"threads": 1, "n": n, "wall_ms_median": round(statistics.median(wall), 2),
            "cpu_ms_median": round(statistics.median(cpu), 2),
            "wall_ms_p95": round(sorted(wall)[int(0.95 * (n - 1))], 2)}


def index_record(index_dir: Path) -> dict:
    h = hashlib.sha256()
    for name in sorted(p.name for p in index_dir.iterdir()):
        h.update(name.encode() + b"\0" + (index_dir / name).read_bytes())
    meta = json.loads((index_dir / "index.json").read_text(encoding="utf-8"))
    return {"path": str(index_dir.relative_to(REPO)), "sha256": h.hexdigest(), "created": meta.get("created"),
            "texts_sha256": meta.get("texts_sha256"), "thresholds": meta.get("thresholds"),
            "calibration": meta.get("calibration")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=SHARED_DATA)
    ap.add_argument("--cache", type=Path, default=None, help="embedding cache (default: medchat's cache dir)")
    ap.add_argument("--max-per-group", type=int, default=MAX_PER_GROUP)
    ap.add_argument("--sweep", action="store_true", help="compare the fit settings in SWEEP instead (no thresholds)")
    args = ap.parse_args(argv)
    setup(5)
    if args.cache is None:
        from medchat.core.paths import cache_dir

        args.cache = cache_dir() / "guard"
    medical, general = data_groups(args.data_dir, args.max_per_group)
    own_med, own_gen = asset_groups(REPO / "assets" / "guard")
    medical.update(own_med)
    general.update(own_gen)
    emb = Embedder()
    log("embedding (cached)")
    vectors = {g: embed_cached(emb, qs, args.cache) for g, qs in {**medical, **general}.items()}
    med = set(medical)
    requests = [g for g in general if g.startswith("clinc150_") or g == "own_requests"]
    fit_args = {}  # the defaults in medchat.core.guard.score, as guard_build uses them
    full = fit_score(vectors, med, **fit_args)
    if args.sweep:
        return sweep(vectors, med, full, requests)

    log("candidates, leave-one-group-out")
    shipped = summary("linear + contrastive kNN (shipped)", left_out(vectors, med, fit_args, full, True), med, requests)
    linear = summary("linear alone", left_out(vectors, med, {**fit_args, "knn_weight": 0.0}, full, False), med, requests)
    knn = summary("contrastive kNN alone", knn_only(vectors, med), med, requests)
    candidates = [linear, knn, shipped]
    print(ratio_table([{"name": c["name"], **{k: f"{c[k]:.4f}" for k in ("auroc_overall", "auroc_min_group",
                                                                          "fpr_at_95_recall")}} for c in candidates],
                      [("auroc_overall", "AUROC"), ("auroc_min_group", "worst group AUROC"),
                       ("fpr_at_95_recall", "FPR@95")],
                      baseline="linear alone"))

    index_dir = default_index_dir()
    index = GuardIndex.load(index_dir)
    from medchat.core.guard.guard import Guard

    guard = Guard(index, embedder=emb)
    probes = {t: r.ood_level for t, r in zip(PROBES, guard.check_many(list(PROBES)))}
    results = {
        "machine": machine(),
        "protocol": __doc__.split("\n\n")[2].replace("\n", " "),
        "data_dir": str(args.data_dir), "max_per_group": args.max_per_group,
        "groups": {g: len(v) for g, v in {**medical, **general}.items()},
        "targets": TARGETS,
        "left_out": shipped,
        "candidates": [{k: c[k] for k in ("name", "auroc_overall", "auroc_min_group", "fpr_at_95_recall")}
                       for c in candidates] + [{"name": c["name"], "groups": {g: p["auroc"] for g, p in c["groups"].items()}}
                                                for c in candidates],
        "shipped_index": index_record(index_dir),
        "probes": {t: {"level": lvl, "expected": PROBES[t]} for t, lvl in probes.items()},
        "red_flags": {name: red_flags(guard, path, note) for name, (path, note) in RED_FLAG_SETS.items()},
        "latency": latency(guard, read_questions(REPO / "assets" / "guard" / "medical_requests.txt")[:100]
                           + read_questions(REPO / "assets" / "guard" / "general_requests.txt")[:100]),
    }
    print(render(results))
    print(f"wrote {write_json('guard_eval', results)}", file=sys.stderr)
    return 0


def render(r: dict) -> str:
    lo = r["left_out"]
    lines = ["", f"left out of fit and calibration: AUROC {lo['auroc_overall']} (worst group {lo['auroc_min_group']}), "
             f"FPR@95 {lo['fpr_at_95_recall']}, medical -> out_of_domain {lo['medical_out_of_domain']:.1%}, "
             f"general requests -> in_domain {lo['general_requests_in_domain']:.1%}, "
             f"all general -> in_domain {lo['general_in_domain']:.1%}", "",
             "| group | side | n | AUROC | FPR@95 | in domain | uncertain | out of domain |", "|---|---|---|---|---|---|---|---|"]
    for g, p in lo["groups"].items():
        lines.append(f"| {g} | {p['side']} | {p['n']} | {p['auroc']:.3f} | {p['fpr_at_95_recall']:.3f} | "
                     + " | ".join(f"{p['levels'][lvl]:.1%}" for lvl in LEVELS) + " |")
    for name, rf in r["red_flags"].items():
        for k in ("rules", "rules_and_semantic"):
            lines.append(f"red flags, {name} ({k}): recall {rf[k]['recall']:.1%} of {rf[k]['n_emergency']}, "
                         f"false alarms {rf[k]['false_alarms']:.1%} of {rf[k]['n_non_urgent']}")
    lines.append(f"probes: {json.dumps({t: v['level'] for t, v in r['probes'].items()})}")
    lines.append(f"check latency, one thread: {r['latency']['wall_ms_median']} ms median wall, "
                 f"{r['latency']['cpu_ms_median']} ms CPU")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
