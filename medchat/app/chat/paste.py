"""Bracketed paste that keeps the pasted text whole and in order.

Textual's input parser (8.x) ends a bracketed paste's text at the first ESC inside it and replays the rest
of that escape sequence as key presses, before the paste event: `AAA \\e[31mBBB\\e[0m CCC` arrives as the
keys `^[31mBBB^[0m CCC` followed by a paste of `AAA `. This parser takes everything between the paste
markers itself and hands it on as one Paste event; the prompt then removes the escape sequences
(medchat.core.textsafe). Everything outside a paste goes to Textual's parser unchanged.
"""

from __future__ import annotations

from typing import Iterable

from textual import events
from textual._xterm_parser import XTermParser
from textual.message import Message

PASTE_START = "\x1b[200~"
PASTE_END = "\x1b[201~"


class PasteSafeParser(XTermParser):
    def __init__(self, debug: bool = False) -> None:
        super().__init__(debug)
        self._paste: list[str] | None = None  # the text of a paste in progress
        self._carry = ""  # the start of a paste marker split across two reads
        self._carry_ticks = 0

    def feed(self, data: str) -> Iterable[Message]:
        data, self._carry, self._carry_ticks = self._carry + data, "", 0
        while data:
            if self._paste is not None:
                end = data.find(PASTE_END)
                if end < 0:
                    keep = _partial_marker(data, PASTE_END)
                    self._paste.append(data[:len(data) - keep])
                    self._carry = data[len(data) - keep:]
                    return
                self._paste.append(data[:end])
                yield events.Paste("".join(self._paste).replace("\x00", ""))
                self._paste, data = None, data[end + len(PASTE_END):]
                continue
            start = data.find(PASTE_START)
            if start < 0:
                keep = _partial_marker(data, PASTE_START)
                if keep:
                    data, self._carry = data[:-keep], data[-keep:]
                yield from self._keys(data)
                return
            yield from self._keys(data[:start])
            self._paste, data = [], data[start + len(PASTE_START):]

    def _keys(self, data: str) -> Iterable[Message]:
        if data:  # Textual's parser reads an empty feed as the end of input
            yield from super().feed(data)

    def tick(self) -> Iterable[Message]:
        """A read that ended in what looked like the start of a paste marker and was not continued: pass it
        on. The driver ticks right after each read and then about every 0.1 s: the second tick decides."""
        if self._carry and self._paste is None:
            self._carry_ticks += 1
            if self._carry_ticks > 1:
                carry, self._carry = self._carry, ""
                yield from super().feed(carry)
        yield from super().tick()


def _partial_marker(data: str, marker: str) -> int:
    """How many characters at the end of `data` could be the start of `marker`."""
    for size in range(min(len(marker) - 1, len(data)), 0, -1):
        if data.endswith(marker[:size]):
            return size
    return 0


def use_paste_safe_parser() -> None:
    """Make Textual's terminal drivers read input with PasteSafeParser. The drivers construct their parser
    by this module-level name and offer no hook for another one."""
    from textual.drivers import linux_driver, linux_inline_driver

    linux_driver.XTermParser = PasteSafeParser
    linux_inline_driver.XTermParser = PasteSafeParser
