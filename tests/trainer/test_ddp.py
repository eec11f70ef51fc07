"""The same command runs data-parallel under `accelerate launch`: 2 CPU processes (gloo), tiny model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from medchat.core.paths import ASSETS_DIR

SAMPLE = ASSETS_DIR / "sample_data" / "medical_qa_sample.jsonl"


def test_two_process_ddp_run(tiny_model_dir, tmp_path):
    accelerate = Path(sys.executable).parent / "accelerate"
    if not accelerate.exists():
        pytest.skip("accelerate CLI not installed")
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", MEDCHAT_RUNS_DIR=str(tmp_path / "runs"), OMP_NUM_THREADS="1",
               HF_HUB_OFFLINE="1", ACCELERATE_USE_CPU="1")
    cmd = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
           "29617", "-m", "medchat.app.train_cli", "train", "--base", str(tiny_model_dir), "--data", str(SAMPLE),
           "--target-modules", "q_proj,v_proj", "--batch-size", "2", "--max-length", "256", "--system-prompt",
           "Be careful.", "--precision", "fp32", "--max-steps", "3", "--eval-steps", "3", "--logging-steps", "1",
           "--no-guard-index", "--name", "ddp", "--quiet"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = tmp_path / "runs" / "ddp"
    card = json.loads((run / "run.json").read_text())
    assert card["status"] == "complete" and card["world_size"] == 2
    assert card["hyperparameters"]["effective_batch"] == 4 and card["final"]["steps"] == 3
    log = [json.loads(line) for line in (run / "loss_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log if "train_loss" in e] == [1, 2, 3]  # written once, by the main process
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["ddp"]
