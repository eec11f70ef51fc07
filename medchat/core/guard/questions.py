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


# The groups a guard is trained and validated on, from a data directory laid out like ../shared/data (see its
# README). Each group is one source (or one CLINC150 domain): the unit that bench/guard_eval.py leaves out.
MEDICAL_FILES = {
    "wikidoc_patient_info": "train/medical_meadow_wikidoc_patient_info.jsonl",
    "medquad": "train/medquad.jsonl",
    "medmcqa": "mcq/medmcqa_dev_subset.jsonl",
    "mmlu_medical": "mcq/mmlu_medical_dev_val.jsonl",
    "pubmedqa": "mcq/pubmedqa_labeled_nontest.jsonl",
}
GENERAL_FILES = {
    "nq_open": "ood/general_questions_nq_open_dev.jsonl",
    "webquestions": "ood/general_questions_webquestions.jsonl",
    "mmlu_nonmedical": "ood/general_questions_mmlu_nonmedical_dev_val.jsonl",
}
CLINC_FILE = "ood/general_requests_clinc150.jsonl"


def data_groups(data_dir: Path, max_per_group: int | None = None, seed: int = 42) -> tuple[dict, dict]:
    """({group: medical questions}, {group: general questions and requests}) from `data_dir`; each group
    deduplicated and sampled (seeded) to at most `max_per_group`. CLINC150 gives one group per domain."""
    data_dir = Path(data_dir)
    missing = [rel for rel in (*MEDICAL_FILES.values(), *GENERAL_FILES.values(), CLINC_FILE)
               if not (data_dir / rel).is_file()]
    if missing:
        raise QuestionFileError(f"{data_dir}: missing {', '.join(missing)} (expected a copy of ../shared/data)")
    medical = {g: read_questions(data_dir / rel) for g, rel in MEDICAL_FILES.items()}
    general = {g: read_questions(data_dir / rel) for g, rel in GENERAL_FILES.items()}
    for lineno, row in read_jsonl(data_dir / CLINC_FILE, QuestionFileError):
        if not (isinstance(row.get("question"), str) and isinstance(row.get("domain"), str)):
            raise QuestionFileError(f"{data_dir / CLINC_FILE}, line {lineno}: expected question and domain")
        general.setdefault(f"clinc150_{row['domain']}", []).append(" ".join(row["question"].split()))
    pick = lambda groups: {g: sample(dedupe(qs), max_per_group, seed) for g, qs in groups.items()}  # noqa: E731
    return pick(medical), pick(general)


def asset_groups(guard_assets: Path) -> tuple[dict, dict]:
    """The groups written for medchat (assets/guard):
    - lay_medical: medical_requests.txt, the lay medical questions, educational questions and non-urgent
      messages (no emergencies: the medical kNN reference doubles as the semantic red-flag layer's
      "not an emergency" examples);
    - own_requests: general_requests.txt and the lay general questions, kinds of request the public sets lack;
    - own_exam_questions: general_exam_questions.txt, so that the exam shape alone does not mean "medical";
    - own_medical_exam: medical_exam_questions.txt, medical and biology exam questions, so that it does not
      mean "general" either (with it, left-out MMLU medical rose from 0.965 to 0.971 AUROC)."""
    ev = Path(guard_assets) / "eval"
    lay = [row for _, row in read_jsonl(ev / "lay_questions.jsonl", QuestionFileError)]
    medical = read_questions(Path(guard_assets) / "medical_requests.txt")
    medical += [r["question"] for r in lay if r["label"] == "medical"]
    for name in ("educational_questions", "nonurgent_personal"):
        medical += read_questions(ev / f"{name}.jsonl")
    general = read_questions(Path(guard_assets) / "general_requests.txt") + [
        r["question"] for r in lay if r["label"] != "medical"]
    exams = read_questions(Path(guard_assets) / "general_exam_questions.txt")
    medical_exams = read_questions(Path(guard_assets) / "medical_exam_questions.txt")
    return ({"lay_medical": dedupe(medical), "own_medical_exam": dedupe(medical_exams)},
            {"own_requests": dedupe(general), "own_exam_questions": dedupe(exams)})
