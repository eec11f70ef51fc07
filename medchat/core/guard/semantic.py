"""Semantic red flags: a classifier on the sentence embeddings, a second layer after the text rules.

"Is this message someone describing an emergency now?" A logistic regression (score.fit_logistic, classes
balanced) fitted on the example messages of the `semantic:` section of assets/guard/red_flags.yaml, when the
guard warms up (a fraction of a second; no model file to ship). Its probability p decides two things:
p >= flag_at raises a flag the rules did not (named after the rule of the nearest emergency example), and
p < keep_rules_at withdraws the rules' own flags: a message the classifier reads as calm talk about an
emergency ("my son had a febrile seizure when he was 2, he's 5 now") though its words match a rule. Flags
for suicidal thoughts are never withdrawn. Needs the embedder, so it runs with the out-of-domain score
(never in `check_rules`).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medchat.core.guard.embedder import embed_cached
from medchat.core.guard.rules import RuleSet, RulesError
from medchat.core.guard.score import fit_logistic

NEVER_WITHDRAWN = frozenset({"self_harm"})  # categories whose rule flags the classifier never takes back


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
    def __init__(self, config: SemanticConfig, embedder, cache_dir=None):
        self.config = config
        self._embedder = embedder
        self._cache_dir = cache_dir
        self._lock = threading.Lock()
        self._named = None  # unit vectors of the named positives
        self._labels: list[str] = []
        self._w: np.ndarray | None = None
        self._b = 0.0

    def _ensure(self):
        if self._named is None:
            with self._lock:
                if self._named is None:
                    cfg = self.config
                    texts = ([t for t, _ in cfg.positives] + list(cfg.negatives) + [t for t, _ in cfg.labelled])
                    vecs = embed_cached(self._embedder, texts, self._cache_dir)
                    emergency = np.array([True] * len(cfg.positives) + [False] * len(cfg.negatives)
                                         + [e for _, e in cfg.labelled], dtype=bool)
                    self._w, self._b = fit_classifier(vecs, emergency, cfg.l2)
                    self._labels = [r for _, r in cfg.positives]
                    self._named = vecs[:len(cfg.positives)]

    def read(self, vectors: np.ndarray) -> list[Reading]:
        self._ensure()
        vectors = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        p = 1.0 / (1.0 + np.exp(-np.clip(vectors @ self._w + self._b, -30, 30)))
        nearest = (vectors @ self._named.T).argmax(axis=1)
        return [Reading(float(pi), self._labels[j]) for pi, j in zip(p, nearest)]
