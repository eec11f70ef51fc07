"""medchat in a real terminal (tmux): it must not outlive a terminal that hangs up."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_quits_when_the_terminal_hangs_up_behind_a_parent_like_make(tiny_model_dir, tmp_path):
    """A closed window or a dropped SSH session sends SIGHUP to the session leader only. Under `make chat`
    that is make, which waits for medchat; medchat must notice the dead terminal by itself."""
    tmux = ["tmux", "-L", f"medchat-test-{os.getpid()}"]
    medchat = Path(sys.executable).with_name("medchat")
    # sh stands in for make: it survives the hangup (its trap) and waits for its child.
    command = f"sh -c 'trap : HUP; {medchat} --base {tiny_model_dir} --no-adapter --no-history'"
    subprocess.run([*tmux, "new-session", "-d", "-x", "100", "-y", "30", command], check=True)
    try:
        deadline = time.monotonic() + 60
        screen = ""
        while "Ask a medical question" not in screen and time.monotonic() < deadline:
            time.sleep(0.5)
            screen = subprocess.run([*tmux, "capture-pane", "-p"], capture_output=True, text=True).stdout
        assert "Ask a medical question" in screen, screen
        shell = subprocess.run([*tmux, "list-panes", "-F", "#{pane_pid}"], capture_output=True, text=True).stdout
        child = subprocess.run(["pgrep", "-P", shell.strip()], capture_output=True, text=True).stdout.split()
        assert len(child) == 1
        pid = int(child[0])
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)
    deadline = time.monotonic() + 15
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    survived = _alive(pid)
    if survived:
        os.kill(pid, signal.SIGKILL)  # leave no orphan spinning on a dead terminal
    assert not survived, "medchat kept running after its terminal hung up"


def _start_chat(tmux: list[str], model_dir: Path, env: str = "") -> str:
    """medchat (this checkout's) in a fresh tmux at 80x24; returns the screen once the prompt is there."""
    command = (f"{env} {sys.executable} -c 'from medchat.app.cli import main; main()' --base {model_dir} "
               "--no-adapter --no-history")
    subprocess.run([*tmux, "new-session", "-d", "-x", "80", "-y", "24", command], check=True)
    return _wait_for(tmux, "Ask a medical question", 60)


def _wait_for(tmux: list[str], text: str, seconds: float) -> str:
    deadline = time.monotonic() + seconds
    screen = ""
    while text not in screen and time.monotonic() < deadline:
        time.sleep(0.3)
        screen = subprocess.run([*tmux, "capture-pane", "-p"], capture_output=True, text=True).stdout
    return screen


def test_a_bracketed_paste_with_escape_sequences_arrives_clean_and_in_order(tiny_model_dir):
    """The issue's reproduction in a real terminal: tmux pastes with the bracketed-paste markers."""
    tmux = ["tmux", "-L", f"medchat-paste-{os.getpid()}"]
    try:
        screen = _start_chat(tmux, tiny_model_dir)
        assert "Ask a medical question" in screen, screen
        subprocess.run([*tmux, "set-buffer", "AAA \x1b[31mBBB\x1b[0m CCC"], check=True)
        subprocess.run([*tmux, "paste-buffer", "-p"], check=True)
        screen = _wait_for(tmux, "CCC", 20)
        assert "AAA BBB CCC" in screen and "^[" not in screen, screen
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)


def test_ctrl_l_hands_the_terminal_to_editor_and_takes_the_text_back(tiny_model_dir, tmp_path):
    editor = tmp_path / "editor.sh"
    editor.write_text('#!/bin/sh\nprintf "composed in the editor" > "$1"\n')
    editor.chmod(0o755)
    tmux = ["tmux", "-L", f"medchat-editor-{os.getpid()}"]
    try:
        screen = _start_chat(tmux, tiny_model_dir, env=f"EDITOR={editor}")
        assert "Ask a medical question" in screen, screen
        subprocess.run([*tmux, "send-keys", "C-l"], check=True)
        screen = _wait_for(tmux, "composed in the editor", 20)
        assert "composed in the editor" in screen and "Ask a medical question" not in screen, screen
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)
