"""Small modal dialogs: rename, confirm, export, and the per-answer menu."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, OptionList, Static
from textual.widgets.option_list import Option


class _Dialog(ModalScreen):
    BINDINGS = [Binding("escape", "dismiss_none", "Cancel")]

    def action_dismiss_none(self) -> None:
        self.dismiss(None)


class TextPromptScreen(_Dialog):
    """Ask for one line of text (e.g. a new title). Returns the text or None."""

    def __init__(self, title: str, value: str = "", placeholder: str = "") -> None:
        super().__init__(classes="dialog")
        self.title_text = title
        self.value = value
        self.placeholder = placeholder

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog-box"):
            yield Static(Text(self.title_text, style="bold"))
            yield Input(value=self.value, placeholder=self.placeholder, id="prompt-input")
            with Horizontal(classes="buttons"):
                yield Button("OK", variant="primary", id="ok")
                yield Button("Cancel", id="cancel")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(self.query_one(Input).value if event.button.id == "ok" else None)


class ConfirmScreen(_Dialog):
    """Yes/no. Returns True or None."""

    BINDINGS = [Binding("y", "yes", "Yes"), Binding("n,escape", "dismiss_none", "No")]

    def __init__(self, question: str, yes: str = "Delete") -> None:
        super().__init__(classes="dialog")
        self.question = question
        self.yes = yes

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog-box"):
            yield Static(Text(self.question))
            with Horizontal(classes="buttons"):
                yield Button(f"{self.yes} (y)", variant="error", id="yes")
                yield Button("Cancel (n)", id="no")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def action_yes(self) -> None:
        self.dismiss(True)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(True if event.button.id == "yes" else None)


class ExportScreen(_Dialog):
    """Choose a file and a format. Returns (format, path) or None."""

    def __init__(self, default_path: Path) -> None:
        super().__init__(classes="dialog")
        self.default_path = default_path

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog-box"):
            yield Static(Text("Export this conversation", style="bold"))
            yield Input(value=str(self.default_path), id="export-path")
            with Horizontal(classes="buttons"):
                yield Button("Markdown", variant="primary", id="md")
                yield Button("JSON", id="json")
                yield Button("Cancel", id="cancel")

    def _path(self, fmt: str) -> Path:
        path = Path(self.query_one(Input).value.strip() or str(self.default_path)).expanduser()
        if path.suffix.lower() in (".md", ".json", ""):
            path = path.with_suffix(".json" if fmt == "json" else ".md")
        return path

    def on_input_submitted(self, event: Input.Submitted) -> None:
        fmt = "json" if event.value.strip().lower().endswith(".json") else "md"
        self.dismiss((fmt, self._path(fmt)))

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "cancel":
            self.dismiss(None)
        else:
            self.dismiss((event.button.id, self._path(event.button.id)))


class MessageMenuScreen(_Dialog):
    """Actions for one answer. Returns the chosen action id or None."""

    ACTIONS = (
        ("copy", "Copy this answer (with the reminder)"),
        ("copy_raw", "Copy this answer as Markdown (without the reminder)"),
        ("copy_question", "Copy the question"),
        ("regenerate", "Regenerate this answer (later turns are dropped)"),
        ("edit", "Edit the question and resend from there (later turns are dropped)"),
    )

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog-box"):
            yield Static(Text("Answer", style="bold"))
            yield OptionList(*[Option(label, id=key) for key, label in self.ACTIONS], id="menu")

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)
