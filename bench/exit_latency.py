"""Exit latency: how long Ctrl+Q in the chat and Ctrl-C in `medchat ask` take to give the shell back.

Measured from the key (tmux send-keys) or the signal to the end of the process, on the bundled model with
the shipped adapter, for two versions of the code side by side (this checkout, and another git ref,
by default `main`, unpacked with `git archive` into a temporary directory):

  ask Ctrl-C        `medchat ask` with stdout on a pipe; SIGINT once the answer is streaming
  chat Ctrl+Q busy  `medchat` in a tmux pane (100x30); a question sent, Ctrl+Q once the answer streams
  chat Ctrl+Q idle  the same with the model loaded and nothing generating
  teardown          a process that loaded the engine and generated a few tokens ends the way the version's
                    front ends end (`exit_now` here, `sys.exit` before it): from the request to the end

For every run it also checks what was kept: the exit status of `ask` (130) and when the reminder ended its
partial answer on stdout, and for the chat the answer saved in the history (state and length). Medians of
--repeats runs. History and config go to a temporary directory.

    nice -n 5 .venv/bin/python bench/exit_latency.py [--repeats 2] [--before main]
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

QUESTION = "What is the mechanism of action of aspirin?"
REMINDER = "consult a licensed physician"
CLI = "from medchat.app.cli import main; main()"
TMUX = ["tmux", "-L", f"medchat-exit-bench-{os.getpid()}"]


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return True
    return state == "Z"


def ask_ctrl_c(env: dict, timeout: float) -> dict:
    """Also `reminder_s`: from the signal to the reminder on stdout (the answer is finished and printed);
    what comes after it, up to the end of the process, is the process's teardown."""
    proc = subprocess.Popen([sys.executable, "-c", CLI, "ask", "--max-new-tokens", "400", QUESTION],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    out = b""
    deadline = time.monotonic() + timeout
    while len(out) < 60 and time.monotonic() < deadline:  # the answer is streaming
        chunk = os.read(proc.stdout.fileno(), 4096)
        if not chunk:
            break
        out += chunk
    sent = time.perf_counter()
    proc.send_signal(signal.SIGINT)
    reminder_s = None
    while chunk := os.read(proc.stdout.fileno(), 4096):
        out += chunk
        if reminder_s is None and REMINDER.encode() in out:
            reminder_s = time.perf_counter() - sent
    proc.wait()
    seconds = time.perf_counter() - sent
    return {"exit_s": seconds, "reminder_s": reminder_s, "code": proc.returncode, "chars": len(out)}


TEARDOWN = """
import sys
from medchat.app.cli_options import spec_from_options
from medchat.core.engine import GenerationSettings
from medchat.core.fastdecode import load_engine
engine = load_engine(spec_from_options("bundled", None, False, "auto", "auto", "auto", False))
print("".join(engine.stream([{"role": "user", "content": "hi"}], GenerationSettings(max_new_tokens=5))))
print("ready", flush=True)
sys.stdin.readline()
try:
    from medchat.app.process_exit import exit_now
except ImportError:  # a version before exit_now: its front ends end with sys.exit
    exit_now = sys.exit
exit_now(0)
"""


def teardown(env: dict, timeout: float) -> dict:
    proc = subprocess.Popen([sys.executable, "-c", TEARDOWN], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, env=env, text=True)
    while proc.stdout.readline().strip() != "ready":
        pass
    sent = time.perf_counter()
    proc.stdin.write("\n")
    proc.stdin.flush()
    proc.wait(timeout=timeout)
    return {"exit_s": time.perf_counter() - sent, "code": proc.returncode}


def _pane(session: str) -> str:
    return subprocess.run(TMUX + ["capture-pane", "-p", "-t", session], capture_output=True, text=True).stdout


def _wait_for(session: str, marks: tuple[str, ...], timeout: float, count: bool = False) -> str:
    """Until every mark is on the screen (count: each as often as it is listed)."""
    deadline = time.monotonic() + timeout
    screen = ""
    while time.monotonic() < deadline:
        screen = _pane(session)
        if all(screen.count(mark) >= (marks.count(mark) if count else 1) for mark in marks):
            return screen
        time.sleep(0.05)
    raise TimeoutError(f"{marks} not on screen after {timeout} s:\n{screen}")


def chat_ctrl_q(env: dict, timeout: float, busy: bool) -> dict:
    session = f"exit-{int(time.time() * 1000) % 10_000_000}"
    command = "env " + " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()) + \
        f" {shlex.quote(sys.executable)} -c {shlex.quote(CLI)}"
    subprocess.run(TMUX + ["new-session", "-d", "-s", session, "-x", "100", "-y", "30", command], check=True)
    pid = int(subprocess.run(TMUX + ["list-panes", "-t", session, "-F", "#{pane_pid}"], capture_output=True,
                             text=True, check=True).stdout.split()[0])
    try:
        _wait_for(session, ("Ready",), timeout)
        if busy:
            subprocess.run(TMUX + ["send-keys", "-t", session, "-l", QUESTION], check=True)
            subprocess.run(TMUX + ["send-keys", "-t", session, "Enter"], check=True)
            # The question is in the title and in the chat; a third "aspirin" is the answer's (greedy: it
            # begins "The mechanism of action for aspirin..."), so the answer is streaming on the screen.
            _wait_for(session, ("aspirin",) * 3, timeout, count=True)
            time.sleep(1.0)
        sent = time.perf_counter()
        subprocess.run(TMUX + ["send-keys", "-t", session, "C-q"], check=True)
        while not _gone(pid) and time.perf_counter() - sent < timeout:
            time.sleep(0.01)
        seconds = time.perf_counter() - sent
    finally:
        subprocess.run(TMUX + ["kill-session", "-t", session], capture_output=True)
    row = {"exit_s": seconds}
    if busy:
        row |= _last_answer(Path(env["MEDCHAT_DATA_DIR"]) / "history.sqlite3")
    return row


def _last_answer(path: Path) -> dict:
    db = sqlite3.connect(path)
    try:
        status, content = db.execute("SELECT status, content FROM messages WHERE role = 'assistant' "
                                     "ORDER BY id DESC LIMIT 1").fetchone() or (None, "")
    finally:
        db.close()
    return {"saved_status": status, "saved_chars": len(content)}


def unpack(ref: str, into: Path) -> Path:
    archive = subprocess.run(["git", "archive", ref], cwd=_common.REPO, capture_output=True, check=True).stdout
    into.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


SCENARIOS = {
    "ask Ctrl-C": lambda env, timeout: ask_ctrl_c(env, timeout),
    "chat Ctrl+Q busy": lambda env, timeout: chat_ctrl_q(env, timeout, busy=True),
    "chat Ctrl+Q idle": lambda env, timeout: chat_ctrl_q(env, timeout, busy=False),
    "teardown": teardown,
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--before", default="main", help="git ref to compare with (default: main)")
    parser.add_argument("--timeout", type=float, default=240.0, help="seconds to wait for a load or an answer")
    args = parser.parse_args(argv)
    _common.setup(niceness=5)
    tmp = Path(tempfile.mkdtemp(prefix="medchat-exit-"))
    versions = {"this checkout": _common.REPO, f"{args.before}": unpack(args.before, tmp / "before")}
    samples: dict = {f"{v} · {s}": [] for s in SCENARIOS for v in versions}
    subprocess.run(TMUX + ["new-session", "-d", "-s", "keep"], check=True)
    try:
        for repeat in range(args.repeats):
            for scenario, run in SCENARIOS.items():
                for version, code in versions.items():
                    data = tmp / f"data-{repeat}-{len(samples)}-{time.monotonic_ns()}"
                    env = {"PYTHONPATH": str(code), "HF_HUB_OFFLINE": "1", "MEDCHAT_DATA_DIR": str(data),
                           "MEDCHAT_CONFIG_DIR": str(tmp / "config"), "TERM": "xterm-256color",
                           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
                           "PATH": os.environ.get("PATH", "")}
                    result = run(env, args.timeout)
                    samples[f"{version} · {scenario}"].append(result)
                    _common.log(f"#{repeat + 1} {version} · {scenario}: {result}")
    finally:
        subprocess.run(TMUX + ["kill-server"], capture_output=True)
    rows = []
    for name, results in samples.items():
        row = {"name": name}
        for key in results[0]:
            values = [r[key] for r in results if r[key] is not None]
            numeric = values and all(isinstance(v, float) for v in values)
            row[key] = statistics.median(values) if numeric else results[-1][key]
        rows.append(row)
    tables = []
    for scenario in SCENARIOS:
        part = [r for r in rows if r["name"].endswith(scenario)]
        columns = [("exit_s", "exit s")] + ([("reminder_s", "reminder s")] if "reminder_s" in part[0] else [])
        tables.append(_common.ratio_table(part, columns, baseline=f"{args.before} · {scenario}",
                                          ratio_of=[("exit_s", False)]))
    table = "\n\n".join(tables)
    print(f"\nFrom the key or signal to the end of the process, median of {args.repeats} (target: < 1 s)\n")
    print(table)
    for row in rows:
        extra = {k: v for k, v in row.items() if k not in ("name", "exit_s")}
        print(f"- {row['name']}: {extra}")
    path = _common.write_json("exit_latency", {"rows": rows, "samples": samples, "before": args.before,
                                               "table": table})
    print(f"\nJSON: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
