"""Config merging: defaults < preset < --config file < only the CLI options the user passed."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from medchat.app.train_cli import main
from trainer.config import ConfigError, list_presets, load_config


def test_shipped_presets_load_and_hold_their_recipes():
    assert {"cpu-smollm2", "seed-tinyllama-t4"} <= set(list_presets())
    seed = load_config("seed-tinyllama-t4")
    assert seed.base == "TinyLlama/TinyLlama-1.1B-Chat-v1.0"
    assert (seed.quantization, seed.precision, seed.optimizer) == ("nf4", "fp16", "paged_adamw_32bit")
    assert (seed.lora_r, seed.lora_alpha, seed.lora_dropout, seed.target_modules) == (16, 32, 0.05, ["q_proj", "v_proj"])
    assert (seed.epochs, seed.learning_rate, seed.batch_size, seed.grad_accum) == (2, 2e-4, 2, 4)
    assert (seed.warmup_steps, seed.weight_decay, seed.max_grad_norm, seed.max_length) == (50, 0.001, 0.3, 512)
    assert (seed.limit, seed.eval_fraction, seed.seed, seed.lr_scheduler) == (2000, 0.1, 42, "cosine")
    cpu = load_config("cpu-smollm2")
    assert cpu.base == "bundled" and len(cpu.target_modules) == 7 and cpu.batch_size == 8


def test_precedence_preset_then_file_then_cli(tmp_path):
    cfg_file = tmp_path / "mine.yaml"
    cfg_file.write_text("learning_rate: 5.0e-5\nepochs: 3\nlora_r: 8\n")
    cfg = load_config("cpu-smollm2", cfg_file, {"epochs": 2})
    assert cfg.learning_rate == 5e-5 and cfg.sources["learning_rate"] == "config"
    assert cfg.epochs == 2 and cfg.sources["epochs"] == "cli"
    assert cfg.lora_r == 8
    assert cfg.batch_size == 8 and cfg.sources["batch_size"] == "preset"


def test_cli_only_overrides_what_was_passed(tmp_path):
    """A config file's value must survive when the CLI option exists but was not given."""
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("batch_size: 3\nmax_length: 256\n")
    result = CliRunner().invoke(main, ["train", "--config", str(cfg_file), "--max-length", "128", "--no-packing",
                                       "--target-modules", "q_proj,o_proj", "--print-config", "--data", "a.jsonl",
                                       "b.csv"])
    assert result.exit_code == 0, result.output
    import yaml

    cfg = yaml.safe_load(result.output)
    assert cfg["batch_size"] == 3  # from the file: the CLI's unset --batch-size must not clobber it
    assert cfg["max_length"] == 128 and cfg["packing"] is False
    assert cfg["target_modules"] == ["q_proj", "o_proj"] and cfg["data"] == ["a.jsonl", "b.csv"]
    assert cfg["learning_rate"] == 2e-4 and cfg["preset"] == "cpu-smollm2"


def test_sweep_grid_dry_run():
    result = CliRunner().invoke(main, ["sweep", "--learning-rate", "1e-4,3e-4", "--epochs", "1,2", "--dry-run",
                                       "--data", "x.jsonl"])
    assert result.exit_code == 0, result.output
    assert result.output.count('{"learning_rate"') == 4
    assert '{"learning_rate": 0.0003, "epochs": 2.0}' in result.output
    bad = CliRunner().invoke(main, ["sweep", "--learning-rate", "1e-4,0", "--dry-run", "--data", "x.jsonl"])
    assert bad.exit_code == 1 and "learning_rate must be > 0" in bad.output


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"learning_rate": 0}, "learning_rate must be > 0"),
        ({"learning_rate": -1e-4}, "learning_rate must be > 0"),
        ({"lora_r": 0}, "lora_r must be > 0"),
        ({"eval_fraction": 0.0}, "eval_fraction must be between 0 and 1"),
        ({"eval_fraction": 1.0}, "eval_fraction must be between 0 and 1"),
        ({"lora_dropout": 1.5}, "lora_dropout must be in [0, 1)"),
        ({"limit": 1}, "limit must be at least 2"),
    ],
)
def test_invalid_hyperparameters(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        load_config("cpu-smollm2", overrides=overrides)


def test_unknown_preset_and_unknown_key(tmp_path):
    with pytest.raises(ConfigError, match="unknown preset 'nope'. Known presets: .*cpu-smollm2"):
        load_config("nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("learning_rat: 1e-4\n")
    with pytest.raises(ConfigError, match="unknown option 'learning_rat'.*Did you mean 'learning_rate'"):
        load_config("cpu-smollm2", bad)
    bad.write_text("epochs: [1\n")
    with pytest.raises(ConfigError, match="line 1.* not valid YAML|not valid YAML"):
        load_config("cpu-smollm2", bad)
    bad.write_text("batch_size: lots\n")
    with pytest.raises(ConfigError, match="batch_size.*must be int"):
        load_config("cpu-smollm2", bad)


def test_cli_reports_bad_input_without_traceback(tmp_path):
    runner = CliRunner()
    r = runner.invoke(main, ["train", "--preset", "nope", "--data", "x.jsonl"])
    assert r.exit_code == 1 and "unknown preset 'nope'" in r.output and "Traceback" not in r.output
    r = runner.invoke(main, ["train", "--learning-rate", "0", "--data", "x.jsonl"])
    assert r.exit_code == 1 and "learning_rate must be > 0" in r.output
    r = runner.invoke(main, ["train", "--lerning-rate", "1"])
    assert r.exit_code == 2 and "No such option" in r.output
    r = runner.invoke(main, ["train", "--data", str(tmp_path / "missing.jsonl")])
    assert r.exit_code == 1 and "missing.jsonl does not exist" in r.output


def test_seed_preset_on_cpu_says_what_is_missing():
    from trainer.train import TrainError, resolve_hardware

    with pytest.raises(TrainError) as err:
        resolve_hardware(load_config("seed-tinyllama-t4"), cuda=False)
    text = str(err.value)
    assert "needs a CUDA GPU" in text and "NF4" in text and "paged_adamw_32bit" in text and "fp16" in text
    assert "--preset cpu-smollm2" in text
    hw = resolve_hardware(load_config("seed-tinyllama-t4"), cuda=True)
    assert (hw.quantization, hw.optimizer, hw.precision, hw.model_dtype) == ("nf4", "paged_adamw_32bit", "fp16", "fp16")
    cpu = resolve_hardware(load_config("cpu-smollm2"), cuda=False)
    assert cpu.device == "cpu" and cpu.quantization == "none"
    # the frozen base is kept in bf16 when training in bf16, in fp32 otherwise
    for precision, dtype in (("bf16", "bf16"), ("fp32", "fp32")):
        hw = resolve_hardware(load_config("cpu-smollm2", overrides={"precision": precision}), cuda=False)
        assert (hw.precision, hw.model_dtype) == (precision, dtype)


def test_runs_table_fits_80_columns(isolated_user_dirs):
    """`medchat-train runs` at 80 columns: one line per run (the shipped one is listed), every line fits;
    --wide has every column."""
    runner = CliRunner()
    narrow = runner.invoke(main, ["runs"], env={"COLUMNS": "80"})
    assert narrow.exit_code == 0, narrow.output
    lines = narrow.output.splitlines()
    assert max(map(len, lines)) <= 80
    [row] = [line for line in lines if "default" in line]
    assert "complete" in row and "eval loss" in narrow.output and "preset" not in narrow.output
    wide = runner.invoke(main, ["runs", "--wide"], env={"COLUMNS": "80"})
    assert wide.exit_code == 0 and "preset" in wide.output
