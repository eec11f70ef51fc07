import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from medchat.cli import main


def test_paths_lists_user_dirs(isolated_user_dirs):
    result = CliRunner().invoke(main, ["--paths"])
    assert result.exit_code == 0
    assert str(isolated_user_dirs / "data" / "history.sqlite3") in result.output
    assert str(isolated_user_dirs / "config" / "config.toml") in result.output


def test_ask_tiny_model_from_stdin(tiny_model_dir):
    result = CliRunner().invoke(
        main, ["ask", "--base", str(tiny_model_dir), "--max-new-tokens", "5", "--stats"], input="What is aspirin?\n"
    )
    assert result.exit_code == 0, result.output
    stats = json.loads(result.stderr.strip().splitlines()[-1])
    assert 1 <= stats["tokens"] <= 5 and stats["stop_reason"] in ("length", "eos")
    assert result.stdout.strip()  # the answer, and only the answer, on stdout
    assert "tokens" not in result.stdout


def test_ask_errors_are_messages_not_tracebacks(tmp_path, tiny_model_dir):
    runner = CliRunner()
    result = runner.invoke(main, ["ask", "--base", str(tmp_path / "missing"), "hi"])
    assert result.exit_code == 1 and "does not exist" in result.output and "Traceback" not in result.output
    result = runner.invoke(main, ["ask", "--base", str(tiny_model_dir), "--adapter", str(tmp_path), "--no-adapter", "hi"])
    assert result.exit_code == 2 and "contradict" in result.output
    result = runner.invoke(main, ["ask", "--base", str(tiny_model_dir)], input="   \n")
    assert result.exit_code == 2 and "empty" in result.output


@pytest.mark.bundled
def test_ask_streams_an_answer_from_the_bundled_model():
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "medchat.cli", "ask", "--max-new-tokens", "24", "--stats",
         "What is the mechanism of action of aspirin?"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.strip()) > 10
    assert "\x1b" not in proc.stdout
    stats = json.loads(proc.stderr.strip().splitlines()[-1])
    assert stats["tokens"] > 0 and stats["ttft_s"] is not None
