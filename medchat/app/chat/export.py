"""Export a conversation to Markdown or JSON: a saved one from the history, an incognito one from the screen."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from textual.widget import Widget

from medchat.core.history import (
    Conversation,
    HistoryStore,
    Message,
    conversation_markdown,
    write_export,
)
from medchat.core.settings import ChatSettings
from medchat.app.chat.widgets import AssistantMessage, UserMessage


def export_conversation(store: HistoryStore | None, conv: Conversation | None, path: Path, fmt: str, *,
                        reminder: str, shown: Iterable[Widget], settings: ChatSettings) -> Path:
    """Write the conversation to `path`; raises HistoryError with a readable message."""
    if conv is not None and store is not None:
        return store.export(conv.id, path, fmt, reminder=reminder)
    return write_export(path, memory_export(shown, settings, fmt, reminder))


def memory_export(shown: Iterable[Widget], settings: ChatSettings, fmt: str, reminder: str) -> str:
    """Incognito export: built from what is on screen (nothing was written to disk before)."""
    conv = Conversation(id=0, title="Incognito conversation", created="", updated="", settings=settings.as_dict())
    messages = []
    for i, widget in enumerate(shown):
        if isinstance(widget, UserMessage):
            messages.append(Message(i, 0, "user", widget.text, ""))
        elif isinstance(widget, AssistantMessage):
            status = widget.status if widget.status in ("stopped", "error") else "complete"
            messages.append(Message(i, 0, "assistant", widget.text, "", status, widget.stats))
    if fmt == "json":
        data = conv.as_dict() | {"messages": [m.as_dict() for m in messages]}
        return json.dumps(data, ensure_ascii=False, indent=2) + "\n"
    return conversation_markdown(conv, messages, reminder=reminder)
