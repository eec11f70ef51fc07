"""Emergency red-flag and individual-dosing rules: pure text rules read from assets/guard/red_flags.yaml.

No model is involved; matching one message takes well under a millisecond. See the YAML file's header for
how a message is normalised and when a rule fires.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from medchat.core.errors import MedchatError

RULES_FILE_NAME = "red_flags.yaml"


class RulesError(MedchatError, ValueError):
    """The rules file is missing or malformed (message names the file and the rule)."""


def default_rules_path() -> Path:
    from medchat.core.paths import ASSETS_DIR

    return ASSETS_DIR / "guard" / RULES_FILE_NAME


# ---------------------------------------------------------------- normalisation and typos

_APOSTROPHES = re.compile(r"['\u2018\u2019\u02bc`\u00b4]")
_NON_WORD = re.compile(r"[^a-z0-9]+")


def normalise(text: str) -> str:
    """Lower case, apostrophes dropped, everything else that is not a letter or digit turned into a space."""
    text = _APOSTROPHES.sub("", text.lower())
    return " ".join(_NON_WORD.sub(" ", text).split())


def _edit_distance(a: str, b: str, limit: int) -> int:
    """Optimal-string-alignment distance (transpositions count 1); returns limit + 1 once it is exceeded."""
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    prev2 = None
    prev = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        cur = [i] + [0] * len(b)
        best = cur[0]
        for j in range(1, len(b) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            v = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
            if prev2 is not None and i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                v = min(v, prev2[j - 2] + 1)
            cur[j] = v
            best = min(best, v)
        if best > limit:
            return limit + 1
        prev2, prev = prev, cur
    return prev[-1]


COMMON_WORD_COUNT = 100  # pyspellchecker's English list puts rare words and misspellings ("brest") at 50


@functools.lru_cache(maxsize=1)
def known_words() -> frozenset[str]:
    """English words that are never 'corrected': pyspellchecker's common English words ("sneezing" is
    not a typo of "seizing") and the embedder's WordPiece vocabulary, when installed."""
    from spellchecker import SpellChecker

    counts = SpellChecker(language="en", distance=1).word_frequency.dictionary
    words = {w for w, n in counts.items() if n >= COMMON_WORD_COUNT and w.isalpha()}
    try:
        from medchat.core.guard.embedder import embedder_model_dir

        words.update((embedder_model_dir() / "vocab.txt").read_text(encoding="utf-8").split())
    except Exception:  # no embedder package: typo correction still works, with the English list alone
        pass
    return frozenset(w for w in words if w.isalpha() and len(w) > 1)


class TypoCorrector:
    """Maps near-misses of rule vocabulary to the vocabulary word ("pian" -> "pain")."""

    def __init__(self, vocabulary: list[str], aliases: dict[str, str], keep: frozenset[str] | None = None):
        self.vocabulary = sorted({normalise(w) for w in vocabulary if w})
        self._by_first: dict[str, list[str]] = {}
        for w in self.vocabulary:
            self._by_first.setdefault(w[0], []).append(w)
        self.aliases = [
            (re.compile(r"\b" + re.escape(normalise(k)) + r"\b"), normalise(v)) for k, v in (aliases or {}).items()
        ]
        self._keep = keep
        self._cache: dict[str, str] = {}

    @property
    def keep(self) -> frozenset[str]:
        if self._keep is None:
            self._keep = known_words()
        return self._keep

    def word(self, tok: str) -> str:
        if tok in self._cache:
            return self._cache[tok]
        out = tok
        if tok.endswith("s") and tok not in self.vocabulary and tok[:-1] in self.vocabulary:  # "throats", "sugars"
            out = tok[:-1]
        elif len(tok) >= 4 and tok.isalpha() and tok not in self.vocabulary and tok not in self.keep:
            limit = 2 if len(tok) >= 8 else 1
            best = (limit + 1, "")
            for cand in self._by_first.get(tok[0], ()):
                if len(cand) < 4:
                    continue
                d = _edit_distance(tok, cand, limit)
                if d < best[0]:
                    best = (d, cand)
            if best[0] <= limit:
                out = best[1]
        if len(self._cache) < 50_000:
            self._cache[tok] = out
        return out

    def __call__(self, norm_text: str) -> str:
        for rx, repl in self.aliases:
            norm_text = rx.sub(repl, norm_text)
        return " ".join(self.word(t) for t in norm_text.split())


# ---------------------------------------------------------------- rules


Pattern = tuple  # a tuple of compiled regexes that must all match


def _compile(raw, where: str) -> Pattern:
    items = raw if isinstance(raw, list) else [raw]
    if not items or not all(isinstance(x, str) and x for x in items):
        raise RulesError(f"{where}: a pattern must be a regular expression or a list of them, got {raw!r}")
    out = []
    for x in items:
        try:
            out.append(re.compile(x))
        except re.error as exc:
            raise RulesError(f"{where}: invalid regular expression {x!r}: {exc}") from None
    return tuple(out)


def _matches(patterns: list[Pattern], text: str) -> bool:
    return any(all(rx.search(text) for rx in pat) for pat in patterns)


@dataclass(frozen=True)
class Rule:
    id: str
    category: str
    title: str
    strong: list = field(default_factory=list)
    symptoms: list = field(default_factory=list)
    examples_fire: tuple = ()
    examples_quiet: tuple = ()


@dataclass(frozen=True)
class Analysis:
    """What the rules saw in one message (for explaining a decision)."""

    normalised: str
    personal: bool
    hypothetical: bool
    acute: bool
    question: bool
    history: bool = False  # a benign-history cue (context.benign) with no present-tense cue (context.current)
    resolved: bool = False  # told as over or mild (context.resolved: "stopped with pressure", "no other symptoms")

    @property
    def benign(self) -> bool:
        return self.history or self.resolved

    @property
    def situation(self) -> bool:
        if self.acute:
            return True
        if self.benign:
            return False
        return (self.personal and not self.hypothetical) or not self.question


class RuleSet:
    def __init__(self, data: dict, source: str = "<rules>"):
        self.source = source
        if not isinstance(data, dict) or not isinstance(data.get("rules"), list):
            raise RulesError(f"{source}: expected a mapping with a 'rules' list")
        self.categories: dict[str, str] = dict(data.get("categories") or {})
        ctx = data.get("context") or {}
        for key in ("personal", "hypothetical", "acute", "question"):
            if not isinstance(ctx.get(key), list):
                raise RulesError(f"{source}: context.{key} must be a list of patterns")
        self.personal = [_compile(p, f"{source}: context.personal") for p in ctx["personal"]]
        self.hypothetical = [_compile(p, f"{source}: context.hypothetical") for p in ctx["hypothetical"]]
        self.acute = [_compile(p, f"{source}: context.acute") for p in ctx["acute"]]
        self.question = [_compile(p, f"{source}: context.question") for p in ctx["question"]]
        for key in ("benign", "current", "resolved"):  # optional
            if not isinstance(ctx.get(key) or [], list):
                raise RulesError(f"{source}: context.{key} must be a list of patterns")
        self.benign = [_compile(p, f"{source}: context.benign") for p in ctx.get("benign") or []]
        self.current = [_compile(p, f"{source}: context.current") for p in ctx.get("current") or []]
        self.resolved = [_compile(p, f"{source}: context.resolved") for p in ctx.get("resolved") or []]
        self.question_mark = bool(ctx.get("question_mark", True))
        self.typos = TypoCorrector(list(data.get("vocabulary") or []), dict(data.get("typo_aliases") or {}))
        self.rules: list[Rule] = []
        seen = set()
        for i, r in enumerate(data["rules"]):
            where = f"{source}: rules[{i}]"
            if not isinstance(r, dict) or not r.get("id"):
                raise RulesError(f"{where}: each rule needs an 'id'")
            where = f"{source}: rule {r['id']!r}"
            if r["id"] in seen:
                raise RulesError(f"{where}: duplicate id")
            seen.add(r["id"])
            cat = r.get("category")
            if cat not in self.categories:
                raise RulesError(f"{where}: category {cat!r} is not one of {sorted(self.categories)}")
            if not r.get("strong") and not r.get("symptoms"):
                raise RulesError(f"{where}: needs 'strong' or 'symptoms' patterns")
            ex = r.get("examples") or {}
            self.rules.append(
                Rule(
                    id=str(r["id"]),
                    category=cat,
                    title=str(r.get("title") or r["id"]),
                    strong=[_compile(p, where) for p in r.get("strong") or []],
                    symptoms=[_compile(p, where) for p in r.get("symptoms") or []],
                    examples_fire=tuple(ex.get("fire") or ()),
                    examples_quiet=tuple(ex.get("quiet") or ()),
                )
            )
        self.semantic = data.get("semantic") or None
        if self.semantic is not None and not isinstance(self.semantic, dict):
            raise RulesError(f"{source}: 'semantic' must be a mapping")
        dosing = data.get("dosing") or {}
        if not isinstance(dosing.get("patterns"), list):
            raise RulesError(f"{source}: dosing.patterns must be a list of patterns")
        self.dosing_id = str(dosing.get("id") or "individual_dosing")
        self.dosing = [_compile(p, f"{source}: dosing") for p in dosing["patterns"]]
        dex = dosing.get("examples") or {}
        self.dosing_examples_fire = tuple(dex.get("fire") or ())
        self.dosing_examples_quiet = tuple(dex.get("quiet") or ())

    @classmethod
    def load(cls, path: Path | None = None) -> "RuleSet":
        path = Path(path) if path else default_rules_path()
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise RulesError(f"{path}: cannot read the red-flag rules ({exc.strerror})") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = f" line {mark.line + 1}" if mark else ""
            raise RulesError(f"{path}:{line} invalid YAML ({getattr(exc, 'problem', exc)})") from None
        return cls(data, str(path))

    # ---- matching
    def prepare(self, text: str) -> str:
        return self.typos(normalise(text))

    def analyse(self, text: str) -> Analysis:
        norm = self.prepare(text)
        question = _matches(self.question, norm) or (self.question_mark and "?" in text)
        return Analysis(
            normalised=norm,
            personal=_matches(self.personal, norm),
            hypothetical=_matches(self.hypothetical, norm),
            acute=_matches(self.acute, norm),
            question=question,
            history=_matches(self.benign, norm) and not _matches(self.current, norm),
            resolved=_matches(self.resolved, norm),
        )

    def red_flags(self, text: str) -> list[Rule]:
        """The rules that fire on `text`, in file order."""
        a = self.analyse(text)
        fired = []
        for rule in self.rules:
            # a strong pattern names the emergency itself: only a message that says it is over ("took an
            # overdose two years ago and is doing much better now") keeps it quiet; "I used to self harm and
            # I want to kill myself" is not over
            strong = not (a.resolved and not a.acute) and _matches(rule.strong, a.normalised)
            if strong or (a.situation and _matches(rule.symptoms, a.normalised)):
                fired.append(rule)
        return fired

    def dosing_request(self, text: str) -> bool:
        return _matches(self.dosing, self.prepare(text))


@functools.lru_cache(maxsize=4)
def _cached_rules(path: str) -> RuleSet:
    return RuleSet.load(Path(path))


def default_rules() -> RuleSet:
    """The shipped rules, parsed once per process."""
    return _cached_rules(str(default_rules_path()))
