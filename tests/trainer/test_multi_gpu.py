"""Multi-process training under `accelerate launch` on 2 CPU processes (gloo), tiny model: `--resume` under DDP
continues exactly where an interrupted run stopped, and the shipped FSDP config launches (on CPU, as data parallel).
(test_ddp.py covers the plain DDP run and its run card.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from medchat.core.paths import ASSETS_DIR

REPO_ROOT = ASSETS_DIR.parent
SAMPLE = ASSETS_DIR / "sample_data" / "medical_qa_sample.jsonl"
ACCELERATE = Path(sys.executable).parent / "accelerate"
HERE = Path(__file__).resolve().parent
# The same run as multi_gpu_interrupt.py: 4 steps, a checkpoint every 2.
TRAIN_ARGS = ["--target-modules", "q_proj,v_proj", "--batch-size", "2", "--max-length", "256", "--system-prompt",
              "Be careful.", "--precision", "fp32", "--max-steps", "4", "--save-steps", "2", "--eval-steps", "2",
              "--logging-steps", "1", "--no-guard-index", "--quiet"]

pytestmark = pytest.mark.skipif(not ACCELERATE.exists(), reason="accelerate CLI not installed")


def launch(runs, *args, config=None, port=29640):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", MEDCHAT_RUNS_DIR=str(runs), OMP_NUM_THREADS="1",
               HF_HUB_OFFLINE="1", ACCELERATE_USE_CPU="1", PYTHONPATH=str(REPO_ROOT))
    how = ["--config_file", str(config)] if config else ["--multi_gpu", "--num_machines", "1", "--mixed_precision",
                                                         "no", "--dynamo_backend", "no"]
    cmd = [str(ACCELERATE), "launch", *how, "--num_processes", "2", "--main_process_port", str(port), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)


def train_cmd(base, name):
    return ["-m", "medchat.app.train_cli", "train", "--base", str(base), "--data", str(SAMPLE), *TRAIN_ARGS,
            "--name", name]


def losses(run):
    return [(e["step"], e.get("train_loss"), e.get("eval_loss"))
            for e in map(json.loads, (run / "loss_log.jsonl").read_text().splitlines())]


def assert_same_training(a: Path, b: Path, tolerance: float):
    for (step_a, train_a, eval_a), (step_b, train_b, eval_b) in zip(losses(a), losses(b), strict=True):
        assert step_a == step_b
        for x, y in ((train_a, train_b), (eval_a, eval_b)):
            assert (x is None) == (y is None) and (x is None or abs(x - y) <= tolerance), (a.name, step_a, x, y)
    ta, tb = (load_file(str(r / "adapter" / "adapter_model.safetensors")) for r in (a, b))
    assert ta.keys() == tb.keys()
    assert max(float((ta[k] - tb[k]).abs().max()) for k in ta) < tolerance


@pytest.fixture(scope="module")
def ddp_reference(tiny_model_dir, tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    proc = launch(runs, *train_cmd(tiny_model_dir, "ddp"), port=29641)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return runs / "ddp"


def test_resume_under_ddp_matches_an_uninterrupted_ddp_run(ddp_reference, tiny_model_dir, tmp_path):
    runs = tmp_path / "runs"
    part = launch(runs, str(HERE / "multi_gpu_interrupt.py"), str(tiny_model_dir), str(SAMPLE), "part", "2",
                  port=29642)
    assert part.returncode == 0, part.stdout[-3000:] + part.stderr[-3000:]
    card = json.loads((runs / "part" / "run.json").read_text())
    assert card["status"] == "interrupted" and card["world_size"] == 2 and "--resume" in card["notes"]
    assert sorted(p.name for p in (runs / "part" / "checkpoints").iterdir()) == ["checkpoint-2"]

    resumed = launch(runs, "-m", "medchat.app.train_cli", "train", "--resume", "part", "--quiet", port=29643)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    card = json.loads((runs / "part" / "run.json").read_text())
    assert card["status"] == "complete" and card["final"]["steps"] == 4 and card["resumed_from"].endswith("checkpoint-2")
    assert_same_training(ddp_reference, runs / "part", tolerance=1e-5)


def test_fsdp_config_launches_and_trains_what_ddp_trains(ddp_reference, tiny_model_dir, tmp_path):
    """accelerate 1.16 turns FSDP on only for accelerator devices (MULTI_GPU, MULTI_XPU, ...): on 2 CPU processes
    fsdp.yaml launches and trains data-parallel (MULTI_CPU), and run.json says so. When accelerate shards on CPU
    too, the `distributed` assertion fails and the README's Multi-GPU section needs updating."""
    runs = tmp_path / "runs"
    proc = launch(runs, *train_cmd(tiny_model_dir, "fsdp"), config=ASSETS_DIR / "accelerate" / "fsdp.yaml",
                  port=29644)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    card = json.loads((runs / "fsdp" / "run.json").read_text())
    assert card["status"] == "complete" and card["world_size"] == 2 and card["distributed"] == "MULTI_CPU"
    assert json.loads((ddp_reference / "run.json").read_text())["distributed"] == "MULTI_CPU"
    assert_same_training(ddp_reference, runs / "fsdp", tolerance=1e-5)


def test_nf4_under_fsdp_stores_the_4bit_weights_in_the_compute_dtype(tiny_nf4_model_dir, monkeypatch):
    """FSDP-QLoRA: FSDP can shard the 4-bit weights with the bf16 ones only if they are stored as bf16 too."""
    import torch

    from medchat.core.model import ModelSpec, load

    spec = ModelSpec(base=str(tiny_nf4_model_dir), quantization="nf4", device="cpu", dtype="bf16")
    plain = load(spec).model
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what `accelerate launch` sets for an FSDP config
    sharded = load(spec).model
    layer = sharded.model.layers[0].self_attn.q_proj
    assert sharded.config.quantization_config.bnb_4bit_quant_storage == torch.bfloat16
    assert layer.weight.dtype == torch.bfloat16 and plain.model.layers[0].self_attn.q_proj.weight.dtype == torch.uint8
    ids = torch.tensor([[2, 40, 41, 42, 43]])
    with torch.no_grad():
        assert torch.equal(plain(input_ids=ids).logits, sharded(input_ids=ids).logits)
