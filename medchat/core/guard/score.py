"""The out-of-domain score: a logistic regression on the sentence embeddings plus a contrastive kNN term.

    score(x) = w . x + b  +  knn_weight * (knn(x, medical reference) - knn(x, general reference))

w . x + b is the log-odds of "medical" from a class- and group-balanced, L2-regularised logistic regression;
knn(x, R) is the mean cosine similarity of x to its k nearest rows of R. The linear part generalises across
phrasings, the kNN part holds where a message sits right beside known examples of either side; together
they beat either alone on left-out groups (bench/guard_eval.py). Higher means more medical.

The regression is fitted with Newton's method in numpy rather than scikit-learn: 385 parameters, a dozen
exact lines, and building the index then needs nothing beyond numpy, like the check itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

# Chosen by leave-one-group-out measurement (bench/guard_eval.py --sweep -> bench/results/guard_sweep.json).
DEFAULT_L2 = 3e-3
DEFAULT_K = 20
DEFAULT_KNN_WEIGHT = 10.0
REFERENCE_PER_GROUP = 500  # rows per group kept in each kNN reference (250 cost 0.003 of worst-group AUROC); ~7 MB


def knn_mean(queries: np.ndarray, refs: np.ndarray, k: int) -> np.ndarray:
    """Mean cosine similarity of each (unit) query row to its k nearest (unit) reference rows."""
    k = max(1, min(k, len(refs)))
    sims = queries @ refs.T
    return np.partition(sims, len(refs) - k, axis=1)[:, len(refs) - k:].mean(axis=1)


@dataclass
class GuardScore:
    weights: np.ndarray  # (dim,)
    bias: float
    medical: np.ndarray  # (n_med, dim) unit rows
    general: np.ndarray  # (n_gen, dim) unit rows
    k: int = DEFAULT_K
    knn_weight: float = DEFAULT_KNN_WEIGHT

    def linear(self, vectors: np.ndarray) -> np.ndarray:
        return vectors @ self.weights + np.float32(self.bias)

    def scores(self, vectors: np.ndarray) -> np.ndarray:
        v = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        contrast = knn_mean(v, self.medical, self.k) - knn_mean(v, self.general, self.k)
        return (self.linear(v) + self.knn_weight * contrast).astype(np.float32)


def balanced_weights(labels: Sequence[bool], groups: Sequence[str]) -> np.ndarray:
    """Sample weights under which both classes weigh the same and, within a class, every group does: a big
    source (or the seven CLINC150 domains) must not teach the score its own shape only. Mean 1."""
    labels = np.asarray(labels, dtype=bool)
    groups = np.asarray(groups)
    w = np.zeros(len(labels))
    for cls in (True, False):
        in_cls = labels == cls
        names = np.unique(groups[in_cls])
        for g in names:
            sel = in_cls & (groups == g)
            w[sel] = 1.0 / (sel.sum() * len(names))
    return w * len(w) / w.sum()


def fit_logistic(x: np.ndarray, labels: Sequence[bool], weights: np.ndarray, l2: float = DEFAULT_L2,
                 start: tuple[np.ndarray, float] | None = None, max_iter: int = 30, tol: float = 1e-4
                 ) -> tuple[np.ndarray, float]:
    """(w, b) minimising mean(weight_i * logloss_i) + l2/2 |w|^2 (bias not penalised), by Newton's method.
    `start` (e.g. the fit on all the data) makes a refit on a subset converge in a few steps."""
    xb = np.hstack([np.asarray(x, dtype=np.float64), np.ones((len(x), 1))])
    y = np.asarray(labels, dtype=np.float64)
    sw = np.asarray(weights, dtype=np.float64) / len(y)
    theta = np.zeros(xb.shape[1]) if start is None else np.append(start[0], start[1]).astype(np.float64)
    reg = np.full(xb.shape[1], float(l2))
    reg[-1] = 1e-9  # keeps the Hessian invertible without penalising the bias
    for _ in range(max_iter):
        p = 1.0 / (1.0 + np.exp(-np.clip(xb @ theta, -30, 30)))
        grad = xb.T @ (sw * (p - y)) + reg * theta
        # float32 for the one expensive product (n x d^2); the solve stays float64
        xf = xb.astype(np.float32)
        hess = (xf * (sw * p * (1 - p)).astype(np.float32)[:, None]).T @ xf + np.diag(reg)
        step = np.linalg.solve(hess, grad)
        theta -= step
        if np.abs(step).max() < tol:
            break
    return theta[:-1].astype(np.float32), float(theta[-1])


def fit_score(vectors: Mapping[str, np.ndarray], medical: set[str], *, l2: float = DEFAULT_L2, k: int = DEFAULT_K,
              knn_weight: float = DEFAULT_KNN_WEIGHT, per_group: int = REFERENCE_PER_GROUP,
              start: GuardScore | None = None) -> GuardScore:
    """Fit on {group: unit embeddings}; the groups named in `medical` are the positives. The kNN references
    keep the first `per_group` rows of each group (callers pass groups in seeded random order)."""
    names = list(vectors)
    x = np.concatenate([vectors[g] for g in names])
    labels = np.concatenate([np.full(len(vectors[g]), g in medical) for g in names])
    groups = np.concatenate([np.full(len(vectors[g]), g) for g in names])
    w, b = fit_logistic(x, labels, balanced_weights(labels, groups), l2,
                        None if start is None else (start.weights, start.bias))
    ref = lambda side: np.concatenate([vectors[g][:per_group] for g in names if (g in medical) == side])  # noqa: E731
    return GuardScore(w, b, ref(True).astype(np.float32), ref(False).astype(np.float32), k, knn_weight)


def left_out_scores(vectors: Mapping[str, np.ndarray], medical: set[str], folds: Sequence[Sequence[str]],
                    start: GuardScore | None = None, **fit_args) -> dict[str, np.ndarray]:
    """{group: scores from a fit that never saw that group}; each fold is a list of groups left out together
    (one group per fold is leave-one-group-out)."""
    out: dict[str, np.ndarray] = {}
    for fold in folds:
        score = fit_score({g: v for g, v in vectors.items() if g not in fold}, medical, start=start, **fit_args)
        out.update({g: score.scores(vectors[g]) for g in fold})
    return out
