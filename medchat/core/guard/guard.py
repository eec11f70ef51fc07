"""The Guard: red-flag and dosing rules (instant) plus the out-of-domain score (embedder, loaded lazily)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from medchat.core.guard.index import GuardIndex, GuardIndexError, default_index_dir
from medchat.core.guard.notices import EMERGENCY_NOTICE
from medchat.core.guard.rules import RuleSet, default_rules


@dataclass(frozen=True)
class RedFlag:
    rule_id: str
    category: str
    notice: str
    title: str = ""
    source: str = "rule"  # "rule" (text rules, instant) or "semantic" (nearest example messages)

    def as_dict(self) -> dict:
        return {"rule_id": self.rule_id, "category": self.category, "title": self.title, "source": self.source}


@dataclass(frozen=True)
class GuardResult:
    ood_score: float | None
    ood_level: str | None  # "in_domain" | "uncertain" | "out_of_domain" | None (not scored)
    red_flags: list[RedFlag] = field(default_factory=list)
    dosing_note: bool = False

    @property
    def emergency(self) -> bool:
        return bool(self.red_flags)

    def as_dict(self) -> dict:
        return {
            "ood_score": None if self.ood_score is None else round(self.ood_score, 4),
            "ood_level": self.ood_level,
            "red_flags": [f.as_dict() for f in self.red_flags],
            "dosing_note": self.dosing_note,
        }


class Guard:
    """Checks a user message. Red-flag and dosing rules need nothing heavy; the out-of-domain score needs
    the index (small, read by `load`) and the embedder (loaded on first use; `warm_up()` does it early)."""

    def __init__(self, index: GuardIndex | None, rules: RuleSet | None = None, embedder=None, semantic: bool = True):
        self.index = index
        self.rules = rules or default_rules()
        self._embedder = embedder
        self.ood_error: str | None = None  # why the out-of-domain score is unavailable, if it is
        self.use_semantic = semantic
        self._semantic = None

    @classmethod
    def load(
        cls,
        index_dir: Path | None = None,
        *,
        rules_path: Path | None = None,
        embedder=None,
        semantic: bool = True,
    ) -> "Guard":
        """A guard for `index_dir` (None: the shipped default index; rules only when there is none).

        The whole index is read and checked here (a few MB), so a missing or corrupt file raises
        GuardIndexError now, naming the file and the rebuild command, not in the middle of a chat."""
        if index_dir is None:
            index_dir = default_index_dir()
        rules = RuleSet.load(rules_path) if rules_path else default_rules()
        guard = cls(GuardIndex.load(Path(index_dir)) if index_dir else None, rules, embedder, semantic=semantic)
        if index_dir is None:
            guard.ood_error = "no guard index (none shipped and none given)"
        return guard

    # ---- lazy parts
    @property
    def embedder(self):
        if self._embedder is None:
            from medchat.core.guard.embedder import shared_embedder

            self._embedder = shared_embedder()
        return self._embedder

    @property
    def ready(self) -> bool:
        """True once the index and embedder are loaded (scoring is then fast)."""
        return self.index is not None and getattr(self._embedder, "loaded", self._embedder is not None)

    def warm_up(self) -> "Guard":
        """Load the embedder and the semantic layer's example vectors (takes seconds; call it in a worker)."""
        if self.index is not None:
            layer = self._semantic_layer()
            vec = (self.embedder.encode_layers if layer else self.embedder.encode)(["warm up"])  # loads the model
            if layer is not None:
                layer.read(vec)  # embeds (or reads from the cache) the red-flag examples and fits on them
        return self

    # ---- checks
    def check_rules(self, text: str) -> GuardResult:
        """Red flags and the dosing note only (instant; no model)."""
        flags = [
            RedFlag(r.id, r.category, EMERGENCY_NOTICE.get(r.category, EMERGENCY_NOTICE["emergency"]), r.title)
            for r in self.rules.red_flags(text)
        ]
        return GuardResult(None, None, flags, self.rules.dosing_request(text))

    def _embed_and_score(self, texts: list[str], layers: bool):
        """(score, level) per text and the vectors (every layer's if `layers`; None when not scored)."""
        from medchat.core.guard.embedder import EmbedderError

        index = self.index
        if index is None:
            return [(None, None)] * len(texts), None
        try:
            vecs = (self.embedder.encode_layers if layers else self.embedder.encode)(list(texts))
        except EmbedderError as exc:
            self.ood_error = str(exc)
            return [(None, None)] * len(texts), None
        sentence = vecs[:, -self.embedder.dim:]  # the last layer's block is the sentence embedding
        return [(float(s), index.level(float(s))) for s in index.scores(sentence)], vecs

    def _semantic_layer(self):
        if self._semantic is None and self.use_semantic:
            from medchat.core.guard.semantic import SemanticConfig, SemanticRedFlags
            from medchat.core.paths import cache_dir

            config = SemanticConfig.from_rules(self.rules)
            if config is None:
                self.use_semantic = False
                return None
            self._semantic = SemanticRedFlags(config, self.embedder, cache_dir() / "guard")
        return self._semantic

    def check(self, text: str, ood: bool = True) -> GuardResult:
        return self.check_many([text], ood=ood)[0]

    def check_many(self, texts: list[str], ood: bool = True) -> list[GuardResult]:
        """Check several messages (the embedder runs batched)."""
        base = [self.check_rules(t) for t in texts]
        if not ood:
            return base
        layer = self._semantic_layer() if self.index is not None else None
        scored, vecs = self._embed_and_score(texts, layers=layer is not None)
        flags = [list(b.red_flags) for b in base]
        if layer is not None and vecs is not None:
            from medchat.core.guard.semantic import apply

            by_id = {r.id: r for r in self.rules.rules}
            for i, reading in enumerate(layer.read(vecs)):
                flags[i], more = apply(reading, flags[i], layer.config)
                if more and reading.nearest_rule in by_id:
                    r = by_id[reading.nearest_rule]
                    notice = EMERGENCY_NOTICE.get(r.category, EMERGENCY_NOTICE["emergency"])
                    flags[i].append(RedFlag(r.id, r.category, notice, r.title, source="semantic"))
        return [GuardResult(s, lvl, f, b.dosing_note) for b, (s, lvl), f in zip(base, scored, flags)]


__all__ = ["Guard", "GuardResult", "RedFlag", "GuardIndexError"]
