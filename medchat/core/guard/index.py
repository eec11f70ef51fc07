"""The out-of-domain reference index: embeddings of the questions a model was tuned on, plus thresholds.

Score = mean cosine similarity of a question to its k (10) nearest reference questions. Three levels:
``in_domain`` (score >= thresholds.in_domain), ``out_of_domain`` (score < thresholds.out_of_domain) and
``uncertain`` in between. Thresholds are calibrated on in-domain questions phrased unlike the reference
set (``mcq/`` in the shared data) against general questions (``ood/``); see :func:`calibrate`.

On disk (a directory): ``embeddings.npy`` (float16, n x 384, unit rows), ``index.json`` (format, embedder,
k, thresholds, how they were chosen and the calibration numbers), ``questions.jsonl`` (the reference
questions, for explaining a score).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from medchat.core.errors import MedchatError
from medchat.core.fileio import write_text_atomic
from medchat.core.guard.embedder import EMBEDDER_NAME

INDEX_FORMAT = 1
INDEX_JSON = "index.json"
EMBEDDINGS_FILE = "embeddings.npy"
QUESTIONS_FILE = "questions.jsonl"
GENERAL_FILE = "general_embeddings.npy"
DEFAULT_K = 10
DEFAULT_GENERAL_WEIGHT = 1.0
MAX_GENERAL_PER_SOURCE = 1250
LEVELS = ("in_domain", "uncertain", "out_of_domain")

# Used only when no calibration data and no shipped default index with the same score are available.
# Rounded from the calibration of a 3,000-question Wikidoc/MedQuAD index (assets/guard/default_index and
# bench/guard_eval.py): contrastive in_domain -0.029 / out_of_domain -0.059, plain kNN 0.297 / 0.238.
BUILTIN_THRESHOLDS = {
    "knn": {"in_domain": 0.30, "out_of_domain": 0.24},
    "contrastive_knn": {"in_domain": -0.03, "out_of_domain": -0.06},
}


class GuardIndexError(MedchatError, ValueError):
    """A reference index is missing or unreadable (message names the directory and what to do)."""




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


# ---------------------------------------------------------------- scoring and metrics


def knn_scores(queries: np.ndarray, refs: np.ndarray, k: int = DEFAULT_K, chunk: int = 1024) -> np.ndarray:
    """Mean cosine similarity of each (unit) query row to its k nearest (unit) reference rows."""
    queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
    refs = np.asarray(refs, dtype=np.float32)
    k = max(1, min(k, len(refs)))
    out = np.empty(len(queries), dtype=np.float32)
    for start in range(0, len(queries), chunk):
        sims = queries[start : start + chunk] @ refs.T
        top = np.partition(sims, len(refs) - k, axis=1)[:, len(refs) - k :]
        out[start : start + chunk] = top.mean(axis=1)
    return out


def auroc(pos: Sequence[float], neg: Sequence[float]) -> float:
    """Probability that a random positive scores above a random negative (ties count half)."""
    pos = np.asarray(pos, dtype=np.float64)
    neg = np.asarray(neg, dtype=np.float64)
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    allv = np.concatenate([pos, neg])
    order = allv.argsort(kind="mergesort")
    ranks = np.empty(len(allv), dtype=np.float64)
    sorted_v = allv[order]
    # average ranks for ties
    i = 0
    n = len(allv)
    while i < n:
        j = i
        while j + 1 < n and sorted_v[j + 1] == sorted_v[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    r_pos = ranks[: len(pos)].sum()
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


def calibrate(
    in_scores: Sequence[float],
    ood_scores: Sequence[float],
    in_domain_recall: float = 0.95,
    ood_recall: float = 0.95,
) -> tuple[Thresholds, dict]:
    """Choose the two thresholds from calibration scores.

    a = the score that keeps `in_domain_recall` of in-domain questions at or above it (so at most
        1 - in_domain_recall of medical questions are called out of domain);
    b = the score below which `ood_recall` of general questions fall (so at most 1 - ood_recall of
        general questions are called in domain).
    out_of_domain = min(a, b), in_domain = max(a, b): where the two sets overlap, the band between them
    is "uncertain"; where they separate, the gap between them is.
    """
    ins = np.asarray(in_scores, dtype=np.float64)
    oods = np.asarray(ood_scores, dtype=np.float64)
    if len(ins) < 10 or len(oods) < 10:
        raise ValueError("calibration needs at least 10 in-domain and 10 general questions")
    a = float(np.quantile(ins, 1.0 - in_domain_recall))
    b = float(np.quantile(oods, ood_recall))
    thr = Thresholds(in_domain=round(max(a, b), 4), out_of_domain=round(min(a, b), 4))
    numbers = {
        "in_domain_recall_target": in_domain_recall,
        "ood_recall_target": ood_recall,
        "in_domain_quantile": round(a, 4),
        "ood_quantile": round(b, 4),
        "n_in_domain": int(len(ins)),
        "n_ood": int(len(oods)),
        "auroc": round(auroc(ins, oods), 4),
        "fpr_at_95_recall": round(fpr_at_recall(ins, oods, 0.95), 4),
        "levels_in_domain_questions": level_counts(ins, thr),
        "levels_ood_questions": level_counts(oods, thr),
        "score_mean_in_domain": round(float(ins.mean()), 4),
        "score_mean_ood": round(float(oods.mean()), 4),
    }
    return thr, numbers


# ---------------------------------------------------------------- the index


class ReferenceIndex:
    """Unit-norm reference embeddings + thresholds. Scoring is a matrix product and a partial sort.

    score(q) = mean cosine of q to its k nearest reference questions
               - general_weight * mean cosine of q to its k nearest general questions (when the index
                 holds general-question embeddings; plain kNN otherwise).
    """

    def __init__(
        self,
        embeddings: np.ndarray,
        thresholds: Thresholds,
        meta: Mapping | None = None,
        questions: list[str] | None = None,
        k: int = DEFAULT_K,
        path: Path | None = None,
        general: np.ndarray | None = None,
        general_weight: float = DEFAULT_GENERAL_WEIGHT,
    ):
        emb = np.asarray(embeddings, dtype=np.float32)
        if emb.ndim != 2 or len(emb) == 0:
            raise GuardIndexError("a reference index needs a non-empty (n, dim) embedding matrix")
        self.embeddings = emb
        self.general = None if general is None or len(general) == 0 else np.asarray(general, dtype=np.float32)
        if self.general is not None and self.general.shape[1] != emb.shape[1]:
            raise GuardIndexError("general-question embeddings and reference embeddings differ in dimension")
        self.general_weight = float(general_weight) if self.general is not None else 0.0
        self.thresholds = thresholds
        self.meta = dict(meta or {})
        self.questions = questions
        self.k = int(k)
        self.path = path

    def __len__(self) -> int:
        return len(self.embeddings)

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    @property
    def score_kind(self) -> str:
        return "contrastive_knn" if self.general is not None else "knn"

    def scores(self, vectors: np.ndarray) -> np.ndarray:
        s = knn_scores(vectors, self.embeddings, self.k)
        if self.general is not None:
            s = s - self.general_weight * knn_scores(vectors, self.general, self.k)
        return s

    def score(self, vector: np.ndarray) -> float:
        return float(self.scores(np.atleast_2d(vector))[0])

    def level(self, score: float) -> str:
        return self.thresholds.level(score)

    # ---- persistence
    def save(self, out_dir: Path) -> Path:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        _save_npy(out_dir / EMBEDDINGS_FILE, self.embeddings)
        if self.general is not None:
            _save_npy(out_dir / GENERAL_FILE, self.general)
        elif (out_dir / GENERAL_FILE).exists():
            (out_dir / GENERAL_FILE).unlink()
        if self.questions is not None:
            write_text_atomic(out_dir / QUESTIONS_FILE,
                              "".join(json.dumps({"question": q}, ensure_ascii=False) + "\n" for q in self.questions))
        meta = dict(self.meta)
        meta.update(
            {
                "format": INDEX_FORMAT,
                "k": self.k,
                "n": len(self),
                "dim": self.dim,
                "n_general": 0 if self.general is None else len(self.general),
                "general_weight": self.general_weight,
                "score_kind": self.score_kind,
                "thresholds": asdict(self.thresholds),
            }
        )
        meta.setdefault("embedder", EMBEDDER_NAME)
        meta["score"] = (
            f"mean cosine similarity to the {self.k} nearest reference questions"
            + (
                f" minus {self.general_weight:g} x mean cosine similarity to the {self.k} nearest general questions"
                if self.general is not None
                else ""
            )
        )
        write_text_atomic(out_dir / INDEX_JSON, json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
        self.meta = meta
        self.path = out_dir
        return out_dir

    @classmethod
    def load(cls, index_dir: Path) -> "ReferenceIndex":
        index_dir = Path(index_dir)
        meta = read_index_json(index_dir)
        emb = _load_npy(index_dir / EMBEDDINGS_FILE)
        if emb.ndim != 2 or emb.shape[0] != meta.get("n", emb.shape[0]):
            raise GuardIndexError(
                f"{index_dir / EMBEDDINGS_FILE}: shape {emb.shape} does not match index.json (n={meta.get('n')})"
            )
        general = None
        if meta.get("n_general"):
            general = _load_npy(index_dir / GENERAL_FILE)
        questions = None
        qpath = index_dir / QUESTIONS_FILE
        if qpath.is_file():
            with qpath.open(encoding="utf-8") as fh:
                questions = [json.loads(line)["question"] for line in fh if line.strip()]
        return cls(
            emb,
            thresholds_from_meta(meta, index_dir / INDEX_JSON),
            meta,
            questions,
            int(meta.get("k", DEFAULT_K)),
            index_dir,
            general=general,
            general_weight=float(meta.get("general_weight", DEFAULT_GENERAL_WEIGHT)),
        )


def _save_npy(path: Path, arr: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp.npy")
    np.save(tmp, np.asarray(arr).astype(np.float16))
    os.replace(tmp, path)


def _load_npy(path: Path) -> np.ndarray:
    if not path.is_file():
        raise GuardIndexError(f"{path}: missing; rebuild the index with python -m medchat.app.guard_build")
    try:
        return np.load(path, allow_pickle=False).astype(np.float32)
    except (OSError, ValueError) as exc:
        raise GuardIndexError(f"{path}: unreadable ({exc}); rebuild the index") from exc


def read_index_json(index_dir: Path) -> dict:
    path = Path(index_dir) / INDEX_JSON
    if not path.is_file():
        raise GuardIndexError(
            f"{index_dir}: not a guard reference index (no {INDEX_JSON}); build one with "
            "python -m medchat.app.guard_build --questions FILE.jsonl --out DIR"
        )
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise GuardIndexError(f"{path}: invalid JSON at line {exc.lineno} ({exc.msg}); rebuild the index") from None
    if meta.get("format") != INDEX_FORMAT:
        raise GuardIndexError(f"{path}: index format {meta.get('format')!r}, this medchat reads {INDEX_FORMAT}; rebuild it")
    return meta


def thresholds_from_meta(meta: Mapping, where: Path | str = "index.json") -> Thresholds:
    try:
        t = meta["thresholds"]
        return Thresholds(in_domain=float(t["in_domain"]), out_of_domain=float(t["out_of_domain"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise GuardIndexError(f"{where}: thresholds missing or invalid ({exc}); rebuild the index") from None


# ---------------------------------------------------------------- building


def _text_sha(texts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def embed_cached(embedder, texts: Sequence[str], cache: Path | None = None) -> np.ndarray:
    """Encode texts, reusing `<cache>/<sha>.npy` when the same list was encoded before."""
    if cache is None:
        return embedder.encode(list(texts))
    key = hashlib.sha256((getattr(embedder, "name", "embedder") + _text_sha(texts)).encode()).hexdigest()[:24]
    path = Path(cache) / f"emb-{key}.npy"
    if path.is_file():
        try:
            arr = np.load(path, allow_pickle=False)
            if arr.shape[0] == len(texts):
                return arr.astype(np.float32)
        except (OSError, ValueError):
            pass
    arr = embedder.encode(list(texts))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, arr.astype(np.float16))
    os.replace(tmp, path)
    return arr


def default_calibration_dir() -> Path | None:
    """MEDCHAT_GUARD_CALIBRATION_DIR, else ../shared/data beside a repo checkout, if it holds mcq/ and ood/."""
    from medchat.core.paths import ASSETS_DIR

    candidates = []
    if os.environ.get("MEDCHAT_GUARD_CALIBRATION_DIR"):
        candidates.append(Path(os.environ["MEDCHAT_GUARD_CALIBRATION_DIR"]).expanduser())
    candidates.append(ASSETS_DIR.parent.parent / "shared" / "data")
    for c in candidates:
        if any(c.glob("mcq/*.jsonl")) and any(c.glob("ood/*.jsonl")):
            return c
    return None


def _flatten(sets) -> tuple[list[str], dict[str, int]]:
    if isinstance(sets, Mapping):
        out, counts = [], {}
        for name, qs in sets.items():
            out.extend(qs)
            counts[str(name)] = len(qs)
        return out, counts
    qs = list(sets)
    return qs, {"given": len(qs)}


def split_general(
    ood_sets: Mapping[str, list[str]], seed: int = 42, max_per_source: int = MAX_GENERAL_PER_SOURCE
) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Split each general-question source (seeded) into a reference part (at most half of it, at most
    `max_per_source`) and a disjoint calibration part (the rest)."""
    import random

    ref, cal = {}, {}
    for name, qs in ood_sets.items():
        qs = list(qs)
        random.Random(f"{seed}:{name}").shuffle(qs)
        n = min(max_per_source, len(qs) // 2)
        ref[name], cal[name] = qs[:n], qs[n:]
    return ref, cal


def calibrate_index(
    index: ReferenceIndex,
    embedder,
    in_domain,
    general,
    *,
    in_domain_recall: float = 0.95,
    ood_recall: float = 0.95,
    max_calibration: int | None = 4000,
    seed: int = 42,
    cache_dir: Path | None = None,
    data: str | None = None,
) -> ReferenceIndex:
    """Set `index.thresholds` from in-domain and general questions (lists or {source: list} dicts) and
    record the method and numbers in `index.meta["calibration"]`."""
    from medchat.core.guard.questions import sample

    ins, in_counts = _flatten(in_domain)
    oods, ood_counts = _flatten(general)
    ins, oods = sample(ins, max_calibration, seed), sample(oods, max_calibration, seed)
    in_scores = index.scores(embed_cached(embedder, ins, cache_dir))
    ood_scores = index.scores(embed_cached(embedder, oods, cache_dir))
    thresholds, numbers = calibrate(in_scores, ood_scores, in_domain_recall, ood_recall)
    index.thresholds = thresholds
    index.meta["calibration"] = {
        "method": (
            f"out_of_domain = min(a, b), in_domain = max(a, b); a = {1 - in_domain_recall:.2f} quantile of the "
            f"scores of in-domain questions phrased unlike the reference set, b = {ood_recall:.2f} quantile of "
            "the scores of general questions (disjoint from the general reference questions)"
        ),
        "data": data,
        "sources_in_domain": in_counts,
        "sources_ood": ood_counts,
        "max_per_side": max_calibration,
        **numbers,
    }
    return index


def build_reference_index(
    questions: Sequence[str],
    out_dir: Path | None,
    *,
    calibration: tuple | None = None,
    calibration_dir: Path | str | None = "auto",
    general="auto",
    general_weight: float = DEFAULT_GENERAL_WEIGHT,
    embedder=None,
    k: int = DEFAULT_K,
    max_questions: int | None = None,
    max_calibration: int | None = 4000,
    seed: int = 42,
    in_domain_recall: float = 0.95,
    ood_recall: float = 0.95,
    source: str | None = None,
    store_questions: bool = True,
    cache_dir: Path | None | str = "auto",
    log: Callable[[str], None] | None = None,
) -> ReferenceIndex:
    """Embed `questions` (the questions a model was tuned on), add general-question embeddings, calibrate
    the thresholds, save to `out_dir` (when given) and return the index.

    Calibration data, in order of preference:
    - `calibration=(in_domain, general)`: two lists (or {source: list} dicts) of questions;
    - `calibration_dir`: a directory laid out like ../shared/data (mcq/*.jsonl = in domain, ood/*.jsonl =
      general); "auto" tries $MEDCHAT_GUARD_CALIBRATION_DIR, then ../shared/data beside the repo.
    With calibration data, each general source is split (seeded): up to half becomes the general
    reference of the contrastive score, the rest calibrates the thresholds with the in-domain questions.
    Without it, the general reference and the thresholds of the shipped default index are reused
    (recorded as such in index.json), or plain kNN with the built-in thresholds when there is none.
    `general`: "auto" (as above), None (plain kNN, no general reference) or a list of general questions.
    """
    from medchat.core.guard.questions import calibration_sets, dedupe, sample

    say = log or (lambda msg: None)
    qs = sample(dedupe([q for q in questions if q and q.strip()]), max_questions, seed)
    if not qs:
        raise ValueError("build_reference_index: no questions given")
    if embedder is None:
        from medchat.core.guard.embedder import shared_embedder

        embedder = shared_embedder()
    if cache_dir == "auto":
        from medchat.core.paths import cache_dir as _cache

        cache_dir = _cache() / "guard"
    say(f"embedding {len(qs)} reference questions")
    emb = embed_cached(embedder, list(qs), cache_dir)
    meta: dict = {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "embedder": getattr(embedder, "name", EMBEDDER_NAME),
        "source": source,
        "questions_sha256": _text_sha(qs),
        "seed": seed,
    }

    cal_in = cal_ood = None
    cal_desc = None
    if calibration is not None:
        cal_in, cal_ood = calibration
        if not isinstance(cal_in, Mapping):
            cal_in = {"in_domain": list(cal_in)}
        if not isinstance(cal_ood, Mapping):
            cal_ood = {"general": list(cal_ood)}
        cal_desc = "questions passed by the caller"
    else:
        cdir = default_calibration_dir() if calibration_dir == "auto" else calibration_dir
        if cdir is not None:
            cdir = Path(cdir)
            cal_in, cal_ood = calibration_sets(cdir)
            if not cal_in or not cal_ood:
                raise ValueError(f"{cdir}: expected mcq/*.jsonl and ood/*.jsonl calibration files")
            cal_desc = f"{cdir} (mcq/ = in domain, ood/ = general)"

    # General reference for the contrastive score.
    general_emb = None
    if general_weight and general is not None:
        if general != "auto":
            general_list = dedupe(list(general))
            general_emb = embed_cached(embedder, general_list, cache_dir)
            meta["general_reference"] = {"source": "questions passed by the caller", "n": len(general_list)}
            if cal_ood is not None:
                gset = {" ".join(q.lower().split()) for q in general_list}
                cal_ood = {n: [q for q in v if " ".join(q.lower().split()) not in gset] for n, v in cal_ood.items()}
        elif cal_ood is not None:
            ref_parts, cal_ood = split_general(cal_ood, seed)
            requests = shipped_general_requests()
            general_list = [q for part in ref_parts.values() for q in part] + requests
            general_emb = embed_cached(embedder, general_list, cache_dir)
            meta["general_reference"] = {
                "source": f"{cal_desc} and {GENERAL_REQUESTS_FILE} (general chat requests)",
                "sources": {**{n: len(v) for n, v in ref_parts.items()}, GENERAL_REQUESTS_FILE: len(requests)},
                "n": len(general_list),
                "split": f"seeded ({seed}) split per source: at most half (<= {MAX_GENERAL_PER_SOURCE}) here, "
                "the rest calibrates the thresholds",
            }
        else:
            d = _default_index_with_general()
            if d is not None:
                general_emb = _load_npy(d / GENERAL_FILE)
                meta["general_reference"] = {"source": f"reused from {d}", "n": len(general_emb)}

    index = ReferenceIndex(
        emb,
        Thresholds(**BUILTIN_THRESHOLDS["contrastive_knn" if general_emb is not None else "knn"]),
        meta,
        qs if store_questions else None,
        k,
        general=general_emb,
        general_weight=general_weight,
    )
    if cal_in is not None:
        n_in = sum(len(v) for v in cal_in.values())
        n_ood = sum(len(v) for v in cal_ood.values())
        say(f"calibrating on {min(n_in, max_calibration or n_in)} in-domain and "
            f"{min(n_ood, max_calibration or n_ood)} general questions")
        calibrate_index(
            index,
            embedder,
            cal_in,
            cal_ood,
            in_domain_recall=in_domain_recall,
            ood_recall=ood_recall,
            max_calibration=max_calibration,
            seed=seed,
            cache_dir=cache_dir,
            data=cal_desc,
        )
    else:
        thresholds, origin = fallback_thresholds(index.score_kind)
        index.thresholds = thresholds
        index.meta["calibration"] = {
            "method": f"not calibrated for this index: thresholds reused from {origin}",
            "data": None,
            "warning": "no calibration data (mcq/ and ood/ questions) was available; the levels are approximate",
        }
        say(f"no calibration data: thresholds reused from {origin}")

    if out_dir is not None:
        index.save(Path(out_dir))
        say(f"saved the index ({len(qs)} questions, score {index.score_kind}) to {out_dir}")
    return index


GENERAL_REQUESTS_FILE = "assets/guard/general_requests.txt"


def shipped_general_requests() -> list[str]:
    """General chat requests (writing, code, cooking, travel, ...) written for medchat: part of the general
    reference, because the ood/ data sets hold only trivia-style questions."""
    from medchat.core.guard.questions import read_questions
    from medchat.core.paths import ASSETS_DIR

    path = ASSETS_DIR / "guard" / "general_requests.txt"
    return read_questions(path) if path.is_file() else []


def _default_index_with_general() -> Path | None:
    from medchat.core.guard.guard import default_index_dir

    d = default_index_dir()
    if d is None:
        return None
    try:
        meta = read_index_json(d)
    except GuardIndexError:
        return None
    return d if meta.get("n_general") and (d / GENERAL_FILE).is_file() else None


def fallback_thresholds(score_kind: str = "contrastive_knn") -> tuple[Thresholds, str]:
    """Thresholds of the shipped default index (if it uses the same score), else the built-in ones."""
    from medchat.core.guard.guard import default_index_dir

    d = default_index_dir()
    if d is not None:
        try:
            meta = read_index_json(d)
            if meta.get("score_kind", "knn") == score_kind:
                return thresholds_from_meta(meta, d / INDEX_JSON), str(d / INDEX_JSON)
        except GuardIndexError:
            pass
    return (
        Thresholds(**BUILTIN_THRESHOLDS[score_kind]),
        f"the built-in defaults for {score_kind} (medchat.core.guard.index.BUILTIN_THRESHOLDS)",
    )
