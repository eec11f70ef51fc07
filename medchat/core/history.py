"""SQLite conversation store: conversations and their messages, headless (no Textual).

- WAL journal, ``synchronous=NORMAL`` (a committed message survives a crash or a SIGKILL of the writer).
- The schema is versioned with ``PRAGMA user_version``; :data:`MIGRATIONS` upgrades old files in place.
- The database and its ``-wal``/``-shm`` companions are private to the user (mode 0600).
- Every message is committed on its own. The answer being generated is a row in state ``streaming`` that
  the chat session rewrites as the text grows (see :meth:`HistoryStore.save_partial`), so a kill keeps
  what was shown up to the last save; the next open marks a ``streaming`` row whose writer is gone
  ``interrupted``.
"""

from __future__ import annotations

import functools
import json
import os
import re
import sqlite3
import stat
import threading
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from medchat.core.errors import MedchatError

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "Conversation",
    "HistoryError",
    "HistoryStore",
    "Message",
    "SearchHit",
    "default_db_path",
    "export_filename",
]


class HistoryError(MedchatError):
    """A user-facing problem with the history database (the message says what to do)."""


# Each entry upgrades the schema from version i to i+1. Never edit a released entry; append a new one.
MIGRATIONS: tuple[str, ...] = (
    # 0 -> 1: conversations and messages
    """
    CREATE TABLE conversations (
        id        INTEGER PRIMARY KEY AUTOINCREMENT,
        title     TEXT NOT NULL DEFAULT '',
        created   TEXT NOT NULL,
        updated   TEXT NOT NULL,
        settings  TEXT NOT NULL DEFAULT '{}',
        model     TEXT NOT NULL DEFAULT '{}'
    );
    CREATE TABLE messages (
        id              INTEGER PRIMARY KEY AUTOINCREMENT,
        conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
        role            TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant')),
        content         TEXT NOT NULL,
        created         TEXT NOT NULL,
        status          TEXT NOT NULL DEFAULT 'complete',
        stats           TEXT
    );
    """,
    # 1 -> 2: guard results per message, and indexes for listing and resuming
    """
    ALTER TABLE messages ADD COLUMN guard TEXT;
    CREATE INDEX messages_by_conversation ON messages(conversation_id, id);
    CREATE INDEX conversations_by_updated ON conversations(updated);
    """,
    # 2 -> 3: answers saved while they stream: when a message was last written and by which process
    """
    ALTER TABLE messages ADD COLUMN updated TEXT;
    ALTER TABLE messages ADD COLUMN writer TEXT;
    CREATE INDEX messages_streaming ON messages(status) WHERE status = 'streaming';
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)

# streaming: being generated now; interrupted: medchat ended (a crash, a kill) while it was streaming.
STATUSES = ("complete", "stopped", "error", "streaming", "interrupted")


def default_db_path() -> Path:
    from medchat.core.paths import history_db_path

    return history_db_path()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _loads(text: str | None) -> Any:
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def _dumps(value: Any) -> str | None:
    if value is None:
        return None
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


@dataclass
class Conversation:
    id: int
    title: str
    created: str
    updated: str
    settings: dict = field(default_factory=dict)
    model: dict = field(default_factory=dict)
    message_count: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Message:
    id: int
    conversation_id: int
    role: str
    content: str
    created: str
    status: str = "complete"
    stats: dict | None = None
    guard: dict | None = None
    updated: str | None = None  # when the text was last saved (answers saved while they stream)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class SearchHit:
    conversation: Conversation
    snippet: str


def _private_file(path: Path) -> None:
    """Create ``path`` (if missing) readable and writable by its owner only, and fix its mode."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.close(fd)
    _chmod_private(path)


def _chmod_private(path: Path) -> None:
    try:
        if path.exists() and stat.S_IMODE(path.stat().st_mode) != 0o600:
            os.chmod(path, 0o600)
    except OSError:
        pass


def _like_pattern(query: str) -> str:
    escaped = query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


class HistoryStore:
    """The conversation store. One instance may be shared by threads (the chat app reads it in the UI
    thread while the chat session writes a turn from its worker): every method holds the store's lock."""

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        self.path = Path(path) if path is not None else default_db_path()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            _private_file(self.path)
            self._db = sqlite3.connect(self.path, timeout=10.0, check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise HistoryError(
                f"Cannot open the history database {self.path}: {exc}. "
                "Check the directory permissions, or run with --no-history."
            ) from exc
        self._db.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
            self._mark_interrupted()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise HistoryError(
                f"The history database {self.path} is unreadable ({exc}). Move it aside "
                "(it will be recreated empty) or run with --no-history."
            ) from exc
        for suffix in ("-wal", "-shm"):
            _chmod_private(Path(str(self.path) + suffix))

    # -- lifecycle -------------------------------------------------------------------------------

    def close(self) -> None:
        try:
            self._db.close()
        except sqlite3.Error:
            pass

    def __enter__(self) -> "HistoryStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def schema_version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def _migrate(self) -> None:
        version = self.schema_version
        if version > SCHEMA_VERSION:
            raise HistoryError(
                f"The history database {self.path} has schema version {version}, newer than this "
                f"medchat understands ({SCHEMA_VERSION}). Upgrade medchat, or run with --no-history."
            )
        for target in range(version + 1, SCHEMA_VERSION + 1):
            script = MIGRATIONS[target - 1]
            # One transaction per step: the schema change and the version bump land together.
            with self._db:
                self._db.execute("BEGIN")
                for statement in filter(None, (s.strip() for s in script.split(";"))):
                    self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version = {target}")

    def _mark_interrupted(self) -> None:
        """An answer left `streaming` by a process that is gone (killed, crashed, its terminal closed) was
        interrupted: its saved text is what was shown up to the last save. One still being written by a
        live process (medchat open in another terminal) is left alone."""
        rows = self._db.execute("SELECT id, writer FROM messages WHERE status = 'streaming'").fetchall()
        gone = [(r["id"],) for r in rows if not _writer_alive(r["writer"])]
        if gone:
            with self._db:
                self._db.executemany("UPDATE messages SET status = 'interrupted' WHERE id = ?", gone)

    # -- conversations ---------------------------------------------------------------------------

    def _conversation(self, row: sqlite3.Row) -> Conversation:
        keys = row.keys()
        return Conversation(
            id=row["id"],
            title=row["title"],
            created=row["created"],
            updated=row["updated"],
            settings=_loads(row["settings"]) or {},
            model=_loads(row["model"]) or {},
            message_count=row["n"] if "n" in keys else 0,
        )

    _SELECT = (
        "SELECT c.*, (SELECT COUNT(*) FROM messages m WHERE m.conversation_id = c.id) AS n "
        "FROM conversations c"
    )

    def create_conversation(
        self, title: str = "", *, settings: dict | None = None, model: dict | None = None
    ) -> Conversation:
        now = _now()
        with self._db:
            cur = self._db.execute(
                "INSERT INTO conversations (title, created, updated, settings, model) VALUES (?, ?, ?, ?, ?)",
                (title, now, now, _dumps(settings or {}), _dumps(model or {})),
            )
        return self.get_conversation(int(cur.lastrowid))

    def get_conversation(self, conversation_id: int) -> Conversation:
        row = self._db.execute(f"{self._SELECT} WHERE c.id = ?", (conversation_id,)).fetchone()
        if row is None:
            raise HistoryError(
                f"No conversation with id {conversation_id}. `medchat history list` shows the ids."
            )
        return self._conversation(row)

    def list_conversations(self, limit: int | None = None) -> list[Conversation]:
        sql = f"{self._SELECT} ORDER BY c.updated DESC, c.id DESC"
        params: tuple = ()
        if limit is not None:
            sql += " LIMIT ?"
            params = (int(limit),)
        return [self._conversation(r) for r in self._db.execute(sql, params)]

    def rename_conversation(self, conversation_id: int, title: str) -> Conversation:
        self.get_conversation(conversation_id)
        with self._db:
            self._db.execute("UPDATE conversations SET title = ? WHERE id = ?", (title.strip(), conversation_id))
        return self.get_conversation(conversation_id)

    def update_settings(self, conversation_id: int, settings: dict) -> None:
        with self._db:
            self._db.execute(
                "UPDATE conversations SET settings = ? WHERE id = ?", (_dumps(settings), conversation_id)
            )

    def delete_conversation(self, conversation_id: int) -> None:
        self.get_conversation(conversation_id)
        with self._db:
            self._db.execute("DELETE FROM messages WHERE conversation_id = ?", (conversation_id,))
            self._db.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,))

    # -- messages --------------------------------------------------------------------------------

    def add_message(
        self,
        conversation_id: int,
        role: str,
        content: str,
        *,
        status: str = "complete",
        stats: dict | None = None,
        guard: dict | None = None,
    ) -> Message:
        """Append a message and commit it at once."""
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, not {status!r}")
        now = _now()
        writer = _this_writer() if status == "streaming" else None
        with self._db:
            cur = self._db.execute(
                "INSERT INTO messages (conversation_id, role, content, created, status, stats, guard, updated, "
                "writer) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (conversation_id, role, content, now, status, _dumps(stats), _dumps(guard), now, writer),
            )
            self._db.execute("UPDATE conversations SET updated = ? WHERE id = ?", (now, conversation_id))
        return Message(
            id=int(cur.lastrowid),
            conversation_id=conversation_id,
            role=role,
            content=content,
            created=now,
            status=status,
            stats=stats,
            guard=guard,
            updated=now,
        )

    def delete_messages_from(self, conversation_id: int, message_id: int) -> None:
        """Delete a message and every later one of its conversation (an edited or regenerated turn)."""
        with self._db:
            self._db.execute("DELETE FROM messages WHERE conversation_id = ? AND id >= ?",
                             (conversation_id, message_id))

    def save_partial(self, message_id: int, content: str) -> None:
        """Rewrite a `streaming` answer with the text so far (committed: a kill keeps it). A message that
        is no longer streaming (already finished by `finish_message`) is left as it is."""
        with self._db:
            self._db.execute(
                "UPDATE messages SET content = ?, updated = ? WHERE id = ? AND status = 'streaming'",
                (content, _now(), message_id),
            )

    def finish_message(self, message_id: int, content: str, status: str, stats: dict | None = None) -> None:
        """Give a streamed answer its final text, state and stats."""
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, not {status!r}")
        now = _now()
        with self._db:
            self._db.execute(
                "UPDATE messages SET content = ?, status = ?, stats = ?, updated = ?, writer = NULL WHERE id = ?",
                (content, status, _dumps(stats), now, message_id))
            self._db.execute("UPDATE conversations SET updated = ? WHERE id = (SELECT conversation_id FROM "
                             "messages WHERE id = ?)", (now, message_id))

    def update_message_guard(self, message_id: int, guard: dict | None) -> None:
        with self._db:
            self._db.execute("UPDATE messages SET guard = ? WHERE id = ?", (_dumps(guard), message_id))

    def messages(self, conversation_id: int) -> list[Message]:
        rows = self._db.execute(
            "SELECT * FROM messages WHERE conversation_id = ? ORDER BY id", (conversation_id,)
        )
        return [
            Message(
                id=r["id"],
                conversation_id=r["conversation_id"],
                role=r["role"],
                content=r["content"],
                created=r["created"],
                status=r["status"],
                stats=_with_answer_model(_loads(r["stats"])),
                guard=_loads(r["guard"]),
                updated=r["updated"],
            )
            for r in rows
        ]

    # -- search ----------------------------------------------------------------------------------

    def search(self, query: str, limit: int = 50) -> list[SearchHit]:
        """Conversations whose title or any message contains ``query`` (case-insensitive for ASCII)."""
        query = query.strip()
        if not query:
            return [SearchHit(c, "") for c in self.list_conversations(limit)]
        pattern = _like_pattern(query)
        rows = self._db.execute(
            f"{self._SELECT} WHERE c.title LIKE ? ESCAPE '\\' OR EXISTS (SELECT 1 FROM messages m "
            "WHERE m.conversation_id = c.id AND m.content LIKE ? ESCAPE '\\') "
            "ORDER BY c.updated DESC, c.id DESC LIMIT ?",
            (pattern, pattern, int(limit)),
        ).fetchall()
        hits = []
        for row in rows:
            conv = self._conversation(row)
            found = self._db.execute(
                "SELECT content FROM messages WHERE conversation_id = ? AND content LIKE ? ESCAPE '\\' "
                "ORDER BY id LIMIT 1",
                (conv.id, pattern),
            ).fetchone()
            hits.append(SearchHit(conv, _snippet(found["content"], query) if found else ""))
        return hits

    # -- export ----------------------------------------------------------------------------------

    def export_dict(self, conversation_id: int) -> dict:
        conv = self.get_conversation(conversation_id)
        data = conv.as_dict()
        data["messages"] = [m.as_dict() for m in self.messages(conversation_id)]
        data["schema_version"] = SCHEMA_VERSION
        return data

    def export_json(self, conversation_id: int) -> str:
        return json.dumps(self.export_dict(conversation_id), ensure_ascii=False, indent=2) + "\n"

    def export_markdown(self, conversation_id: int, reminder: str | None = None) -> str:
        conv = self.get_conversation(conversation_id)
        return conversation_markdown(conv, self.messages(conversation_id), reminder=reminder)

    def export(
        self, conversation_id: int, path: str | os.PathLike, fmt: str = "md", reminder: str | None = None
    ) -> Path:
        """Write one conversation to ``path`` as Markdown (``md``) or JSON (``json``)."""
        text = (
            self.export_json(conversation_id)
            if fmt == "json"
            else self.export_markdown(conversation_id, reminder=reminder)
        )
        return write_export(path, text)


def _serialised(method):
    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)

    return locked


for _name in ("close", "create_conversation", "get_conversation", "list_conversations", "rename_conversation",
              "update_settings", "delete_conversation", "add_message", "save_partial", "finish_message",
              "delete_messages_from", "update_message_guard",
              "messages", "search", "export_dict"):
    setattr(HistoryStore, _name, _serialised(getattr(HistoryStore, _name)))


def _this_writer() -> str:
    """This process as "pid:start time": a pid alone may be reused by another program after a reboot."""
    return f"{os.getpid()}:{_start_time(os.getpid())}"


def _start_time(pid: int) -> str:
    import psutil

    return f"{psutil.Process(pid).create_time():.2f}"


def _writer_alive(writer: str | None) -> bool:
    import psutil

    pid, _, started = (writer or "").partition(":")
    try:
        # A killed writer lingers as a zombie until its parent reaps it: it still has a start time.
        return (bool(pid) and _start_time(int(pid)) == started
                and psutil.Process(int(pid)).status() != psutil.STATUS_ZOMBIE)
    except (ValueError, psutil.Error):
        return False


def write_export(path: str | os.PathLike, text: str) -> Path:
    out = Path(path).expanduser()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        # Conversations are health data: the export is private to the user, like the database.
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
    except OSError as exc:
        raise HistoryError(f"Cannot write {out}: {exc.strerror or exc}. Choose another path.") from exc
    return out


def _snippet(text: str, query: str, width: int = 60) -> str:
    index = text.lower().find(query.lower())
    if index < 0:
        return text[:width].replace("\n", " ")
    start = max(0, index - width // 3)
    piece = text[start : start + width].replace("\n", " ")
    return ("…" if start else "") + piece + ("…" if start + width < len(text) else "")


def export_filename(conversation: Conversation, fmt: str = "md") -> str:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", conversation.title).strip("-").lower()[:40] or "conversation"
    return f"medchat-{conversation.id}-{slug}.{'json' if fmt == 'json' else 'md'}"


def answer_model(base: str | None, adapter: str | None, name: str | None = None) -> dict:
    """The model saved with each answer, one shape for every front end: the base and adapter that ran and
    `name`, the name an endpoint answered as (None for a local model)."""
    return {"base": base, "adapter": adapter, "name": name}


def _with_answer_model(stats: dict | None) -> dict | None:
    """Stats as read back, their "model" in answer_model's shape. Rows saved before it hold a bare name (the
    endpoint's, from `medchat ask`/`serve` sessions) or {base, adapter} (the chat app's)."""
    if not isinstance(stats, dict) or "model" not in stats:
        return stats
    old = stats["model"]
    if isinstance(old, str):
        model = answer_model(old, None, old)
    elif isinstance(old, dict):
        model = answer_model(old.get("base"), old.get("adapter"), old.get("name"))
    else:
        model = None
    return stats | {"model": model}


def format_stats(stats: dict | None) -> str:
    """One line: time to first token, tokens, tokens/s, stop reason."""
    if not stats:
        return ""
    if stats.get("stop_reason") == "declined":
        return "declined: outside the medical scope (--ood-policy decline)"
    parts = []
    ttft = stats.get("ttft_s")
    parts.append(f"first token {ttft:.2f} s" if isinstance(ttft, (int, float)) else "first token –")
    tokens = stats.get("tokens")
    if tokens is not None:
        parts.append(f"{tokens} token{'s' if tokens != 1 else ''}")
    rate = stats.get("tokens_per_s")
    if isinstance(rate, (int, float)) and (tokens is None or tokens > 1):
        parts.append(f"{rate:.1f} tok/s")
    reason = stats.get("stop_reason")
    if reason:
        parts.append({"cancelled": "stopped"}.get(reason, reason))
    return " · ".join(parts)


def status_marker(status: str, updated: str | None = None) -> str:
    """What a reader is told under an answer that did not complete ("" for a complete one)."""
    if status == "interrupted":
        saved = f" at {updated}" if updated else ""
        return f"interrupted: medchat ended while this answer was being written; the text saved{saved} is kept"
    return {"stopped": "stopped", "error": "generation failed",
            "streaming": "still being written by another medchat window"}.get(status, "")


def conversation_markdown(
    conversation: Conversation, messages: Iterable[Message], reminder: str | None = None
) -> str:
    title = conversation.title or f"Conversation {conversation.id}"
    lines = [f"# {title}", "", f"*medchat conversation {conversation.id}, started {conversation.created}*", ""]
    model = conversation.model or {}
    if model:
        desc = ", ".join(f"{k}: {v}" for k, v in model.items() if v not in (None, ""))
        lines += [f"Model: {desc}", ""]
    system = (conversation.settings or {}).get("system_prompt")
    if system:
        lines += ["## System prompt", "", system, ""]
    last_guard: dict = {}
    for message in messages:
        if message.role == "user":
            last_guard = message.guard or {}
            level = last_guard.get("ood_level")
            lines += ["## You" + (f" ({level.replace('_', ' ')})" if level else ""), "", message.content, ""]
        elif message.role == "assistant":
            lines += ["## medchat", ""]
            flags = last_guard.get("red_flags") or []
            notices = [f.get("notice") for f in flags if isinstance(f, dict) and f.get("notice")]
            lines += [f"> **{n}**" for n in notices] + ([""] if notices else [])
            lines += [message.content or "*(no text)*", ""]
            marker = status_marker(message.status, message.updated)
            if marker:
                lines += [f"*({marker})*", ""]
            if reminder and reminder.strip() not in message.content:
                lines += [f"> {reminder}", ""]
            footer = format_stats(message.stats)
            if footer:
                lines += [f"<sub>{footer}</sub>", ""]
        else:
            lines += [f"## {message.role}", "", message.content, ""]
    return "\n".join(lines).rstrip() + "\n"
