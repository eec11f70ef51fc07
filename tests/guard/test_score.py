"""The out-of-domain score and its calibration, on small synthetic embeddings (no embedder)."""

from __future__ import annotations

import numpy as np
import pytest
from guard_fakes import synthetic_groups

from medchat.core.guard.build import calibrate, group_folds
from medchat.core.guard.calibration import auroc
from medchat.core.guard.score import balanced_weights, fit_logistic, fit_score, knn_mean, left_out_scores


def test_knn_mean_is_the_mean_of_the_k_nearest():
    refs = np.eye(4, dtype=np.float32)
    q = np.array([[1, 0, 0, 0]], dtype=np.float32)
    assert knn_mean(q, refs, 1)[0] == pytest.approx(1.0)
    assert knn_mean(q, refs, 2)[0] == pytest.approx(0.5)
    assert knn_mean(q, refs, 10)[0] == pytest.approx(0.25)  # k is capped at the reference size


def test_balanced_weights_give_each_class_and_each_group_the_same_weight():
    labels = [True] * 10 + [False] * 90
    groups = ["m"] * 10 + ["big"] * 80 + ["small"] * 10
    w = balanced_weights(labels, groups)
    assert w.mean() == pytest.approx(1.0)
    assert w[:10].sum() == pytest.approx(w[10:].sum())
    assert w[10:90].sum() == pytest.approx(w[90:].sum())


def test_newton_fit_matches_scikit_learn():
    sklearn = pytest.importorskip("sklearn.linear_model")
    rng = np.random.RandomState(0)
    x = rng.standard_normal((300, 5))
    y = (x @ np.array([1.0, -2.0, 0.5, 0.0, 0.0]) + 0.3 + rng.standard_normal(300) > 0)
    w = np.where(y, 2.0, 0.5)
    l2 = 0.01
    ours, bias = fit_logistic(x, y, w, l2, tol=1e-8)
    # sklearn minimises C * sum(w * logloss) + |coef|^2 / 2, i.e. ours scaled by n / (C n): C = 1 / (l2 * n)
    ref = sklearn.LogisticRegression(C=1.0 / (l2 * len(y)), tol=1e-10, max_iter=10000).fit(x, y, sample_weight=w)
    np.testing.assert_allclose(ours, ref.coef_[0], atol=1e-3)
    assert bias == pytest.approx(ref.intercept_[0], abs=1e-3)


def test_score_separates_groups_it_never_saw():
    vectors, medical = synthetic_groups()
    oof = left_out_scores(vectors, medical, [[g] for g in vectors])
    med = np.concatenate([oof[g] for g in medical])
    gen = np.concatenate([oof[g] for g in vectors if g not in medical])
    assert auroc(med, gen) > 0.95
    score = fit_score(vectors, medical, per_group=5)
    assert len(score.medical) == 15 and len(score.general) == 20  # 5 reference rows per group
    assert score.scores(vectors["med_a"]).mean() > 0 > score.scores(vectors["gen_a"]).mean()


def test_left_out_scores_come_from_a_fit_without_the_group():
    vectors, medical = synthetic_groups()
    # a "general" group placed right on the medical cluster: seen in the fit it pulls its own scores down;
    # left out, the score (never told otherwise) calls it medical
    vectors["gen_lookalike"] = vectors["med_a"][:30] * 0.999 + vectors["med_b"][:30] * 0.001
    seen = fit_score(vectors, medical).scores(vectors["gen_lookalike"])
    unseen = left_out_scores(vectors, medical, [["gen_lookalike"]])["gen_lookalike"]
    assert unseen.mean() > seen.mean()


def test_knn_weight_zero_is_the_linear_part_alone():
    vectors, medical = synthetic_groups()
    s = fit_score(vectors, medical, knn_weight=0.0)
    np.testing.assert_allclose(s.scores(vectors["med_b"]), s.linear(vectors["med_b"]), rtol=1e-5, atol=1e-5)


def test_group_folds_leave_out_both_sides_and_every_group_once():
    vectors, medical = synthetic_groups()
    folds = group_folds(list(vectors), medical, 3)
    assert sorted(g for f in folds for g in f) == sorted(vectors)
    assert all(any(g in medical for g in f) for f in folds)


def test_calibrated_thresholds_hold_on_the_cross_fitted_scores():
    vectors, medical = synthetic_groups(n=120)
    thresholds, numbers = calibrate(vectors, medical)
    assert thresholds.out_of_domain <= thresholds.in_domain
    assert numbers["levels_medical"]["out_of_domain"] <= 0.011
    assert numbers["levels_general"]["in_domain"] <= 0.016
    assert numbers["auroc"] > 0.95
