"""The history sidebar: search box and the list of saved conversations."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import Input, Label, ListItem, ListView, Static

from medchat.core.history import Conversation, HistoryStore
from medchat.core.textsafe import strip_control


def short_date(iso: str) -> str:
    """Stored times are UTC ISO-8601; show them in local time."""
    from datetime import datetime

    try:
        return datetime.fromisoformat(iso).astimezone().strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return iso.replace("T", " ")[:16]


class ConversationItem(ListItem):
    def __init__(self, conversation: Conversation, snippet: str = "") -> None:
        super().__init__()
        self.conversation = conversation
        self.snippet = snippet

    def compose(self) -> ComposeResult:
        c = self.conversation
        yield Label(Text(strip_control(c.title) or f"Conversation {c.id}", no_wrap=True, overflow="ellipsis"), classes="title")
        detail = self.snippet or f"{short_date(c.updated)} · {c.message_count} msg{'s' if c.message_count != 1 else ''}"
        yield Label(Text(detail, no_wrap=True, overflow="ellipsis"), classes="detail")


class ConversationList(ListView):
    BINDINGS = [
        Binding("r", "rename", "Rename"),
        Binding("d,delete", "delete", "Delete"),
        Binding("e", "export", "Export"),
    ]

    class Action(Message):
        def __init__(self, action: str, conversation: Conversation) -> None:
            super().__init__()
            self.action = action
            self.conversation = conversation

    def _act(self, action: str) -> None:
        item = self.highlighted_child
        if isinstance(item, ConversationItem):
            self.post_message(self.Action(action, item.conversation))

    def action_rename(self) -> None:
        self._act("rename")

    def action_delete(self) -> None:
        self._act("delete")

    def action_export(self) -> None:
        self._act("export")


class SearchBox(Input):
    """The history search: Down (or Enter) moves to the results."""

    BINDINGS = [Binding("down", "to_results", "Results", show=False)]

    def action_to_results(self) -> None:
        self.screen.query_one(ConversationList).focus()


class HistorySidebar(Vertical):
    """The saved conversations, filtered by the search box; posts Open when one is chosen."""

    class Open(Message):
        def __init__(self, conversation: Conversation) -> None:
            super().__init__()
            self.conversation = conversation

    def __init__(self, *, incognito: bool = False, id: str | None = None) -> None:
        super().__init__(id=id)
        self.incognito = incognito
        self.store: HistoryStore | None = None  # set by the app once the database is open
        self.current_id: int | None = None

    def compose(self) -> ComposeResult:
        yield Static(Text("History", style="bold"), classes="heading")
        if self.incognito:
            yield Static(Text("Incognito (--no-history): nothing is saved."), classes="incognito")
            return
        yield SearchBox(placeholder="Search…", id="history-search")
        yield ConversationList(id="history-list")
        yield Static(Text("Enter open · r rename · d delete · e export"), classes="hint")

    def refresh_list(self, highlight: int | None = None) -> None:
        """List the conversations matching the search box, the current one highlighted."""
        if self.store is None or self.incognito or not self.is_attached:  # not attached: the app is closing
            return
        if highlight is not None:
            self.current_id = highlight
        query = self.query_one(SearchBox).value
        self.show([(h.conversation, h.snippet) for h in self.store.search(query, limit=200)], self.current_id)

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        self.refresh_list()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.query_one(ConversationList).focus()

    def on_list_view_selected(self, event: ListView.Selected) -> None:
        event.stop()
        if isinstance(event.item, ConversationItem):
            self.post_message(self.Open(event.item.conversation))

    def show(self, hits: list[tuple[Conversation, str]], current_id: int | None = None) -> None:
        if self.incognito:
            return
        listing = self.query_one(ConversationList)
        listing.clear()
        items = [ConversationItem(c, s) for c, s in hits]
        if not items:
            listing.append(ListItem(Label("(no conversations)"), disabled=True))
            return
        listing.extend(items)
        listing.index = next((i for i, item in enumerate(items) if item.conversation.id == current_id), 0)
