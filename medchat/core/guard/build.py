"""Building a guard index: embed the groups, fit the score, calibrate the thresholds on left-out groups.

    medical, general = data_groups(data_dir)                 # medchat.core.guard.questions
    build_index(medical, general, embedder).save(out_dir)

The thresholds come from scores of groups the score was not fitted on (grouped cross-fitting: each fold
leaves out whole sources or CLINC150 domains): scores on fitted data are over-confident and would put the
thresholds where unseen kinds of message do not fall.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
from dataclasses import replace
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from medchat.core.guard.calibration import (
    MAX_GENERAL_IN_DOMAIN,
    MAX_MEDICAL_OUT_OF_DOMAIN,
    Thresholds,
    auroc,
    choose_thresholds,
    fpr_at_recall,
    level_counts,
)
from medchat.core.guard.embedder import EMBEDDER_NAME, embed_cached
from medchat.core.guard.index import DEFAULT_INDEX_SUBDIR, REBUILD_HINT, GuardIndex, GuardIndexError
from medchat.core.guard.questions import dedupe, sample
from medchat.core.guard.score import (
    DEFAULT_K,
    DEFAULT_KNN_WEIGHT,
    DEFAULT_L2,
    REFERENCE_PER_GROUP,
    fit_score,
    left_out_scores,
)

CALIBRATION_FOLDS = 5
DEFAULT_FIT = {"l2": DEFAULT_L2, "k": DEFAULT_K, "knn_weight": DEFAULT_KNN_WEIGHT, "per_group": REFERENCE_PER_GROUP}


def group_folds(groups: Sequence[str], medical: set[str], n_folds: int = CALIBRATION_FOLDS) -> list[list[str]]:
    """Deal the medical groups, then the general groups, round-robin (sorted, so reproducibly) into
    `n_folds` folds, so that every fold leaves out some of each side."""
    folds: list[list[str]] = [[] for _ in range(n_folds)]
    ordered = sorted(g for g in groups if g in medical) + sorted(g for g in groups if g not in medical)
    for i, g in enumerate(ordered):
        folds[i % n_folds].append(g)
    return [f for f in folds if f]


def calibrate(vectors: Mapping[str, np.ndarray], medical: set[str], start=None, **fit_args
              ) -> tuple[Thresholds, dict]:
    """Thresholds from grouped cross-fitted scores, with the numbers that justify them."""
    oof = left_out_scores(vectors, medical, group_folds(list(vectors), medical), start, **fit_args)
    med = np.concatenate([oof[g] for g in vectors if g in medical])
    gen = np.concatenate([oof[g] for g in vectors if g not in medical])
    thresholds = choose_thresholds(med, gen)
    return thresholds, {
        "method": f"scores of groups left out of the fit ({CALIBRATION_FOLDS} folds of whole groups); "
                  f"out_of_domain below the {MAX_MEDICAL_OUT_OF_DOMAIN:.1%} quantile of medical scores, in_domain "
                  f"from where only {MAX_GENERAL_IN_DOMAIN:.1%} of general scores reach; uncertain in between",
        "auroc": round(auroc(med, gen), 4),
        "fpr_at_95_recall": round(fpr_at_recall(med, gen), 4),
        "levels_medical": level_counts(med, thresholds),
        "levels_general": level_counts(gen, thresholds),
    }


def build_index(medical: Mapping[str, list[str]], general: Mapping[str, list[str]], embedder, *,
                cache_dir: Path | None = None, source: str | None = None,
                log: Callable[[str], None] = lambda msg: None, **fit_args) -> GuardIndex:
    """Fit the score on every group and calibrate its thresholds on left-out groups (not saved)."""
    if not medical or not general:
        raise ValueError("building a guard index needs medical and general groups")
    log(f"embedding {sum(map(len, medical.values()))} medical and {sum(map(len, general.values()))} general texts")
    vectors = {g: embed_cached(embedder, qs, cache_dir) for g, qs in {**medical, **general}.items()}
    score = fit_score(vectors, set(medical), **fit_args)
    log(f"calibrating the thresholds on {CALIBRATION_FOLDS} folds of left-out groups")
    thresholds, numbers = calibrate(vectors, set(medical), start=score, **fit_args)
    meta = {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "embedder": getattr(embedder, "name", EMBEDDER_NAME),
        "source": source,
        "score": "logistic regression on the embeddings (class- and group-balanced) + knn_weight x (mean "
                 "cosine to the k nearest medical reference rows - the same for the general reference)",
        "fit": {**DEFAULT_FIT, **fit_args},
        "groups_medical": {g: len(v) for g, v in medical.items()},
        "groups_general": {g: len(v) for g, v in general.items()},
        "texts_sha256": texts_sha256({**medical, **general}),
        "calibration": numbers,
    }
    return GuardIndex(score, thresholds, meta)


def shipped_base_dir() -> Path:
    """assets/guard/default_index: the index every run's index is built on (never a run's own index, whose
    run rows would otherwise pile up from run to run)."""
    from medchat.core.paths import ASSETS_DIR

    return ASSETS_DIR / DEFAULT_INDEX_SUBDIR


def build_reference_index(questions: Sequence[str], out_dir: Path, *, embedder=None,
                          base_dir: Path | None = None, seed: int = 42) -> GuardIndex:
    """A training run's guard index (medchat-train): the shipped index with a sample of the run's own
    training questions added to the medical kNN reference, as one more group, so messages on the run's
    topics read as medical. Score weights and thresholds stay those calibrated for the shipped index."""
    qs = sample(dedupe([q for q in questions if q and q.strip()]), REFERENCE_PER_GROUP, seed)
    if not qs:
        raise ValueError("build_reference_index: no questions given")
    if embedder is None:
        from medchat.core.guard.embedder import shared_embedder

        embedder = shared_embedder()
    return _run_index(embedder.encode(qs), out_dir, base_dir, {"n": len(qs), "seed": seed})


def rebuild_run_index(run_dir: Path, *, embedder=None, base_dir: Path | None = None, seed: int = 42) -> GuardIndex:
    """Rebuild <run>/guard_index on the current shipped index: from the run's training questions
    (<run>/splits/train.jsonl) when it has them, else from the run rows its present index keeps (a shipped
    run carries no splits). Deterministic: the same run and shipped index give the same arrays."""
    from medchat.core.guard.questions import read_questions

    run_dir = Path(run_dir)
    train = run_dir / "splits" / "train.jsonl"
    out = run_dir / "guard_index"
    if train.is_file():
        return build_reference_index(read_questions(train), out, embedder=embedder, base_dir=base_dir, seed=seed)
    old = GuardIndex.load(out)
    kept = old.meta.get("run_reference") or {}
    n = int(kept.get("n") or 0)
    if n <= 0 or n > len(old.score.medical):
        raise GuardIndexError(f"{train}: missing, and {out / 'index.json'} records no run rows to keep; "
                              "retrain the run or rebuild its index from its training questions")
    note = kept.get("source") or "embeddings of the run's training questions"
    source = note if "kept from" in note else f"{note} (kept from its previous guard index)"
    return _run_index(old.score.medical[-n:], out, base_dir, {**kept, "n": n, "source": source})


def _run_index(run_vectors: np.ndarray, out_dir: Path, base_dir: Path | None, record: dict) -> GuardIndex:
    base_dir = Path(base_dir) if base_dir else shipped_base_dir()
    if not (base_dir / "index.json").is_file():
        raise GuardIndexError(f"{base_dir}: no shipped guard index to base a run's index on; build it with "
                              + REBUILD_HINT.format(dir=base_dir))
    base = GuardIndex.load(base_dir)
    medical = np.concatenate([base.score.medical, np.asarray(run_vectors, dtype=np.float32)])
    from medchat.core.paths import ASSETS_DIR

    try:  # a path inside the checkout is recorded relative to it, so a rebuild elsewhere writes the same file
        based_on = str(base_dir.resolve().relative_to(ASSETS_DIR.resolve().parent))
    except ValueError:
        based_on = str(base_dir)
    meta = {**base.meta, "based_on": based_on, "run_reference": record}
    index = GuardIndex(replace(base.score, medical=medical), base.thresholds, meta)
    index.save(Path(out_dir))
    return index


def texts_sha256(groups: Mapping[str, list[str]]) -> str:
    h = hashlib.sha256()
    for g in sorted(groups):
        for t in groups[g]:
            h.update(f"{g}\t{t}\n".encode("utf-8"))
    return h.hexdigest()
