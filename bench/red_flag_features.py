"""Red flags on fresh sets: the semantic layer on the sentence embedding against all six MiniLM layers.

    nice -n 5 python bench/red_flag_features.py [--check bench/data/red_flags_heldout_v9.jsonl ...]

Both classifiers are fitted on exactly what the shipped layer learns from (red_flag_loco.units_of) and
decide with the shipped rules and thresholds (semantic.apply through red_flag_loco.decide). "last layer"
reads the sentence embedding (the last layer's mean, L2-normalised; the layer shipped until v8 chose);
"all layers" (shipped) reads Embedder.encode_layers, the normalised mean of every layer's hidden states
(6 x 384) from the same forward pass. Why: sweeping flag_at/keep_rules_at on v7 (already seen) found no
setting of the last-layer classifier with recall >= 95% and false alarms <= 10% (its AUROC on v7 was
0.952); all layers raised it to 0.973. v8, written by someone who saw nothing of the project, chose all
layers (so it is no longer fresh); v9, written the same way after that choice, measures it. Thresholds
are the same for both, chosen before v8 was read. Writes bench/results/red_flag_features.json.
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
from red_flag_loco import decide, probability, units_of  # noqa: E402
from medchat.core.guard.calibration import auroc  # noqa: E402
from medchat.core.guard.embedder import Embedder, embed_cached  # noqa: E402
from medchat.core.guard.rules import default_rules  # noqa: E402
from medchat.core.guard.semantic import SemanticConfig, _rows, fit_classifier  # noqa: E402


FEATURES = {"last layer": False, "all layers (shipped)": True}  # name: Embedder.encode_layers?


def check_set(path: Path, rules, config, embedder, fits) -> dict:
    rows = [row for _, row in _rows(path)]
    texts = [r["text"] for r in rows]
    truth = np.array([bool(r["emergency"]) for r in rows])
    fired = [rules.red_flags(t) for t in texts]
    rule_flags = np.array([bool(f) for f in fired])
    out = {"n_emergency": int(truth.sum()), "n_non_urgent": int((~truth).sum()),
           "rules_alone": {"recall": round(float(rule_flags[truth].mean()), 4),
                           "false_alarms": round(float(rule_flags[~truth].mean()), 4)},
           "layers": {}}
    for name, layers in FEATURES.items():
        p = probability(*fits[name], embedder.encode_layers(texts) if layers else embedder.encode(texts))
        flagged = decide(fired, p, config)
        out["layers"][name] = {"recall": round(float(flagged[truth].mean()), 4),
                               "false_alarms": round(float(flagged[~truth].mean()), 4),
                               "classifier_auroc": round(auroc(p[truth], p[~truth]), 4),
                               "missed": [t for t, f, e in zip(texts, flagged, truth) if e and not f],
                               "false_alarm_texts": [t for t, f, e in zip(texts, flagged, truth) if f and not e]}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", type=Path, action="append", help="a set never learned from (default: v8, v9, v10)")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/red_flag_loco_cache"))
    args = ap.parse_args(argv)
    setup(5)
    rules = default_rules()
    config = SemanticConfig.from_rules(rules)
    rows = units_of(rules)
    texts = [t for t, _, _ in rows]
    emergency = np.array([e for _, _, e in rows], dtype=bool)
    embedder = Embedder()
    log(f"fitting both classifiers on {len(texts)} examples")
    fits = {name: fit_classifier(embed_cached(embedder, texts, args.cache, layers=layers), emergency, config.l2)
            for name, layers in FEATURES.items()}
    res = {"protocol": " ".join(__doc__.split("\n\n")[1].split()),
           "settings": {"l2": config.l2, "flag_at": config.flag_at, "keep_rules_at": config.keep_rules_at},
           "checks": {}}
    for path in args.check or [REPO / f"bench/data/red_flags_heldout_{v}.jsonl" for v in ("v8", "v9", "v10")]:
        res["checks"][str(path.resolve().relative_to(REPO))] = check_set(path, rules, config, embedder, fits)
    for name, c in res["checks"].items():
        print(f"{name}: {c['n_emergency']} emergencies, {c['n_non_urgent']} non-urgent; rules alone "
              f"recall {c['rules_alone']['recall']:.1%}, false alarms {c['rules_alone']['false_alarms']:.1%}")
        for layer, v in c["layers"].items():
            print(f"  {layer:22s} recall {v['recall']:.1%}  false alarms {v['false_alarms']:.1%}  "
                  f"classifier AUROC {v['classifier_auroc']:.4f}")
    print(f"wrote {write_json('red_flag_features', res)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
