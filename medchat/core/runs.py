"""Run directories: the one layout, record and lookup (one class, RunDir) shared by medchat-train (which
writes them) and medchat-metrics (which reads them and writes the evaluation into them).

A run directory holds run.json (the record), config.yaml, data_manifest.json, loss_log.jsonl, splits/,
checkpoints/, adapter/, guard_index/ and eval/. Nothing here loads a model or imports torch.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from medchat.core import paths
from medchat.core.errors import MedchatError
from medchat.core.fileio import read_jsonl as read_jsonl_rows
from medchat.core.fileio import write_text_atomic

STATUSES = ("running", "interrupted", "failed", "complete")
STATUS_LABELS = {
    "complete": "complete",
    "running": "running (or stopped abruptly)",
    "interrupted": "interrupted",
    "failed": "failed",
    "unknown": "unknown (no run.json)",
}
RESULTS_FILE = "results.json"
EXAMPLES_FILE = "examples.jsonl"
EVAL_DIR = "eval"
MCQ_PREFIX = "mcq_"  # eval/mcq_<task>.json (+ .examples.jsonl), written by `medchat-metrics mcq`
# Where the code was checked out from, for the commit recorded with a run (an installed wheel has none).
SOURCE_ROOT = Path(__file__).resolve().parents[2]


class RunError(MedchatError):
    """A problem with a run directory or a results file; the message names the path and what to do."""


# ---------------------------------------------------------------- provenance


def now_iso() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


def new_run_id(preset: str | None, suffix: str = "") -> str:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    name = f"{stamp}-{preset or 'custom'}"
    return f"{name}-{suffix}" if suffix else name


def git_commit() -> str | None:
    """HEAD of the checkout the code runs from, with -dirty for uncommitted changes; None outside git."""
    try:
        out = subprocess.run(["git", "-C", str(SOURCE_ROOT), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        if out.returncode != 0:
            return None
        commit = out.stdout.strip()
        dirty = subprocess.run(["git", "-C", str(SOURCE_ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def library_versions(*extra: str) -> dict[str, str]:
    """Python and the installed versions of medchat, torch, transformers, peft and `extra` (those installed)."""
    import platform
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in ("medchat", "torch", "transformers", "peft", *extra):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def atomic_write_json(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


# ---------------------------------------------------------------- the directory a run writes


@dataclass
class RunDir:
    """One run directory: its layout, its record, and (for the report) its evaluation and what is wrong
    with either. The record is held in memory and read again only when run.json changed on disk (another
    process resumed the run, say); `write` and `update` replace the file atomically, and only when the
    record changed. `record`: a record to hold before any run.json exists (a bare adapter's)."""

    path: Path
    record: dict[str, Any] | None = field(default=None, repr=False, compare=False)
    # What load_run fills in for the report:
    results: dict[str, Any] | None = None
    results_problem: str | None = None  # why `results` is None (no evaluation yet, unreadable file...)
    problems: list[str] = field(default_factory=list)  # things wrong with the run itself
    eval_path: Path | None = None  # where results.json was read from, when not <run>/eval (evaluate --out)
    _stamp: tuple[int, int, int] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.path = Path(self.path)

    @property
    def run_json(self) -> Path:
        return self.path / "run.json"

    @property
    def config_yaml(self) -> Path:
        return self.path / "config.yaml"

    @property
    def manifest(self) -> Path:
        return self.path / "data_manifest.json"

    @property
    def loss_log(self) -> Path:
        return self.path / "loss_log.jsonl"

    @property
    def splits(self) -> Path:
        return self.path / "splits"

    @property
    def adapter(self) -> Path:
        return self.path / "adapter"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def guard_index(self) -> Path:
        return self.path / "guard_index"

    @property
    def eval_dir(self) -> Path:
        return self.eval_path if self.eval_path is not None else self.path / EVAL_DIR

    # ------------------------------------------------ the record

    def read(self) -> dict[str, Any]:
        """A copy of the record ({} before run.json exists)."""
        stamp = self._disk_stamp()
        if self.record is None or stamp != self._stamp:
            self.record = _read_json(self.run_json) if stamp is not None else {}
            self._stamp = stamp
        return dict(self.record)

    def write(self, data: dict[str, Any]) -> None:
        self.record = dict(data)
        atomic_write_json(self.run_json, self.record)
        self._stamp = self._disk_stamp()

    def _disk_stamp(self) -> tuple[int, int, int] | None:
        try:
            st = self.run_json.stat()
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def update(self, **changes: Any) -> dict[str, Any]:
        record = self.read()
        if any(k not in record or record[k] != v for k, v in changes.items()):
            record.update(changes)
            self.write(record)
        return dict(record)

    @property
    def meta(self) -> dict[str, Any]:
        """The record for readers that carry on without one: {} when run.json cannot be read (load_run
        says why in `problems`)."""
        try:
            return self.read()
        except RunError:
            return {}

    @property
    def id(self) -> str:
        """The id in the record, else the folder's name (a new run's id)."""
        return str(self.meta.get("id") or self.path.name)

    @property
    def status(self) -> str:
        """The recorded status, "unknown" when there is none (or none of STATUSES)."""
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

    # ------------------------------------------------ the evaluation, as the report reads it

    @property
    def evaluated(self) -> bool:
        return self.results is not None

    def metric(self, which: str, name: str) -> float | None:
        """An aggregate score for "base" or "finetuned", or None."""
        if not self.results:
            return None
        value = (self.results.get(which) or {}).get(name)
        return float(value) if isinstance(value, (int, float)) else None

    def loss_rows(self) -> list[dict[str, Any]]:
        """The training log's rows ([] when there is none or it cannot be read)."""
        path = self.loss_log
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

    def latest_checkpoint(self) -> Path | None:
        if not self.checkpoints.is_dir():
            return None
        found = []
        for child in self.checkpoints.iterdir():
            if child.name.startswith("checkpoint-") and (child / "trainer_state.json").is_file():
                try:
                    found.append((int(child.name.split("-")[-1]), child))
                except ValueError:
                    continue
        return max(found)[1] if found else None


# ---------------------------------------------------------------- finding runs


def is_run_dir(path: Path) -> bool:
    return (Path(path) / "run.json").is_file()


def discover_runs(root: Path | None = None, include_default: bool = True) -> list[Path]:
    """Every run directory under the runs root (and the shipped default run), oldest first."""
    root = Path(root) if root is not None else paths.runs_root()
    found: list[Path] = []
    if root.is_dir():
        found.extend(p for p in root.iterdir() if p.is_dir() and is_run_dir(p))
    default = paths.DEFAULT_RUN_DIR
    # The shipped run is a copy of a run that may also sit in the runs root (where it was trained): list it once.
    if include_default and is_run_dir(default) and default not in found:
        if _run_json(default).get("id") not in {_run_json(p).get("id") for p in found}:
            found.append(default)
    return sorted(found, key=lambda p: (str(_run_json(p).get("created") or ""), p.name))


def resolve_run(arg: str | Path) -> Path:
    """A run given as a path, as a run id (or a unique part of one) under the runs root, or 'default'."""
    if str(arg) == "default":
        if not is_run_dir(paths.DEFAULT_RUN_DIR):
            raise RunError(f"This install has no shipped default run ({paths.DEFAULT_RUN_DIR} holds no run.json).")
        return paths.DEFAULT_RUN_DIR
    candidate = Path(arg).expanduser()
    if candidate.is_dir():
        return candidate
    root = paths.runs_root()
    if (root / str(arg)).is_dir():
        return root / str(arg)
    matches = [p for p in root.glob(f"*{arg}*") if p.is_dir()] if root.is_dir() else []
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise RunError(f"{arg!r} matches several runs: {', '.join(sorted(m.name for m in matches)[:6])}. "
                       "Be more specific.")
    known = [p.name for p in discover_runs()]
    hint = f" Known runs: {', '.join(known[-8:])}." if known else f" No runs under {root} yet."
    raise RunError(f"No run directory {arg!r} (neither a path nor a run id under {root}).{hint}")


def run_ref(path: Path) -> str:
    """The shortest way to name a run on the command line: its id under the runs root, 'default', or its path."""
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


def summarize(run: RunDir) -> dict[str, Any]:
    """One row for `medchat-train runs`."""
    try:
        data = run.read()
    except RunError:
        data = {"status": "unreadable"}
    hp = data.get("hyperparameters") or {}
    final = data.get("final") or {}
    try:
        manifest = _read_json(run.manifest) if run.manifest.is_file() else {}
    except RunError:
        manifest = {}
    sources = [Path(s.get("source", "?")).name for s in manifest.get("sources", [])]
    split = manifest.get("split", {})
    status = data.get("status", "?")
    if status == "running" and _stale(run):
        status = "running?"  # no heartbeat for a while: probably killed
    return {
        "id": data.get("id", run.id),
        "path": str(run.path),
        "preset": data.get("preset"),
        "base": data.get("base"),
        "data": ", ".join(sources),
        "train_examples": split.get("train"),
        "eval_examples": split.get("eval"),
        "epochs": hp.get("epochs"),
        "learning_rate": hp.get("learning_rate"),
        "train_loss": final.get("train_loss"),
        "eval_loss": final.get("eval_loss"),
        "elapsed_s": data.get("elapsed_s"),
        "status": status,
        "created": data.get("created"),
    }


def _stale(run: RunDir, seconds: float = 600) -> bool:
    try:
        newest = max(p.stat().st_mtime for p in (run.run_json, run.loss_log) if p.exists())
    except ValueError:
        return False
    return time.time() - newest > seconds


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


def _run_json(path: Path) -> dict[str, Any]:
    try:
        return _read_json(path / "run.json")
    except RunError:
        return {}


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSON Lines file; a bad line is an error naming the file and line."""
    return [row for _, row in read_jsonl_rows(path, RunError)]


def load_run(path: Path) -> RunDir:
    """Read a run directory. Missing pieces become `problems` / `results_problem`, not exceptions."""
    path = Path(path)
    if not path.is_dir():
        raise RunError(f"{path} is not a directory.")
    run = RunDir(path)
    if run.run_json.is_file():
        try:
            run.read()
        except RunError as exc:
            run.problems.append(str(exc))
    else:
        run.problems.append(f"{run.run_json} is missing: this is not a complete medchat-train run directory.")
    if not (run.adapter / "adapter_config.json").is_file() and run.status == "complete":
        run.problems.append(f"{run.adapter} holds no adapter_config.json.")
    results_path = path / EVAL_DIR / RESULTS_FILE
    if results_path.is_file():
        try:
            run.results = _read_json(results_path)
        except RunError as exc:
            run.results_problem = f"{exc} Re-create it with: {evaluate_command(path)}"
    else:
        run.results_problem = f"Not evaluated yet. Make an evaluation with: {evaluate_command(path)}"
    return run


def load_runs(args: list[str] | None = None) -> list[RunDir]:
    found = [resolve_run(a) for a in args] if args else discover_runs()
    return [load_run(p) for p in found]
