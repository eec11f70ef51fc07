"""Key bindings and where medchat keeps its files."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

KEYS: tuple[tuple[str, str], ...] = (
    ("Enter", "send the message"),
    ("Shift+Enter / Ctrl+J", "new line in the message"),
    ("Up / Down", "recall earlier messages (at the first / last line)"),
    ("Esc", "stop the answer being generated (the partial answer is kept); cancel an edit"),
    ("Ctrl+G", "regenerate the last answer"),
    ("Ctrl+L", "write the message in $EDITOR"),
    ("Shift+Tab, then e", "on a question: edit it and resend from there (the later turns are dropped)"),
    ("Ctrl+N", "new conversation"),
    ("Ctrl+B / F4", "show or hide the history sidebar (an overlay below 100 columns)"),
    ("Ctrl+F", "search the history"),
    ("Ctrl+T", "rename this conversation"),
    ("Ctrl+S", "export this conversation (Markdown or JSON)"),
    ("Ctrl+O", "copy the last answer (OSC 52: works over SSH)"),
    ("Page Up / Page Down", "scroll the conversation (it follows new text only at the bottom)"),
    ("Ctrl+Home / Ctrl+End", "top / bottom of the conversation"),
    ("Shift+Tab, then c / Enter", "on an answer: copy it / open its menu (regenerate, edit, copy)"),
    ("F2", "model info and file paths"),
    ("F8", "answer with another training run's adapter from here on (recorded with each answer)"),
    ("F3", "settings: temperature, top-p, max tokens, system prompt"),
    ("F5 / Ctrl+R", "metrics report (base vs fine-tuned)"),
    ("Ctrl+P", "command palette: every action by name, and Theme (saved in config.toml)"),
    ("F1", "this help"),
    ("Ctrl+Q", "quit"),
    ("In the history list", "Enter open · r rename · d delete · e export (Down from the search box)"),
    ("config.toml [keys]", "rebind any of these by id, e.g. regenerate = \"ctrl+g,f9\" (ids: README)"),
)


class HelpScreen(ModalScreen):
    BINDINGS = [Binding("escape,f1,q", "dismiss", "Close")]

    def __init__(self, paths: dict[str, str] | None = None) -> None:
        super().__init__(classes="dialog")
        self.paths = paths or {}

    def compose(self) -> ComposeResult:
        table = Table(box=None, show_header=False, padding=(0, 2, 0, 0))
        table.add_column(style="bold")
        table.add_column()
        for key, what in KEYS:
            table.add_row(key, what)
        with VerticalScroll(classes="dialog-box wide"):
            yield Static(Text("medchat — keys", style="bold"))
            yield Static(table)
            yield Static(
                Text(
                    "Next to each message: ● in domain · ◐ uncertain · ○ out of domain (how close the question "
                    "is to what the model was tuned on). Emergency notices come from fixed rules, not the model. "
                    "medchat is not a doctor: every answer ends with a reminder to consult a licensed physician."
                ),
                classes="legend",
            )
            if self.paths:
                paths = Table(box=None, show_header=False, padding=(0, 2, 0, 0))
                paths.add_column(style="bold")
                paths.add_column(overflow="fold")
                for name, value in self.paths.items():
                    paths.add_row(name, value)
                yield Static(paths, classes="paths")
            yield Static(Text("Esc closes", style="dim"))
