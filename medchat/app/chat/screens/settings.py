"""Settings for this conversation (and optionally the defaults for new ones)."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static, TextArea

from medchat.core.textsafe import strip_control
from medchat.core.settings import GENERATION_FIELDS, ChatSettings, SettingsError, field_help


class SettingsScreen(ModalScreen):
    """Returns (ChatSettings, save_as_default: bool) or None."""

    BINDINGS = [Binding("escape", "cancel", "Cancel"), Binding("ctrl+s", "save", "Save", priority=True)]

    def __init__(self, settings: ChatSettings, *, allow_default: bool = True) -> None:
        super().__init__(classes="dialog")
        self.settings = settings
        self.allow_default = allow_default

    def compose(self) -> ComposeResult:
        with VerticalScroll(classes="dialog-box wide", id="settings-box"):
            yield Static(Text("Settings for this conversation", style="bold"), classes="heading")
            for name in GENERATION_FIELDS:
                with Horizontal(classes="field"):
                    yield Label(name.replace("_", " "), classes="field-label")
                    yield Input(str(getattr(self.settings, name)), id=f"set-{name}", classes="field-input",
                                compact=True)
                    yield Static(Text(field_help(name), style="dim"), classes="field-help")
            yield Label("system prompt", classes="prompt-label")
            yield TextArea(self.settings.effective_system_prompt, id="set-system_prompt", soft_wrap=True)
            yield Static("", id="settings-error")
            with Horizontal(classes="buttons"):
                yield Button("Save ^s", variant="primary", id="save", compact=True)
                if self.allow_default:
                    yield Button("Save as default", id="default", compact=True)
                yield Button("Built-in prompt", id="reset-prompt", compact=True)
                yield Button("Cancel", id="cancel", compact=True)

    def on_mount(self) -> None:
        self.query_one(f"#set-{GENERATION_FIELDS[0]}", Input).focus()

    def _collect(self) -> ChatSettings | None:
        data: dict = {name: self.query_one(f"#set-{name}", Input).value for name in GENERATION_FIELDS}
        from medchat.core.settings import default_system_prompt

        prompt = strip_control(self.query_one("#set-system_prompt", TextArea).text).strip()
        # The built-in prompt (or an empty box) is stored as "use the built-in one", so it follows upgrades.
        data["system_prompt"] = None if prompt in ("", default_system_prompt().strip()) else prompt
        try:
            return ChatSettings.from_dict(data)
        except SettingsError as exc:
            error = self.query_one("#settings-error", Static)
            error.update(Text(str(exc)))
            error.add_class("error")
            return None

    def action_save(self) -> None:
        settings = self._collect()
        if settings is not None:
            self.dismiss((settings, False))

    def action_cancel(self) -> None:
        self.dismiss(None)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.action_save()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "cancel":
            self.dismiss(None)
        elif event.button.id == "reset-prompt":
            from medchat.core.settings import default_system_prompt

            self.query_one("#set-system_prompt", TextArea).load_text(default_system_prompt())
        else:
            settings = self._collect()
            if settings is not None:
                self.dismiss((settings, event.button.id == "default"))
