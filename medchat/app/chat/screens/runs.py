"""Pick the adapter (a training run) to answer with from here on."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import OptionList, Static
from textual.widgets.option_list import Option

from medchat.core.runs import RunDir, discover_runs, summarize

BASE_ONLY = "base model only (no adapter)"


def known_adapters() -> list[tuple[str, str]]:
    """(label, adapter directory) for every run with an adapter: the runs root and the shipped run."""
    out = []
    for run in map(RunDir, discover_runs()):
        if (run.adapter / "adapter_config.json").is_file():
            row = summarize(run)
            detail = " · ".join(str(v) for v in (row["preset"], row["status"], row["created"]) if v)
            out.append((f"{row['id']}  {detail}", str(run.adapter)))
    return out


class RunPickerScreen(ModalScreen):
    """Returns the chosen adapter directory, "" for the base model alone, or None (cancelled)."""

    BINDINGS = [Binding("escape", "dismiss_none", "Cancel")]

    def __init__(self, adapters: list[tuple[str, str]], current: str | None) -> None:
        super().__init__(classes="dialog")
        self.adapters = adapters
        self.current = str(Path(current)) if current else ""

    def compose(self) -> ComposeResult:
        options = [Option(("● " if path == self.current else "  ") + label, id=path)
                   for label, path in self.adapters]
        options.append(Option(("● " if not self.current else "  ") + BASE_ONLY, id=""))
        with Vertical(classes="dialog-box wide"):
            yield Static(Text("Answer with which run? (from the next message on)", style="bold"))
            yield OptionList(*options, id="menu")

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)

    def action_dismiss_none(self) -> None:
        self.dismiss(None)
