"""Red flags on what the classifier never saw: leave one unit of its examples out at a time.

    nice -n 5 python bench/red_flag_loco.py [--cache /tmp/red_flag_loco_cache] [--check FILE ...]

Protocol. The semantic layer's examples (the `semantic:` files of assets/guard/red_flags.yaml and the rules'
`examples`) fall into units: each labelled set (v1-v6 by their "set" field, red_flag_check1), each negatives
file, each rule's positives (its tune rows and `examples.fire`) and the rules' `examples.quiet`. For each
unit U the classifier is fitted on every other unit, without any row whose text is in U, and U's rows are
checked as the guard does (medchat.core.guard.semantic.apply): the text rules' flags, withdrawn below
keep_rules_at (never a self-harm one), one raised at flag_at. Pooled over units: recall on emergencies,
false alarms on non-urgent messages. The text rules were written with most of these messages in view, so
their share is not held out (the rules-alone column shows it); the labelled sets' rows are the fairest
part, each set written by someone who saw neither the rules nor the examples.
--check FILE scores a set never learned from ({"text", "emergency"}) with the layer as shipped.
Writes bench/results/red_flag_loco.json.
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
from medchat.core.guard.rules import default_rules  # noqa: E402
from medchat.core.guard.semantic import Reading, SemanticConfig, _rows, apply, fit_classifier  # noqa: E402


def units_of(rules) -> list[tuple[str, str, bool]]:
    """(text, unit, emergency) for every example the shipped layer learns from."""
    base = Path(rules.source).parent
    cfg = rules.semantic
    out = [(t, f"rule {r.id}", True) for r in rules.rules for t in r.examples_fire]
    out += [(t, "rules' examples.quiet", False) for r in rules.rules for t in r.examples_quiet]
    for rel in cfg.get("positives") or []:
        out += [(row["text"], f"rule {row['expect']}", True) for _, row in _rows(base / rel)]
    for rel in cfg.get("negatives") or []:
        out += [(row["text"], rel, False) for _, row in _rows(base / rel, key="question") if row.get("role") != "heldout"]
    for rel in cfg.get("labelled") or []:
        out += [(row["text"], f"{rel} {row.get('set', '')}".strip(), row["emergency"]) for _, row in _rows(base / rel)]
    return out


def decide(fired, p, config) -> np.ndarray:
    """Flagged or not, per message: `fired` holds the rules each one fires (a Rule has the `.category` that
    `apply` reads of a flag), `p` the classifier's probabilities."""
    out = []
    for rules_fired, prob in zip(fired, p):
        kept, more = apply(Reading(float(prob), ""), rules_fired, config)
        out.append(bool(kept) or more)
    return np.array(out, dtype=bool)


def probability(w, b, vectors) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(vectors @ w + b, -30, 30)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=Path("/tmp/red_flag_loco_cache"))
    ap.add_argument("--check", type=Path, action="append", default=[], help="a set never learned from")
    args = ap.parse_args(argv)
    setup(5)
    rules = default_rules()
    config = SemanticConfig.from_rules(rules)
    rows = units_of(rules)
    texts = [t for t, _, _ in rows]
    unit = np.array([u for _, u, _ in rows])
    emergency = np.array([e for _, _, e in rows], dtype=bool)
    log(f"embedding {len(texts)} examples (cached)")
    emb = Embedder()
    vectors = embed_cached(emb, texts, args.cache, layers=True)
    fired = [rules.red_flags(t) for t in texts]
    rule_flags = np.array([bool(f) for f in fired])
    caught = np.zeros(len(rows), dtype=bool)
    per_unit = {}
    for u in dict.fromkeys(unit):
        test = unit == u
        held = {texts[i] for i in np.nonzero(test)[0]}
        train = ~test & ~np.array([t in held for t in texts])
        w, b = fit_classifier(vectors[train], emergency[train], config.l2)
        idx = np.nonzero(test)[0]
        caught[idx] = decide([fired[i] for i in idx], probability(w, b, vectors[idx]), config)
        em, calm = emergency[idx], ~emergency[idx]
        per_unit[u] = {"n_emergency": int(em.sum()), "n_non_urgent": int(calm.sum()),
                       "recall": round(float(caught[idx][em].mean()), 4) if em.any() else None,
                       "false_alarms": round(float(caught[idx][calm].mean()), 4) if calm.any() else None,
                       "rules_recall": round(float(rule_flags[idx][em].mean()), 4) if em.any() else None,
                       "rules_false_alarms": round(float(rule_flags[idx][calm].mean()), 4) if calm.any() else None,
                       "missed": [texts[i] for i in idx if emergency[i] and not caught[i]],
                       "false_alarm_texts": [texts[i] for i in idx if not emergency[i] and caught[i]]}
    sets = np.array([u.startswith("eval/red_flag_sets") or u.startswith("eval/red_flag_check") for u in unit])

    def pooled(mask):
        return {"recall": round(float(caught[mask & emergency].mean()), 4), "n_emergency": int((mask & emergency).sum()),
                "false_alarms": round(float(caught[mask & ~emergency].mean()), 4),
                "n_non_urgent": int((mask & ~emergency).sum()),
                "rules_recall": round(float(rule_flags[mask & emergency].mean()), 4),
                "rules_false_alarms": round(float(rule_flags[mask & ~emergency].mean()), 4)}

    res = {"protocol": " ".join(__doc__.split("\n\n")[1].split()),
           "settings": {"l2": config.l2, "flag_at": config.flag_at, "keep_rules_at": config.keep_rules_at},
           "overall": pooled(np.ones(len(rows), dtype=bool)), "written_sets": pooled(sets), "units": per_unit}
    w, b = fit_classifier(vectors, emergency, config.l2)
    res["checks"] = {}
    for path in args.check:
        check_rows = [row for _, row in _rows(path)]
        ct = [r["text"] for r in check_rows]
        ce = np.array([bool(r["emergency"]) for r in check_rows])
        flags = decide([rules.red_flags(t) for t in ct], probability(w, b, embed_cached(emb, ct, args.cache, layers=True)), config)
        res["checks"][str(path)] = {"recall": round(float(flags[ce].mean()), 4), "n_emergency": int(ce.sum()),
                                    "false_alarms": round(float(flags[~ce].mean()), 4), "n_non_urgent": int((~ce).sum())}
    print(render(res))
    print(f"wrote {write_json('red_flag_loco', res)}", file=sys.stderr)
    return 0


def render(res: dict) -> str:
    lines = [f"{'unit left out':44s} {'emerg.':>6s} {'recall':>7s} {'rules':>6s} {'calm':>5s} {'false al.':>9s} {'rules':>6s}"]
    pct = lambda v: "-" if v is None else f"{v:.1%}"  # noqa: E731
    for u, v in res["units"].items():
        lines.append(f"{u:44s} {v['n_emergency']:6d} {pct(v['recall']):>7s} {pct(v['rules_recall']):>6s} "
                     f"{v['n_non_urgent']:5d} {pct(v['false_alarms']):>9s} {pct(v['rules_false_alarms']):>6s}")
    for name in ("written_sets", "overall"):
        o = res[name]
        lines.append(f"\n{name}: recall {o['recall']:.1%} of {o['n_emergency']} (rules alone {o['rules_recall']:.1%}), "
                     f"false alarms {o['false_alarms']:.1%} of {o['n_non_urgent']} (rules alone {o['rules_false_alarms']:.1%})")
    for path, c in res["checks"].items():
        lines.append(f"check {path}: recall {c['recall']:.1%} of {c['n_emergency']}, "
                     f"false alarms {c['false_alarms']:.1%} of {c['n_non_urgent']}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
