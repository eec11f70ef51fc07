"""Multiple-choice tasks: reading the rows, checking them, and writing the prompts as lm-evaluation-harness does.

The prompt formats are lm-eval 0.4's own task templates (lm_eval/tasks/{medqa,medmcqa,pubmedqa,mmlu}):

    medqa      "Question: {q}\nA. {a}\nB. {b}\n...Answer:"                      choices " A", " B", ...
    medmcqa    "Question: {q}\nChoices:\nA. {a}\n...Answer:"                     choices " A", " B", ...
    mmlu       "The following are multiple choice questions (with answers) about {subject}.\n\n"
               "{q.strip()}\nA. {a}\n...Answer:"                                 choices " A", " B", ...
    pubmedqa   "Abstract: {context}\nQuestion: {q}\nAnswer:"                     choices " yes", " no", " maybe"

A k-shot prompt is the description, then k solved shots ("{text} {answer}\n\n"), then the question, exactly as
lm-eval's `fewshot_context` builds it without a chat template. Shots come from a separate file and are drawn
with `random.Random(seed).sample` per question in data order (lm-eval's default sampler, seed 1234), or the
first k (lm-eval's MMLU sampler; for MMLU, shots of the question's own subject when the file has them).

Rows: {"question", "options": {"A": ..., ...} (or a list), "answer": "C"}; PubMedQA rows carry "context"
(a string or a list of strings) and "answer" (or "final_decision") in yes / no / maybe.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from medchat.core.errors import MedchatError
from medchat.core.fileio import file_sha256, read_jsonl

LETTERS = "ABCDEFGHIJ"
PUBMEDQA_CHOICES = ("yes", "no", "maybe")
DEFAULT_FEWSHOT_SEED = 1234  # lm-eval's default --fewshot_random_seed
SAMPLERS = ("random", "first_n")


class TaskError(MedchatError):
    """A user-facing problem with a task or a data file; the message names the file and line."""


@dataclass(frozen=True)
class TaskSpec:
    name: str
    kind: str  # "letters" (options A, B, ...) or "pubmedqa" (context + yes/no/maybe)
    template: str  # which lm-eval template writes the question text
    sampler: str = "random"
    description: str | None = None  # a fixed description; MMLU's comes from the row's subject
    doc_to_text: str | None = None  # a Jinja template from a YAML task file (overrides `template`)
    choices: tuple[str, ...] | None = None  # fixed choice strings (pubmedqa; YAML files may set them)
    target_delimiter: str = " "
    fewshot_delimiter: str = "\n\n"
    source: str = "built-in"
    defaults: dict[str, Any] = field(default_factory=dict)  # data / fewshot_data / num_fewshot from a YAML file

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "template": self.template, "sampler": self.sampler,
                "source": self.source, "target_delimiter": self.target_delimiter,
                "fewshot_delimiter": self.fewshot_delimiter, "doc_to_text": self.doc_to_text,
                "description": self.description}


BUILTIN_TASKS: dict[str, TaskSpec] = {
    "medqa": TaskSpec("medqa", "letters", "medqa"),
    "medmcqa": TaskSpec("medmcqa", "letters", "medmcqa"),
    "pubmedqa": TaskSpec("pubmedqa", "pubmedqa", "pubmedqa", choices=PUBMEDQA_CHOICES),
    "mmlu-medical": TaskSpec("mmlu-medical", "letters", "mmlu", sampler="first_n"),
}


@dataclass
class Question:
    line: int  # 1-based line in its file
    question: str
    options: list[str]  # option texts (letters tasks) or the fixed choices (pubmedqa)
    labels: list[str]  # what is scored after the prompt: "A", "B", ... or "yes", "no", "maybe"
    gold: int
    context: str | None = None
    subject: str | None = None
    row: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def gold_label(self) -> str:
        return self.labels[self.gold]


# --------------------------------------------------------------------------- tasks


def known_tasks() -> list[str]:
    return sorted(BUILTIN_TASKS)


def resolve_task(name: str) -> TaskSpec:
    """A built-in task name, or a YAML task file (`include:` a built-in, then override what it names)."""
    if name in BUILTIN_TASKS:
        return BUILTIN_TASKS[name]
    path = Path(name).expanduser()
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return _task_from_yaml(path)
    raise TaskError(f"Unknown task {name!r}. Known tasks: {', '.join(known_tasks())}; or pass a YAML task file "
                    "(task: NAME, include: medmcqa, doc_to_text: ..., data: ...).")


def _task_from_yaml(path: Path) -> TaskSpec:
    import yaml

    try:
        conf = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise TaskError(f"{path}: cannot read the task file ({exc}).") from exc
    if not isinstance(conf, dict):
        raise TaskError(f"{path}: a task file is a YAML mapping (task:, include:, doc_to_text:, ...).")
    allowed = {"task", "include", "description", "doc_to_text", "choices", "target_delimiter", "fewshot_delimiter",
               "fewshot_sampler", "data", "fewshot_data", "num_fewshot"}
    unknown = sorted(set(conf) - allowed)
    if unknown:
        raise TaskError(f"{path}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(allowed))}.")
    include = conf.get("include", "medmcqa")
    if include not in BUILTIN_TASKS:
        raise TaskError(f"{path}: include: {include!r} is not a built-in task ({', '.join(known_tasks())}).")
    base = BUILTIN_TASKS[include]
    spec = replace(base, name=str(conf.get("task") or path.stem), source=str(path))
    if "description" in conf:
        spec = replace(spec, description=str(conf["description"]))
    if "doc_to_text" in conf:
        import jinja2

        try:
            jinja2.Environment().parse(str(conf["doc_to_text"]))
        except jinja2.TemplateSyntaxError as exc:
            raise TaskError(f"{path}: doc_to_text is not a valid Jinja template (line {exc.lineno}: {exc.message}).") from exc
        spec = replace(spec, doc_to_text=str(conf["doc_to_text"]))
    if "choices" in conf:
        choices = conf["choices"]
        if not isinstance(choices, list) or not all(isinstance(c, str) and c for c in choices):
            raise TaskError(f"{path}: choices must be a list of non-empty strings.")
        spec = replace(spec, choices=tuple(choices))
    for key in ("target_delimiter", "fewshot_delimiter"):
        if key in conf:
            spec = replace(spec, **{key: str(conf[key])})
    if "fewshot_sampler" in conf:
        if conf["fewshot_sampler"] not in SAMPLERS:
            raise TaskError(f"{path}: fewshot_sampler must be one of {', '.join(SAMPLERS)}.")
        spec = replace(spec, sampler=conf["fewshot_sampler"])
    defaults: dict[str, Any] = {}
    for key in ("data", "fewshot_data"):
        if conf.get(key):
            p = Path(str(conf[key])).expanduser()
            defaults[key] = p if p.is_absolute() else (path.parent / p)
    if "num_fewshot" in conf:
        defaults["num_fewshot"] = int(conf["num_fewshot"])
    return replace(spec, defaults=defaults)


# --------------------------------------------------------------------------- rows


def _read_rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    if not path.is_file():
        raise TaskError(f"Data file not found: {path}.")
    rows = read_jsonl(path, TaskError)
    if not rows:
        raise TaskError(f"{path} holds no rows: expected one JSON object per line.")
    return rows


def _parse_letters(spec: TaskSpec, path: Path, lineno: int, row: dict[str, Any]) -> Question:
    where = f"{path}, line {lineno}"
    question = row.get("question")
    if not isinstance(question, str) or not question.strip():
        raise TaskError(f"{where}: no \"question\" string.")
    options = row.get("options")
    if isinstance(options, list):
        options = {LETTERS[i]: o for i, o in enumerate(options[: len(LETTERS)])}
    if not isinstance(options, dict) or len(options) < 2:
        raise TaskError(f"{where}: no \"options\" (expected an object such as {{\"A\": \"...\", \"B\": \"...\"}} "
                        "with at least two options).")
    letters = sorted(options)
    if letters != list(LETTERS[: len(letters)]):
        raise TaskError(f"{where}: options are labelled {', '.join(letters)}; expected consecutive letters from A.")
    texts = [options[k] for k in letters]
    if not all(isinstance(t, (str, int, float)) and str(t).strip() for t in texts):
        raise TaskError(f"{where}: every option needs a non-empty text.")
    answer = row.get("answer")
    if isinstance(answer, int) and not isinstance(answer, bool) and 0 <= answer < len(letters):
        answer = letters[answer]
    if not isinstance(answer, str) or answer.strip().upper() not in letters:
        raise TaskError(f"{where}: answer {answer!r} is not among its options ({', '.join(letters)}).")
    labels = list(spec.choices) if spec.choices else letters
    if len(labels) != len(letters):
        raise TaskError(f"{where}: {len(letters)} options but the task defines {len(labels)} choices.")
    subject = row.get("subject") if isinstance(row.get("subject"), str) else None
    return Question(lineno, question, [str(t) for t in texts], labels, letters.index(answer.strip().upper()),
                    subject=subject, row=row)


def _parse_pubmedqa(spec: TaskSpec, path: Path, lineno: int, row: dict[str, Any]) -> Question:
    where = f"{path}, line {lineno}"
    question = row.get("question") or row.get("QUESTION")
    if not isinstance(question, str) or not question.strip():
        raise TaskError(f"{where}: no \"question\" string.")
    context = row.get("context", row.get("CONTEXTS"))
    if isinstance(context, list) and all(isinstance(c, str) for c in context):
        context = "\n".join(context)  # lm-eval joins the abstract's sections with newlines
    if not isinstance(context, str) or not context.strip():
        raise TaskError(f"{where}: a PubMedQA row needs its \"context\" (the abstract), and this one has none.")
    labels = list(spec.choices or PUBMEDQA_CHOICES)
    answer = row.get("answer", row.get("final_decision"))
    if not isinstance(answer, str) or answer.strip().lower() not in labels:
        raise TaskError(f"{where}: answer {answer!r} is not one of {', '.join(labels)}.")
    return Question(lineno, question, labels, labels, labels.index(answer.strip().lower()), context=context, row=row)


def load_questions(spec: TaskSpec, path: Path, limit: int | None = None) -> list[Question]:
    path = Path(path)
    parse = _parse_pubmedqa if spec.kind == "pubmedqa" else _parse_letters
    questions = [parse(spec, path, lineno, row) for lineno, row in _read_rows(path)]
    return questions[:limit] if limit else questions


# --------------------------------------------------------------------------- prompts


def _subject_name(subject: str | None) -> str:
    return subject.replace("_", " ") if subject else ""


def description_for(spec: TaskSpec, q: Question) -> str:
    if spec.description is not None:
        return spec.description
    if spec.template == "mmlu":
        about = f" about {_subject_name(q.subject)}" if q.subject else ""
        return f"The following are multiple choice questions (with answers){about}.\n\n"
    return ""


def doc_to_text(spec: TaskSpec, q: Question) -> str:
    if spec.doc_to_text is not None:
        import jinja2

        env = jinja2.Environment(keep_trailing_newline=True)
        values = {**q.row, "question": q.question, "context": q.context, "choices": q.options, "subject": q.subject}
        return env.from_string(spec.doc_to_text).render(**values)
    if spec.template == "pubmedqa":
        return f"Abstract: {q.context}\nQuestion: {q.question}\nAnswer:"
    options = "".join(f"{LETTERS[i]}. {text}\n" for i, text in enumerate(q.options))
    if spec.template == "medmcqa":
        return f"Question: {q.question}\nChoices:\n{options}Answer:"
    if spec.template == "mmlu":
        return f"{q.question.strip()}\n{options}Answer:"
    return f"Question: {q.question}\n{options}Answer:"  # medqa


def build_context(spec: TaskSpec, q: Question, shots: list[Question]) -> str:
    """lm-eval's fewshot_context without a chat template: description + solved shots + the question."""
    parts = [description_for(spec, q)]
    for s in shots:
        parts.append(doc_to_text(spec, s) + spec.target_delimiter + s.gold_label + spec.fewshot_delimiter)
    parts.append(doc_to_text(spec, q))
    return "".join(parts)


def continuations(spec: TaskSpec, q: Question) -> list[str]:
    return [spec.target_delimiter + label for label in q.labels]


@dataclass
class FewshotPlan:
    k: int
    path: Path | None
    seed: int
    sampler: str
    same_file: bool

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"k": self.k, "sampler": self.sampler, "seed": self.seed}
        if self.path is not None:
            out.update(path=str(self.path), sha256=file_sha256(self.path), same_file_as_data=self.same_file)
        return out


def choose_shots(spec: TaskSpec, questions: list[Question], pool: list[Question], plan: FewshotPlan) -> list[list[Question]]:
    """Shots per question, in data order, seeded (lm-eval's ContextSampler / FirstNSampler)."""
    if plan.k == 0:
        return [[] for _ in questions]
    if len(pool) < plan.k + (1 if plan.same_file else 0):
        raise TaskError(f"{plan.path} has {len(pool)} rows: too few for {plan.k} shots.")
    rnd = random.Random(plan.seed)
    out = []
    for q in questions:
        candidates = pool
        if spec.template == "mmlu" and q.subject:  # MMLU's shots are the question's own subject (its dev split)
            own = [s for s in pool if s.subject == q.subject]
            candidates = own if len(own) >= plan.k + (1 if plan.same_file else 0) else pool
        if plan.sampler == "first_n":
            chosen = [s for s in candidates if not (plan.same_file and s.line == q.line)][: plan.k]
        elif plan.same_file:  # draw one more and drop the question itself, as lm-eval does
            chosen = [s for s in rnd.sample(candidates, plan.k + 1) if s.line != q.line][: plan.k]
        else:
            chosen = rnd.sample(candidates, plan.k)
        out.append(chosen)
    return out
