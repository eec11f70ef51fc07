"""--report-to: the Trainer's own TensorBoard / MLflow / W&B integrations, offline, inside the run directory.

Each tracker's output is read back with the tracker's own reader and compared with the run's loss log."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from medchat.app.train_cli import main
from trainer.config import ConfigError, load_config
from trainer.train import train

from test_train_e2e import SAMPLE, CtrlCAt, read_log, tiny_cfg

ROOT = Path(__file__).resolve().parents[2]
TRACKER_ENV = ("TENSORBOARD_LOGGING_DIR", "MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME",
               "WANDB_MODE", "WANDB_DIR", "WANDB_PROJECT", "WANDB_API_KEY")


@pytest.fixture
def clean_tracker_env(tmp_path, monkeypatch):
    """No tracker configured by the user, W&B's own dirs in tmp, and a working directory that must stay empty."""
    for key in TRACKER_ENV:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    for key in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(key, str(tmp_path / "wandb-home" / key.lower()))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


def scalars(logdir, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc, {e.step: e.value for e in acc.Scalars(tag)} if tag in acc.Tags()["scalars"] else {}


def test_report_to_in_flags_presets_and_config_files(tmp_path):
    runner = CliRunner()
    out = runner.invoke(main, ["train", "--print-config", "--report-to", "tensorboard,mlflow", "--report-to", "wandb"])
    assert out.exit_code == 0, out.output
    assert "report_to:\n- tensorboard\n- mlflow\n- wandb\n" in out.output
    assert load_config("cpu-smollm2").report_to == []
    assert load_config("cpu-smollm2", overrides={"report_to": ["none"]}).report_to == []
    config = tmp_path / "c.yaml"
    config.write_text("report_to: mlflow\n")
    assert load_config("cpu-smollm2", config_file=config).report_to == ["mlflow"]
    preset = tmp_path / "mine.yaml"
    preset.write_text("report_to: [tensorboard, TensorBoard]\n")
    assert load_config(str(preset)).report_to == ["tensorboard"]
    bad = runner.invoke(main, ["train", "--print-config", "--report-to", "tensorbord"])
    assert bad.exit_code == 1
    assert "unknown tracker 'tensorbord'" in bad.output and "Did you mean 'tensorboard'" in bad.output
    with pytest.raises(ConfigError, match="'none' cannot be combined"):
        load_config("cpu-smollm2", overrides={"report_to": "none,wandb"})
    assert "--report-to" not in runner.invoke(main, ["inspect-data", "--help"]).output


def test_tensorboard_and_mlflow_record_what_the_loss_log_says(tiny_model_dir, clean_tracker_env):
    """Interrupted and resumed, then evaluated with --report-to auto: one TensorBoard run and one MLflow run."""
    pytest.importorskip("mlflow")
    import mlflow
    from mlflow.tracking import MlflowClient
    from tensorboard.plugins.hparams import plugin_data_pb2

    from medchat.app.metrics_cli import main as metrics_main

    env_before = {k: os.environ.get(k) for k in TRACKER_ENV}
    cfg = tiny_cfg(tiny_model_dir, max_steps=6, report_to="tensorboard,mlflow")
    part = train(cfg, name="tracked", progress=False, extra_callbacks=(CtrlCAt(4),))
    assert part.status == "interrupted"
    first = part.run.read()["trackers"]
    client = MlflowClient(tracking_uri=first["mlflow"]["tracking_uri"])
    assert client.get_run(first["mlflow"]["run_id"]).info.status == "KILLED"
    assert {k: os.environ.get(k) for k in TRACKER_ENV} == env_before and not mlflow.is_tracking_uri_set()

    done = train(resume=str(part.run.path), progress=False)
    assert done.status == "complete"
    run = done.run
    trackers = run.read()["trackers"]
    assert trackers == first  # the resumed run went on in the same tracker runs
    assert trackers["tensorboard"]["logdir"] == str(run.path / "tensorboard")
    assert trackers["mlflow"]["tracking_uri"] == f"sqlite:///{run.path / 'mlflow.db'}"
    assert list(clean_tracker_env.iterdir()) == []  # nothing in the working directory
    assert {k: os.environ.get(k) for k in TRACKER_ENV} == env_before and not mlflow.is_tracking_uri_set()

    log = read_log(run)
    train_loss = {e["step"]: e["train_loss"] for e in log if "train_loss" in e}
    lr = {e["step"]: e["learning_rate"] for e in log if "train_loss" in e}
    eval_loss = {e["step"]: e["eval_loss"] for e in log if "eval_loss" in e}
    assert sorted(train_loss) == [1, 2, 3, 4, 5, 6] and sorted(eval_loss) == [3, 6]

    # TensorBoard, read with its own event reader
    logdir = run.path / "tensorboard"
    acc, tb_loss = scalars(logdir, "train/loss")
    _, tb_lr = scalars(logdir, "train/learning_rate")
    _, tb_eval = scalars(logdir, "eval/loss")
    assert sorted(tb_loss) == sorted(train_loss) and sorted(tb_eval) == sorted(eval_loss)
    for step in train_loss:
        assert tb_loss[step] == pytest.approx(train_loss[step], abs=1e-5)
        assert tb_lr[step] == pytest.approx(lr[step], rel=1e-5, abs=1e-9)
    for step in eval_loss:
        assert tb_eval[step] == pytest.approx(eval_loss[step], abs=1e-5)
    hparams = plugin_data_pb2.HParamsPluginData.FromString(
        acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]).session_start_info.hparams
    assert hparams["config/learning_rate"].number_value == pytest.approx(1e-3)
    assert hparams["config/report_to"].string_value == "tensorboard,mlflow"
    assert hparams["data/split/train"].number_value == 28 and hparams["data/tokens/train/examples"].number_value == 28
    assert hparams["resolved/device"].string_value == "cpu"
    assert "medchat/config.yaml/text_summary" in acc.Tags()["tensors"]

    # MLflow, read from its local store
    run_id = trackers["mlflow"]["run_id"]
    record = client.get_run(run_id)
    assert record.info.status == "FINISHED" and record.info.run_name == "tracked"
    assert record.data.params["config/learning_rate"] == "0.001" and record.data.params["data/split/eval"] == "4"

    def history(key):
        return {m.step: m.value for m in client.get_metric_history(run_id, key)}

    ml_loss, ml_lr, ml_eval = history("loss"), history("learning_rate"), history("eval_loss")
    assert sorted(ml_loss) == sorted(train_loss) and sorted(ml_eval) == sorted(eval_loss)
    for step in train_loss:
        assert ml_loss[step] == pytest.approx(train_loss[step], abs=1e-5)
        assert ml_lr[step] == pytest.approx(lr[step], rel=1e-5, abs=1e-9)
    for step in eval_loss:
        assert ml_eval[step] == pytest.approx(eval_loss[step], abs=1e-5)
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"config.yaml", "data_manifest.json"} <= artifacts
    assert (run.path / "mlartifacts").is_dir()

    # medchat-metrics adds its scores to the same runs, at the last training step
    runner = CliRunner()
    wrong = runner.invoke(metrics_main, ["evaluate", str(run.path), "--report-to", "wandb"])
    assert wrong.exit_code == 1 and "not trained with --report-to wandb" in wrong.output
    result = runner.invoke(metrics_main, ["evaluate", str(run.path), "--report-to", "auto", "--limit", "2",
                                          "--max-new-tokens", "3", "--no-probes", "--device", "cpu", "--dtype", "fp32"])
    assert result.exit_code == 0, result.output
    scores = json.loads((run.path / "eval" / "results.json").read_text())
    _, tb_rouge = scalars(logdir, "medchat-metrics/finetuned/rougeL")
    assert tb_rouge == {6: pytest.approx(scores["finetuned"]["rougeL"])}
    assert history("medchat-metrics/base/perplexity") == {6: pytest.approx(scores["base"]["perplexity"])}
    assert list(clean_tracker_env.iterdir()) == []


def test_wandb_offline_sweep_keeps_runs_apart(tiny_model_dir, clean_tracker_env):
    """No W&B login: offline, files in each run directory, one W&B and one MLflow run per sweep point."""
    pytest.importorskip("wandb")
    pytest.importorskip("mlflow")
    result = CliRunner().invoke(main, [
        "sweep", "--base", str(tiny_model_dir), "--data", str(SAMPLE), "--target-modules", "q_proj,v_proj",
        "--max-length", "256", "--system-prompt", "Be careful.", "--precision", "fp32", "--max-steps", "2",
        "--logging-steps", "1", "--no-guard-index", "--learning-rate", "1e-4,1e-3", "--name", "grid", "--quiet",
        "--report-to", "wandb,mlflow"])
    assert result.exit_code == 0, result.output
    from mlflow.tracking import MlflowClient

    runs_root = Path(os.environ["MEDCHAT_RUNS_DIR"])
    ids = set()
    for name in ("grid-lr0.0001", "grid-lr0.001"):
        run_dir = runs_root / name
        trackers = json.loads((run_dir / "run.json").read_text())["trackers"]
        wb = trackers["wandb"]
        assert wb["mode"] == "offline" and wb["project"] == "medchat" and wb["url"] is None
        wandb_dir = Path(wb["dir"])
        assert wandb_dir.parent == run_dir / "wandb" and wandb_dir.name.startswith("offline-run-")
        record = (wandb_dir / f"run-{wb['run_id']}.wandb").read_bytes()
        assert b"train/loss" in record and b"config/learning_rate" in record
        ids.add(wb["run_id"])
        client = MlflowClient(tracking_uri=trackers["mlflow"]["tracking_uri"])
        runs = client.search_runs([trackers["mlflow"]["experiment_id"]])
        assert [r.info.run_name for r in runs] == [name]  # its own store, its own single run
        assert len(client.get_metric_history(runs[0].info.run_id, "loss")) == 2
    assert len(ids) == 2
    assert list(clean_tracker_env.iterdir()) == []
    assert "WANDB_MODE" not in os.environ


def test_wandb_mode_follows_the_users_setup(tmp_path, monkeypatch):
    from medchat.core.tracking import wandb_mode

    for key in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_BASE_URL"):
        monkeypatch.delenv(key, raising=False)
    netrc = tmp_path / "netrc"
    monkeypatch.setenv("NETRC", str(netrc))
    assert wandb_mode() == "offline"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password 0123456789abcdef\n")
    netrc.chmod(0o600)
    assert wandb_mode() == "online"  # `wandb login` was run
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.org")
    assert wandb_mode() == "offline"  # logged in to another host only
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode() == "disabled"


BLOCKED = """
import sys
sys.modules["tensorboard"] = None
sys.modules["mlflow"] = None
from medchat.app.train_cli import main
main()
"""


def test_a_missing_tracker_is_one_line_naming_the_extra(tiny_model_dir, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MEDCHAT_RUNS_DIR": str(tmp_path / "runs")}
    proc = subprocess.run([sys.executable, "-c", BLOCKED, "train", "--base", str(tiny_model_dir), "--data",
                           str(SAMPLE), "--target-modules", "q_proj,v_proj", "--no-guard-index",
                           "--report-to", "tensorboard,mlflow", "--name", "blocked"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 1, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == ["Error: --report-to tensorboard,mlflow: tensorboard and mlflow are not installed. "
                     "Install the trackers with: pip install 'medchat[tracking]'"]
    assert not (tmp_path / "runs" / "blocked").exists()  # refused before any work
