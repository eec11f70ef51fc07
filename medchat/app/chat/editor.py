"""Compose a long prompt in the user's editor ($VISUAL, then $EDITOR, as git does)."""

from __future__ import annotations

import os
import shlex
import subprocess
import tempfile
from pathlib import Path

from medchat.core.textsafe import strip_control


class EditorError(Exception):
    """The editor is not set, not found, or failed: the message says which and what to do."""


def editor_command() -> list[str]:
    value = os.environ.get("VISUAL") or os.environ.get("EDITOR")
    if not value:
        raise EditorError("Set $EDITOR (for example `export EDITOR=nano`) to compose a message in your editor.")
    return shlex.split(value)


def edit_text(text: str) -> str:
    """Open `text` in the editor and return what the user saved (escape sequences removed). The draft is
    medical text: its temporary file is private (0600) and deleted afterwards."""
    command = editor_command()
    fd, name = tempfile.mkstemp(prefix="medchat-", suffix=".md")
    path = Path(name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        try:
            result = subprocess.run([*command, str(path)], check=False)
        except OSError as exc:
            raise EditorError(f"Could not start the editor {command[0]!r}: {exc.strerror}. Check $EDITOR.") from exc
        if result.returncode != 0:
            raise EditorError(f"The editor {command[0]!r} exited with status {result.returncode}; the draft is unchanged.")
        return strip_control(path.read_text(encoding="utf-8", errors="replace")).rstrip("\n")
    finally:
        path.unlink(missing_ok=True)
