"""Reading question lists from files: JSON Lines (``question`` or ``input`` key) or plain text (one a line)."""

from __future__ import annotations

import random
from pathlib import Path

from medchat.core.errors import MedchatError
from medchat.core.fileio import read_jsonl

QUESTION_KEYS = ("question", "input", "prompt", "text")


class QuestionFileError(MedchatError, ValueError):
    """A questions file could not be read (message names the file and line)."""


def read_questions(path: Path) -> list[str]:
    """Questions from a .jsonl file (first of question/input/prompt/text) or a .txt file, blanks skipped."""
    path = Path(path)
    if not path.is_file():
        raise QuestionFileError(f"{path}: no such file")
    if path.suffix in (".jsonl", ".json"):
        out = []
        for lineno, row in read_jsonl(path, QuestionFileError):
            text = next((row[k] for k in QUESTION_KEYS if isinstance(row.get(k), str) and row[k].strip()), None)
            if text is None:
                raise QuestionFileError(
                    f"{path}, line {lineno}: no question text (expected one of the keys {', '.join(QUESTION_KEYS)})"
                )
            out.append(" ".join(text.split()))
        return out
    with path.open(encoding="utf-8") as fh:
        return [" ".join(line.split()) for line in fh if line.strip()]


def dedupe(questions: list[str]) -> list[str]:
    """Drop exact duplicates (case- and space-insensitive), keeping the first occurrence."""
    seen: set[str] = set()
    out = []
    for q in questions:
        key = " ".join(q.lower().split())
        if key and key not in seen:
            seen.add(key)
            out.append(q)
    return out


def sample(questions: list[str], n: int | None, seed: int = 42) -> list[str]:
    """A seeded random sample of at most n questions (all of them when n is None or larger)."""
    if n is None or len(questions) <= n:
        return list(questions)
    rng = random.Random(seed)
    return rng.sample(list(questions), n)


# Calibration files inside a data directory laid out like ../shared/data (see its README).
CALIBRATION_IN_DOMAIN_GLOB = "mcq/*.jsonl"
CALIBRATION_OOD_GLOB = "ood/*.jsonl"


def calibration_sets(data_dir: Path) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """({source: in-domain questions}, {source: general questions}) from <data_dir>/mcq and <data_dir>/ood."""
    data_dir = Path(data_dir)
    ind = {p.stem: dedupe(read_questions(p)) for p in sorted(data_dir.glob(CALIBRATION_IN_DOMAIN_GLOB))}
    ood = {p.stem: dedupe(read_questions(p)) for p in sorted(data_dir.glob(CALIBRATION_OOD_GLOB))}
    return ind, ood
