"""The guard index on disk: the out-of-domain score, its thresholds and a reference set of medical questions.

A directory holding
- ``index.json``: format, embedder, k, knn_weight, thresholds, and the build record (data, groups,
  calibration numbers);
- ``score.npy``: float32 (dim + 1,), the weights of the logistic part and its bias last;
- ``reference.npy`` / ``general.npy``: float16 (n, dim), unit embeddings of the medical and the general kNN
  references (see medchat.core.guard.score). The semantic red-flag layer also treats the medical reference
  as "ordinary medical question, not an emergency".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

import numpy as np

from medchat.core.errors import MedchatError
from medchat.core.fileio import staged_file, write_text_atomic
from medchat.core.guard.calibration import Thresholds
from medchat.core.guard.embedder import EMBEDDER_NAME
from medchat.core.guard.score import GuardScore

INDEX_FORMAT = 2
INDEX_JSON = "index.json"
SCORE_FILE = "score.npy"
REFERENCE_FILE = "reference.npy"
GENERAL_FILE = "general.npy"
DEFAULT_INDEX_SUBDIR = Path("guard") / "default_index"
REBUILD_HINT = "python -m medchat.app.guard_build --data-dir ../shared/data --out {dir}"


class GuardIndexError(MedchatError, ValueError):
    """A guard index is missing or unreadable (message names the file and how to rebuild it)."""


def default_index_dir() -> Path | None:
    """The shipped index: assets/default-run/guard_index if present, else assets/guard/default_index."""
    from medchat.core.paths import ASSETS_DIR

    for cand in (ASSETS_DIR / "default-run" / "guard_index", ASSETS_DIR / DEFAULT_INDEX_SUBDIR):
        if (cand / INDEX_JSON).is_file():
            return cand
    return None


def _broken(path: Path, index_dir: Path, why: str) -> GuardIndexError:
    return GuardIndexError(f"{path}: {why}; rebuild the index with {REBUILD_HINT.format(dir=index_dir)}")


class GuardIndex:
    """The score and its thresholds. A check is a dot product and two small kNN look-ups per message."""

    def __init__(self, score: GuardScore, thresholds: Thresholds, meta: Mapping | None = None,
                 path: Path | None = None):
        self.score = score
        self.thresholds = thresholds
        self.meta = dict(meta or {})
        self.path = path

    @property
    def dim(self) -> int:
        return int(self.score.weights.shape[0])

    @property
    def reference(self) -> np.ndarray:
        """Embeddings of ordinary medical questions (the medical kNN reference)."""
        return self.score.medical

    def scores(self, vectors: np.ndarray) -> np.ndarray:
        return self.score.scores(vectors)

    def level(self, score: float) -> str:
        return self.thresholds.level(score)

    def save(self, out_dir: Path) -> Path:
        """Write the files (each atomically; index.json last, so it never describes arrays not yet there)."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        s = self.score
        _save_npy(out_dir / SCORE_FILE, np.append(s.weights, s.bias).astype(np.float32))
        _save_npy(out_dir / REFERENCE_FILE, s.medical.astype(np.float16))
        _save_npy(out_dir / GENERAL_FILE, s.general.astype(np.float16))
        meta = {**self.meta, "format": INDEX_FORMAT, "dim": self.dim, "k": s.k, "knn_weight": s.knn_weight,
                "n_reference": len(s.medical), "n_general": len(s.general),
                "thresholds": {"in_domain": self.thresholds.in_domain, "out_of_domain": self.thresholds.out_of_domain}}
        meta.setdefault("embedder", EMBEDDER_NAME)
        write_text_atomic(out_dir / INDEX_JSON, json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
        self.meta, self.path = meta, out_dir
        return out_dir

    @classmethod
    def load(cls, index_dir: Path) -> "GuardIndex":
        """Read and check every file; raises GuardIndexError naming the bad file and the rebuild command."""
        index_dir = Path(index_dir)
        meta = read_index_json(index_dir)
        dim = meta.get("dim")
        arrays = {}
        for name, shape in ((SCORE_FILE, ((dim or 0) + 1,)), (REFERENCE_FILE, (meta.get("n_reference"), dim)),
                            (GENERAL_FILE, (meta.get("n_general"), dim))):
            arr = _load_npy(index_dir / name, index_dir)
            if arr.shape != shape or not np.isfinite(arr).all():
                raise _broken(index_dir / name, index_dir, f"shape {arr.shape} or values do not match index.json "
                              f"(expected {shape}, finite numbers)")
            arrays[name] = arr
        try:
            k, knn_weight = int(meta["k"]), float(meta["knn_weight"])
        except (KeyError, TypeError, ValueError):
            raise _broken(index_dir / INDEX_JSON, index_dir, "k or knn_weight missing or invalid") from None
        w = arrays[SCORE_FILE]
        score = GuardScore(w[:-1], float(w[-1]), arrays[REFERENCE_FILE], arrays[GENERAL_FILE], k, knn_weight)
        return cls(score, thresholds_from_meta(meta, index_dir), meta, index_dir)


def _save_npy(path: Path, arr: np.ndarray) -> None:
    with staged_file(path, suffix=".tmp.npy") as tmp:
        np.save(tmp, arr)


def _load_npy(path: Path, index_dir: Path) -> np.ndarray:
    if not path.is_file():
        raise _broken(path, index_dir, "missing")
    try:
        return np.load(path, allow_pickle=False).astype(np.float32)
    except (OSError, ValueError, EOFError) as exc:
        raise _broken(path, index_dir, f"unreadable ({exc})") from None


def read_index_json(index_dir: Path) -> dict:
    index_dir = Path(index_dir)
    path = index_dir / INDEX_JSON
    if not path.is_file():
        raise _broken(path, index_dir, "missing, so this is not a guard index")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _broken(path, index_dir, f"not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != INDEX_FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise _broken(path, index_dir, f"index format {found!r}, this medchat reads format {INDEX_FORMAT}")
    return meta


def thresholds_from_meta(meta: Mapping, index_dir: Path) -> Thresholds:
    try:
        t = meta["thresholds"]
        return Thresholds(in_domain=float(t["in_domain"]), out_of_domain=float(t["out_of_domain"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise _broken(Path(index_dir) / INDEX_JSON, index_dir, f"thresholds missing or invalid ({exc})") from None
