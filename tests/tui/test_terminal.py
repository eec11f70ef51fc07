"""medchat in a real terminal (tmux): it must not outlive a terminal that hangs up, and a hang-up or a kill
during an answer keeps what was shown."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
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


# The real app in a real terminal, on the scripted engine: an answer that streams a few words and then waits
# (as a model in the middle of a long answer) until it is stopped.
SCRIPTED_APP = """
import sys
sys.path.insert(0, sys.argv[1])
from session_fakes import FakeEngine, FakeGuard
from medchat.app.chat.app import MedchatApp
from medchat.app.process_exit import exit_now

engine = FakeEngine([{"chunks": ["Rest, ", "fluids ", "and paracetamol."], "hang": True}])
app = MedchatApp(None, history_path=sys.argv[2], engine_factory=lambda: engine, guard_factory=FakeGuard,
                 cursor_blink=False)
app.run()
exit_now(app.return_code or 0)
"""


class Terminal:
    """One private tmux server; each `start` runs the scripted app in a new session of it."""

    def __init__(self, history: Path):
        # a server of its own per test: one that the last test killed may still be going away
        self.tmux = ["tmux", "-L", f"medchat-hangup-{os.getpid()}-{uuid.uuid4().hex[:8]}"]
        self.history = history
        subprocess.run([*self.tmux, "new-session", "-d", "-s", "keep"], check=True)

    def start(self, name: str, script: str = SCRIPTED_APP) -> int:
        tests = Path(__file__).resolve().parents[1]
        command = " ".join(shlex.quote(part) for part in (sys.executable, "-c", script, str(tests),
                                                             str(self.history)))
        subprocess.run([*self.tmux, "new-session", "-d", "-s", name, "-x", "100", "-y", "30", command], check=True)
        self.wait_for(name, "Ready")
        panes = subprocess.run([*self.tmux, "list-panes", "-t", name, "-F", "#{pane_pid}"], capture_output=True,
                               text=True, check=True)
        return int(panes.stdout.split()[0])

    def keys(self, name: str, *keys: str, literal: bool = False) -> None:
        subprocess.run([*self.tmux, "send-keys", "-t", name, *(["-l"] if literal else []), *keys], check=True)

    def wait_for(self, name: str, text: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        screen = ""
        while time.monotonic() < deadline:
            screen = subprocess.run([*self.tmux, "capture-pane", "-p", "-t", name], capture_output=True,
                                    text=True).stdout
            if text in screen:
                return screen
            time.sleep(0.2)
        raise AssertionError(f"{text!r} never appeared:\n{screen}")

    def ask(self, name: str, question: str) -> None:
        self.keys(name, question, literal=True)
        self.keys(name, "Enter")
        self.wait_for(name, "paracetamol.")  # shown; the answer is still being generated

    def close(self) -> None:
        subprocess.run([*self.tmux, "kill-server"], capture_output=True)


def _wait_gone(pid: int, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not _alive(pid)


def _wait_saved(history: Path, text: str) -> None:
    """Until a message with `text` is committed (read with a plain connection: nothing marked or migrated)."""
    import contextlib
    import sqlite3

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.closing(sqlite3.connect(history)) as db:
            if db.execute("SELECT 1 FROM messages WHERE content = ?", (text,)).fetchone():
                return
        time.sleep(0.1)
    raise AssertionError(f"{text!r} was never saved")


def _last_answer(history: Path):
    from medchat.core.history import HistoryStore

    with HistoryStore(history) as store:
        [conv] = store.list_conversations()
        return store.messages(conv.id)[-1]


def test_a_hang_up_mid_answer_saves_what_was_shown_like_ctrl_q(tmp_path):
    history = tmp_path / "history.sqlite3"
    terminal = Terminal(history)
    try:
        pid = terminal.start("chat")
        terminal.ask("chat", "I have a cold")
        subprocess.run([*terminal.tmux, "kill-session", "-t", "chat"], check=True)  # the window is closed
        assert _wait_gone(pid), "medchat kept running after its terminal was closed"
    finally:
        terminal.close()
    answer = _last_answer(history)
    assert (answer.role, answer.status, answer.content) == ("assistant", "stopped", "Rest, fluids and paracetamol.")


def test_a_killed_chat_keeps_the_partial_answer_and_shows_it_interrupted_when_reopened(tmp_path):
    history = tmp_path / "history.sqlite3"
    terminal = Terminal(history)
    try:
        pid = terminal.start("chat")
        terminal.ask("chat", "I have a cold")
        _wait_saved(history, "Rest, fluids and paracetamol.")  # the save within 0.5 s of the last chunk
        os.kill(pid, signal.SIGKILL)
        assert _wait_gone(pid)
        terminal.start("again")
        terminal.keys("again", "C-b")  # the history list
        terminal.wait_for("again", "Enter open")
        terminal.keys("again", "Down")  # its only conversation
        terminal.keys("again", "Enter")
        screen = terminal.wait_for("again", "interrupted")
        assert "Rest, fluids and paracetamol." in screen, screen
    finally:
        terminal.close()
    answer = _last_answer(history)
    assert (answer.status, answer.content) == ("interrupted", "Rest, fluids and paracetamol.")


def test_a_hang_up_ends_the_process_even_when_the_terminal_restore_blocks(tmp_path):
    """Closed right as the bundled model was ready, Textual's exit once blocked for ever on its output thread
    (seen under tmux kill-session), so medchat outlived its window. Here that restore is made to block: the
    hang-up still ends the process."""
    blocking = SCRIPTED_APP.replace("app.run()", "import threading\n"
                                    "from textual.drivers.linux_driver import LinuxDriver\n"
                                    "LinuxDriver.close = lambda self: threading.Event().wait()\n"
                                    "app.run()")
    terminal = Terminal(tmp_path / "history.sqlite3")
    try:
        pid = terminal.start("chat", script=blocking)
        subprocess.run([*terminal.tmux, "kill-session", "-t", "chat"], check=True)
        gone = _wait_gone(pid, timeout=15)
        if not gone:
            os.kill(pid, signal.SIGKILL)  # leave no orphan
        assert gone, "medchat kept running after its window closed"
    finally:
        terminal.close()
