"""What can be done to a conversation from the chat: rename, delete and export it, each through its dialog
(from the keys, the command palette or the history sidebar's own actions), and give it new settings (F3)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from medchat.core.history import Conversation, HistoryError, export_filename
from medchat.core.settings import ChatSettings, save_defaults
from medchat.core.textsafe import strip_control
from medchat.app.chat.export import export_conversation
from medchat.app.chat.screens import ConfirmScreen, ExportScreen, TextPromptScreen

if TYPE_CHECKING:
    from medchat.app.chat.app import MedchatApp


class ConversationActions:
    def __init__(self, app: MedchatApp):
        self.app = app

    def run(self, action: str, conv: Conversation | None) -> None:
        """The sidebar's "rename", "delete" or "export" for `conv`."""
        {"rename": self.rename, "delete": self.delete, "export": self.export}[action](conv)

    def rename(self, conv: Conversation | None) -> None:
        app = self.app
        if conv is None or app.store is None:
            app.notify("Nothing to rename yet: send a message first." if app.store else "History is off.")
            return

        def done(title: str | None) -> None:
            title = strip_control(title or "").strip()
            if not title:
                return
            try:
                renamed = app.store.rename_conversation(conv.id, title)
            except HistoryError as exc:
                app.notify(str(exc), severity="error")
                return
            if app.conversation and app.conversation.id == conv.id:
                app.conversation = renamed
                app.update_title()
            app.refresh_history(highlight=conv.id)

        app.push_screen(TextPromptScreen("Rename conversation", conv.title), done)

    def delete(self, conv: Conversation | None) -> None:
        app = self.app
        if conv is None or app.store is None:
            return

        async def done(yes: bool | None) -> None:
            if not yes:
                return
            if app.generating and app.conversation and app.conversation.id == conv.id:
                app.notify("Stop the answer (Esc) before deleting this conversation.", severity="warning")
                return
            try:
                app.store.delete_conversation(conv.id)
            except HistoryError as exc:
                app.notify(str(exc), severity="error")
                return
            if app.conversation and app.conversation.id == conv.id:
                await app.reset_conversation()
            app.refresh_history()
            app.notify(f"Deleted “{conv.title}”.")

        app.push_screen(ConfirmScreen(f"Delete “{conv.title}” and all its messages?"), done)

    def export(self, conv: Conversation | None) -> None:
        app = self.app
        if app.store is None and app.turns:
            conv = None  # incognito: export from memory
        elif conv is None:
            app.notify("Nothing to export yet: send a message first.")
            return
        default = Path.cwd() / (export_filename(conv) if conv else "medchat-incognito.md")

        def done(choice: tuple[str, Path] | None) -> None:
            if choice is None:
                return
            fmt, path = choice
            shown = app.chat_view.query("UserMessage, AssistantMessage")
            try:
                out = export_conversation(app.store, conv, path, fmt, reminder=app.reminder, shown=shown,
                                          settings=app.settings)
            except HistoryError as exc:
                app.notify(str(exc), severity="error", timeout=10)
                return
            app.notify(f"Exported to {out}", title="Export", timeout=8)

        app.push_screen(ExportScreen(default), done)

    def apply_settings(self, settings: ChatSettings, as_default: bool) -> None:
        """F3's result: the conversation's settings (saved with it), and with `as_default` config.toml's."""
        app = self.app
        app.settings = settings
        if app.conversation is not None and app.store is not None:
            data = settings.as_dict() | {"system_prompt": settings.effective_system_prompt}
            try:
                app.store.update_settings(app.conversation.id, data)
            except HistoryError as exc:
                app.history_failed(exc)
        if not as_default:
            app.notify("Settings saved for this conversation." if app.conversation else
                       "Settings apply to this conversation.")
            return
        try:
            path = save_defaults(settings)
        except OSError as exc:
            app.notify(f"Could not write the config file: {exc}", severity="error")
            return
        app.default_settings = settings
        app.notify(f"Saved as defaults in {path}")
