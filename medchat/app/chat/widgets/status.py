"""The line under the conversation (loading, generating, ready) and the emergency notice pinned above the
prompt while its answer streams."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import LoadingIndicator, Static


class StatusBar(Horizontal):
    """What the app is doing; `ready_text` is shown whenever it is idle."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.ready_text = "Ready"

    def compose(self) -> ComposeResult:
        yield LoadingIndicator(id="loading")
        yield Static("", id="status")

    def show(self, text: str, *, loading: bool = False, error: bool = False) -> None:
        status = self.query_one("#status", Static)
        status.update(Text(text))
        status.set_class(error, "error")
        self.query_one("#loading").display = loading

    def show_ready(self, ready_text: str | None = None) -> None:
        if ready_text is not None:
            self.ready_text = ready_text
        self.show(self.ready_text)

    @property
    def loading(self) -> bool:
        return bool(self.query_one("#loading").display)

    @property
    def text(self) -> str:
        return str(self.query_one("#status", Static).render())


class PinnedNotice(Static):
    """A copy of the emergency notice, docked above the prompt so that a long answer (or a small terminal)
    cannot scroll it out of sight; it goes when the user scrolls or sends the next message. The notice also
    stays in the answer itself."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__("", id=id)
        self.display = False

    def pin(self, text: str) -> None:
        shown = str(self.render()) if self.display else ""
        line = f"⚠ {text}"
        if line not in shown:
            self.update(Text(f"{shown}\n{line}" if shown else line))
        self.display = True

    def unpin(self) -> None:
        self.display = False
        self.update("")
