"""Semantic red flags: nearest example messages in embedding space, a second layer after the text rules.

Configured in the `semantic:` section of assets/guard/red_flags.yaml. Needs the embedder, so it runs with
the out-of-domain score (never in `check_rules`).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medchat.core.guard.embedder import embed_cached
from medchat.core.guard.rules import RuleSet, RulesError


@dataclass(frozen=True)
class SemanticConfig:
    threshold: float
    margin: float
    positives: tuple  # (text, rule_id)
    negatives: tuple  # texts

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
        try:
            return cls(float(cfg.get("threshold", 0.55)), float(cfg.get("margin", 0.05)), tuple(pos), tuple(neg))
        except (TypeError, ValueError):
            raise RulesError(f"{rules.source}: semantic.threshold and semantic.margin must be numbers") from None


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


class SemanticRedFlags:
    def __init__(self, config: SemanticConfig, embedder, extra_negatives: np.ndarray | None = None, cache_dir=None):
        self.config = config
        self._embedder = embedder
        self._extra = extra_negatives
        self._cache_dir = cache_dir
        self._lock = threading.Lock()
        self._pos = self._neg = None
        self._labels: list[str] = []

    def _ensure(self):
        if self._pos is None:
            with self._lock:
                if self._pos is None:
                    texts = [t for t, _ in self.config.positives]
                    self._labels = [r for _, r in self.config.positives]
                    neg = embed_cached(self._embedder, list(self.config.negatives), self._cache_dir)
                    if self._extra is not None and len(self._extra):
                        neg = np.concatenate([neg, np.asarray(self._extra, dtype=np.float32)])
                    self._neg = neg
                    self._pos = embed_cached(self._embedder, texts, self._cache_dir)

    def match(self, vectors: np.ndarray) -> list[list[tuple[str, float]]]:
        """For each vector: [(rule_id, similarity)] of the rules it raises (best first; at most one per rule)."""
        self._ensure()
        vectors = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        sp = vectors @ self._pos.T
        sn = (vectors @ self._neg.T).max(axis=1)
        out = []
        for i in range(len(vectors)):
            best: dict[str, float] = {}
            for j in np.nonzero(sp[i] >= self.config.threshold)[0]:
                s = float(sp[i, j])
                if s - sn[i] >= self.config.margin and s > best.get(self._labels[j], -1.0):
                    best[self._labels[j]] = s
            out.append(sorted(best.items(), key=lambda kv: -kv[1]))
        return out
