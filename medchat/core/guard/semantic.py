"""Semantic red flags: a classifier on the sentence embeddings, a second layer after the text rules.

"Is this message someone describing an emergency now?" A logistic regression (score.fit_logistic, classes
balanced) on the mean of every embedder layer (`Embedder.encode_layers`, 6 x 384: it separates emergencies
from calm talk about them better than the sentence embedding alone, bench/red_flag_features.py), fitted on
the example messages of the `semantic:` section of assets/guard/red_flags.yaml. The fit ships as
assets/guard/red_flag_classifier.npz, named by a fingerprint of the examples and the embedder; when they
differ (edited examples, another rules file) the guard fits at warm-up (seconds) and keeps that fit in the
cache. Its probability p decides two things:
p >= flag_at raises a flag the rules did not (named after the rule of the nearest emergency example), and
p < keep_rules_at withdraws the rules' own flags: a message the classifier reads as calm talk about an
emergency ("my son had a febrile seizure when he was 2, he's 5 now") though its words match a rule. Flags
for suicidal thoughts are never withdrawn. Needs the embedder, so it runs with the out-of-domain score
(never in `check_rules`).
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medchat.core.fileio import staged_file
from medchat.core.guard.embedder import embed_cached
from medchat.core.guard.rules import RuleSet, RulesError
from medchat.core.guard.score import fit_logistic
from medchat.core.paths import ASSETS_DIR

NEVER_WITHDRAWN = frozenset({"self_harm"})  # categories whose rule flags the classifier never takes back
FIT_FILE = "red_flag_classifier.npz"
SHIPPED_FIT = ASSETS_DIR / "guard" / FIT_FILE
FIT_FORMAT = 1  # bump when what a fit holds or how it is computed changes


@dataclass(frozen=True)
class SemanticConfig:
    flag_at: float
    keep_rules_at: float
    l2: float
    positives: tuple  # (text, rule_id): emergencies, named
    negatives: tuple  # texts: non-urgent
    labelled: tuple = ()  # (text, emergency): both sides, unnamed

    @classmethod
    def from_rules(cls, rules: RuleSet) -> "SemanticConfig | None":
        cfg = rules.semantic
        if not cfg:
            return None
        base = Path(rules.source).parent
        ids = {r.id for r in rules.rules}
        pos = [(t, r.id) for r in rules.rules for t in r.examples_fire]
        neg = [t for r in rules.rules for t in r.examples_quiet]
        for rel in cfg.get("positives") or []:
            for lineno, row in _rows(base / rel):
                if row.get("expect") not in ids:
                    raise RulesError(f"{base / rel}:{lineno}: 'expect' must be a rule id, got {row.get('expect')!r}")
                pos.append((row["text"], row["expect"]))
        for rel in cfg.get("negatives") or []:
            neg.extend(row["text"] for _, row in _rows(base / rel, key="question") if row.get("role") != "heldout")
        labelled = []
        for rel in cfg.get("labelled") or []:
            for lineno, row in _rows(base / rel):
                if not isinstance(row.get("emergency"), bool):
                    raise RulesError(f"{base / rel}:{lineno}: 'emergency' must be true or false")
                labelled.append((row["text"], row["emergency"]))
        try:
            return cls(float(cfg["flag_at"]), float(cfg["keep_rules_at"]), float(cfg.get("l2", 1e-4)),
                       tuple(pos), tuple(neg), tuple(labelled))
        except (KeyError, TypeError, ValueError):
            raise RulesError(f"{rules.source}: semantic.flag_at and semantic.keep_rules_at must be numbers "
                             "(probabilities between 0 and 1)") from None


def _rows(path: Path, key: str = "text"):
    """(line number, row) for each JSON line; a row's text is under "text" (or `key`), copied to "text"."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise RulesError(f"{path}: cannot read semantic examples ({exc.strerror})") from None
    for lineno, line in enumerate(lines, 1):
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise RulesError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            if isinstance(row, dict) and "text" not in row and isinstance(row.get(key), str):
                row["text"] = row[key]
            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                raise RulesError(f"{path}:{lineno}: expected an object with a 'text' string")
            yield lineno, row


def fingerprint(config: SemanticConfig, embedder_name: str) -> str:
    """Names what a fit was made from: the examples with their labels, l2, the embedder, the format."""
    h = hashlib.sha256(f"{FIT_FORMAT}|{embedder_name}|{config.l2!r}\n".encode())
    for text, rule in config.positives:
        h.update(f"+{rule}\t{text}\n".encode())
    for text in config.negatives:
        h.update(f"-\t{text}\n".encode())
    for text, emergency in config.labelled:
        h.update(f"{'+' if emergency else '-'}\t{text}\n".encode())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class Fit:
    """The fitted layer: the classifier on every layer's means, and the named emergencies' sentence
    embeddings (the nearest one names a raised flag)."""

    fingerprint: str
    w: np.ndarray
    b: float
    named: np.ndarray
    labels: tuple[str, ...]

    @classmethod
    def make(cls, config: SemanticConfig, embedder, cache_dir: Path | None = None) -> "Fit":
        texts = [t for t, _ in config.positives] + list(config.negatives) + [t for t, _ in config.labelled]
        vecs = embed_cached(embedder, texts, cache_dir, layers=True)
        emergency = np.array([True] * len(config.positives) + [False] * len(config.negatives)
                             + [e for _, e in config.labelled], dtype=bool)
        w, b = fit_classifier(vecs, emergency, config.l2)
        named = vecs[:len(config.positives), -embedder.dim:]
        return cls(fingerprint(config, embedder.name), w, b, named, tuple(r for _, r in config.positives))

    def save(self, path: Path) -> None:
        with staged_file(path, suffix=".tmp.npz") as tmp:
            np.savez_compressed(tmp, fingerprint=np.array(self.fingerprint), w=self.w, b=np.array(self.b),
                                named=self.named.astype(np.float16), labels=np.array(self.labels))

    @classmethod
    def load(cls, path: Path, wanted: str) -> "Fit | None":
        """The fit in `path` if it was made from what `wanted` names; None if not, or if it is missing or damaged."""
        try:
            with np.load(path, allow_pickle=False) as z:
                if str(z["fingerprint"]) != wanted:
                    return None
                return cls(wanted, z["w"].astype(np.float32), float(z["b"]), z["named"].astype(np.float32),
                           tuple(z["labels"].tolist()))
        except (OSError, ValueError, KeyError):
            return None


def fit_classifier(vectors: np.ndarray, emergency: np.ndarray, l2: float) -> tuple[np.ndarray, float]:
    """(w, b) of the emergency classifier: both classes weigh the same, however many examples each has."""
    emergency = np.asarray(emergency, dtype=bool)
    n, n_pos = len(emergency), int(emergency.sum())
    weights = np.where(emergency, n / (2 * n_pos), n / (2 * (n - n_pos)))
    return fit_logistic(vectors, emergency, weights, l2)


@dataclass(frozen=True)
class Reading:
    """What the layer makes of one message."""

    probability: float  # that it describes an emergency now
    nearest_rule: str  # the rule of the closest named emergency example


def apply(reading: Reading, flags: list, config: SemanticConfig) -> tuple[list, bool]:
    """The rule flags kept (objects with a `.category`) and whether to raise one more, for one reading."""
    if reading.probability < config.keep_rules_at:  # calm talk about an emergency, not one
        return [f for f in flags if f.category in NEVER_WITHDRAWN], False
    return flags, reading.probability >= config.flag_at and not flags


class SemanticRedFlags:
    def __init__(self, config: SemanticConfig, embedder, cache_dir: Path | None = None, shipped: Path | None = SHIPPED_FIT):
        self.config = config
        self._embedder = embedder
        self._cache_dir = Path(cache_dir) if cache_dir else None
        self._shipped = shipped
        self._lock = threading.Lock()
        self._fit: Fit | None = None

    @property
    def fit(self) -> Fit:
        """The shipped or cached fit for these examples, else one made now (and cached)."""
        if self._fit is None:
            with self._lock:
                if self._fit is None:
                    wanted = fingerprint(self.config, self._embedder.name)
                    cached = self._cache_dir / FIT_FILE if self._cache_dir else None
                    for path in (self._shipped, cached):
                        self._fit = Fit.load(path, wanted) if path else None
                        if self._fit is not None:
                            break
                    else:
                        self._fit = Fit.make(self.config, self._embedder, self._cache_dir)
                        if cached:
                            self._fit.save(cached)
        return self._fit

    def read(self, vectors: np.ndarray) -> list[Reading]:
        """One Reading per row of `vectors` (from the embedder's `encode_layers`)."""
        fit = self.fit
        vectors = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        p = 1.0 / (1.0 + np.exp(-np.clip(vectors @ fit.w + fit.b, -30, 30)))
        nearest = (vectors[:, -fit.named.shape[1]:] @ fit.named.T).argmax(axis=1)
        return [Reading(float(pi), fit.labels[j]) for pi, j in zip(p, nearest)]
