"""Model info: what is loaded (base, adapter, quantization, device, dtype, load time) and file paths."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static


def _fmt(key: str, value) -> str:
    if value is None or value == "":
        return "–"
    if key.startswith("params") and isinstance(value, int):
        return f"{value:,} ({value / 1e6:.1f}M)"
    if key.endswith("seconds") and isinstance(value, (int, float)):
        return f"{value:.1f} s"
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items()) or "–"
    return str(value)


class ModelInfoScreen(ModalScreen):
    BINDINGS = [Binding("escape,f2,q", "dismiss", "Close")]

    def __init__(self, status: str, info: dict | None, extra: dict[str, str]) -> None:
        super().__init__(classes="dialog")
        self.status = status
        self.info = info
        self.extra = extra

    def compose(self) -> ComposeResult:
        table = Table(box=None, show_header=False, padding=(0, 2, 0, 0))
        table.add_column(style="bold")
        table.add_column(overflow="fold")
        for key, value in self.extra.items():
            if key in ("guard", "settings"):
                table.add_row(key, value)
        for key, value in (self.info or {}).items():
            if key == "extra" and not value:
                continue
            table.add_row(key.replace("_", " "), _fmt(key, value))
        for key, value in self.extra.items():
            if key not in ("guard", "settings"):
                table.add_row(key, value)
        with VerticalScroll(classes="dialog-box wide"):
            yield Static(Text("Model", style="bold"))
            yield Static(Text(self.status), classes="status")
            yield Static(table)
            yield Static(Text("Esc closes", style="dim"))
