"""The model flags are declared once (medchat.app.cli_options) and every command shows them alike; a user
error (MedchatError) is one line and exit status 1 on every command."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from medchat.app import cli, metrics_cli, train_cli
from medchat.app.cli_options import MODEL_FLAGS

COMMANDS = {
    "medchat": (cli.main, set(MODEL_FLAGS)),
    "medchat ask": (cli.main.commands["ask"], set(MODEL_FLAGS)),
    "medchat-train train": (train_cli.main.commands["train"],
                            {"base", "quantization", "device", "dtype", "trust_remote_code"}),
    "medchat-train inspect-data": (train_cli.main.commands["inspect-data"],
                                   {"base", "quantization", "device", "dtype", "trust_remote_code"}),
    "medchat-metrics evaluate": (metrics_cli.main.commands["evaluate"], {"base", "quantization", "device", "dtype"}),
    "medchat-metrics mcq": (metrics_cli.main.commands["mcq"], {"base", "quantization", "device", "dtype"}),
}


def _option(command: click.Command, flag: str) -> click.Option | None:
    return next((p for p in command.params if isinstance(p, click.Option) and flag in p.opts), None)


@pytest.mark.parametrize("where", COMMANDS)
def test_each_command_has_its_model_flags_with_the_one_name_choice_and_help(where):
    command, expected = COMMANDS[where]
    for name, (decls, settings) in MODEL_FLAGS.items():
        option = _option(command, decls[0])
        if name not in expected:
            assert option is None, f"{where} has {decls[0]}, which does not apply to it"
            continue
        assert option is not None, f"{where} lacks {decls[0]}"
        assert option.help.startswith(settings["help"]), (where, option.help)
        choices = getattr(settings.get("type"), "choices", None)
        assert getattr(option.type, "choices", None) == choices, where
        assert option.is_flag == settings.get("is_flag", False), where


def test_the_trainer_keeps_precision_as_an_alias_of_dtype():
    option = _option(train_cli.main.commands["train"], "--dtype")
    assert option.opts == ["--dtype", "--precision"] and option.name == "precision"  # presets say precision:
    printed = CliRunner().invoke(train_cli.main, ["train", "--precision", "fp32", "--print-config"])
    assert printed.exit_code == 0, printed.output
    assert "precision: fp32" in printed.output


@pytest.mark.parametrize(("main", "args", "says"), [
    (metrics_cli.main, ["report", "no-such-run"], "No run directory 'no-such-run'"),
    (train_cli.main, ["train", "--config", "missing.yaml"], "missing.yaml"),
    (train_cli.main, ["merge", "no-such-run"], "No run directory 'no-such-run'"),
    (cli.main, ["guard", "--index", "no-such-index", "hello"], "no-such-index"),
])
def test_a_user_error_is_one_line_and_exit_status_1(main, args, says):
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and says in lines[0], result.output
    assert "Traceback" not in result.output


def test_a_usage_error_keeps_click_exit_status_2():
    assert CliRunner().invoke(metrics_cli.main, ["evaluate", "x", "--device", "tpu"]).exit_code == 2


def test_runs_dir_is_one_option_on_every_command_that_finds_or_writes_runs():
    commands = [train_cli.main.commands[n] for n in ("train", "sweep", "runs", "merge")]
    commands += [metrics_cli.main.commands[n] for n in ("evaluate", "mcq", "report", "compare", "show")]
    helps = {_option(c, "--runs-dir").help for c in commands}
    assert len(helps) == 1


def test_runs_dir_holds_for_its_command_only(tmp_path):
    from medchat.core import paths

    elsewhere = tmp_path / "elsewhere"
    listed = CliRunner().invoke(train_cli.main, ["runs", "--runs-dir", str(elsewhere), "--json", "--no-default"])
    assert listed.exit_code == 0 and listed.output == ""
    assert paths.runs_root() == elsewhere
    CliRunner().invoke(train_cli.main, ["runs", "--json", "--no-default"])
    assert paths.runs_root() == tmp_path / "runs"  # the environment's again (conftest sets MEDCHAT_RUNS_DIR)
