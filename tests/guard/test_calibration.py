"""Three levels from a score, the threshold choice and the metrics."""

from __future__ import annotations

import numpy as np
import pytest

from medchat.core.guard.calibration import Thresholds, auroc, choose_thresholds, fpr_at_recall, level_counts


@pytest.mark.parametrize(("score", "level"), [(0.9, "in_domain"), (0.5, "in_domain"), (0.4999, "uncertain"),
                                              (0.3, "uncertain"), (0.2999, "out_of_domain"), (-1.0, "out_of_domain")])
def test_three_levels(score, level):
    assert Thresholds(in_domain=0.5, out_of_domain=0.3).level(score) == level


def test_thresholds_out_of_order():
    with pytest.raises(ValueError, match="out of order"):
        Thresholds(in_domain=0.2, out_of_domain=0.3)


def test_auroc_and_fpr():
    assert auroc([3, 4, 5], [0, 1, 2]) == 1.0
    assert auroc([0, 1, 2], [3, 4, 5]) == 0.0
    assert auroc([1, 1], [1, 1]) == 0.5
    assert auroc([2, 0], [1]) == 0.5
    assert np.isnan(auroc([], [1.0]))
    assert fpr_at_recall([1.0, 2.0, 3.0, 4.0], [0.0, 2.5, 5.0], recall=0.75) == pytest.approx(2 / 3)


def test_auroc_equals_the_pairwise_definition_with_ties():
    rng = np.random.RandomState(1)
    pos, neg = rng.randint(0, 6, 40), rng.randint(0, 5, 30)
    pairs = [(p > n) + 0.5 * (p == n) for p in pos for n in neg]
    assert auroc(pos, neg) == pytest.approx(np.mean(pairs))


def test_overlapping_classes_get_an_uncertain_band_that_keeps_both_limits():
    rng = np.random.RandomState(0)
    med, gen = rng.normal(1.0, 1.0, 2000), rng.normal(-1.0, 1.0, 2000)
    thr = choose_thresholds(med, gen, max_general_in=0.02, max_medical_out=0.01)
    assert thr.out_of_domain == pytest.approx(np.quantile(med, 0.01), abs=1e-3)
    assert thr.in_domain == pytest.approx(np.quantile(gen, 0.98), abs=1e-3)
    assert level_counts(med, thr)["out_of_domain"] <= 0.011
    assert level_counts(gen, thr)["in_domain"] <= 0.021
    assert level_counts(med, thr)["uncertain"] > 0.1  # the overlap is called uncertain, not guessed


def test_separated_classes_put_the_gap_in_the_middle_band():
    thr = choose_thresholds(np.linspace(5, 9, 50), np.linspace(-3, 1, 50))
    assert thr.out_of_domain < thr.in_domain
    assert thr.level(7) == "in_domain" and thr.level(-2) == "out_of_domain" and thr.level(3) == "uncertain"


def test_calibration_needs_data():
    with pytest.raises(ValueError, match="at least 10"):
        choose_thresholds([0.5] * 3, [0.1] * 30)
