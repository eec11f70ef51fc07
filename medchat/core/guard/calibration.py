"""Three levels from one score, and the numbers that judge a score: AUROC, FPR at 95% recall, level shares.

Higher scores mean "more medical". ``in_domain``: score >= thresholds.in_domain; ``out_of_domain``: score <
thresholds.out_of_domain; ``uncertain`` in between. `choose_thresholds` sets both from scores the model
did not see while fitting (see medchat.core.guard.build).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

LEVELS = ("in_domain", "uncertain", "out_of_domain")
# Calibration targets, tighter than the acceptance targets (3% general in domain, 2% medical out of
# domain) because the calibration groups are not the groups a user brings.
MAX_GENERAL_IN_DOMAIN = 0.015
MAX_MEDICAL_OUT_OF_DOMAIN = 0.01


@dataclass(frozen=True)
class Thresholds:
    in_domain: float  # score >= this: in domain
    out_of_domain: float  # score < this: out of domain; in between: uncertain

    def __post_init__(self):
        if self.out_of_domain > self.in_domain:
            raise ValueError(
                f"thresholds out of order: out_of_domain {self.out_of_domain} > in_domain {self.in_domain}"
            )

    def level(self, score: float) -> str:
        if score >= self.in_domain:
            return "in_domain"
        if score < self.out_of_domain:
            return "out_of_domain"
        return "uncertain"


def choose_thresholds(
    medical: Sequence[float],
    general: Sequence[float],
    max_general_in: float = MAX_GENERAL_IN_DOMAIN,
    max_medical_out: float = MAX_MEDICAL_OUT_OF_DOMAIN,
) -> Thresholds:
    """a = the score below which `max_medical_out` of the medical scores fall, b = the score that only
    `max_general_in` of the general scores reach. Where the classes overlap (a < b) the band [a, b) is
    uncertain; where they separate (a >= b) the gap between them is, so both limits hold either way."""
    med = np.asarray(medical, dtype=np.float64)
    gen = np.asarray(general, dtype=np.float64)
    if len(med) < 10 or len(gen) < 10:
        raise ValueError("calibration needs at least 10 medical and 10 general scores")
    a = float(np.quantile(med, max_medical_out))
    b = float(np.quantile(gen, 1.0 - max_general_in))
    return Thresholds(in_domain=round(max(a, b), 4), out_of_domain=round(min(a, b), 4))


def auroc(pos: Sequence[float], neg: Sequence[float]) -> float:
    """Probability that a random positive scores above a random negative (ties count half)."""
    pos = np.asarray(pos, dtype=np.float64)
    neg = np.asarray(neg, dtype=np.float64)
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    values, inverse = np.unique(np.concatenate([pos, neg]), return_inverse=True)
    counts = np.bincount(inverse)
    mid_rank = np.cumsum(counts) - (counts - 1) / 2.0  # average 1-based rank of each distinct value
    r_pos = mid_rank[inverse[: len(pos)]].sum()
    return float((r_pos - len(pos) * (len(pos) + 1) / 2.0) / (len(pos) * len(neg)))


def fpr_at_recall(pos: Sequence[float], neg: Sequence[float], recall: float = 0.95) -> float:
    """Share of negatives scoring at or above the threshold that keeps `recall` of the positives."""
    pos = np.asarray(pos, dtype=np.float64)
    neg = np.asarray(neg, dtype=np.float64)
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    thr = np.quantile(pos, 1.0 - recall, method="lower")
    return float((neg >= thr).mean())


def level_counts(scores: Iterable[float], thresholds: Thresholds) -> dict[str, float]:
    """Share of scores at each level."""
    levels = [thresholds.level(float(s)) for s in scores]
    n = max(1, len(levels))
    return {lvl: round(levels.count(lvl) / n, 4) for lvl in LEVELS}
