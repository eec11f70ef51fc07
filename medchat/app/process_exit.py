"""Ending a front end's process quickly once its work is saved and printed.

Python's own teardown after a model was loaded takes seconds (the garbage collector walks the model's and
the tokenizer's objects, module by module), and the user waits for it after Ctrl+Q or Ctrl-C. Every
history write is committed when it happens, so nothing is left to do at that point but flush the output.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import NoReturn


def exit_now(code: int) -> NoReturn:
    """Flush stdout, stderr and logging, then end the process with `code`, skipping the interpreter's
    teardown. Where something else owns the output streams (a test runner, CliRunner, a host program that
    redirected them) this is a plain `sys.exit(code)`: the process is not ours to end."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed terminal or pipe: nothing left to show anyone
            pass
    if sys.stdout is sys.__stdout__ and sys.stderr is sys.__stderr__:
        logging.shutdown()
        os._exit(code)
    sys.exit(code)
