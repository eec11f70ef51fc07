"""`medchat ask` under signals, in a real process on a scripted engine: Ctrl-C (SIGINT) and a hang-up (SIGHUP)
stop the model and keep the answer so far with the reminder; before the answer begins they end it at once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from medchat.core.guard.notices import PHYSICIAN_REMINDER

# The real CLI in its own process, with the engine and the guard replaced by the scripted fakes.
SCRIPT = """
import sys
sys.path.insert(0, sys.argv[1])
from session_fakes import FakeEngine, FakeGuard
import threading
import medchat.app.ask as ask
import medchat.core.fastdecode as fastdecode

class Loading(FakeGuard):
    def warm_up(self):
        print("loading the guard", file=sys.stderr, flush=True)
        return super().warm_up()

loading = sys.argv[2] == "loading"
engine = FakeEngine([{"chunks": ["Rest ", "and fluids."], "hang": True}])
fastdecode.load_engine = lambda spec, prompt_style="chat": engine
ask.load_guard = lambda adapter: Loading(threading.Event()) if loading else FakeGuard()
from medchat.app.cli import main
main(["ask", "--no-adapter", "I have a cold"])
"""


def _ask(mode: str):
    return subprocess.Popen([sys.executable, "-c", SCRIPT, str(Path(__file__).parent), mode],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=os.environ | {"NO_COLOR": "1"})


def _read_until(stream, marker: bytes) -> bytes:
    seen = b""
    while marker not in seen:
        chunk = os.read(stream.fileno(), 4096)
        assert chunk, f"the process ended before {marker!r}: {seen!r}"
        seen += chunk
    return seen


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGHUP, 129), (signal.SIGTERM, 143)])
def test_a_signal_mid_answer_keeps_the_partial_answer_and_the_reminder(signum, code):
    proc = _ask("answer")
    try:
        shown = _read_until(proc.stdout, b"and fluids.")
        proc.send_signal(signum)
        rest, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    out = (shown + rest).decode()
    assert proc.returncode == code, err.decode()
    assert out.index("Rest and fluids.") < out.index(PHYSICIAN_REMINDER)
    assert "Traceback" not in err.decode()


def test_a_signal_before_the_answer_begins_ends_at_once():
    proc = _ask("loading")
    try:
        _read_until(proc.stderr, b"loading the guard")  # blocked until the guard loads (it never does here)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)  # not the fake guard's 30 s wait
    finally:
        proc.kill()
    assert proc.returncode == 130 and out == b"" and b"Traceback" not in err


def test_group_level_model_options_apply_to_ask_and_are_refused_where_unused(tiny_model_dir, isolated_user_dirs):
    from click.testing import CliRunner

    from medchat.app.cli import main

    runner = CliRunner()
    result = runner.invoke(main, ["--base", str(tiny_model_dir), "--no-adapter", "ask", "--max-new-tokens", "3",
                                  "--stats", "hello"])
    assert result.exit_code == 0, result.output
    assert str(tiny_model_dir.name) in result.stderr.splitlines()[-1]  # the --stats line names the model
    result = runner.invoke(main, ["--base", "/no/such/model", "ask", "--base", str(tiny_model_dir), "--no-adapter",
                                  "--max-new-tokens", "3", "hello"])
    assert result.exit_code == 0, result.output  # the subcommand's own option wins
    result = runner.invoke(main, ["--ood-policy", "decline", "ask", "--base", str(tiny_model_dir), "--no-adapter",
                                  "--json", "Who won the football world cup final in 2018?"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["declined"] is True
    result = runner.invoke(main, ["--base", str(tiny_model_dir), "history", "list"])
    assert result.exit_code == 2 and "--base before `history` has no effect" in result.output
