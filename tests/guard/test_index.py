"""The guard index on disk: save/load round trip, missing or corrupt files, building (fake embedder)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from guard_fakes import GENERAL, MEDICAL, MEDICAL_CAL, synthetic_groups

from medchat.core.guard import Guard
from medchat.core.guard.build import build_index, build_reference_index, rebuild_run_index
from medchat.core.guard.calibration import Thresholds
from medchat.core.guard.embedder import embed_cached
from medchat.core.guard.index import GENERAL_FILE, INDEX_JSON, REFERENCE_FILE, SCORE_FILE, GuardIndex, GuardIndexError
from medchat.core.guard.score import fit_score


@pytest.fixture
def saved(tmp_path):
    vectors, medical = synthetic_groups()
    index = GuardIndex(fit_score(vectors, medical, per_group=10), Thresholds(1.0, -1.0), {"source": "synthetic"})
    index.save(tmp_path / "ix")
    return index, tmp_path / "ix", vectors


def test_save_load_round_trip(saved):
    index, path, vectors = saved
    loaded = GuardIndex.load(path)
    assert loaded.thresholds == index.thresholds and loaded.meta["source"] == "synthetic"
    assert (loaded.score.k, loaded.score.knn_weight, loaded.reference.shape) == (index.score.k, index.score.knn_weight,
                                                                                 (30, 16))
    # reference rows are stored as float16: scores agree to that precision
    np.testing.assert_allclose(loaded.scores(vectors["med_c"]), index.scores(vectors["med_c"]), atol=2e-2)
    assert json.loads((path / INDEX_JSON).read_text())["n_general"] == 40


@pytest.mark.parametrize("name", [INDEX_JSON, SCORE_FILE, REFERENCE_FILE, GENERAL_FILE])
def test_a_missing_file_is_named_with_the_rebuild_command(saved, name):
    _, path, _ = saved
    (path / name).unlink()
    with pytest.raises(GuardIndexError) as err:
        GuardIndex.load(path)
    assert str(path / name) in str(err.value) and "python -m medchat.app.guard_build" in str(err.value)


@pytest.mark.parametrize(("name", "content", "says"), [
    (INDEX_JSON, b"{not json", "not valid JSON"),
    (INDEX_JSON, json.dumps({"format": 1, "k": 10}).encode(), "index format 1"),
    (SCORE_FILE, b"\x93NUMPY garbage", "unreadable"),
    (REFERENCE_FILE, None, "shape"),
])
def test_a_corrupt_file_is_named(saved, name, content, says):
    _, path, _ = saved
    if content is None:
        np.save(path / name, np.zeros((3, 16), dtype=np.float16))
    else:
        (path / name).write_bytes(content)
    with pytest.raises(GuardIndexError, match=says) as err:
        GuardIndex.load(path)
    assert str(path / name) in str(err.value)


def test_non_finite_values_are_refused(saved):
    _, path, _ = saved
    w = np.load(path / SCORE_FILE)
    w[0] = np.nan
    np.save(path / SCORE_FILE, w)
    with pytest.raises(GuardIndexError, match="finite"):
        GuardIndex.load(path)


def test_guard_load_reads_the_whole_index_up_front(saved, hash_embedder):
    _, path, _ = saved
    (path / GENERAL_FILE).write_bytes(b"")
    with pytest.raises(GuardIndexError, match="general.npy"):
        Guard.load(path, embedder=hash_embedder)


def test_the_session_keeps_the_rules_when_the_index_is_corrupt(saved):
    from medchat.core.session import load_guard

    _, path, _ = saved
    (path / SCORE_FILE).write_bytes(b"broken")
    guard = load_guard(index_dir=path)
    assert str(path / SCORE_FILE) in guard.ood_error and "guard_build" in guard.ood_error
    result = guard.check("I have crushing chest pain")
    assert result.red_flags[0].rule_id == "chest_pain" and result.ood_level is None


def test_build_index_with_a_fake_embedder_scores_and_records(hash_embedder, tmp_path):
    medical = {"reference": MEDICAL, "phrased_otherwise": MEDICAL_CAL}
    general = {"trivia": GENERAL[: len(GENERAL) // 2], "more_trivia": GENERAL[len(GENERAL) // 2:]}
    index = build_index(medical, general, hash_embedder, cache_dir=tmp_path / "cache", per_group=5)
    assert set(index.meta["groups_medical"]) == {"reference", "phrased_otherwise"}
    assert index.meta["calibration"]["auroc"] > 0.5 and len(index.meta["texts_sha256"]) == 64
    med, gen = index.scores(hash_embedder.encode(["what are the symptoms of asthma", "who won the world cup"]))
    assert med > gen
    index.save(tmp_path / "ix")
    guard = Guard.load(tmp_path / "ix", embedder=hash_embedder, semantic=False)
    assert guard.check("how is migraine treated").ood_score == pytest.approx(
        float(index.scores(hash_embedder.encode(["how is migraine treated"]))[0]), abs=2e-2)


def test_a_run_index_adds_the_run_questions_to_the_shipped_reference(saved, hash_embedder, tmp_path):
    base, path, _ = saved
    with pytest.raises(ValueError, match="no questions"):
        build_reference_index(["  "], tmp_path / "run", embedder=hash_embedder, base_dir=path)
    hash_embedder.dim = 16  # the synthetic index is 16-dimensional
    run = build_reference_index(MEDICAL, tmp_path / "run", embedder=hash_embedder, base_dir=path)
    loaded = GuardIndex.load(tmp_path / "run")
    assert len(loaded.reference) == len(base.reference) + len(MEDICAL)
    assert loaded.thresholds == base.thresholds and run.meta["based_on"] == str(path)


def test_rebuilding_a_run_index_keeps_its_run_rows_on_the_new_shipped_index(saved, hash_embedder, tmp_path):
    base, path, _ = saved
    hash_embedder.dim = 16
    build_reference_index(MEDICAL, tmp_path / "run" / "guard_index", embedder=hash_embedder, base_dir=path)
    first = GuardIndex.load(tmp_path / "run" / "guard_index")
    # no splits/ (as in the shipped run): the run rows its index keeps are carried over, byte for byte
    again = rebuild_run_index(tmp_path / "run", base_dir=path)
    np.testing.assert_array_equal(GuardIndex.load(tmp_path / "run" / "guard_index").reference, first.reference)
    assert again.meta["run_reference"]["n"] == len(MEDICAL) and "kept from" in again.meta["run_reference"]["source"]
    # with splits/train.jsonl the run's questions are embedded afresh
    (tmp_path / "run" / "splits").mkdir()
    (tmp_path / "run" / "splits" / "train.jsonl").write_text(
        "".join(json.dumps({"question": q, "answer": "a"}) + "\n" for q in MEDICAL[:3]), encoding="utf-8")
    fresh = rebuild_run_index(tmp_path / "run", embedder=hash_embedder, base_dir=path)
    assert len(fresh.reference) == len(base.reference) + 3
    (tmp_path / "bare" / "guard_index").mkdir(parents=True)
    base.save(tmp_path / "bare" / "guard_index")  # an index without run rows cannot be rebuilt
    with pytest.raises(GuardIndexError, match="no run rows"):
        rebuild_run_index(tmp_path / "bare", base_dir=path)


def test_embedding_cache_encodes_only_new_texts(tmp_path, hash_embedder):
    a = embed_cached(hash_embedder, ["one", "two"], tmp_path)
    calls = hash_embedder.calls
    b = embed_cached(hash_embedder, ["two", "one"], tmp_path)
    assert hash_embedder.calls == calls  # all from the cache
    np.testing.assert_allclose(b, a[::-1], atol=1e-3)
    embed_cached(hash_embedder, ["one", "three"], tmp_path)
    assert hash_embedder.calls == calls + 1
    (next(tmp_path.glob("*.npz"))).write_bytes(b"garbage")  # a damaged cache is rebuilt, not trusted
    np.testing.assert_allclose(embed_cached(hash_embedder, ["one"], tmp_path), a[:1], atol=1e-3)


def test_layer_vectors_have_a_cache_of_their_own(tmp_path, hash_embedder):
    sentence = embed_cached(hash_embedder, ["one", "two"], tmp_path)
    layers = embed_cached(hash_embedder, ["one", "two"], tmp_path, layers=True)
    assert layers.shape == (2, 2 * hash_embedder.dim)
    np.testing.assert_allclose(layers[:, -hash_embedder.dim:], sentence, atol=1e-3)
    calls = hash_embedder.calls
    np.testing.assert_allclose(embed_cached(hash_embedder, ["two"], tmp_path, layers=True), layers[1:], atol=1e-3)
    assert hash_embedder.calls == calls
    assert sorted(p.name for p in tmp_path.glob("*.npz")) == [
        "test-hash-embedder-layers.npz", "test-hash-embedder.npz"]
