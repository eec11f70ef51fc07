"""End to end on a tiny random Llama: train, Ctrl-C, resume exactly, merge, list, refuse to clobber."""

from __future__ import annotations

import json
import os
import signal

import pytest
from click.testing import CliRunner
from transformers import TrainerCallback

from medchat.core.paths import ASSETS_DIR
from medchat.app.train_cli import main
from trainer.config import load_config
from medchat.core.runs import RunDir, discover_runs, summarize
from trainer.train import TrainError, train

SAMPLE = ASSETS_DIR / "sample_data" / "medical_qa_sample.jsonl"


def tiny_cfg(model_dir, **overrides):
    base = {"base": str(model_dir), "data": [str(SAMPLE)], "target_modules": "q_proj,v_proj", "batch_size": 4,
            "max_length": 256, "system_prompt": "Be careful.", "precision": "fp32", "logging_steps": 1, "eval_steps": 3, "save_steps": 3,
            "epochs": 2, "learning_rate": 1e-3, "guard_index": False, "warmup_steps": 1}
    base.update(overrides)
    return load_config("cpu-smollm2", overrides=base)


class CtrlCAt(TrainerCallback):
    """Sends a real SIGINT to this process at the end of a given step, like a user pressing Ctrl-C."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGINT)


def read_log(run):
    return [json.loads(line) for line in run.loss_log.read_text().splitlines()]


def adapter_tensors(run):
    from safetensors.torch import load_file

    return load_file(str(run.adapter / "adapter_model.safetensors"))


def test_train_interrupt_resume_matches_uninterrupted_run(tiny_model_dir, tmp_path):
    cfg = tiny_cfg(tiny_model_dir)
    full = train(cfg, name="full", progress=False)
    assert full.status == "complete"
    run = full.run
    card = run.read()
    assert card["status"] == "complete" and card["final"]["steps"] == 14  # 28 train rows / 4 per batch x 2 epochs
    assert card["hyperparameters"]["lora_r"] == 16 and card["hyperparameters"]["effective_batch"] == 4
    assert card["final"]["eval_loss"] > 0 and card["final"]["tokens_per_s"] > 0 and card["final"]["train_tokens"] > 0
    assert card["git_commit"] and card["versions"]["torch"] and card["seed"] == 42
    for p in (run.config_yaml, run.manifest, run.splits / "train.jsonl", run.splits / "eval.jsonl",
              run.adapter / "adapter_model.safetensors", run.adapter / "adapter_config.json",
              run.adapter / "tokenizer_config.json", run.adapter / "medchat.json"):
        assert p.is_file(), p
    assert not (run.adapter / "training_args.bin").exists()
    assert json.loads((run.adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == cfg.base
    log = read_log(run)
    assert [e["step"] for e in log if "train_loss" in e] == list(range(1, 15))
    assert [e["step"] for e in log if "eval_loss" in e] == [3, 6, 9, 12, 14]
    assert all(e["tokens_per_s"] > 0 for e in log if "train_loss" in e)
    manifest = json.loads(run.manifest.read_text())
    assert manifest["split"] == {"train": 28, "eval": 4} and manifest["tokens"]["train"]["examples"] == 28
    assert len(run.splits.joinpath("eval.jsonl").read_text().splitlines()) == 4

    # Ctrl-C after step 4: the step finishes, a checkpoint is written, the run is marked interrupted.
    part = train(cfg, name="part", progress=False, extra_callbacks=(CtrlCAt(4),))
    assert part.status == "interrupted"
    assert part.run.read()["status"] == "interrupted" and "--resume" in part.run.read()["notes"]
    assert part.run.latest_checkpoint().name == "checkpoint-4"
    assert not part.run.adapter.exists()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored

    resumed = train(resume=str(part.run.path), progress=False)
    assert resumed.status == "complete" and resumed.run.read()["status"] == "complete"
    a, b = read_log(run), read_log(resumed.run)
    assert [e["step"] for e in a] == [e["step"] for e in b]
    for x, y in zip(a, b):
        for key in ("train_loss", "eval_loss", "learning_rate"):
            if key in x:
                assert y[key] == pytest.approx(x[key], rel=1e-4, abs=1e-6), (x, y)
    ta, tb = adapter_tensors(run), adapter_tensors(resumed.run)
    assert ta.keys() == tb.keys()
    for key in ta:
        assert (ta[key] - tb[key]).abs().max() < 1e-5, key

    with pytest.raises(TrainError, match="already complete"):
        train(resume=str(run.path), progress=False)
    with pytest.raises(TrainError, match="already holds a complete run.*--overwrite"):
        train(cfg, name="full", progress=False)

    rows = {r["id"]: r for r in (summarize(RunDir(p)) for p in discover_runs())}
    assert rows["full"]["status"] == "complete" and rows["full"]["train_examples"] == 28
    assert rows["full"]["eval_loss"] == card["final"]["eval_loss"]

    # CLI: runs table, merge, and the refusal as a clean message
    runner = CliRunner()
    out = runner.invoke(main, ["runs", "--json", "--no-default"])
    assert out.exit_code == 0 and {json.loads(line)["id"] for line in out.output.splitlines()} == {"full", "part"}
    table = runner.invoke(main, ["runs"], env={"COLUMNS": "200"})
    assert table.exit_code == 0 and "full" in table.output and "complete" in table.output
    merged = runner.invoke(main, ["merge", "full", "--dtype", "fp32"])
    assert merged.exit_code == 0, merged.output
    target = run.path / "merged"
    assert (target / "config.json").is_file() and (target / "model.safetensors").is_file()
    assert (target / "medchat.json").is_file()
    again = runner.invoke(main, ["merge", "full"])
    assert again.exit_code == 1 and "--overwrite" in again.output
    refuse = runner.invoke(main, ["train", "--base", str(tiny_model_dir), "--data", str(SAMPLE), "--name", "full",
                                  "--target-modules", "q_proj,v_proj", "--no-guard-index"])
    assert refuse.exit_code == 1 and "already holds a complete run" in refuse.output


def test_packing_early_stopping_and_bad_target_modules(tiny_model_dir):
    res = train(tiny_cfg(tiny_model_dir, packing=True, max_steps=4, eval_steps=1, learning_rate=0.05,
                         gradient_checkpointing=True,
                         early_stopping_patience=1), name="packed", progress=False)
    assert res.status == "complete" and 1 <= res.final["steps"] <= 4
    assert res.final["best_checkpoint"].startswith("checkpoint-")
    assert (res.run.adapter / "adapter_model.safetensors").is_file()
    with pytest.raises(TrainError, match="target modules .*nope.*Its linear layers are: .*q_proj"):
        train(tiny_cfg(tiny_model_dir, target_modules="nope", max_steps=1), name="bad", progress=False)
    assert RunDir(res.run.path.parent / "bad").read()["status"] == "failed"


def test_sweep_records_one_run_per_grid_point(tiny_model_dir):
    result = CliRunner().invoke(main, [
        "sweep", "--base", str(tiny_model_dir), "--data", str(SAMPLE), "--target-modules", "q_proj,v_proj",
        "--max-length", "256", "--system-prompt", "Be careful.", "--precision", "fp32", "--max-steps", "1",
        "--no-guard-index", "--learning-rate", "1e-4,1e-3", "--name", "grid", "--quiet"])
    assert result.exit_code == 0, result.output
    runs = sorted((RunDir(p) for p in discover_runs(include_default=False)), key=lambda r: r.id)
    assert [r.id for r in runs] == ["grid-lr0.0001", "grid-lr0.001"]
    cards = [r.read() for r in runs]
    assert [c["hyperparameters"]["learning_rate"] for c in cards] == [1e-4, 1e-3]
    assert all(c["status"] == "complete" and c["sweep"]["id"] == "grid" for c in cards)


class Forwards(TrainerCallback):
    """Counts training forward passes and records the dtype the adapted layers compute in."""

    def __init__(self):
        self.passes, self.dtypes = 0, set()

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        import torch

        def count(module, inputs):
            if torch.is_grad_enabled():
                self.passes += 1

        def record(module, inputs, output):
            if torch.is_grad_enabled():
                self.dtypes.add(output.dtype)

        model.get_input_embeddings().register_forward_pre_hook(count)
        next(m for n, m in model.named_modules() if n.endswith("q_proj.base_layer")).register_forward_hook(record)


def test_a_batch_split_into_passes_trains_exactly_like_one_pass(tiny_model_dir):
    settings = {"max_steps": 3, "lora_dropout": 0.0, "eval_steps": 3}
    whole, split = Forwards(), Forwards()
    one = train(tiny_cfg(tiny_model_dir, max_tokens_per_pass=0, **settings), name="one", progress=False,
                extra_callbacks=(whole,))
    many = train(tiny_cfg(tiny_model_dir, max_tokens_per_pass=64, **settings), name="many", progress=False,
                 extra_callbacks=(split,))
    assert whole.passes == 3 and split.passes > 6  # the small budget really splits every batch
    a, b = adapter_tensors(one.run), adapter_tensors(many.run)
    assert a.keys() == b.keys()
    for key in a:
        assert (a[key] - b[key]).abs().max() < 1e-5, key
    losses = [[e["train_loss"] for e in read_log(r.run) if "train_loss" in e] for r in (one, many)]
    assert losses[0] == pytest.approx(losses[1], abs=1e-4)
    assert many.run.read()["hyperparameters"]["max_tokens_per_pass"] == 64


def test_bf16_precision_really_computes_in_bf16(tiny_model_dir):
    import torch

    seen = Forwards()
    res = train(tiny_cfg(tiny_model_dir, precision="bf16", max_steps=1), name="bf16", progress=False,
                extra_callbacks=(seen,))
    assert seen.dtypes == {torch.bfloat16}
    assert res.run.read()["resolved"]["model_dtype"] == "bf16"  # the frozen base, not the adapter:
    assert {t.dtype for t in adapter_tensors(res.run).values()} == {torch.float32}
