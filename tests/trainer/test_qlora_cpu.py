"""QLoRA on CPU, end to end on a tiny random Llama: NF4 base (double quantization), LoRA steps through
medchat-train with evaluations in between, Ctrl-C and --resume, merge into a full-precision copy of the
base, the merged model loaded in NF4 again, and `medchat ask --quantization nf4` streaming an answer."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from medchat.core.model import CPU_NF4_NOTE, ModelSpec, load
from medchat.app.train_cli import main as train_main
from trainer.config import load_config
from medchat.core.runs import RunDir
from trainer.train import TrainError, resolve_hardware, train

from test_train_e2e import SAMPLE, CtrlCAt, adapter_tensors, read_log

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU 4-bit path")

QLORA_FLAGS = ["--quantization", "nf4", "--device", "cpu", "--precision", "bf16", "--target-modules",
               "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj", "--batch-size", "4", "--max-length", "256",
               "--system-prompt", "Be careful.", "--max-steps", "9", "--eval-steps", "3", "--save-steps", "3",
               "--logging-steps", "1", "--learning-rate", "5e-3", "--warmup-steps", "1", "--lora-dropout", "0",
               "--no-guard-index", "--quiet"]


def test_nf4_on_cpu_is_allowed_only_when_the_cpu_is_asked_for():
    explicit = resolve_hardware(load_config("cpu-smollm2", overrides={"quantization": "nf4", "device": "cpu",
                                                                      "optimizer": "auto"}), cuda=False)
    assert (explicit.quantization, explicit.device, explicit.optimizer) == ("nf4", "cpu", "adamw_torch")
    assert CPU_NF4_NOTE in explicit.notes and any("paged AdamW is CUDA-only" in n for n in explicit.notes)
    assert "notes" not in explicit.as_dict()  # run.json records the choices, the console gets the notes
    with pytest.raises(TrainError, match="pass --device cpu"):
        resolve_hardware(load_config("cpu-smollm2", overrides={"quantization": "nf4"}), cuda=False)
    with pytest.raises(TrainError, match="paged_adamw_32bit optimizer"):  # asked for by name: still refused
        resolve_hardware(load_config("cpu-smollm2", overrides={"quantization": "nf4", "device": "cpu",
                                                               "optimizer": "paged_adamw_32bit"}), cuda=False)
    auto = resolve_hardware(load_config("cpu-smollm2", overrides={"quantization": "auto"}), cuda=False)
    assert auto.quantization == "none"


def test_qlora_train_resume_merge_and_chat_in_nf4(tiny_nf4_model_dir, tmp_path):
    import bitsandbytes as bnb

    runner = CliRunner()
    base = ["train", "--base", str(tiny_nf4_model_dir), "--data", str(SAMPLE), *QLORA_FLAGS]
    out = runner.invoke(train_main, [*base, "--name", "qlora"])
    assert out.exit_code == 0, out.output
    run = RunDir(tmp_path / "runs" / "qlora")
    card = run.read()
    assert card["status"] == "complete" and card["final"]["steps"] == 9
    assert card["resolved"]["quantization"] == "nf4" and card["resolved"]["optimizer"] == "adamw_torch"
    log = read_log(run)
    losses = [e["train_loss"] for e in log if "train_loss" in e]
    evals = [e["eval_loss"] for e in log if "eval_loss" in e]
    assert len(losses) == 9 and len(evals) == 3
    # the loss falls, and keeps falling after each in-training evaluation (a repacked 4-bit layer would freeze it)
    assert losses[-1] < losses[3] < losses[0] and evals[-1] < evals[0]
    assert len(set(losses[3:])) == 6
    tensors = adapter_tensors(run)
    assert tensors and all(t.dtype == torch.float32 for t in tensors.values())
    assert any(t.abs().sum() > 0 for k, t in tensors.items() if "lora_B" in k)

    # Ctrl-C after step 4 (after the first evaluation), then --resume: the same run as without the interruption
    cfg = load_config("cpu-smollm2", overrides={
        "base": str(tiny_nf4_model_dir), "data": [str(SAMPLE)], "quantization": "nf4", "device": "cpu",
        "precision": "bf16", "target_modules": "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
        "batch_size": 4, "max_length": 256, "system_prompt": "Be careful.", "max_steps": 9, "eval_steps": 3,
        "save_steps": 3, "logging_steps": 1, "learning_rate": 5e-3, "warmup_steps": 1, "lora_dropout": 0.0,
        "guard_index": False})
    part = train(cfg, name="part", progress=False, extra_callbacks=(CtrlCAt(4),))
    assert part.status == "interrupted" and part.run.latest_checkpoint().name == "checkpoint-4"
    resumed = runner.invoke(train_main, ["train", "--resume", str(part.run.path), "--quiet"])
    assert resumed.exit_code == 0, resumed.output
    assert part.run.read()["status"] == "complete"
    again = [e["train_loss"] for e in read_log(part.run) if "train_loss" in e]
    assert again == pytest.approx(losses, rel=1e-3)
    other = adapter_tensors(part.run)
    assert other.keys() == tensors.keys()
    for key in tensors:
        assert (other[key] - tensors[key]).abs().max() < 1e-3, key

    # merge into a full-precision copy of the base (never into the 4-bit weights)
    merged = runner.invoke(train_main, ["merge", "qlora", "--dtype", "fp32"])
    assert merged.exit_code == 0, merged.output
    target = run.path / "merged"
    from safetensors import safe_open

    with safe_open(str(target / "model.safetensors"), framework="pt") as handle:
        assert {handle.get_slice(k).get_dtype() for k in handle.keys()} == {"F32"}
    full = load(ModelSpec(base=str(target), device="cpu", dtype="fp32"))
    attached = load(ModelSpec(base=str(tiny_nf4_model_dir), adapter=str(run.adapter), merge=False, device="cpu",
                              dtype="fp32"))
    ids = full.tokenizer("What is aspirin?", return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(full.model(**ids).logits, attached.model(**ids).logits, atol=1e-4)

    # the merged model in NF4 generates
    from medchat.core.engine import Engine, GenerationSettings
    from medchat.core.prompting import build_messages

    quantized = load(ModelSpec(base=str(target), quantization="nf4", device="cpu", dtype="bf16"))
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in quantized.model.modules())
    stream = Engine(quantized).stream(build_messages("What is aspirin?"), GenerationSettings(max_new_tokens=5))
    assert "".join(stream) and stream.stats.tokens == 5

    # medchat ask on the 4-bit path: the trained adapter on the NF4 base, streamed to stdout
    from medchat.app.cli import main as chat_main

    asked = runner.invoke(chat_main, ["ask", "--base", str(tiny_nf4_model_dir), "--adapter", str(run.adapter),
                                      "--quantization", "nf4", "--device", "cpu", "--max-new-tokens", "5",
                                      "--stats", "What is aspirin?"])
    assert asked.exit_code == 0, asked.output
    assert asked.stdout.strip() and "note:" not in asked.stdout
    assert f"note: {CPU_NF4_NOTE}" in asked.stderr
    stats = json.loads(asked.stderr.strip().splitlines()[-1])
    assert stats["tokens"] >= 1 and "nf4 (slow on CPU)" in stats["model"] and "(unmerged)" in stats["model"]
