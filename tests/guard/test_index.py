"""Reference index: three-level mapping, calibration, scoring, build/save/load (with a tiny fake embedder)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medchat.core.guard.index import (
    GENERAL_FILE,
    INDEX_JSON,
    GuardIndexError,
    ReferenceIndex,
    Thresholds,
    auroc,
    build_reference_index,
    calibrate,
    fpr_at_recall,
    knn_scores,
    split_general,
)

from guard_fakes import GENERAL, MEDICAL, MEDICAL_CAL


# ---------------------------------------------------------------- three levels


@pytest.mark.parametrize(
    ("score", "level"),
    [
        (0.9, "in_domain"),
        (0.5, "in_domain"),  # at the in-domain threshold: in domain
        (0.4999, "uncertain"),
        (0.3, "uncertain"),  # at the out-of-domain threshold: not yet out of domain
        (0.2999, "out_of_domain"),
        (-1.0, "out_of_domain"),
    ],
)
def test_three_levels(score, level):
    assert Thresholds(in_domain=0.5, out_of_domain=0.3).level(score) == level


def test_equal_thresholds_have_no_uncertain_band():
    t = Thresholds(0.4, 0.4)
    assert t.level(0.4) == "in_domain" and t.level(0.39) == "out_of_domain"


def test_thresholds_out_of_order():
    with pytest.raises(ValueError, match="out of order"):
        Thresholds(in_domain=0.2, out_of_domain=0.3)


# ---------------------------------------------------------------- metrics and calibration


def test_auroc_and_fpr():
    assert auroc([3, 4, 5], [0, 1, 2]) == 1.0
    assert auroc([0, 1, 2], [3, 4, 5]) == 0.0
    assert auroc([1, 1], [1, 1]) == 0.5
    assert auroc([2, 0], [1]) == 0.5
    assert fpr_at_recall([1.0, 2.0, 3.0, 4.0], [0.0, 2.5, 5.0], recall=0.75) == pytest.approx(2 / 3)


def test_calibrate_overlapping():
    rng = np.random.RandomState(0)
    ins = rng.normal(0.5, 0.1, 1000)
    oods = rng.normal(0.2, 0.1, 1000)
    thr, numbers = calibrate(ins, oods, 0.95, 0.95)
    assert thr.out_of_domain == pytest.approx(np.quantile(ins, 0.05), abs=1e-3)
    assert thr.in_domain == pytest.approx(np.quantile(oods, 0.95), abs=1e-3)
    assert thr.out_of_domain <= thr.in_domain
    # at most ~5% of in-domain called out of domain, at most ~5% of general called in domain
    assert numbers["levels_in_domain_questions"]["out_of_domain"] <= 0.051
    assert numbers["levels_ood_questions"]["in_domain"] <= 0.051
    assert 0.9 < numbers["auroc"] <= 1.0


def test_calibrate_separated_gives_ordered_thresholds():
    thr, _ = calibrate(np.linspace(0.6, 0.9, 50), np.linspace(0.0, 0.3, 50))
    assert thr.out_of_domain < thr.in_domain
    assert thr.level(0.75) == "in_domain" and thr.level(0.1) == "out_of_domain"


def test_calibrate_needs_data():
    with pytest.raises(ValueError, match="at least 10"):
        calibrate([0.5] * 3, [0.1] * 30)


def test_knn_scores_mean_of_k_nearest():
    refs = np.eye(4, dtype=np.float32)
    q = np.array([[1, 0, 0, 0]], dtype=np.float32)
    assert knn_scores(q, refs, k=1)[0] == pytest.approx(1.0)
    assert knn_scores(q, refs, k=2)[0] == pytest.approx(0.5)
    assert knn_scores(q, refs, k=10)[0] == pytest.approx(0.25)  # k is capped at the index size


def test_split_general_disjoint_and_seeded():
    sets = {"a": [f"a{i}" for i in range(10)], "b": [f"b{i}" for i in range(7)]}
    ref, cal = split_general(sets, seed=1, max_per_source=4)
    assert len(ref["a"]) == 4 and len(cal["a"]) == 6 and len(ref["b"]) == 3
    assert not set(ref["a"]) & set(cal["a"])
    assert split_general(sets, seed=1, max_per_source=4) == (ref, cal)


# ---------------------------------------------------------------- save / load


def _unit(rows):
    rows = np.asarray(rows, dtype=np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_save_load_roundtrip(tmp_path):
    rng = np.random.RandomState(0)
    emb, gen = _unit(rng.standard_normal((20, 8))), _unit(rng.standard_normal((5, 8)))
    idx = ReferenceIndex(emb, Thresholds(0.2, 0.1), {"source": "test"}, [f"q{i}" for i in range(20)], k=3,
                         general=gen, general_weight=0.5)
    idx.save(tmp_path / "ix")
    meta = json.loads((tmp_path / "ix" / INDEX_JSON).read_text())
    assert meta["thresholds"] == {"in_domain": 0.2, "out_of_domain": 0.1}
    assert meta["n"] == 20 and meta["n_general"] == 5 and meta["score_kind"] == "contrastive_knn"
    assert np.load(tmp_path / "ix" / "embeddings.npy").dtype == np.float16

    back = ReferenceIndex.load(tmp_path / "ix")
    assert len(back) == 20 and back.k == 3 and back.general_weight == 0.5
    assert back.thresholds == Thresholds(0.2, 0.1)
    assert back.questions == [f"q{i}" for i in range(20)]
    q = _unit(rng.standard_normal((4, 8)))
    np.testing.assert_allclose(back.scores(q), idx.scores(q), atol=2e-3)  # float16 on disk
    expected = knn_scores(q, emb, 3) - 0.5 * knn_scores(q, gen, 3)
    np.testing.assert_allclose(idx.scores(q), expected, atol=1e-6)


def test_plain_knn_index_has_no_general_file(tmp_path):
    idx = ReferenceIndex(_unit(np.eye(3) + 0.1), Thresholds(0.5, 0.5))
    idx.save(tmp_path)
    assert not (tmp_path / GENERAL_FILE).exists()
    assert ReferenceIndex.load(tmp_path).score_kind == "knn"


def test_load_errors(tmp_path):
    with pytest.raises(GuardIndexError, match="not a guard reference index"):
        ReferenceIndex.load(tmp_path)
    (tmp_path / INDEX_JSON).write_text("{not json")
    with pytest.raises(GuardIndexError, match="invalid JSON"):
        ReferenceIndex.load(tmp_path)
    (tmp_path / INDEX_JSON).write_text(json.dumps({"format": 99}))
    with pytest.raises(GuardIndexError, match="format"):
        ReferenceIndex.load(tmp_path)
    (tmp_path / INDEX_JSON).write_text(json.dumps({"format": 1, "n": 3, "thresholds": {"in_domain": 0.5,
                                                                                          "out_of_domain": 0.1}}))
    with pytest.raises(GuardIndexError, match="embeddings.npy"):
        ReferenceIndex.load(tmp_path)


# ---------------------------------------------------------------- build


def test_build_with_calibration_lists(tmp_path, hash_embedder):
    idx = build_reference_index(
        MEDICAL, tmp_path / "ix", calibration=(MEDICAL_CAL, GENERAL), general=None,
        embedder=hash_embedder, cache_dir=None, k=3,
    )
    meta = json.loads((tmp_path / "ix" / INDEX_JSON).read_text())
    cal = meta["calibration"]
    assert "quantile" in cal["method"] and cal["n_in_domain"] == len(MEDICAL_CAL) and cal["n_ood"] == len(GENERAL)
    assert cal["auroc"] > 0.9
    assert meta["score_kind"] == "knn"
    t = idx.thresholds
    assert t.out_of_domain <= t.in_domain
    med = idx.score(hash_embedder.encode("what are the symptoms of diabetes and asthma")[0])
    gen = idx.score(hash_embedder.encode("who won the world cup")[0])
    assert med > gen


def test_build_contrastive_splits_general_questions(tmp_path, hash_embedder):
    general = {"g1": GENERAL, "g2": [q + " today" for q in GENERAL]}
    idx = build_reference_index(
        MEDICAL, tmp_path / "ix", calibration=({"mcq": MEDICAL_CAL}, general),
        embedder=hash_embedder, cache_dir=tmp_path / "cache", k=3,
    )
    assert idx.score_kind == "contrastive_knn"
    from medchat.core.guard.index import GENERAL_REQUESTS_FILE, shipped_general_requests

    n_req = len(shipped_general_requests())
    assert n_req > 50  # the shipped general chat requests join the general reference
    assert idx.meta["general_reference"]["sources"] == {"g1": 6, "g2": 6, GENERAL_REQUESTS_FILE: n_req}
    assert idx.meta["calibration"]["sources_ood"] == {"g1": 6, "g2": 6}  # the other halves
    back = ReferenceIndex.load(tmp_path / "ix")
    assert back.general is not None and len(back.general) == 12 + n_req


def test_build_without_calibration_falls_back_and_says_so(tmp_path, hash_embedder):
    idx = build_reference_index(MEDICAL, tmp_path / "ix", calibration_dir=None, general=None,
                                embedder=hash_embedder, cache_dir=None)
    cal = json.loads((tmp_path / "ix" / INDEX_JSON).read_text())["calibration"]
    assert cal["method"].startswith("not calibrated for this index: thresholds reused from")
    assert "warning" in cal
    assert idx.thresholds.out_of_domain <= idx.thresholds.in_domain


def test_build_from_calibration_dir(tmp_path, hash_embedder):
    data = tmp_path / "data"
    (data / "mcq").mkdir(parents=True)
    (data / "ood").mkdir()
    (data / "mcq" / "m.jsonl").write_text("".join(json.dumps({"question": q}) + "\n" for q in MEDICAL_CAL))
    (data / "ood" / "g.jsonl").write_text("".join(json.dumps({"question": q}) + "\n" for q in GENERAL * 2))
    idx = build_reference_index(MEDICAL, None, calibration_dir=data, general=None, embedder=hash_embedder,
                                cache_dir=None)
    assert str(data) in idx.meta["calibration"]["data"]


def test_build_needs_questions(hash_embedder):
    with pytest.raises(ValueError, match="no questions"):
        build_reference_index(["  "], None, embedder=hash_embedder, calibration_dir=None, cache_dir=None)


def test_embedding_cache_reused(tmp_path, hash_embedder):
    from medchat.core.guard.index import embed_cached

    a = embed_cached(hash_embedder, GENERAL, tmp_path)
    calls = hash_embedder.calls
    b = embed_cached(hash_embedder, GENERAL, tmp_path)
    assert hash_embedder.calls == calls
    np.testing.assert_allclose(a, b, atol=2e-3)
