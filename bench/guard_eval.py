"""Benchmark the guard: out-of-domain score (AUROC, FPR at 95% recall, three-level table), red flags, latency.

    nice -n 10 .venv/bin/python bench/guard_eval.py [--data-dir ../shared/data] [--n-ref 3000]

Protocol (all splits seeded):
- reference: n_ref questions from the training files (Wikidoc patient info + MedQuAD); held-out training
  questions (disjoint from every reference set used) are one in-domain source;
- in domain phrased unlike the reference: mcq/ (MedMCQA, MMLU medical, PubMedQA), split per source into a
  calibration half and an evaluation half; plus the lay-phrased medical questions in assets/guard/eval;
- general: ood/ (Natural Questions, WebQuestions), split per source into a general-reference part (for the
  contrastive score), a calibration part and an evaluation part; plus the lay general requests;
- both scores (plain kNN = the baseline, contrastive kNN) are calibrated on the calibration parts only,
  and every number below is on the evaluation parts. Cross-source: the contrastive score with a general
  reference from one ood source only, evaluated on the other.
- the shipped default index is scored on the same evaluation parts (its thresholds were calibrated on all
  of mcq/, so its level table is partly in-sample; its AUROC is not, as AUROC uses no threshold).
Red flags: assets/guard/eval/red_flag_messages*.jsonl (recall), educational_questions.jsonl (false
positives), dosing_messages.jsonl, and the rate at which rules fire on the whole data sets.
Writes bench/results/guard_eval.json (committed: the README's guard tables) and prints a markdown summary.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from medchat.core.guard.embedder import Embedder  # noqa: E402
from medchat.core.guard.index import (  # noqa: E402
    LEVELS,
    ReferenceIndex,
    Thresholds,
    auroc,
    calibrate,
    embed_cached,
    fpr_at_recall,
    level_counts,
    split_general,
)
from medchat.core.guard.questions import calibration_sets, dedupe, read_questions  # noqa: E402
from medchat.core.guard.rules import default_rules  # noqa: E402

EVAL_DIR = REPO / "assets" / "guard" / "eval"
TRAIN_FILES = ("train/medical_meadow_wikidoc_patient_info.jsonl", "train/medquad.jsonl")


def jl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def split_idx(n: int, parts: list[float], seed: str) -> list[np.ndarray]:
    perm = np.random.RandomState(_seed(seed)).permutation(n)
    out, start = [], 0
    for i, frac in enumerate(parts):
        end = n if i == len(parts) - 1 else start + int(round(frac * n))
        out.append(perm[start:end])
        start = end
    return out


def _seed(s: str) -> int:
    import hashlib

    return int(hashlib.sha256(s.encode()).hexdigest()[:8], 16)


def score_table(name, scores_pos: dict, scores_neg: dict, thr: Thresholds) -> dict:
    allp = np.concatenate(list(scores_pos.values()))
    alln = np.concatenate(list(scores_neg.values()))
    mcq = np.concatenate([v for k, v in scores_pos.items() if k.startswith("mcq:")])
    res = {
        "name": name,
        "thresholds": {"in_domain": thr.in_domain, "out_of_domain": thr.out_of_domain},
        "auroc_overall": round(auroc(allp, alln), 4),
        "fpr_at_95_recall_overall": round(fpr_at_recall(allp, alln), 4),
        "auroc_mcq_vs_general": round(auroc(mcq, alln), 4),
        "fpr_at_95_recall_mcq_vs_general": round(fpr_at_recall(mcq, alln), 4),
        "per_source": {},
        "levels": {},
    }
    for k, v in scores_pos.items():
        res["per_source"][k] = {"n": int(len(v)), "auroc_vs_all_general": round(auroc(v, alln), 4),
                                "fpr_at_95_recall": round(fpr_at_recall(v, alln), 4)}
    for k, v in scores_neg.items():
        res["per_source"][k] = {"n": int(len(v)), "auroc_vs_all_in_domain": round(auroc(allp, v), 4),
                                "fpr_at_95_recall": round(fpr_at_recall(allp, v), 4)}
    for k, v in {**scores_pos, **scores_neg}.items():
        res["levels"][k] = level_counts(v, thr)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--n-ref", type=int, default=3000)
    ap.add_argument("--n-held", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--cache", type=Path, default=None, help="embedding cache (default: medchat cache/guard)")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "guard_eval.json")
    ap.add_argument("--latency-n", type=int, default=200)
    ap.add_argument("--latency-only", action="store_true", help="only measure latency on the shipped index")
    args = ap.parse_args(argv)
    if args.cache is None:
        from medchat.core.paths import cache_dir

        args.cache = cache_dir() / "guard"
    D = args.data_dir
    if not (D / "mcq").is_dir() or not (D / "ood").is_dir():
        print(f"{D}: no mcq/ and ood/ data; pass --data-dir", file=sys.stderr)
        return 2

    t0 = time.time()
    emb = Embedder()
    t_load = time.perf_counter()
    emb.load()
    load_s = time.perf_counter() - t_load
    if args.latency_only:
        from medchat.core.guard.guard import default_index_dir

        lay = [r["question"] for r in jl(EVAL_DIR / "lay_questions.jsonl")]
        lat = measure_latency(emb, default_rules(), ReferenceIndex.load(default_index_dir()), lay, args.latency_n,
                              load_s)
        print(json.dumps(lat, indent=2))
        return 0
    enc = lambda texts: embed_cached(emb, texts, args.cache)  # noqa: E731

    # ---------------- data and splits
    train = dedupe([q for f in TRAIN_FILES for q in read_questions(D / f)])
    random.Random(args.seed).shuffle(train)
    ref_q = train[: args.n_ref]
    held_pool = train[6000:7000] if len(train) >= 7000 else train[args.n_ref : args.n_ref + args.n_held]
    ind, ood = calibration_sets(D)
    lay = jl(EVAL_DIR / "lay_questions.jsonl")
    lay_med = [r["question"] for r in lay if r["label"] == "medical"]
    lay_gen = [r["question"] for r in lay if r["label"] == "general"]

    shipped = None
    from medchat.core.guard.guard import default_index_dir

    sd = default_index_dir()
    if sd is not None:
        shipped = ReferenceIndex.load(sd)
    exclude = set(ref_q) | set(shipped.questions or []) if shipped is not None else set(ref_q)
    wd = set(read_questions(D / TRAIN_FILES[0]))
    R = enc(train[: max(6000, args.n_ref)])[: args.n_ref]  # one cached block of the shuffled list
    HP = enc(held_pool)
    keep = [i for i, q in enumerate(held_pool) if q not in exclude][: args.n_held]
    rows_wd = [i for i in keep if held_pool[i] in wd]
    rows_mq = [i for i in keep if held_pool[i] not in wd]
    H_wd, H_mq = HP[rows_wd], HP[rows_mq]
    I = {k: enc(v) for k, v in ind.items()}
    O = {k: enc(v) for k, v in ood.items()}
    L_med, L_gen = emb.encode(lay_med), emb.encode(lay_gen)
    print(f"embedded in {time.time() - t0:.0f}s", file=sys.stderr)

    cal_in, ev_in = {}, {}
    for k, v in I.items():
        a, b = split_idx(len(v), [0.5, 0.5], f"{args.seed}:in:{k}")
        cal_in[k], ev_in[k] = v[a], v[b]
    # The general reference part is exactly the one build_reference_index uses (same function and seed),
    # so the shipped index's general reference never overlaps the evaluation part either.
    ref_parts, rest = split_general(ood, args.seed)
    gref, cal_ood, ev_ood = {}, {}, {}
    for k, v in O.items():
        row = {q: i for i, q in enumerate(ood[k])}
        gref[k] = v[[row[q] for q in ref_parts[k]]]
        rest_rows = np.array([row[q] for q in rest[k]])
        a, b = split_idx(len(rest_rows), [0.5, 0.5], f"{args.seed}:ood:{k}")
        cal_ood[k], ev_ood[k] = v[rest_rows[a]], v[rest_rows[b]]
    from medchat.core.guard.index import shipped_general_requests

    GR = enc(shipped_general_requests())  # part of the general reference, as in build_reference_index
    G = np.concatenate(list(gref.values()) + [GR])

    pos_sets = {"train:wikidoc (held out)": H_wd, "train:medquad (held out)": H_mq,
                **{f"mcq:{k}": v for k, v in ev_in.items()}, "lay:medical": L_med}
    neg_sets = {**{f"ood:{k}": v for k, v in ev_ood.items()}, "lay:general": L_gen}

    def evaluate(name, index: ReferenceIndex) -> dict:
        cin = index.scores(np.concatenate(list(cal_in.values())))
        cood = index.scores(np.concatenate(list(cal_ood.values())))
        thr, numbers = calibrate(cin, cood)
        sp = {k: index.scores(v) for k, v in pos_sets.items()}
        sn = {k: index.scores(v) for k, v in neg_sets.items()}
        out = score_table(name, sp, sn, thr)
        out["calibration"] = {k: numbers[k] for k in ("auroc", "fpr_at_95_recall", "n_in_domain", "n_ood")}
        return out

    results = {"data_dir": str(D), "n_ref": len(ref_q), "n_general_ref": int(len(G)), "seed": args.seed,
               "sizes": {k: int(len(v)) for k, v in {**pos_sets, **neg_sets}.items()}}
    knn = ReferenceIndex(R, Thresholds(0, 0))
    con = ReferenceIndex(R, Thresholds(0, 0), general=G, general_weight=1.0)
    results["knn"] = evaluate("kNN (mean cosine of 10 nearest)", knn)
    results["contrastive"] = evaluate("contrastive kNN (minus 10 nearest general)", con)
    # cross-source: general reference from one ood source only, evaluated on the other
    cross = {}
    names = list(gref)
    for src in names:
        other = [n for n in names if n != src]
        idx_ = ReferenceIndex(R, Thresholds(0, 0), general=np.concatenate([gref[src], GR]), general_weight=1.0)
        pos = np.concatenate([v for k, v in pos_sets.items() if k.startswith("mcq:")])
        for o in other:
            cross[f"general ref {src} -> eval {o}"] = {
                "auroc_mcq_vs_it": round(auroc(idx_.scores(pos), idx_.scores(ev_ood[o])), 4),
                "fpr_at_95_recall": round(fpr_at_recall(idx_.scores(pos), idx_.scores(ev_ood[o])), 4),
                "knn_baseline_auroc": round(auroc(knn.scores(pos), knn.scores(ev_ood[o])), 4),
            }
        cross[f"general ref {src} -> lay:general"] = {
            "auroc_lay_medical_vs_it": round(auroc(idx_.scores(L_med), idx_.scores(L_gen)), 4),
            "knn_baseline_auroc": round(auroc(knn.scores(L_med), knn.scores(L_gen)), 4),
        }
    results["cross_source"] = cross
    if shipped is not None:
        thr = shipped.thresholds
        sp = {k: shipped.scores(v) for k, v in pos_sets.items()}
        sn = {k: shipped.scores(v) for k, v in neg_sets.items()}
        results["shipped_index"] = score_table(f"shipped index {sd}", sp, sn, thr)
        results["shipped_index"]["note"] = (
            "thresholds from index.json (calibrated on all mcq/ questions and an ood/ part): the level table is "
            "partly in-sample"
        )
        results["shipped_index"]["score_kind"] = shipped.score_kind

    # ---------------- red flags: text rules alone, and rules + the semantic layer (needs the embedder)
    from medchat.core.guard.guard import Guard

    rules = default_rules()
    gsem = Guard(None, rules, emb, index=shipped if shipped is not None else con)
    roles = {"red_flag_tune1.jsonl": "tuning set (rules written against it; semantic examples)",
             "red_flag_tune2.jsonl": "tuning set 2 (held out for rules round 1, then tuned on; semantic examples)",
             "red_flag_heldout.jsonl": "held out (written after both rule rounds; never tuned on)"}

    def flags_both(texts):
        rule_ids = [[x.id for x in rules.red_flags(t)] for t in texts]
        comb = [[f.rule_id for f in r.red_flags] for r in gsem.check_many(texts)]
        return rule_ids, comb

    rf = {}
    for name, role in roles.items():
        rows = jl(EVAL_DIR / name)
        r_ids, c_ids = flags_both([r["text"] for r in rows])
        per = {}
        for r, ids in zip(rows, r_ids):
            a_, b_ = per.get(r["expect"], (0, 0))
            per[r["expect"]] = (a_ + (r["expect"] in ids), b_ + 1)
        rf[name] = {
            "role": role, "n": len(rows),
            "rules_recall_rule": round(np.mean([r["expect"] in ids for r, ids in zip(rows, r_ids)]), 4),
            "rules_recall_any_flag": round(np.mean([bool(ids) for ids in r_ids]), 4),
            "with_semantic_recall_any_flag": round(np.mean([bool(ids) for ids in c_ids]), 4),
            "per_rule_rules": {k: f"{a_}/{b_}" for k, (a_, b_) in per.items()},
            "misses_rules": [r["text"] for r, ids in zip(rows, r_ids) if not ids],
            "misses_with_semantic": [r["text"] for r, ids in zip(rows, c_ids) if not ids],
        }
    edu = jl(EVAL_DIR / "educational_questions.jsonl")
    nonurgent = jl(EVAL_DIR / "nonurgent_personal.jsonl")
    for label, rows in {"educational (tuning)": [r for r in edu if r["role"] != "heldout"],
                        "educational (held out)": [r for r in edu if r["role"] == "heldout"],
                        "non-urgent personal health messages (held out)": nonurgent}.items():
        r_ids, c_ids = flags_both([r["text"] for r in rows])
        rf[label] = {"n": len(rows),
                     "rules_false_positive_rate": round(np.mean([bool(i) for i in r_ids]), 4),
                     "with_semantic_false_positive_rate": round(np.mean([bool(i) for i in c_ids]), 4),
                     "flagged_with_semantic": [(r["text"], i) for r, i in zip(rows, c_ids) if i]}
    dose = jl(EVAL_DIR / "dosing_messages.jsonl")
    tp = sum(1 for r in dose if r["dosing"] and rules.dosing_request(r["text"]))
    fp = sum(1 for r in dose if not r["dosing"] and rules.dosing_request(r["text"]))
    npos = sum(1 for r in dose if r["dosing"])
    rf["dosing_messages.jsonl"] = {"recall": round(tp / npos, 4), "false_positive_rate": round(fp / (len(dose) - npos), 4),
                                   "n_pos": npos, "n_neg": len(dose) - npos}
    fire_rates = {}
    sample_rng = random.Random(args.seed)
    for label, qs in {"train (educational)": train, **{f"mcq:{k}": v for k, v in ind.items()},
                      **{f"ood:{k}": v for k, v in ood.items()}}.items():
        n = sum(1 for q in qs if rules.red_flags(q))
        sub = sample_rng.sample(qs, min(500, len(qs)))
        sem_rate = np.mean([bool(r.red_flags) for r in gsem.check_many(sub)])
        fire_rates[label] = {"n": len(qs), "rules_red_flag_rate": round(n / len(qs), 4),
                             "with_semantic_rate_on_500": round(float(sem_rate), 4),
                             "dosing_rate": round(sum(1 for q in qs if rules.dosing_request(q)) / len(qs), 4)}
    rf["fire_rate_on_data"] = fire_rates
    results["red_flags"] = rf

    # ---------------- latency
    results["latency"] = measure_latency(emb, rules, shipped if shipped is not None else con, lay_med + lay_gen,
                                         args.latency_n, load_s)
    results["elapsed_s"] = round(time.time() - t0, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(render(results))
    print(f"\nwrote {args.out}", file=sys.stderr)
    return 0


def measure_latency(emb, rules, index, texts, n: int, load_s: float) -> dict:
    """Wall time per check with torch's default threads, and wall + CPU time of the calling thread with one
    torch thread (CPU time is what the check costs, whatever else the shared machine is doing)."""
    import torch

    from medchat.core.guard.guard import Guard

    texts = (texts * (n // max(1, len(texts)) + 1))[:n]
    g = Guard(None, rules, emb, index=index)  # with the semantic red-flag layer, as in the app
    out = {"embedder_load_s": round(load_s, 2), "n": n, "index_size": len(index),
           "n_general": 0 if index.general is None else len(index.general)}
    default_threads = torch.get_num_threads()
    for label, threads in (("default_threads", default_threads), ("one_thread", 1)):
        torch.set_num_threads(threads)
        for t in texts[:5]:
            g.check(t)
        wall, cpu = [], []
        for t in texts:
            w0, c0 = time.perf_counter(), time.thread_time()
            g.check(t)
            cpu.append((time.thread_time() - c0) * 1000)
            wall.append((time.perf_counter() - w0) * 1000)
        wall.sort()
        cpu.sort()
        out[label] = {"threads": threads, "wall_ms_median": round(statistics.median(wall), 2),
                      "wall_ms_p95": round(wall[int(0.95 * (len(wall) - 1))], 2),
                      "cpu_ms_median": round(statistics.median(cpu), 2),
                      "cpu_ms_p95": round(cpu[int(0.95 * (len(cpu) - 1))], 2)}
    torch.set_num_threads(default_threads)
    rt = []
    for t in texts:
        s = time.perf_counter()
        g.check_rules(t)
        rt.append((time.perf_counter() - s) * 1000)
    out["rules_only_ms_median"] = round(statistics.median(rt), 3)
    s = time.perf_counter()
    g.check_many(texts)
    out["batched_wall_ms_per_question"] = round((time.perf_counter() - s) * 1000 / len(texts), 2)
    out["load_average_1min"] = round(os.getloadavg()[0], 1)
    out["cpus"] = os.cpu_count()
    return out


def render(r: dict) -> str:
    lines = [f"## Guard benchmark (reference {r['n_ref']} training questions, seed {r['seed']})", ""]
    lines.append("| score | AUROC all | FPR@95 all | AUROC mcq vs general | FPR@95 mcq vs general |")
    lines.append("|---|---|---|---|---|")
    for key in ("knn", "contrastive", "shipped_index"):
        if key in r:
            x = r[key]
            lines.append(f"| {x['name']} | {x['auroc_overall']} | {x['fpr_at_95_recall_overall']} | "
                         f"{x['auroc_mcq_vs_general']} | {x['fpr_at_95_recall_mcq_vs_general']} |")
    for key in ("knn", "contrastive"):
        x = r[key]
        lines += ["", f"### {x['name']}: per source and three levels (thresholds in_domain >= "
                      f"{x['thresholds']['in_domain']}, out_of_domain < {x['thresholds']['out_of_domain']})", "",
                  "| source | n | AUROC | FPR@95 | in domain | uncertain | out of domain |", "|---|---|---|---|---|---|---|"]
        for src, ps in x["per_source"].items():
            au = ps.get("auroc_vs_all_general", ps.get("auroc_vs_all_in_domain"))
            lv = x["levels"][src]
            lines.append(f"| {src} | {ps['n']} | {au} | {ps['fpr_at_95_recall']} | "
                         + " | ".join(f"{lv[lvl]:.1%}" for lvl in LEVELS) + " |")
    lines += ["", "### Cross-source (contrastive, general reference from one ood source + the general requests)", ""]
    for k, v in r["cross_source"].items():
        lines.append(f"- {k}: " + ", ".join(f"{a} {b}" for a, b in v.items()))
    rf = r["red_flags"]
    lines += ["", "### Red flags (recall: share of emergency messages that raise a flag; FP: share of others that do)", "",
              "| set | n | rules | rules + semantic |", "|---|---|---|---|"]
    for k, v in rf.items():
        if k.startswith("red_flag_"):
            lines.append(f"| {k}: {v['role']} | {v['n']} | recall {v['rules_recall_any_flag']} "
                         f"(right rule {v['rules_recall_rule']}) | recall {v['with_semantic_recall_any_flag']} |")
        elif "rules_false_positive_rate" in v:
            lines.append(f"| {k} | {v['n']} | FP {v['rules_false_positive_rate']} | FP {v['with_semantic_false_positive_rate']} |")
    for k, v in rf["fire_rate_on_data"].items():
        lines.append(f"| fires on {k} | {v['n']} | {v['rules_red_flag_rate']:.2%} | {v['with_semantic_rate_on_500']:.2%} (500 sampled) |")
    d = rf["dosing_messages.jsonl"]
    lines.append(f"\n- dosing note: recall {d['recall']} (n={d['n_pos']}), false-positive rate {d['false_positive_rate']} (n={d['n_neg']})")
    lt = r["latency"]
    d1, d0 = lt["one_thread"], lt["default_threads"]
    lines += ["", f"### Latency (this CPU, {lt['cpus']} cores shared, load average {lt['load_average_1min']})", "",
              f"- check (embed + score + rules), one question, 1 torch thread: CPU {d1['cpu_ms_median']} ms median, "
              f"{d1['cpu_ms_p95']} ms p95; wall {d1['wall_ms_median']} ms median, {d1['wall_ms_p95']} ms p95",
              f"- same with {d0['threads']} torch threads: wall {d0['wall_ms_median']} ms median, {d0['wall_ms_p95']} ms p95",
              f"- rules only: {lt['rules_only_ms_median']} ms median; batched check: {lt['batched_wall_ms_per_question']} ms/question",
              f"- embedder load: {lt['embedder_load_s']} s (index: {lt['index_size']} reference + {lt['n_general']} general)"]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
