"""The messages of a conversation: the user's, with their out-of-domain indicator, and the streamed answers."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import Markdown, Static

from medchat.core.history import format_stats, status_marker

# The longest user message shown in full; longer ones are shown folded (the model gets all of it).
SHOW_CHARS = 4000

OOD_LABELS = {
    "in_domain": ("● in domain", "ood-in"),
    "uncertain": ("◐ uncertain", "ood-uncertain"),
    "out_of_domain": ("○ out of domain", "ood-out"),
    "checking": ("… checking", "ood-checking"),
    None: ("", "ood-none"),
}


class UserMessage(Vertical, can_focus=True):
    """One question; `e` (or Enter) on it asks to edit it and resend the conversation from there."""

    BINDINGS = [Binding("e,enter", "edit", "Edit and resend")]

    class EditRequested(Message):
        def __init__(self, widget: "UserMessage") -> None:
            super().__init__()
            self.widget = widget

    def action_edit(self) -> None:
        self.post_message(self.EditRequested(self))

    def __init__(self, text: str, *, level: str | None = None, message_id: int | None = None) -> None:
        super().__init__(classes="message user")
        self.text = text
        self.message_id = message_id
        self._level = level

    def compose(self) -> ComposeResult:
        yield Static(Text("You", style="bold"), classes="who")
        yield Static("", classes="ood")
        shown = self.text
        if len(shown) > SHOW_CHARS:
            more = len(shown) - SHOW_CHARS
            shown = shown[:SHOW_CHARS] + f"\n… ({more:,} more characters not shown)"
        yield Static(Text(shown), classes="body")

    def on_mount(self) -> None:
        self.set_level(self._level)

    def set_level(self, level: str | None, score: float | None = None) -> None:
        self._level = level
        label, css = OOD_LABELS.get(level, OOD_LABELS[None])
        ood = self.query_one(".ood", Static)
        for name in set(c for _, c in OOD_LABELS.values()):
            ood.remove_class(name)
        ood.add_class(css)
        ood.update(label)
        ood.tooltip = f"out-of-domain score {score:.2f}" if score is not None else None


class AssistantMessage(Vertical, can_focus=True):
    """One answer: emergency notices, truncation note, the Markdown body, the reminder and the footer."""

    BINDINGS = [
        Binding("c", "copy", "Copy answer"),
        Binding("enter", "menu", "Menu"),
    ]

    class CopyRequested(Message):
        def __init__(self, widget: "AssistantMessage") -> None:
            super().__init__()
            self.widget = widget

    class MenuRequested(Message):
        def __init__(self, widget: "AssistantMessage") -> None:
            super().__init__()
            self.widget = widget

    def __init__(self, *, reminder: str = "", message_id: int | None = None) -> None:
        super().__init__(classes="message assistant")
        self.text = ""
        self.status = "generating"
        self.stats: dict | None = None
        self.reminder = reminder
        self.message_id = message_id
        self._stream = None
        self.question: str = ""

    def compose(self) -> ComposeResult:
        yield Static(Text("medchat", style="bold"), classes="who")
        yield Static("", classes="notices")
        yield Static("", classes="dosing")
        yield Static("", classes="note")
        yield Markdown("", classes="body")
        yield Static("", classes="marker")
        yield Static("", classes="reminder")
        yield Static("", classes="footer")

    def on_mount(self) -> None:
        for name in ("notices", "dosing", "note", "marker", "reminder"):
            self.query_one(f".{name}", Static).display = False
        self.set_footer("generating… (Esc stops)")

    @property
    def body(self) -> Markdown:
        return self.query_one(".body", Markdown)

    def add_notice(self, kind: str, text: str) -> None:
        """A notice from the chat session, above the answer: emergencies in red first, the dosing note,
        then the other notes (out of domain, uncertain, limited safety checks, truncation)."""
        if kind == "emergency":
            self._append(".notices", f"⚠ {text}")
        elif kind == "dosing":
            self._append(".dosing", f"ⓘ {text}")
        else:
            self.add_note(f"ⓘ {text}" if kind == "truncated" else text)

    def _append(self, selector: str, line: str) -> None:
        box = self.query_one(selector, Static)
        previous = str(box.renderable) if box.display else ""
        box.update(Text((previous + "\n" if previous else "") + line))
        box.display = True

    def add_note(self, note: str) -> None:
        self._append(".note", note)

    def set_footer(self, text: str) -> None:
        self.query_one(".footer", Static).update(Text(text))

    async def write(self, chunk: str) -> None:
        if self._stream is None:
            self._stream = Markdown.get_stream(self.body)
        self.text += chunk
        await self._stream.write(chunk)

    async def finish(self, text: str, status: str, stats: dict | None, error: str | None = None) -> None:
        """Replace the streamed text with the final one and show marker, reminder and footer."""
        if self._stream is not None:
            await self._stream.stop()
            self._stream = None
        self.text = text
        self.status = status
        self.stats = stats
        await self.body.update(text)
        marker = self.query_one(".marker", Static)
        if status == "stopped":
            marker.update(Text("■ stopped — partial answer" if text else "■ stopped before any text"))
            marker.display = True
        elif status in ("interrupted", "streaming"):  # from the history: see medchat.core.history.status_marker
            marker.update(Text(f"⚠ {status_marker(status)}"))
            marker.display = True
        elif status == "error":
            marker.update(Text(f"✖ {error or 'generation failed'}"))
            marker.add_class("error")
            marker.display = True
        reminder = self.query_one(".reminder", Static)
        if self.reminder and self.reminder.strip() not in text:
            reminder.update(Text(self.reminder))
            reminder.display = True
        self.set_footer(format_stats(stats))

    def copy_text(self) -> str:
        """What "copy" puts on the clipboard: the answer and (once) the physician reminder."""
        text = self.text.rstrip()
        if self.reminder and self.reminder.strip() not in text:
            text = f"{text}\n\n{self.reminder}" if text else self.reminder
        return text

    def action_copy(self) -> None:
        self.post_message(self.CopyRequested(self))

    def action_menu(self) -> None:
        self.post_message(self.MenuRequested(self))
