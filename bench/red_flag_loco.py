"""Red flags on what the semantic layer never saw: leave one rule (category) out, leave one negatives file out.

    nice -n 5 python bench/red_flag_loco.py [--cache /tmp/red_flag_loco_cache] [--rules assets/guard/red_flags.yaml]
    nice -n 5 python bench/red_flag_loco.py --sweep          # threshold x margin grid, same protocol
    nice -n 5 python bench/red_flag_loco.py --threshold 0.5 --margin 0.04 --no-write   # try a setting
    nice -n 5 python bench/red_flag_loco.py --check assets/guard/eval/red_flag_check1.jsonl   # + a fresh set

Protocol. Positives: every row of the `semantic.positives` files (assets/guard/eval/red_flag_tune*.jsonl).
For each rule id R: the semantic layer is built without any positive of R (its YAML `examples.fire` and its
rows in every positives file) and without any exemplar whose text equals one of R's test messages; R's rows
of the positives files are then checked with the text rules OR that semantic layer, and a message counts as
caught when any rule is raised (rule or semantic, R or another). Negatives: for each file F of
`semantic.negatives`, the layer is built without F's rows (nor rows of other sources with the same text)
and without the index reference rows that are F's messages (cosine >= 0.995 to one of them: the shipped
index embeds some of these files as its medical reference, which the layer uses as negatives too); F's rows
(not role "heldout") are checked, and a false alarm is any rule raised. The numbers pooled over all rules
(or all negatives files) are the LOCO recall and false-alarm rate. The text rules are written with these
messages in view, so the rules' share is not held out; the semantic layer's is (rules and semantic, and
semantic alone, are both reported).
--check FILE scores a set that was never tuned on ({"text", "emergency"}; red_flag_check1.jsonl was written
after the tuning that set threshold 0.57 / margin 0.05) with the full layer, as the guard runs it.
Writes bench/results/red_flag_loco.json (not with --sweep or --no-write).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "2")

import numpy as np  # noqa: E402

from _common import REPO, log, setup, write_json  # noqa: E402
from medchat.core.guard.embedder import Embedder, embed_cached  # noqa: E402
from medchat.core.guard.index import GuardIndex, default_index_dir  # noqa: E402
from medchat.core.guard.rules import RuleSet, default_rules_path  # noqa: E402
from medchat.core.guard.semantic import _rows  # noqa: E402

TARGETS = {"loco_recall": 0.95, "loco_false_alarms": 0.08}
REF_DUPLICATE = 0.995


def _key(text: str) -> str:
    return " ".join(text.lower().split())


def load(rules_path: Path):
    rules = RuleSet.load(rules_path)
    cfg = rules.semantic or {}
    base = Path(rules.source).parent
    pos = [(t, r.id, "yaml examples") for r in rules.rules for t in r.examples_fire]  # (text, rule, source)
    for rel in cfg.get("positives") or []:
        pos += [(row["text"], row["expect"], rel) for _, row in _rows(base / rel)]
    neg = [(t, "yaml examples") for r in rules.rules for t in r.examples_quiet]  # (text, source)
    test_neg = {}
    for rel in cfg.get("negatives") or []:
        rows = [row for _, row in _rows(base / rel, key="question") if row.get("role") != "heldout"]
        neg += [(row["text"], rel) for row in rows]
        test_neg[rel] = [row["text"] for row in rows]
    return rules, cfg, pos, neg, test_neg


def loco(rules, cfg, pos, neg, test_neg, pos_vec, neg_vec, ref_vec, emb_of):
    """Per left-out unit: for each test message, (rules fired, best positive sim, best negative sim)."""
    pos_rule = np.array([r for _, r, _ in pos])
    pos_key = np.array([_key(t) for t, _, _ in pos])
    neg_src = np.array([s for _, s in neg])
    neg_key = np.array([_key(t) for t, _ in neg])
    ref_best = lambda v, keep: (v @ ref_vec[keep].T).max(axis=1) if keep.any() else np.full(len(v), -1.0)  # noqa: E731
    all_ref = np.ones(len(ref_vec), dtype=bool)
    units = {"rules": {}, "negatives": {}}
    for rid in [r.id for r in rules.rules]:
        tests = [t for t, r, s in pos if r == rid and s != "yaml examples"]
        if not tests:
            units["rules"][rid] = None
            continue
        tkeys = {_key(t) for t in tests}
        keep_p = (pos_rule != rid) & ~np.isin(pos_key, list(tkeys))
        keep_n = ~np.isin(neg_key, list(tkeys))
        v = emb_of(tests)
        sp = (v @ pos_vec[keep_p].T).max(axis=1)
        sn = np.maximum((v @ neg_vec[keep_n].T).max(axis=1), ref_best(v, all_ref))
        nearest = pos_rule[keep_p][(v @ pos_vec[keep_p].T).argmax(axis=1)]
        units["rules"][rid] = {"texts": tests, "rules": [[r.id for r in rules.red_flags(t)] for t in tests],
                               "sp": sp, "sn": sn, "nearest": nearest.tolist(), "calm": calm_of(rules, tests)}
    # leave one message out (the semantic layer on a message of a rule it has other examples of)
    tests = [t for t, _, s in pos if s != "yaml examples"]
    v = emb_of(tests)
    keys = np.array([_key(t) for t in tests])
    sp = v @ pos_vec.T
    sp[keys[:, None] == pos_key[None, :]] = -1.0
    sn = v @ neg_vec.T
    sn[keys[:, None] == neg_key[None, :]] = -1.0
    units["loo"] = {"sp": sp.max(axis=1), "sn": np.maximum(sn.max(axis=1), ref_best(v, all_ref)),
                    "calm": calm_of(rules, tests)}
    for rel, tests in test_neg.items():
        tkeys = {_key(t) for t in tests}
        keep_n = (neg_src != rel) & ~np.isin(neg_key, list(tkeys))
        keep_p = ~np.isin(pos_key, list(tkeys))
        v = emb_of(tests)
        keep_r = (ref_vec @ v.T).max(axis=1) < REF_DUPLICATE
        sp_all = v @ pos_vec[keep_p].T
        sn = np.maximum((v @ neg_vec[keep_n].T).max(axis=1), ref_best(v, keep_r))
        units["negatives"][rel] = {"texts": tests, "rules": [[r.id for r in rules.red_flags(t)] for t in tests],
                                   "sp": sp_all.max(axis=1), "sn": sn,
                                   "nearest": pos_rule[keep_p][sp_all.argmax(axis=1)].tolist(),
                                   "ref_rows_dropped": int((~keep_r).sum()), "calm": calm_of(rules, tests)}
    return units


def calm_of(rules, texts) -> np.ndarray:
    """The messages the guard keeps the semantic layer quiet on (told as hypothetical or over: Analysis.calm)."""
    return np.array([rules.analyse(t).calm for t in texts], dtype=bool)


def score(units, threshold, margin):
    def sem(u):
        return (u["sp"] >= threshold) & (u["sp"] - u["sn"] >= margin) & ~u["calm"]

    out = {"rules": {}, "negatives": {}}
    caught_all, rules_all, sem_all = [], [], []
    for rid, u in units["rules"].items():
        if u is None:
            out["rules"][rid] = {"n": 0}
            continue
        r = np.array([bool(x) for x in u["rules"]])
        s = sem(u)
        c = r | s
        caught_all += c.tolist(); rules_all += r.tolist(); sem_all += s.tolist()  # noqa: E702
        out["rules"][rid] = {"n": len(c), "recall": round(float(c.mean()), 4),
                             "rules_recall": round(float(r.mean()), 4), "semantic_recall": round(float(s.mean()), 4),
                             "missed": [t for t, x in zip(u["texts"], c) if not x]}
    fa_all, fa_rules, fa_sem = [], [], []
    for rel, u in units["negatives"].items():
        r = np.array([bool(x) for x in u["rules"]])
        s = sem(u)
        f = r | s
        fa_all += f.tolist(); fa_rules += r.tolist(); fa_sem += s.tolist()  # noqa: E702
        out["negatives"][rel] = {"n": len(f), "false_alarms": round(float(f.mean()), 4),
                                 "rules_false_alarms": round(float(r.mean()), 4),
                                 "semantic_false_alarms": round(float(s.mean()), 4),
                                 "ref_rows_dropped": u["ref_rows_dropped"],
                                 "false_alarm_texts": [
                                     {"text": t, "rules": rr, "semantic": (n if x else None)}
                                     for t, rr, n, x, y in zip(u["texts"], u["rules"], u["nearest"], s, f) if y]}
    per_rule = [v["recall"] for v in out["rules"].values() if v["n"]]
    out["overall"] = {
        "loco_recall": round(float(np.mean(caught_all)), 4), "n_positives": len(caught_all),
        "loco_recall_macro": round(float(np.mean(per_rule)), 4), "loco_recall_worst_rule": round(min(per_rule), 4),
        "rules_recall": round(float(np.mean(rules_all)), 4), "semantic_loco_recall": round(float(np.mean(sem_all)), 4),
        "loco_false_alarms": round(float(np.mean(fa_all)), 4), "n_negatives": len(fa_all),
        "rules_false_alarms": round(float(np.mean(fa_rules)), 4),
        "semantic_loco_false_alarms": round(float(np.mean(fa_sem)), 4),
"semantic_loo_recall": round(float(sem(units["loo"]).mean()), 4),
        "rules_without_positives": [rid for rid, v in out["rules"].items() if not v["n"]],
    }
    return out


def check(path, rules, threshold, margin, pos_vec, neg_vec, ref_vec, emb_of) -> dict:
    """A set never tuned on ({"text", "emergency"}), with the full layer: every example and the reference."""
    rows = [row for _, row in _rows(path)]
    texts = [r["text"] for r in rows]
    v = emb_of(texts)
    sp = (v @ pos_vec.T).max(axis=1)
    sn = np.maximum((v @ neg_vec.T).max(axis=1), (v @ ref_vec.T).max(axis=1))
    sem = (sp >= threshold) & (sp - sn >= margin) & ~calm_of(rules, texts)
    rule = np.array([bool(rules.red_flags(t)) for t in texts])
    em = np.array([bool(r["emergency"]) for r in rows])
    both = rule | sem
    return {"file": str(path.relative_to(REPO) if path.is_relative_to(REPO) else path),
            "n_emergency": int(em.sum()), "n_non_urgent": int((~em).sum()),
            "recall": round(float(both[em].mean()), 4), "rules_recall": round(float(rule[em].mean()), 4),
            "semantic_recall": round(float(sem[em].mean()), 4),
            "false_alarms": round(float(both[~em].mean()), 4), "rules_false_alarms": round(float(rule[~em].mean()), 4),
            "semantic_false_alarms": round(float(sem[~em].mean()), 4),
            "missed": [t for t, b, e in zip(texts, both, em) if e and not b],
            "false_alarm_texts": [t for t, b, e in zip(texts, both, em) if b and not e]}


def sweep(units, thresholds, margins):
    rows = []
    for t in thresholds:
        for m in margins:
            o = score(units, t, m)["overall"]
            rows.append({"threshold": round(t, 3), "margin": round(m, 3), "loco_recall": o["loco_recall"],
                         "loco_false_alarms": o["loco_false_alarms"], "worst_rule": o["loco_recall_worst_rule"],
                         "semantic_loo_recall": o["semantic_loo_recall"],
                         "semantic_loco_false_alarms": o["semantic_loco_false_alarms"]})
    return rows


def render(res: dict) -> str:
    lines = [f"threshold {res['threshold']}, margin {res['margin']}", "",
             f"{'rule (left out)':28s} {'n':>4s} {'recall':>7s} {'rules':>7s} {'semantic':>9s}"]
    for rid, v in res["rules"].items():
        if v["n"]:
            lines.append(f"{rid:28s} {v['n']:4d} {v['recall']:7.1%} {v['rules_recall']:7.1%} {v['semantic_recall']:9.1%}")
        else:
            lines.append(f"{rid:28s} {0:4d}       -  (no tune positives)")
    lines += ["", f"{'negatives file (left out)':40s} {'n':>4s} {'false al.':>9s} {'rules':>7s} {'semantic':>9s}"]
    for rel, v in res["negatives"].items():
        lines.append(f"{rel:40s} {v['n']:4d} {v['false_alarms']:9.1%} {v['rules_false_alarms']:7.1%} "
                     f"{v['semantic_false_alarms']:9.1%}")
    o = res["overall"]
    lines += ["", f"LOCO recall {o['loco_recall']:.1%} of {o['n_positives']} (macro {o['loco_recall_macro']:.1%}, "
                  f"worst rule {o['loco_recall_worst_rule']:.1%}; rules alone {o['rules_recall']:.1%}, "
                  f"semantic alone {o['semantic_loco_recall']:.1%}; semantic alone, leave one message out "
                  f"{o['semantic_loo_recall']:.1%})",
              f"LOCO false alarms {o['loco_false_alarms']:.1%} of {o['n_negatives']} (rules alone "
              f"{o['rules_false_alarms']:.1%}, semantic alone {o['semantic_loco_false_alarms']:.1%})",
              f"targets: recall >= {TARGETS['loco_recall']:.0%}, false alarms <= {TARGETS['loco_false_alarms']:.0%}"]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rules", type=Path, default=default_rules_path())
    ap.add_argument("--cache", type=Path, default=Path("/tmp/red_flag_loco_cache"))
    ap.add_argument("--threshold", type=float, default=None, help="default: the rules file's semantic.threshold")
    ap.add_argument("--margin", type=float, default=None, help="default: the rules file's semantic.margin")
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--sweep-by-loo", action="store_true",
                    help="with --sweep: among settings meeting both targets, rank by the semantic layer's "
                         "leave-one-message-out recall")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--show-misses", action="store_true")
    ap.add_argument("--check", type=Path, action="append", default=[],
                    help="also score a set never tuned on ({text, emergency}) with the full layer (repeatable)")
    args = ap.parse_args(argv)
    setup(5)
    rules, cfg, pos, neg, test_neg = load(args.rules)
    threshold = float(cfg.get("threshold", 0.55)) if args.threshold is None else args.threshold
    margin = float(cfg.get("margin", 0.05)) if args.margin is None else args.margin
    emb = Embedder()
    args.cache.mkdir(parents=True, exist_ok=True)
    log("embedding (cached)")
    pos_vec = embed_cached(emb, [t for t, _, _ in pos], args.cache)
    neg_vec = embed_cached(emb, [t for t, _ in neg], args.cache)
    ref_vec = np.asarray(GuardIndex.load(default_index_dir()).reference, dtype=np.float32)
    emb_of = lambda texts: embed_cached(emb, texts, args.cache)  # noqa: E731
    units = loco(rules, cfg, pos, neg, test_neg, pos_vec, neg_vec, ref_vec, emb_of)
    if args.sweep:
        rows = sweep(units, np.arange(0.40, 0.701, 0.01), np.arange(0.0, 0.121, 0.01))
        ok = [r for r in rows if r["loco_false_alarms"] <= TARGETS["loco_false_alarms"]]
        ok.sort(key=lambda r: (-r["loco_recall"], -r["semantic_loo_recall"], r["loco_false_alarms"]))
        if args.sweep_by_loo:
            ok = [r for r in ok if r["loco_recall"] >= TARGETS["loco_recall"]]
            ok.sort(key=lambda r: (-r["semantic_loo_recall"], r["loco_false_alarms"]))
        print("best settings with LOCO false alarms <= target:")
        for r in ok[:15]:
            print(f"  threshold {r['threshold']:.2f} margin {r['margin']:.2f}: recall {r['loco_recall']:.1%}, "
                  f"false alarms {r['loco_false_alarms']:.1%}, worst rule {r['worst_rule']:.1%}; semantic alone: "
                  f"leave-one-message-out recall {r['semantic_loo_recall']:.1%}, "
                  f"LOCO false alarms {r['semantic_loco_false_alarms']:.1%}")
        return 0
    res = {"protocol": __doc__.split("\n\n")[1].replace("\n", " "), "rules_file": str(args.rules.relative_to(REPO)
                                                                                      if args.rules.is_relative_to(REPO) else args.rules),
           "threshold": threshold, "margin": margin, "targets": TARGETS,
           "positives_files": list(cfg.get("positives") or []), "negatives_files": list(cfg.get("negatives") or []),
           "n_reference": len(ref_vec), **score(units, threshold, margin)}
    if args.check:
        res["checks"] = [check(p, rules, threshold, margin, pos_vec, neg_vec, ref_vec, emb_of) for p in args.check]
    print(render(res))
    for c in res.get("checks", []):
        print(f"check {c['file']}: recall {c['recall']:.1%} of {c['n_emergency']} (rules {c['rules_recall']:.1%}, "
              f"semantic {c['semantic_recall']:.1%}), false alarms {c['false_alarms']:.1%} of {c['n_non_urgent']} "
              f"(rules {c['rules_false_alarms']:.1%}, semantic {c['semantic_false_alarms']:.1%})")
        if args.show_misses:
            for t in c["missed"]:
                print(f"CHECK MISS: {t}")
            for t in c["false_alarm_texts"]:
                print(f"CHECK FA: {t}")
    if args.show_misses:
        for rid, v in res["rules"].items():
            for t in v.get("missed", []):
                print(f"MISS {rid}: {t}")
        for rel, v in res["negatives"].items():
            for x in v["false_alarm_texts"]:
                print(f"FA {rel}: {x}")
    if not args.no_write:
        print(f"wrote {write_json('red_flag_loco', res)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
