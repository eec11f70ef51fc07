"""Reading run directories (written by medchat-train) and the evaluation results written into them.

Nothing here loads a model or imports torch: the report and the view are built from these files only.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medchat.core.fileio import read_jsonl as read_jsonl_rows

RESULTS_FILE = "results.json"
EXAMPLES_FILE = "examples.jsonl"
EVAL_DIR = "eval"
MCQ_PREFIX = "mcq_"  # eval/mcq_<task>.json (+ .examples.jsonl), written by `medchat-metrics mcq`

STATUS_LABELS = {
    "complete": "complete",
    "running": "running (or stopped abruptly)",
    "interrupted": "interrupted",
    "failed": "failed",
    "unknown": "unknown (no run.json)",
}


class RunError(Exception):
    """A user-facing problem with a run directory or a results file (names the path and what to do)."""


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise RunError(f"{path} is not valid JSON (line {exc.lineno}: {exc.msg}).") from exc
    except OSError as exc:
        raise RunError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if not isinstance(data, dict):
        raise RunError(f"{path} should hold a JSON object.")
    return data


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSON Lines file; a bad line is an error naming the file and line."""
    return [row for _, row in read_jsonl_rows(path, RunError)]


def run_ref(path: Path) -> str:
    """The shortest way to name a run on the command line: its id under the runs root, 'default', or its path."""
    from medchat.core import paths

    path = Path(path)
    try:
        if path.resolve() == Path(paths.DEFAULT_RUN_DIR).resolve():
            return "default"
        if path.parent.resolve() == paths.runs_root().resolve():
            return path.name
    except OSError:
        pass
    return str(path)


def evaluate_command(path: Path) -> str:
    return f"medchat-metrics evaluate {shlex.quote(run_ref(path))}"


@dataclass
class Run:
    """One run directory as the report sees it."""

    path: Path
    meta: dict[str, Any] = field(default_factory=dict)
    results: dict[str, Any] | None = None
    results_problem: str | None = None  # why `results` is None (no evaluation yet, unreadable file...)
    problems: list[str] = field(default_factory=list)  # things wrong with the run itself
    eval_path: Path | None = None  # where results.json was read from, when not <run>/eval (evaluate --out)

    # ------------------------------------------------------------------ identity and status
    @property
    def id(self) -> str:
        return str(self.meta.get("id") or self.path.name)

    @property
    def status(self) -> str:
        status = self.meta.get("status")
        return status if status in STATUS_LABELS else "unknown"

    @property
    def complete(self) -> bool:
        return self.status == "complete"

    @property
    def status_label(self) -> str:
        return STATUS_LABELS[self.status]

    @property
    def hyper(self) -> dict[str, Any]:
        return dict(self.meta.get("hyperparameters") or {})

    @property
    def final(self) -> dict[str, Any]:
        return dict(self.meta.get("final") or {})

    @property
    def created(self) -> str:
        return str(self.meta.get("created") or "")

    @property
    def adapter_dir(self) -> Path:
        return self.path / "adapter"

    @property
    def eval_dir(self) -> Path:
        return self.eval_path if self.eval_path is not None else self.path / EVAL_DIR

    @property
    def evaluated(self) -> bool:
        return self.results is not None

    def metric(self, which: str, name: str) -> float | None:
        """An aggregate score for "base" or "finetuned", or None."""
        if not self.results:
            return None
        value = (self.results.get(which) or {}).get(name)
        return float(value) if isinstance(value, (int, float)) else None

    def loss_log(self) -> list[dict[str, Any]]:
        path = self.path / "loss_log.jsonl"
        if not path.is_file():
            return []
        try:
            return read_jsonl(path)
        except RunError:
            return []

    def examples(self) -> list[dict[str, Any]]:
        path = self.eval_dir / EXAMPLES_FILE
        if not self.results or not path.is_file():
            return []
        return read_jsonl(path)

    def mcq(self) -> list[dict[str, Any]]:
        """Every multiple-choice result (eval/mcq_<task>.json, written by `medchat-metrics mcq`), by task name."""
        out = []
        if not self.eval_dir.is_dir():
            return out
        for path in sorted(self.eval_dir.glob(f"{MCQ_PREFIX}*.json")):
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if isinstance(data, dict) and data.get("kind") == "mcq":
                data["_path"] = str(path)
                out.append(data)
        return out

    def notice(self) -> str | None:
        """What a reader must be told before trusting this run's numbers (None when all is well)."""
        lines = []
        if self.status != "complete":
            lines.append(
                f"Run {self.id} is {self.status_label}: it did not finish, so it is not scored as a complete run."
            )
        lines.extend(self.problems)
        if self.results is None and self.results_problem:
            lines.append(self.results_problem)
        elif self.results is not None:
            if self.results.get("run_status") not in (None, "complete"):
                lines.append(
                    f"These scores were computed while the run was {self.results.get('run_status')} "
                    "(an adapter from an unfinished run)."
                )
            trained_on, scored_on = self.meta.get("base"), self.results.get("base_model_name")
            if trained_on and scored_on and trained_on != scored_on:
                lines.append(
                    f"Base mismatch: the run was trained on {trained_on!r} but evaluated against {scored_on!r}. "
                    f"Re-evaluate with the run's own base: {evaluate_command(self.path)}"
                )
        return "\n".join(lines) or None


def load_run(path: Path) -> Run:
    """Read a run directory. Missing pieces become `problems` / `results_problem`, not exceptions."""
    path = Path(path)
    if not path.is_dir():
        raise RunError(f"{path} is not a directory.")
    run = Run(path=path)
    meta_path = path / "run.json"
    if meta_path.is_file():
        try:
            run.meta = _read_json(meta_path)
        except RunError as exc:
            run.problems.append(str(exc))
    else:
        run.problems.append(f"{meta_path} is missing: this is not a complete medchat-train run directory.")
    if not (path / "adapter" / "adapter_config.json").is_file() and run.status == "complete":
        run.problems.append(f"{path / 'adapter'} holds no adapter_config.json.")
    results_path = path / EVAL_DIR / RESULTS_FILE
    if results_path.is_file():
        try:
            run.results = _read_json(results_path)
        except RunError as exc:
            run.results_problem = f"{exc} Re-create it with: {evaluate_command(path)}"
    else:
        run.results_problem = f"Not evaluated yet. Make an evaluation with: {evaluate_command(path)}"
    return run


def is_run_dir(path: Path) -> bool:
    return (path / "run.json").is_file()


def discover_runs(root: Path | None = None, include_default: bool = True) -> list[Path]:
    """Every run directory under the runs root (and the shipped default run), oldest first."""
    from medchat.core import paths

    root = Path(root) if root is not None else paths.runs_root()
    found: list[Path] = []
    if root.is_dir():
        found.extend(p for p in root.iterdir() if p.is_dir() and is_run_dir(p))
    default = getattr(paths, "DEFAULT_RUN_DIR", None)
    # The shipped run is a copy of a run that may also sit in the runs root (where it was trained): list it once.
    if include_default and default is not None and is_run_dir(default) and default not in found:
        if _run_json(default).get("id") not in {_run_json(p).get("id") for p in found}:
            found.append(default)
    return sorted(found, key=lambda p: (str(_run_json(p).get("created") or ""), p.name))


def _run_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads((path / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def resolve_run(arg: str | Path) -> Path:
    """A run given as a path or as a run id under the runs root."""
    from medchat.core import paths

    if str(arg) == "default":
        if not is_run_dir(paths.DEFAULT_RUN_DIR):
            raise RunError(f"This install has no shipped default run ({paths.DEFAULT_RUN_DIR} holds no run.json).")
        return paths.DEFAULT_RUN_DIR
    candidate = Path(arg).expanduser()
    if candidate.is_dir():
        return candidate
    by_id = paths.runs_root() / str(arg)
    if by_id.is_dir():
        return by_id
    root = paths.runs_root()
    matches = [p for p in root.glob(f"*{arg}*") if p.is_dir()] if root.is_dir() else []
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise RunError(f"{arg!r} matches several runs: {', '.join(sorted(m.name for m in matches)[:6])}. Be more specific.")
    known = [p.name for p in discover_runs()]
    hint = f" Known runs: {', '.join(known[-8:])}." if known else f" No runs under {paths.runs_root()} yet."
    raise RunError(f"No run directory {arg!r} (neither a path nor a run id under {paths.runs_root()}).{hint}")


def load_runs(args: list[str] | None = None) -> list[Run]:
    paths_ = [resolve_run(a) for a in args] if args else discover_runs()
    return [load_run(p) for p in paths_]
