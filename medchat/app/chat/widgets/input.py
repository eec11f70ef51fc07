"""The prompt box: multi-line, Enter sends, Shift+Enter / Ctrl+J add a newline, Up/Down recall prompts."""

from __future__ import annotations

from textual import events
from textual.message import Message
from textual.widgets import TextArea

from medchat.core.textsafe import strip_control


class ChatInput(TextArea):
    """A TextArea that sends on Enter and keeps a history of sent prompts."""

    class Submitted(Message):
        def __init__(self, chat_input: "ChatInput", text: str) -> None:
            super().__init__()
            self.chat_input = chat_input
            self.text = text

        @property
        def control(self) -> "ChatInput":
            return self.chat_input

    class ScrollChat(Message):
        """Page Up / Page Down in the prompt scroll the conversation instead."""

        def __init__(self, direction: int) -> None:
            super().__init__()
            self.direction = direction

    def __init__(self, *, id: str | None = None, placeholder: str = "") -> None:
        super().__init__(
            id=id,
            soft_wrap=True,
            show_line_numbers=False,
            tab_behavior="focus",
            highlight_cursor_line=False,
            placeholder=placeholder,
        )
        self.prompt_history: list[str] = []
        self._recall_index: int | None = None
        self._draft = ""

    def remember(self, text: str) -> None:
        if text and (not self.prompt_history or self.prompt_history[-1] != text):
            self.prompt_history.append(text)
        self._recall_index = None
        self._draft = ""

    def set_history(self, prompts: list[str]) -> None:
        self.prompt_history = list(prompts)
        self._recall_index = None

    def _show(self, text: str, at_end: bool = True) -> None:
        self.load_text(text)
        if at_end:
            self.move_cursor(self.document.end)
        else:
            self.move_cursor((0, len(self.document.get_line(0))))

    def recall_previous(self) -> bool:
        if not self.prompt_history:
            return False
        if self._recall_index is None:
            self._draft = self.text
            self._recall_index = len(self.prompt_history)
        if self._recall_index == 0:
            return True
        self._recall_index -= 1
        self._show(self.prompt_history[self._recall_index], at_end=False)
        return True

    def recall_next(self) -> bool:
        if self._recall_index is None:
            return False
        self._recall_index += 1
        if self._recall_index >= len(self.prompt_history):
            self._recall_index = None
            self._show(self._draft)
        else:
            self._show(self.prompt_history[self._recall_index])
        return True

    async def _on_key(self, event: events.Key) -> None:
        key = event.key
        if key == "enter":
            event.stop()
            event.prevent_default()
            self.post_message(self.Submitted(self, self.text))
            return
        if key in ("shift+enter", "ctrl+j", "alt+enter"):
            event.stop()
            event.prevent_default()
            self.insert("\n")
            return
        scroll = {"pageup": -1, "pagedown": 1, "ctrl+home": -2, "ctrl+end": 2}.get(key)
        if scroll is not None:
            event.stop()
            event.prevent_default()
            self.post_message(self.ScrollChat(scroll))
            return
        if key == "up" and self.cursor_location[0] == 0 and not self.selection_active():
            if self.recall_previous():
                event.stop()
                event.prevent_default()
                return
        if key == "down" and self.cursor_location[0] == self.document.line_count - 1:
            if self.recall_next():
                event.stop()
                event.prevent_default()
                return
        await super()._on_key(event)

    def selection_active(self) -> bool:
        return self.selection.start != self.selection.end

    async def _on_paste(self, event: events.Paste) -> None:
        # Pasted text may carry escape sequences or control characters: keep only what is printable.
        event.stop()
        event.prevent_default()
        if self.read_only:
            return
        text = strip_control(event.text.replace("\r", "\n"))
        if text and (result := self._replace_via_keyboard(text, *self.selection)):
            self.move_cursor(result.end_location)
