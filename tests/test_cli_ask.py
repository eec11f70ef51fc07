import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from medchat.app.cli import main
from medchat.core.guard.notices import DECLINE_MESSAGE, EMERGENCY_NOTICE, PHYSICIAN_REMINDER

EMERGENCY = "I have crushing chest pain and my left arm is numb"


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
    assert result.stdout.strip().endswith(PHYSICIAN_REMINDER)  # the answer, then the reminder
    assert result.stdout.strip() != PHYSICIAN_REMINDER and "tokens" not in result.stdout


def test_ask_puts_the_emergency_notice_first_and_the_reminder_last(tiny_model_dir):
    result = CliRunner().invoke(main, ["ask", "--base", str(tiny_model_dir), "--max-new-tokens", "4", EMERGENCY])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert out.startswith("⚠ " + EMERGENCY_NOTICE["emergency"] + "\n\n")
    assert out.rstrip("\n").endswith("\n\n" + PHYSICIAN_REMINDER)


def test_ask_json_is_one_object_with_the_verdict(tiny_model_dir):
    result = CliRunner().invoke(main, ["ask", "--base", str(tiny_model_dir), "--max-new-tokens", "4", "--json",
                                       EMERGENCY])
    assert result.exit_code == 0, result.output
    [line] = result.stdout.strip().splitlines()
    record = json.loads(line)
    assert set(record) >= {"answer", "notices", "ood_level", "ood_score", "red_flags", "declined", "reminder",
                           "stop_reason", "stats", "dosing_note", "degraded", "error"}
    assert record["notices"][0] == {"kind": "emergency", "text": EMERGENCY_NOTICE["emergency"]}
    assert record["red_flags"][0]["rule_id"] == "chest_pain" and record["declined"] is False
    assert record["reminder"] == PHYSICIAN_REMINDER and record["stop_reason"] in ("eos", "length")
    assert record["stats"]["tokens"] <= 4 and record["ood_level"] in ("in_domain", "uncertain", "out_of_domain")


def test_ask_bare_prints_the_model_text_and_the_verdict_on_stderr(tiny_model_dir):
    result = CliRunner().invoke(main, ["ask", "--base", str(tiny_model_dir), "--max-new-tokens", "4", "--bare",
                                       EMERGENCY])
    assert result.exit_code == 0, result.output
    assert PHYSICIAN_REMINDER not in result.stdout and EMERGENCY_NOTICE["emergency"] not in result.stdout
    verdict = json.loads(result.stderr.strip().splitlines()[-1])
    assert verdict["red_flags"][0]["rule_id"] == "chest_pain"
    assert verdict["notices"][0]["kind"] == "emergency" and verdict["declined"] is False


def test_ask_decline_policy_from_the_flag_and_from_config(tiny_model_dir, isolated_user_dirs):
    question = "Who won the football world cup final in 2018?"
    result = CliRunner().invoke(main, ["ask", "--base", str(tiny_model_dir), "--ood-policy", "decline", "--json",
                                       question])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["ood_level"] == "out_of_domain" and record["declined"] is True
    assert record["answer"] == DECLINE_MESSAGE and record["stop_reason"] == "declined" and record["stats"] is None
    config = isolated_user_dirs / "config" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text('[chat]\nood_policy = "decline"\n', encoding="utf-8")
    result = CliRunner().invoke(main, ["ask", "--base", str(tiny_model_dir), question])
    assert result.exit_code == 0 and result.stdout.startswith(DECLINE_MESSAGE)
    assert result.stdout.rstrip().endswith(PHYSICIAN_REMINDER)
    result = CliRunner().invoke(main, ["ask", "--base", str(tiny_model_dir), "--ood-policy", "note", "--json",
                                       question])  # the flag wins over the file
    assert json.loads(result.stdout)["declined"] is False
    config.write_text('[chat]\nood_policy = "shout"\n', encoding="utf-8")
    result = CliRunner().invoke(main, ["ask", "--base", str(tiny_model_dir), question])
    assert result.exit_code == 1 and str(config) in result.output and "ood_policy" in result.output
    assert "Traceback" not in result.output


def test_ask_with_a_corrupt_guard_index_still_flags_emergencies(tiny_model_dir, tmp_path, monkeypatch):
    from medchat.app import ask
    from medchat.core import session

    index = tmp_path / "guard_index"
    index.mkdir()
    (index / "index.json").write_text("{broken", encoding="utf-8")
    monkeypatch.setattr(ask, "load_guard", lambda adapter: session.load_guard(index_dir=index))
    result = CliRunner().invoke(main, ["ask", "--base", str(tiny_model_dir), "--max-new-tokens", "2", "--json",
                                       EMERGENCY])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["red_flags"][0]["rule_id"] == "chest_pain" and record["ood_level"] is None
    assert str(index / "index.json") in record["degraded"]
    assert [n["kind"] for n in record["notices"]] == ["emergency", "guard_degraded"]


@pytest.mark.bundled
def test_ask_end_to_end_on_the_bundled_model():
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}

    def ask(*args):
        proc = subprocess.run([sys.executable, "-m", "medchat.app.cli", "ask", "--max-new-tokens", "8", *args],
                              capture_output=True, text=True, env=env, timeout=600)
        assert proc.returncode == 0, proc.stderr
        assert "\x1b" not in proc.stdout
        return proc

    proc = ask("--stats", EMERGENCY)
    notice, rest = proc.stdout.split("\n\n", 1)
    assert notice == "⚠ " + EMERGENCY_NOTICE["emergency"]  # before any generated word
    answer, reminder = rest.rstrip("\n").rsplit("\n\n", 1)
    assert answer.strip() and reminder == PHYSICIAN_REMINDER  # the reminder last
    stats = json.loads(proc.stderr.strip().splitlines()[-1])
    assert 0 < stats["tokens"] <= 8 and stats["ttft_s"] is not None

    record = json.loads(ask("--json", "What is the mechanism of action of aspirin?").stdout)
    assert record["answer"].strip() and record["notices"] == [] and record["red_flags"] == []
    assert record["ood_level"] == "in_domain" and record["reminder"] == PHYSICIAN_REMINDER
