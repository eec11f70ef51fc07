"""The run directory: layout, atomic run.json, listing, resume lookup."""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from medchat.core import paths
from medchat.core.fileio import write_text_atomic

STATUSES = ("running", "interrupted", "failed", "complete")
PROJECT_ROOT = Path(__file__).resolve().parent.parent


class RunError(Exception):
    """A problem with a run directory; the message says what to do."""


def now_iso() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


def new_run_id(preset: str | None, suffix: str = "") -> str:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    name = f"{stamp}-{preset or 'custom'}"
    return f"{name}-{suffix}" if suffix else name


def atomic_write_json(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


@dataclass
class RunDir:
    path: Path

    # layout
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
    def id(self) -> str:
        return self.path.name

    def read(self) -> dict[str, Any]:
        try:
            return json.loads(self.run_json.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except ValueError as exc:
            raise RunError(f"{self.run_json} is not valid JSON ({exc}).") from None

    def write(self, data: dict[str, Any]) -> None:
        atomic_write_json(self.run_json, data)

    def update(self, **changes: Any) -> dict[str, Any]:
        data = self.read()
        data.update(changes)
        self.write(data)
        return data

    def status(self) -> str | None:
        return self.read().get("status")

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


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(PROJECT_ROOT), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        if out.returncode != 0:
            return None
        commit = out.stdout.strip()
        dirty = subprocess.run(["git", "-C", str(PROJECT_ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def library_versions() -> dict[str, str]:
    import platform
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in ("medchat", "torch", "transformers", "peft", "accelerate", "datasets", "bitsandbytes"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def resolve_run(ref: str | Path) -> RunDir:
    """A run by path, by id under the runs root, or 'default' for the shipped run."""
    ref = str(ref)
    if ref == "default":
        return RunDir(paths.DEFAULT_RUN_DIR)
    candidate = Path(ref).expanduser()
    if candidate.is_dir():
        return RunDir(candidate)
    under_root = paths.runs_root() / ref
    if under_root.is_dir():
        return RunDir(under_root)
    matches = [p for p in paths.runs_root().glob(f"*{ref}*") if p.is_dir()] if paths.runs_root().is_dir() else []
    if len(matches) == 1:
        return RunDir(matches[0])
    hint = f" It matches several runs: {', '.join(m.name for m in matches[:5])}." if matches else ""
    raise RunError(f"no run '{ref}' (not a directory, nor a run id under {paths.runs_root()}).{hint} "
                   "See `medchat-train runs`.")


def list_runs(root: Path | None = None, include_default: bool = True) -> list[RunDir]:
    root = root or paths.runs_root()
    runs = []
    if root.is_dir():
        runs = [RunDir(p) for p in sorted(root.iterdir()) if (p / "run.json").is_file()]
    if include_default and (paths.DEFAULT_RUN_DIR / "run.json").is_file():
        runs.append(RunDir(paths.DEFAULT_RUN_DIR))
    return runs


def summarize(run: RunDir) -> dict[str, Any]:
    """One row for `medchat-train runs` (and anyone else who wants it)."""
    try:
        data = run.read()
    except RunError:
        data = {"status": "unreadable"}
    hp = data.get("hyperparameters") or {}
    final = data.get("final") or {}
    manifest = {}
    if run.manifest.is_file():
        try:
            manifest = json.loads(run.manifest.read_text(encoding="utf-8"))
        except ValueError:
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
