"""Start-up: `medchat` from launch to a usable prompt, in a real terminal (tmux), and to a loaded model.

The app shows its prompt at once and loads the model in a worker; this measures, from the moment
the command is started in a fresh tmux pane (120x40):

  prompt   the input's placeholder ("Ask a medical question") is on the screen: the user can type
  ready    the status line says "Ready": the model is loaded (what a first answer waits for)

plus `medchat --help` (the CLI's import time). Each variant runs --repeats times; medians ("warm":
the bundled model's conversion, the merged adapter and the ONNX model are cached by one untimed launch
first, as a user has them after the first start). The "cold" row is one launch with an empty cache, as
on a fresh clone: it converts the bundled GGUF, merges the adapter and converts it to ONNX (unless
--no-cold). History/config go to a temporary directory. The app runs under the interpreter running
this script, from this checkout.

Variants: the app as shipped (backend auto: ONNX Runtime on CPU, llama.cpp when llama-cpp-python is
installed), and the app with MEDCHAT_BACKEND=torch / llamacpp forced.

    nice -n 10 .venv/bin/python bench/startup.py [--repeats 3] [--timeout 90] [--no-cold]
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

PROMPT_MARK = "Ask a medical question"
READY_MARK = "Ready"
FAILED_MARKS = ("Traceback", "could not", "Could not")


# A private tmux server with a placeholder session, so the server does not exit (and race the next
# launch) each time a measured session ends.
TMUX = ["tmux", "-L", f"medchat-bench-{os.getpid()}"]
MEDCHAT = [sys.executable, "-c", "from medchat.app.cli import main; main()"]


def _pane(session: str) -> str:
    return subprocess.run(TMUX + ["capture-pane", "-p", "-t", session], capture_output=True, text=True).stdout


def launch(env: dict[str, str], timeout: float, label: str) -> dict:
    session = f"medchat-bench-{os.getpid()}-{int(time.time() * 1000) % 100000}"
    env = {**env, "PYTHONPATH": str(_common.REPO)}
    command = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()) + " " + shlex.join(MEDCHAT)
    started = time.perf_counter()
    subprocess.run(TMUX + ["new-session", "-d", "-s", session, "-x", "120", "-y", "40", f"env {command}"],
                   check=True)
    prompt = ready = None
    screen = ""
    try:
        while time.perf_counter() - started < timeout:
            screen = _pane(session)
            now = time.perf_counter() - started
            if prompt is None and PROMPT_MARK in screen:
                prompt = now
            if READY_MARK in screen:
                ready = now
                break
            time.sleep(0.02)
    finally:
        subprocess.run(TMUX + ["kill-session", "-t", session], capture_output=True)
    if prompt is None or ready is None:
        _common.log(f"{label}: prompt={prompt} ready={ready}; last screen:\n{screen}")
    status = next((line.strip() for line in screen.splitlines() if READY_MARK in line), "")
    return {"prompt_s": prompt, "ready_s": ready, "status": status}


def cli_help_seconds() -> float:
    started = time.perf_counter()
    subprocess.run(MEDCHAT + ["--help"], capture_output=True, check=True,
                   env={**os.environ, "PYTHONPATH": str(_common.REPO)})
    return time.perf_counter() - started


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--no-cold", action="store_true", help="skip the launch with an empty cache")
    args = parser.parse_args(argv)
    _common.setup()
    from medchat.core import fastdecode

    tmp = tempfile.TemporaryDirectory(prefix="medchat-startup-")
    base_env = {
        "HF_HUB_OFFLINE": "1",
        "MEDCHAT_DATA_DIR": str(Path(tmp.name) / "data"),
        "MEDCHAT_CONFIG_DIR": str(Path(tmp.name) / "config"),
        "TERM": "xterm-256color",
    }
    if os.environ.get("MEDCHAT_CACHE_DIR"):
        base_env["MEDCHAT_CACHE_DIR"] = os.environ["MEDCHAT_CACHE_DIR"]
    variants = {"medchat (as shipped)": {}}
    variants["MEDCHAT_BACKEND=torch"] = {"MEDCHAT_BACKEND": "torch"}
    if fastdecode.llamacpp_available():
        variants["MEDCHAT_BACKEND=llamacpp"] = {"MEDCHAT_BACKEND": "llamacpp"}

    subprocess.run(TMUX + ["new-session", "-d", "-s", "keep"], check=True)
    try:
        return _measure(args, base_env, variants, tmp)
    finally:
        subprocess.run(TMUX + ["kill-server"], capture_output=True)


def _measure(args, base_env, variants, tmp) -> int:
    cold = None
    if not args.no_cold:
        _common.log("cold start: empty cache")
        cold = launch({**base_env, "MEDCHAT_CACHE_DIR": str(Path(tmp.name) / "cold-cache")}, args.timeout * 10, "cold")
    for label, extra in variants.items():  # caches filled, first-run costs out of the measurement
        _common.log(f"warm-up {label}")
        launch({**base_env, **extra}, args.timeout * 3, label)
    helps, samples = [], {label: [] for label in variants}
    for repeat in range(args.repeats):
        helps.append(cli_help_seconds())
        for label, extra in variants.items():
            result = launch({**base_env, **extra}, args.timeout, label)
            samples[label].append(result)
            _common.log(f"#{repeat + 1} {label}: prompt {result['prompt_s']}, ready {result['ready_s']}")

    def median(values):
        values = [v for v in values if v is not None]
        return statistics.median(values) if values else None

    rows = [{"name": "medchat --help", "prompt_s": median(helps), "ready_s": None}]
    for label, results in samples.items():
        rows.append({"name": label + ", warm", "prompt_s": median(r["prompt_s"] for r in results),
                     "ready_s": median(r["ready_s"] for r in results), "status": results[-1]["status"]})
    if cold is not None:
        rows.append({"name": "medchat (as shipped), cold: empty cache, converts once", **cold})
    table = _common.ratio_table(rows, [("prompt_s", "to prompt s"), ("ready_s", "to model ready s")],
                                baseline="medchat (as shipped), warm", ratio_of=[("ready_s", False)])
    print(f"\nStart-up of `medchat` in tmux 120x40, median of {args.repeats} (target: prompt < 2 s)\n")
    print(table)
    for row in rows[1:]:
        print(f"- {row['name']}: {row.get('status') or '(no Ready status seen)'}")
    path = _common.write_json("startup", {"rows": rows, "samples": samples, "help_s": helps, "cold": cold,
                                          "table": table})
    print(f"\nJSON: {path}")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
