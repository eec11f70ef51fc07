"""Experiment tracking (TensorBoard, Weights & Biases, MLflow) through transformers' own Trainer integrations.

medchat-train passes `report_to` to the Trainer, whose callbacks log every train and eval step. This module only
decides where each tracker writes (inside the run directory and offline, unless the user configured the tracker),
opens and closes the W&B and MLflow runs around one training run, logs the run's config and data summary as
hyperparameters, and lets medchat-metrics add its scores to the same tracker runs afterwards.

Why open the runs here instead of leaving it to the callbacks: the W&B callback never finishes its run and the
MLflow callback sets a process-wide tracking URI, so in a sweep every later run would land in the first run's
W&B run and MLflow store. A run opened here is the "run created manually" that both callbacks then log into.

The trackers are optional (`medchat[tracking]`) and imported only when asked for. Nothing here touches the user's
environment beyond the run: variables are set for its duration and restored.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import math
import netrc
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator
from urllib.parse import urlparse

from medchat.core.errors import MedchatError

TRACKERS = ("tensorboard", "wandb", "mlflow")
EXTRA = "pip install 'medchat[tracking]'"
DEFAULT_PROJECT = "medchat"  # W&B project / MLflow experiment unless WANDB_PROJECT / MLFLOW_EXPERIMENT_NAME say otherwise
TENSORBOARD_DIR = "tensorboard"
MLFLOW_DB = "mlflow.db"
MLFLOW_ARTIFACTS = "mlartifacts"
MAX_PARAM_CHARS = 500  # MLflow's limit on a parameter value in older releases (newer allow 6000)
OUTCOME_STATUS = {"complete": "FINISHED", "interrupted": "KILLED", "failed": "FAILED"}  # MLflow run statuses


class TrackingError(MedchatError):
    """A tracker was asked for and cannot be used; the message says what to do."""


def parse_report_to(values: str | Iterable[str] | None) -> list[str]:
    """'none', a tracker, comma-separated trackers or a list of these -> the trackers in order, each once."""
    if values is None:
        return []
    if isinstance(values, str):
        values = [values]
    names: list[str] = []
    for item in values:
        for name in str(item).split(","):
            name = name.strip().lower()
            if name and name not in names:
                names.append(name)
    for name in names:
        if name not in (*TRACKERS, "none"):
            import difflib

            close = difflib.get_close_matches(name, TRACKERS, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise TrackingError(f"unknown tracker '{name}': report_to takes none or any of "
                                f"{', '.join(TRACKERS)} (comma-separated or repeated).{hint}")
    if "none" in names:
        if len(names) > 1:
            raise TrackingError("report_to 'none' cannot be combined with a tracker.")
        return []
    return names


def require(trackers: Iterable[str]) -> None:
    """Fail in one line, naming the extra, when a tracker's package is not installed."""
    missing = []
    for name in trackers:  # each tracker's import name is its own name
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        raise TrackingError(f"--report-to {','.join(missing)}: {' and '.join(missing)} {verb} not installed. "
                            f"Install the trackers with: {EXTRA}")


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, bool | int | float | str]:
    """Nested dicts -> 'a/b' keys with scalar values, the one shape all three trackers take as hyperparameters."""
    out: dict[str, bool | int | float | str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}/"))
        elif isinstance(value, (list, tuple)):
            out[name] = ",".join(str(v) for v in value)
        elif value is None:
            out[name] = "none"
        elif isinstance(value, (bool, int, float)):
            out[name] = value
        else:
            out[name] = str(value)
        if isinstance(out.get(name), str) and len(out[name]) > MAX_PARAM_CHARS:
            out[name] = out[name][: MAX_PARAM_CHARS - 3] + "..."
    return out


def wandb_mode() -> str:
    """The user's WANDB_MODE; else online only where W&B credentials are set up (WANDB_API_KEY, an identity
    token, or a netrc entry for the W&B host, as `wandb login` writes); else offline, so nothing leaves the
    machine unless the user configured W&B."""
    mode = os.environ.get("WANDB_MODE")
    if mode:
        return mode
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return "online"
    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname or "api.wandb.ai"
    path = os.environ.get("NETRC") or os.path.expanduser("~/.netrc")
    try:
        if netrc.netrc(path).authenticators(host):
            return "online"
    except (OSError, netrc.NetrcParseError):
        pass
    return "offline"


@contextlib.contextmanager
def environment(changes: dict[str, str | None]) -> Iterator[None]:
    """Set (or, for None, remove) environment variables for the block only."""
    saved = {k: os.environ.get(k) for k in changes}
    try:
        for key, value in changes.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


def _quiet_mlflow() -> None:
    # MLflow announces creating and migrating a new SQLite store at INFO; that is not news for a local run.
    for name in ("mlflow.store.db.utils", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


# ---------------------------------------------------------------- one training run


@dataclass
class Session:
    trackers: list[str]
    record: dict[str, Any] = field(default_factory=dict)  # goes to run.json "trackers": where each one writes
    resumed: bool = False
    outcome: str = "complete"  # the caller sets "interrupted"; an exception out of the block means "failed"
    _loggers: list[Callable[[dict[str, Any], list[Path]], None]] = field(default_factory=list)

    def log_hyperparameters(self, params: dict[str, Any], documents: Iterable[Path] = ()) -> None:
        """`params` (flat, see flatten) and small files (the resolved config, the data manifest), once per run:
        a resumed run has them already."""
        if self.resumed:
            return
        files = [Path(p) for p in documents if Path(p).is_file()]
        for name, log in zip(self.trackers, self._loggers):
            try:
                log(params, files)
            except Exception as exc:
                raise TrackingError(f"--report-to {name}: could not log the hyperparameters: {_first_line(exc)}") from None


@contextlib.contextmanager
def session(trackers: Iterable[str], run_dir: Path, run_name: str, *, previous: dict[str, Any] | None = None,
            quiet: bool = False) -> Iterator[Session]:
    """Around one training run: the W&B and MLflow runs opened (reopened on resume, from `previous`, the run's
    recorded "trackers"), the environment the Trainer's callbacks read set for the block only, and the runs
    closed with the outcome."""
    sess = Session(list(trackers), resumed=bool(previous))
    if not sess.trackers:
        yield sess
        return
    run_dir = Path(run_dir).resolve()
    previous = previous or {}
    env: dict[str, str | None] = {}
    finishers: list[Callable[[str], None]] = []
    outcome = "failed"
    try:
        for name in sess.trackers:
            start = {"tensorboard": _start_tensorboard, "mlflow": _start_mlflow, "wandb": _start_wandb}[name]
            try:
                record, log, finish = start(run_dir, run_name, previous.get(name), env, quiet)
            except Exception as exc:  # a tracker's own error (bad URI, unreachable server): one line, not a trace
                raise TrackingError(f"--report-to {name}: could not start the {name} run: {_first_line(exc)}") from None
            sess.record[name] = record
            sess._loggers.append(log)
            if finish is not None:
                finishers.append(finish)
        with environment(env):
            yield sess
        outcome = sess.outcome
    except KeyboardInterrupt:
        outcome = "interrupted"
        raise
    finally:
        for finish in reversed(finishers):
            try:
                finish(outcome)
            except Exception as exc:  # closing a tracker must not hide the run's own result or error
                logging.getLogger(__name__).warning("could not close a tracker run: %s", exc)


def _start_tensorboard(run_dir, run_name, previous, env, quiet):
    """The Trainer's TensorBoard callback reads TENSORBOARD_LOGGING_DIR when it is created. The hyperparameters
    go into the same directory, so TensorBoard shows them with the run (HParams and Text tabs)."""
    logdir = run_dir / TENSORBOARD_DIR
    env["TENSORBOARD_LOGGING_DIR"] = str(logdir)

    def log(params, documents):
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        with SummaryWriter(log_dir=str(logdir)) as writer:
            # The metric tags are those the Trainer's callback writes: the HParams table shows their last values.
            experiment, start, _end = hparams(params, {"eval/loss": 0.0, "train/loss": 0.0})
            writer.file_writer.add_summary(experiment)
            writer.file_writer.add_summary(start)
            for path in documents:
                body = "\n".join("    " + line for line in path.read_text(encoding="utf-8").splitlines())
                writer.add_text(f"medchat/{path.name}", body)  # indented: Markdown shows it verbatim

    return {"logdir": str(logdir)}, log, None


def _start_mlflow(run_dir, run_name, previous, env, quiet):
    """A SQLite store in the run directory unless MLFLOW_TRACKING_URI (or the caller's set_tracking_uri) names one:
    MLflow 3 refuses its old plain-file store by default, and its own default is a database in the current
    directory. The run is started here; the Trainer's MLflow callback logs into the active run. Its length is
    MLflow's: finding or creating the experiment, resuming the run and logging the parameters, in that order."""
    import mlflow
    from mlflow.entities import Param
    from mlflow.tracking import MlflowClient

    _quiet_mlflow()
    configured = mlflow.is_tracking_uri_set()
    saved = mlflow.get_tracking_uri() if configured else None
    if previous:  # a resumed run continues in the store it started in
        uri = previous["tracking_uri"]
    else:
        uri = saved or f"sqlite:///{run_dir / MLFLOW_DB}"
    client = MlflowClient(tracking_uri=uri)
    run_id = (previous or {}).get("run_id") or os.environ.get("MLFLOW_RUN_ID")
    if run_id:
        experiment_id = client.get_run(run_id).info.experiment_id
        experiment_name = client.get_experiment(experiment_id).name
    else:
        experiment_name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_PROJECT
        found = client.get_experiment_by_name(experiment_name)
        experiment_id = found.experiment_id if found else client.create_experiment(
            experiment_name, artifact_location=None if saved else (run_dir / MLFLOW_ARTIFACTS).as_uri())
    if "MLFLOW_RUN_ID" in os.environ:
        env["MLFLOW_RUN_ID"] = None  # consumed here; the callback would otherwise try to start it a second time

    def restore_uri() -> None:  # back to what the process had: MLflow's default, the env's, or the caller's
        mlflow.set_tracking_uri(None)
        if saved and mlflow.get_tracking_uri() != saved:
            mlflow.set_tracking_uri(saved)

    mlflow.set_tracking_uri(uri)  # the callback finds it set and leaves it alone
    try:
        active = mlflow.start_run(run_id=run_id, experiment_id=None if run_id else experiment_id,
                                  run_name=None if run_id else run_name, nested=mlflow.active_run() is not None)
    except BaseException:
        restore_uri()
        raise
    record = {"tracking_uri": uri, "experiment": experiment_name, "experiment_id": experiment_id,
              "run_id": active.info.run_id, "artifact_uri": active.info.artifact_uri}

    def log(params, documents):
        items = [Param(k, str(v)) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 parameters per call
            client.log_batch(record["run_id"], params=items[i:i + 100])
        for path in documents:
            client.log_artifact(record["run_id"], str(path))

    def finish(outcome: str) -> None:
        try:
            if hasattr(mlflow, "flush_async_logging"):
                mlflow.flush_async_logging()  # the callback logs asynchronously
            current = mlflow.active_run()
            if current is not None and current.info.run_id == record["run_id"]:
                mlflow.end_run(status=OUTCOME_STATUS.get(outcome, "FAILED"))
        finally:
            restore_uri()

    return record, log, finish


def _start_wandb(run_dir, run_name, previous, env, quiet):
    """Offline unless W&B is configured (see wandb_mode); files under the run directory unless WANDB_DIR says
    otherwise. The run is initialised here; the Trainer's W&B callback then logs into it."""
    import wandb

    mode = wandb_mode()
    root = Path(os.environ.get("WANDB_DIR") or run_dir).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    project = (previous or {}).get("project") or os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT
    run_id = (previous or {}).get("run_id")
    run = wandb.init(project=project, name=run_name, id=run_id, resume="allow" if run_id else None, dir=str(root),
                     mode=mode, settings=wandb.Settings(silent=True) if quiet else None)
    record = {"mode": mode, "project": project, "run_id": run.id, "dir": str(Path(run.dir).parent),
              "root": str(root), "url": getattr(run, "url", None) if mode == "online" else None}

    def log(params, documents):
        run.config.update(params, allow_val_change=True)
        for path in documents:
            run.save(str(path), base_path=str(path.parent), policy="now")

    def finish(outcome: str) -> None:
        run.finish(exit_code=0 if outcome == "complete" else 1)

    return record, log, finish


# ---------------------------------------------------------------- adding results to a finished run


def run_trackers(run_dir: Path | None, report_to: str) -> list[str]:
    """Which of a medchat-train run's tracker runs `report_to` names ('auto' = every one the run used).
    Checked before an evaluation starts, so a wrong name fails at once."""
    if str(report_to).strip().lower() in ("", "none"):
        return []
    if run_dir is None:
        raise TrackingError("--report-to needs a medchat-train run directory (its run.json says where the tracker "
                            "runs are); this is a bare adapter.")
    recorded = _recorded(Path(run_dir))
    if str(report_to).strip().lower() == "auto":
        names = [n for n in TRACKERS if n in recorded]
        if not names:
            raise TrackingError(f"run {Path(run_dir).name} was trained without a tracker (report_to none), so "
                                "there is no tracker run to add to. Retrain with --report-to, or drop --report-to.")
    else:
        names = parse_report_to(report_to)
        for name in names:
            if name not in recorded:
                used = ", ".join(recorded) or "none"
                raise TrackingError(f"run {Path(run_dir).name} was not trained with --report-to {name} (its "
                                    f"trackers: {used}), so there is no {name} run to add to.")
    require(names)
    return names


def _recorded(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "run.json"
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TrackingError(f"{path} does not exist: --report-to needs a medchat-train run.") from None
    except (OSError, ValueError) as exc:
        raise TrackingError(f"{path} cannot be read ({exc}).") from None
    return card.get("trackers") or {}


def log_evaluation(run_dir: Path, trackers: Iterable[str], results: dict[str, Any]) -> list[str]:
    """medchat-metrics' aggregate scores of both models (results["base"], results["finetuned"]) as
    medchat-metrics/finetuned/rougeL, medchat-metrics/base/perplexity, ..."""
    trackers = list(trackers)
    if not trackers:
        return []
    scores = {f"{which}/{name}": value for which in ("base", "finetuned")
              for name, value in (results.get(which) or {}).items()}
    try:
        return log_to_run(run_dir, trackers, scores)
    except TrackingError:
        raise
    except Exception as exc:  # the tracker's own error: one line
        raise TrackingError(f"could not log the scores to the run's trackers: {_first_line(exc)}") from None


def log_to_run(run_dir: Path, trackers: Iterable[str], metrics: dict[str, float], *, step: int | None = None,
               prefix: str = "medchat-metrics") -> list[str]:
    """Add `metrics` (name -> number) as `prefix/name` to the run's tracker runs, at `step` (default: the run's
    last training step, so they line up with its curves). Returns one line per tracker saying where they went."""
    run_dir = Path(run_dir)
    recorded = _recorded(run_dir)
    if step is None:
        card = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
        step = int((card.get("final") or {}).get("steps") or card.get("steps_planned") or 0)
    values = {f"{prefix}/{k}": float(v) for k, v in metrics.items()
              if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
    done = []
    for name in trackers:
        rec = recorded[name]
        if name == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            logdir = Path(rec["logdir"])
            if not logdir.is_dir() and (run_dir / TENSORBOARD_DIR).is_dir():
                logdir = run_dir / TENSORBOARD_DIR  # the run directory was moved
            with SummaryWriter(log_dir=str(logdir)) as writer:
                for key, value in values.items():
                    writer.add_scalar(key, value, step)
            done.append(f"tensorboard: {len(values)} scalars in {logdir}")
        elif name == "mlflow":
            from mlflow.entities import Metric
            from mlflow.tracking import MlflowClient

            _quiet_mlflow()
            now = int(time.time() * 1000)
            MlflowClient(tracking_uri=rec["tracking_uri"]).log_batch(
                rec["run_id"], metrics=[Metric(key, value, now, step) for key, value in values.items()])
            done.append(f"mlflow: {len(values)} metrics in run {rec['run_id']} ({rec['tracking_uri']})")
        elif name == "wandb":
            import wandb

            run = wandb.init(project=rec["project"], id=rec["run_id"], resume="allow", dir=rec["root"],
                             mode=rec["mode"], settings=wandb.Settings(silent=True))
            try:
                run.log({**values, "train/global_step": step})
                run.summary.update(values)
            finally:
                run.finish()
            done.append(f"wandb ({rec['mode']}): {len(values)} metrics in run {rec['run_id']} ({rec['root']})")
    return done
