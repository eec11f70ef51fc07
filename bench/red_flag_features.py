"""Red flags on a fresh set: the shipped semantic layer against one on all six MiniLM layers, side by side.

    nice -n 5 python bench/red_flag_features.py [--check bench/data/red_flags_heldout_v8.jsonl]

Both classifiers are fitted on exactly what the shipped layer learns from (red_flag_loco.units_of) and
decide with the shipped rules and thresholds (semantic.apply through red_flag_loco.decide). "shipped"
reads the embedding the guard uses (the last layer's mean, L2-normalised); "all layers" concatenates
the normalised mean of every layer's hidden states (6 x 384), which the same forward pass computes.
Why: sweeping flag_at/keep_rules_at on v7 (already seen) found no setting of the shipped classifier with
recall >= 95% and false alarms <= 10% (its AUROC on v7 was 0.952); all layers raised it to 0.973, so
the fresh v8 set, written by someone who saw nothing of the project, decides. Thresholds are the shipped
ones for both, chosen before v8 was read. Writes bench/results/red_flag_features.json.
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
from medchat.core.guard.embedder import Embedder, embed_cached  # noqa: E402
from medchat.core.guard.rules import default_rules  # noqa: E402
from medchat.core.guard.semantic import SemanticConfig, _rows, fit_classifier  # noqa: E402


def all_layer_means(embedder: Embedder, texts: list[str]) -> np.ndarray:
    """(n, 6 * 384): the L2-normalised attention-masked mean of each layer's hidden states."""
    import torch

    embedder.load()
    tok, model = embedder._tokenizer, embedder._model
    out = []
    with torch.inference_mode():
        for start in range(0, len(texts), 64):
            batch = tok(texts[start:start + 64], padding=True, truncation=True, max_length=256, return_tensors="pt")
            hidden = model(**batch, output_hidden_states=True).hidden_states[1:]
            mask = batch["attention_mask"].unsqueeze(-1).float()
            out.append(torch.cat([torch.nn.functional.normalize((h * mask).sum(1) / mask.sum(1), dim=1)
                                  for h in hidden], 1))
    return torch.cat(out).numpy()


def auroc(y: np.ndarray, score: np.ndarray) -> float:
    """Mann-Whitney estimate (ties count half)."""
    pos, neg = score[y], score[~y]
    return float(((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum())
                 / (len(pos) * len(neg)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", type=Path, default=REPO / "bench/data/red_flags_heldout_v8.jsonl")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/red_flag_loco_cache"))
    args = ap.parse_args(argv)
    setup(5)
    rules = default_rules()
    config = SemanticConfig.from_rules(rules)
    rows = units_of(rules)
    texts = [t for t, _, _ in rows]
    emergency = np.array([e for _, _, e in rows], dtype=bool)
    check = [row for _, row in _rows(args.check)]
    check_texts = [r["text"] for r in check]
    truth = np.array([bool(r["emergency"]) for r in check])
    fired = [rules.red_flags(t) for t in check_texts]
    embedder = Embedder()
    log(f"fitting both classifiers on {len(texts)} examples, checking {len(check)} messages")
    features = {
        "shipped": (embed_cached(embedder, texts, args.cache), embedder.encode(check_texts)),
        "all layers": (all_layer_means(embedder, texts), all_layer_means(embedder, check_texts)),
    }
    res = {"protocol": " ".join(__doc__.split("\n\n")[1].split()), "check": str(args.check.relative_to(REPO)),
           "settings": {"l2": config.l2, "flag_at": config.flag_at, "keep_rules_at": config.keep_rules_at},
           "n_emergency": int(truth.sum()), "n_non_urgent": int((~truth).sum()),
           "rules_alone": {"recall": round(float(np.mean([bool(f) for f, t in zip(fired, truth) if t])), 4),
                           "false_alarms": round(float(np.mean([bool(f) for f, t in zip(fired, truth) if not t])), 4)},
           "layers": {}}
    for name, (train, test) in features.items():
        w, b = fit_classifier(train, emergency, config.l2)
        p = probability(w, b, test)
        flagged = decide(fired, p, config)
        res["layers"][name] = {"recall": round(float(flagged[truth].mean()), 4),
                               "false_alarms": round(float(flagged[~truth].mean()), 4),
                               "classifier_auroc": round(auroc(truth, p), 4)}
    print(f"{res['check']}: {res['n_emergency']} emergencies, {res['n_non_urgent']} non-urgent; rules alone "
          f"recall {res['rules_alone']['recall']:.1%}, false alarms {res['rules_alone']['false_alarms']:.1%}")
    for name, v in res["layers"].items():
        print(f"  {name:11s} recall {v['recall']:.1%}  false alarms {v['false_alarms']:.1%}  "
              f"classifier AUROC {v['classifier_auroc']:.4f}")
    print(f"wrote {write_json('red_flag_features', res)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
