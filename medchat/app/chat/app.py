"""medchat: the Textual chat app.

The app is thin: every turn runs through the headless chat session (`medchat.core.session`: the guard's
whole verdict before the model starts, the policy, the reminder, the history), and the app renders its
events; the model loads through `medchat.core.fastdecode`, settings live in `medchat.core.settings`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Iterable

from rich.text import Text
from textual import on, work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Footer, Header, Input, ListView, LoadingIndicator, Static, TextArea
from textual.worker import Worker, WorkerState

from medchat.core.guard.notices import PHYSICIAN_REMINDER
from medchat.core.history import (
    Conversation,
    HistoryError,
    HistoryStore,
    export_filename,
    format_stats,
    write_export,
)
from medchat.core.protocols import Engine, GuardChecker
from medchat.core.session import (
    ChatSession,
    Checked,
    Declined,
    Finished,
    Notice,
    Reminder,
    Stats,
    Token,
    Waiting,
    load_guard,
    stored_notices,
)
from medchat.core.settings import ChatSettings, SettingsError, load_defaults, load_ood_policy, save_defaults
from medchat.core.textsafe import strip_control
from medchat.app.chat.screens import (
    ConfirmScreen,
    ExportScreen,
    HelpScreen,
    MessageMenuScreen,
    ModelInfoScreen,
    SettingsScreen,
    TextPromptScreen,
)
from medchat.app.chat.widgets import AssistantMessage, ChatInput, ChatView, HistorySidebar, UserMessage
from medchat.app.chat.widgets.sidebar import ConversationList

EngineFactory = Callable[[], Engine]
GuardFactory = Callable[[], "GuardChecker | None"]

_DONE = object()
_ABANDONED = object()


def default_engine_factory(spec, prompt_style: str = "chat") -> EngineFactory:
    def factory():
        from medchat.core.fastdecode import load_engine

        return load_engine(spec, prompt_style=prompt_style)

    return factory


def default_guard_factory(spec) -> GuardFactory:
    adapter = spec.adapter if spec is not None else None
    return lambda: load_guard(adapter)


class MedchatApp(App):
    """Chat with a local medical assistant model."""

    CSS_PATH = "medchat.tcss"
    STOP_GRACE_S = 1.5  # after Esc, how long to wait for the engine before leaving it to finish alone
    DRAFT_PAUSE_S = 0.4  # a pause in typing this long lets the engine read the draft ahead of Enter
    TITLE = "medchat"
    ENABLE_COMMAND_PALETTE = True

    BINDINGS = [
        Binding("escape", "stop", "Stop", priority=False),
        Binding("f1", "help", "Help"),
        Binding("ctrl+n", "new_conversation", "New"),
        Binding("ctrl+b,f4", "toggle_sidebar", "History"),
        Binding("ctrl+f", "search_history", "Search", show=False),
        Binding("ctrl+t", "rename", "Rename", show=False),
        Binding("ctrl+s", "export", "Export"),
        Binding("ctrl+o", "copy_last", "Copy"),
        Binding("f2", "model_info", "Model"),
        Binding("f3", "settings", "Settings"),
        Binding("f5,ctrl+r", "metrics_report", "Report", show=False),
    ]

    def __init__(
        self,
        spec: Any = None,
        *,
        no_history: bool = False,
        history_path: Path | None = None,
        engine_factory: EngineFactory | None = None,
        guard_factory: GuardFactory | None = None,
        prompt_style: str = "chat",
        cursor_blink: bool = True,
        ood_policy: str | None = None,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.incognito = no_history
        self.history_path = history_path
        self.engine_factory = engine_factory or default_engine_factory(spec, prompt_style)
        self.guard_factory = guard_factory if guard_factory is not None else default_guard_factory(spec)
        self.cursor_blink = cursor_blink
        self.store: HistoryStore | None = None
        self.history_error: str | None = None
        self.engine: Engine | None = None
        self.model_status = "loading"
        self.model_error: str | None = None
        self.guard: GuardChecker | None = None
        self.guard_status = "loading"
        self._guard_ready = asyncio.Event()
        self._model_settled = threading.Event()
        self.reminder = PHYSICIAN_REMINDER
        self.conversation: Conversation | None = None
        self.turns: list[dict] = []
        self.session: ChatSession | None = None  # one per conversation, made at its first send
        self.settings_error: str | None = None
        try:
            self.default_settings = load_defaults()
            self.ood_policy = ood_policy or load_ood_policy() or "note"
        except SettingsError as exc:
            self.default_settings = ChatSettings()
            self.ood_policy = ood_policy or "note"
            self.settings_error = str(exc)
        self.settings = self.default_settings
        self.generating = False
        self._stop_requested = False
        self._stop_event = asyncio.Event()
        self._draining: asyncio.Future | None = None
        self._pending: str | None = None
        self._draft_timer: Any = None
        self.ready_status = "Ready"

    # ---------------------------------------------------------------- layout

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False, icon="✚")
        with Horizontal(id="main"):
            yield HistorySidebar(incognito=self.incognito, id="sidebar")
            with Vertical(id="chat-column"):
                yield ChatView(id="chat")
                with Horizontal(id="status-bar"):
                    yield LoadingIndicator(id="loading")
                    yield Static("", id="status")
                yield ChatInput(id="prompt", placeholder="Ask a medical question · Enter sends · F1 help")
        yield Footer()

    def on_mount(self) -> None:
        prompt = self.query_one(ChatInput)
        prompt.cursor_blink = self.cursor_blink
        prompt.focus()
        self.query_one("#sidebar").display = self.size.width >= 120 and not self.incognito
        if not self.incognito:
            try:
                self.store = HistoryStore(self.history_path)
            except HistoryError as exc:
                self.history_error = str(exc)
                self.notify(f"{exc}\nThis session is not saved.", severity="error", timeout=15)
        if self.settings_error:
            self.notify(self.settings_error, title="Settings", severity="warning", timeout=15)
        self._update_title()
        self.refresh_history()
        self._set_status("Loading the model… you can type meanwhile.", loading=True)
        self.load_model()
        self.load_guard()
        if not self.is_headless and _is_tty(sys.__stdin__):
            self.set_interval(1.0, self._quit_if_terminal_hung_up)
        if not self.is_headless and hasattr(signal, "SIGHUP") and threading.current_thread() is threading.main_thread():
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self._leave, 129)

    def _quit_if_terminal_hung_up(self) -> None:
        """A closed window or a dropped SSH session hangs the terminal up. Under `make chat` the hangup signal
        goes to make, not to medchat, which would live on with Textual's input thread spinning on the dead
        terminal: leave as at the signal."""
        if not _is_tty(sys.__stdin__):
            self._leave(129)

    def _leave(self, return_code: int = 0) -> None:
        """Quit (Ctrl+Q; 129 = 128 + SIGHUP at a hang-up). An answer being generated is stopped first: the
        session saves the text shown so far as stopped at once, so nothing waits for the model."""
        if self.generating:
            self.action_stop()
        self.exit(return_code=return_code)

    def _update_title(self) -> None:
        title = self.conversation.title if self.conversation else "New conversation"
        self.title = f"medchat — {title}"
        self.sub_title = "incognito" if self.incognito else ("not saved" if self.store is None else "")

    def _set_status(self, text: str, *, loading: bool = False, error: bool = False) -> None:
        status = self.query_one("#status", Static)
        status.update(Text(text))
        status.set_class(error, "error")
        self.query_one("#loading").display = loading

    # ---------------------------------------------------------------- model and guard loading

    @work(thread=True, exclusive=True, group="load", exit_on_error=False)
    def load_model(self) -> None:
        try:
            engine = self.engine_factory()
            engine.prefill(self._conversation_so_far())  # the system prompt now: the first question pays only for itself
        except Exception as exc:  # a readable message, never a traceback
            self.call_from_thread(self._model_failed, exc)
            return
        self.call_from_thread(self._model_loaded, engine)

    def _model_loaded(self, engine: Engine) -> None:
        self.engine = engine
        self.model_status = "ready"
        self.ready_status = f"Ready · {_compact_summary(engine.info)}"
        self._set_status(self.ready_status)
        self._model_settled.set()
        if self._pending is not None:
            text, self._pending = self._pending, None
            self.start_turn(text)

    def _conversation_so_far(self) -> list[dict]:
        """What the model reads before the next question: the system prompt and the turns so far."""
        return [{"role": "system", "content": self.settings.effective_system_prompt}] + self.turns

    @on(TextArea.Changed, "#prompt")
    def _draft_changed(self) -> None:
        if self._draft_timer is not None:
            self._draft_timer.stop()
        self._draft_timer = self.set_timer(self.DRAFT_PAUSE_S, self._read_draft_ahead)

    def _read_draft_ahead(self) -> None:
        """Let the engine read the draft while the user is still typing: Enter then costs only the rest."""
        prompt = self.query(ChatInput)
        if not prompt:  # the timer fired while the app was closing
            return
        text = strip_control(prompt.first().text).strip()
        busy = self.generating or (self._draining is not None and not self._draining.done())
        if text and self.engine is not None and not busy:
            self.prefill_draft(self._conversation_so_far(), text)

    @work(thread=True, exclusive=True, group="prefill", exit_on_error=False)
    def prefill_draft(self, context: list[dict], text: str) -> None:
        try:
            self.engine.prefill(context, draft=text)
        except Exception as exc:  # only a head start: the turn itself reports real errors
            self.log.warning(f"reading the draft ahead failed: {exc!r}")

    def _model_failed(self, exc: BaseException) -> None:
        try:
            from medchat.core.model import ModelError
        except Exception:  # pragma: no cover - the core is always there
            ModelError = ()  # type: ignore[assignment]
        if isinstance(exc, ModelError):
            message = str(exc)
        else:
            message = (
                f"{type(exc).__name__}: {exc}. Try --device cpu, --no-adapter or another --base; "
                "`medchat --paths` shows where the model cache is."
            )
        self.model_status = "failed"
        self.model_error = message
        if self._pending is not None:  # give the waiting message back, unsent
            prompt = self.query_one(ChatInput)
            if not prompt.text:
                prompt.load_text(self._pending)
            self._pending = None
            for widget in self.query_one(ChatView).query(".pending"):
                widget.remove()
        self._set_status(f"The model did not load: {message}", error=True)
        self.notify(message, title="Model not loaded", severity="error", timeout=30)
        self._model_settled.set()

    @work(thread=True, exclusive=True, group="guard", exit_on_error=False)
    def load_guard(self) -> None:
        """The guard's rules are usable at once; its embedder loads once the model has (the session waits
        for it if a message comes first)."""
        try:
            guard = self.guard_factory() if self.guard_factory else None
        except Exception as exc:
            self.call_from_thread(self._guard_loaded, None, f"unavailable ({type(exc).__name__}: {exc})")
            return
        if guard is None:
            self.call_from_thread(self._guard_loaded, None, "off")
            return
        if guard.ood_error is not None:
            self.call_from_thread(self._guard_loaded, guard, f"rules only ({guard.ood_error})")
            return
        self.call_from_thread(self._guard_loaded, guard, "rules ready; loading the out-of-domain scorer…")
        self._model_settled.wait()  # do not compete with the model load for the CPU
        try:
            guard.warm_up()
            status = f"rules only ({guard.ood_error})" if guard.ood_error else "ready"
        except Exception as exc:
            status = f"rules only (out-of-domain scorer failed: {type(exc).__name__}: {exc})"
        self.call_from_thread(setattr, self, "guard_status", status)

    def _guard_loaded(self, guard: GuardChecker | None, status: str) -> None:
        self.guard = guard
        self.guard_status = status
        self._guard_ready.set()

    # ---------------------------------------------------------------- history

    def refresh_history(self, query: str | None = None, highlight: int | None = None) -> None:
        if self.store is None or self.incognito:
            return
        if query is None:
            try:
                query = self.query_one("#history-search", Input).value
            except Exception:
                query = ""
        hits = [(h.conversation, h.snippet) for h in self.store.search(query, limit=200)]
        if highlight is None and self.conversation is not None:
            highlight = self.conversation.id
        self.query_one(HistorySidebar).show(hits, highlight)

    @on(Input.Changed, "#history-search")
    def _search_changed(self, event: Input.Changed) -> None:
        self.refresh_history(event.value)

    @on(Input.Submitted, "#history-search")
    def _search_submitted(self, event: Input.Submitted) -> None:
        self.query_one(ConversationList).focus()

    @on(ListView.Selected, "#history-list")
    async def _history_selected(self, event: ListView.Selected) -> None:
        conversation = getattr(event.item, "conversation", None)
        if conversation is not None:
            await self.open_conversation(conversation.id)
            if self.size.width < 120:  # a narrow terminal needs the room for the chat
                self.query_one("#sidebar").display = False

    @on(ConversationList.Action)
    def _history_action(self, event: ConversationList.Action) -> None:
        conv = event.conversation
        if event.action == "rename":
            self._ask_rename(conv)
        elif event.action == "delete":
            self._ask_delete(conv)
        elif event.action == "export":
            self._ask_export(conv)

    async def open_conversation(self, conversation_id: int) -> None:
        if self.store is None:
            return
        if self.generating:
            self.notify("Wait for the answer, or press Esc to stop it, before switching.", severity="warning")
            return
        try:
            conv = self.store.get_conversation(conversation_id)
            messages = self.store.messages(conversation_id)
        except HistoryError as exc:
            self.notify(str(exc), severity="error")
            return
        self.conversation = conv
        self.session = None
        try:
            self.settings = ChatSettings.from_dict(conv.settings, base=self.default_settings)
        except SettingsError:
            self.settings = self.default_settings
        chat = self.query_one(ChatView)
        await chat.clear_messages()
        if messages:
            chat.hide_welcome()
        self.turns = []
        widgets = []
        notices: list[Notice] = []
        question = ""
        for message in messages:
            if message.role == "user":
                guard = message.guard or {}
                notices = stored_notices(guard)  # what the session showed before this answer
                question = message.content
                widgets.append(UserMessage(message.content, level=guard.get("ood_level"), message_id=message.id))
                self.turns.append({"role": "user", "content": message.content})
            elif message.role == "assistant":
                widget = AssistantMessage(reminder=self.reminder, message_id=message.id)
                widget.question = question
                widgets.append((widget, message, notices))
                if message.content:
                    self.turns.append({"role": "assistant", "content": message.content})
        for item in widgets:
            if isinstance(item, tuple):
                widget, message, shown = item
                await chat.mount(widget)
                for notice in shown:
                    widget.add_notice(notice.kind, notice.text)
                await widget.finish(message.content, message.status, message.stats)
            else:
                await chat.mount(item)
        chat.anchor()
        self.query_one(ChatInput).set_history([t["content"] for t in self.turns if t["role"] == "user"])
        self._update_title()
        self.refresh_history()
        self.query_one(ChatInput).focus()

    def _ask_rename(self, conv: Conversation | None) -> None:
        if conv is None or self.store is None:
            self.notify("Nothing to rename yet: send a message first." if self.store else "History is off.")
            return

        def done(title: str | None) -> None:
            if title is None or not title.strip():
                return
            try:
                renamed = self.store.rename_conversation(conv.id, strip_control(title))
            except HistoryError as exc:
                self.notify(str(exc), severity="error")
                return
            if self.conversation and self.conversation.id == conv.id:
                self.conversation = renamed
                self._update_title()
            self.refresh_history(highlight=conv.id)

        self.push_screen(TextPromptScreen("Rename conversation", conv.title), done)

    def _ask_delete(self, conv: Conversation | None) -> None:
        if conv is None or self.store is None:
            return

        async def done(yes: bool | None) -> None:
            if not yes:
                return
            if self.generating and self.conversation and self.conversation.id == conv.id:
                self.notify("Stop the answer (Esc) before deleting this conversation.", severity="warning")
                return
            try:
                self.store.delete_conversation(conv.id)
            except HistoryError as exc:
                self.notify(str(exc), severity="error")
                return
            if self.conversation and self.conversation.id == conv.id:
                await self._reset_conversation()
            self.refresh_history()
            self.notify(f"Deleted “{conv.title}”.")

        self.push_screen(ConfirmScreen(f"Delete “{conv.title}” and all its messages?"), done)

    def _ask_export(self, conv: Conversation | None) -> None:
        if self.store is None and self.turns:
            conv = None  # incognito: export from memory
        elif conv is None:
            self.notify("Nothing to export yet: send a message first.")
            return
        default = Path.cwd() / (export_filename(conv) if conv else "medchat-incognito.md")

        def done(choice: tuple[str, Path] | None) -> None:
            if choice is None:
                return
            fmt, path = choice
            try:
                if conv is not None and self.store is not None:
                    out = self.store.export(conv.id, path, fmt, reminder=self.reminder)
                else:
                    out = write_export(path, self._memory_export(fmt))
            except HistoryError as exc:
                self.notify(str(exc), severity="error", timeout=10)
                return
            self.notify(f"Exported to {out}", title="Export", timeout=8)

        self.push_screen(ExportScreen(default), done)

    def _memory_export(self, fmt: str) -> str:
        """Incognito export: built from what is on screen (nothing was written to disk before)."""
        import json

        from medchat.core.history import Message, conversation_markdown

        conv = Conversation(id=0, title="Incognito conversation", created="", updated="",
                            settings=self.settings.as_dict())
        messages = []
        for i, widget in enumerate(self.query_one(ChatView).query("UserMessage, AssistantMessage")):
            if isinstance(widget, UserMessage):
                messages.append(Message(i, 0, "user", widget.text, ""))
            elif isinstance(widget, AssistantMessage):
                status = widget.status if widget.status in ("stopped", "error") else "complete"
                messages.append(Message(i, 0, "assistant", widget.text, "", status, widget.stats))
        if fmt == "json":
            data = conv.as_dict() | {"messages": [m.as_dict() for m in messages]}
            return json.dumps(data, ensure_ascii=False, indent=2) + "\n"
        return conversation_markdown(conv, messages, reminder=self.reminder)

    async def _reset_conversation(self) -> None:
        self.conversation = None
        self.session = None
        self.turns = []
        self.settings = self.default_settings
        await self.query_one(ChatView).clear_messages()
        self.query_one(ChatInput).set_history([])
        self._update_title()

    # ---------------------------------------------------------------- sending and streaming

    @on(ChatInput.ScrollChat)
    def _scroll_chat(self, event: ChatInput.ScrollChat) -> None:
        chat = self.query_one(ChatView)
        if event.direction == -2:
            chat.scroll_home(animate=False)
        elif event.direction < 0:
            chat.scroll_page_up(animate=False)
        elif event.direction == 2 or chat.max_scroll_y - chat.scroll_y <= chat.size.height:
            chat.anchor()  # back at the bottom: follow new text again
        else:
            chat.scroll_page_down(animate=False)

    @on(ChatInput.Submitted)
    def _submitted(self, event: ChatInput.Submitted) -> None:
        text = strip_control(event.text).strip()
        if not text:
            return
        if self.generating:
            self.notify("An answer is still being generated: press Esc to stop it first.", severity="warning")
            return
        if self.model_status == "failed":
            self.notify(f"The model is not loaded: {self.model_error}", severity="error", timeout=10)
            return
        if self._draining is not None and not self._draining.done():
            self.notify("The model is still finishing the stopped answer (a long prompt is read in one "
                        "step); try again in a moment.", severity="warning")
            return
        prompt = event.chat_input
        prompt.remember(text)
        prompt.clear()
        if self.engine is None:
            self._pending = text
            self.notify("The model is still loading; your message is sent as soon as it is ready.")
            chat = self.query_one(ChatView)
            chat.hide_welcome()
            pending = UserMessage(text, level=None)
            pending.add_class("pending")
            chat.mount(pending)
            return
        self.start_turn(text)

    def start_turn(self, text: str) -> None:
        self.generating = True
        self._stop_requested = False
        self._stop_event = asyncio.Event()
        self.run_turn(text)

    @work(exclusive=True, group="generate", exit_on_error=False)
    async def run_turn(self, text: str) -> None:
        chat = self.query_one(ChatView)
        self._set_status("Generating… Esc stops")
        try:
            await self._run_turn(text, chat)
        finally:
            self.generating = False
            if self._draining is not None and not self._draining.done():
                self._set_status("Stopped. The model finishes its current step in the background…")
            elif self.model_status == "ready":
                self._set_status(self.ready_status)

    def _session_for_turn(self) -> ChatSession:
        """The conversation's session, with the settings and system prompt as they are now (F3 may change them)."""
        if self.session is None:
            self.session = ChatSession(
                self.engine, self.guard, policy=self.ood_policy, store=self.store, messages=self.turns,
                conversation_id=self.conversation.id if self.conversation is not None else None)
        self.session.settings = self.settings.to_generation()
        self.session.system_prompt = self.settings.effective_system_prompt
        return self.session

    async def _run_turn(self, text: str, chat: ChatView) -> None:
        """Render one turn of the session: it decides everything about safety, the app only shows it."""
        await self._guard_ready.wait()  # the guard object (not its embedder) is there within moments
        session = self._session_for_turn()
        for pending in chat.query(".pending"):
            await pending.remove()
        user_widget = UserMessage(text, level="checking")
        answer = AssistantMessage()
        answer.question = text
        chat.hide_welcome()
        await chat.mount_all([user_widget, answer])
        chat.anchor()

        iterator = session.send(text)
        stats: dict | None = None
        abandoned = False
        while True:
            event = await self._next_event(iterator)
            if event is _DONE:
                break
            if event is _ABANDONED:
                abandoned = True
                break  # stopped; the engine finishes its current step in the background
            if isinstance(event, Waiting):
                self._set_status(event.text, loading=True)
            elif isinstance(event, Checked):
                result = event.result
                user_widget.set_level(result.ood_level if result else None, result.ood_score if result else None)
                user_widget.message_id = session.last_user_message_id
                self._conversation_started(session)
                if not self._stop_requested:
                    self._set_status("Generating… Esc stops")
            elif isinstance(event, Notice):
                answer.add_notice(event.kind, event.text)
            elif isinstance(event, (Token, Declined)):
                if not self._stop_requested:  # what was shown at Esc is what is kept
                    await answer.write(event.text)
            elif isinstance(event, Stats):
                stats = event.stats.as_dict()
            elif isinstance(event, Reminder):
                answer.reminder = event.text
            elif isinstance(event, Finished):
                await self._finish_answer(answer, event, stats)
                answer.message_id = session.last_answer_message_id
        if abandoned:
            answer.reminder = self.reminder
            await answer.finish(answer.text.strip(), "stopped", {"ttft_s": None, "tokens": None,
                                                                  "stop_reason": "cancelled"})
            if self._draining is not None:
                self._draining.add_done_callback(lambda task: self._late_stats(task, answer, session))
        self.turns = list(session.messages)
        if session.history_error:
            self._history_failed(session.history_error)
        self.refresh_history()

    async def _finish_answer(self, answer: AssistantMessage, event: Finished, stats: dict | None) -> None:
        status = {"cancelled": "stopped", "error": "error"}.get(event.stop_reason, "complete")
        record = (stats or {"ttft_s": None, "tokens": None}) | {"stop_reason": event.stop_reason}
        await answer.finish(event.answer, status, record, event.error)
        if event.error:
            self.notify(event.error, title="Generation failed", severity="error", timeout=15)

    def _conversation_started(self, session: ChatSession) -> None:
        """The session saved the first message: show the new conversation in the title and the sidebar."""
        if self.conversation is None and session.conversation_id is not None and self.store is not None:
            try:
                self.conversation = self.store.get_conversation(session.conversation_id)
            except HistoryError as exc:
                self._history_failed(exc)
                return
            self._update_title()
            self.refresh_history()

    async def _next_event(self, iterator) -> Any:
        """The session's next event (it runs in a thread), or _ABANDONED when Esc was pressed and the
        engine does not stop within STOP_GRACE_S (e.g. it is still reading a very long prompt: the model
        checks for cancellation between tokens)."""
        pending = asyncio.ensure_future(asyncio.to_thread(next, iterator, _DONE))
        if not self._stop_requested:
            stop = asyncio.ensure_future(self._stop_event.wait())
            try:
                await asyncio.wait({pending, stop}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stop.cancel()
            if pending.done():
                return pending.result()
        try:
            return await asyncio.wait_for(asyncio.shield(pending), timeout=self.STOP_GRACE_S)
        except asyncio.TimeoutError:
            self._draining = asyncio.ensure_future(self._drain(iterator, pending))
            return _ABANDONED

    async def _drain(self, iterator, pending) -> list:
        """Run what is left of a stopped turn so the engine's thread finishes and the session saves the
        answer; return the events it still produced."""
        events = []
        try:
            event = await pending
            while event is not _DONE:
                events.append(event)
                event = await asyncio.to_thread(next, iterator, _DONE)
        except Exception as exc:
            self.log.warning(f"finishing a stopped turn failed: {exc!r}")
        finally:
            if self.model_status == "ready" and not self.generating:
                self._set_status(self.ready_status)
        return events

    def _late_stats(self, task: asyncio.Future, answer: AssistantMessage, session: ChatSession) -> None:
        """The engine finished a stopped answer after the UI moved on: show its real stats (the session
        saved the answer with them)."""
        if task.cancelled() or task.exception() is not None:
            return
        answer.message_id = session.last_answer_message_id
        for event in task.result():
            if isinstance(event, Stats):
                answer.stats = event.stats.as_dict() | {"stop_reason": "cancelled"}
                answer.set_footer(format_stats(answer.stats))
        self.turns = list(session.messages)

    def _history_failed(self, exc: Exception | str) -> None:
        self.notify(f"Could not save to the history: {exc}", severity="error", timeout=10)

    # ---------------------------------------------------------------- actions

    def action_stop(self) -> None:
        if not self.generating:
            if isinstance(self.focused, ConversationList) or isinstance(self.focused, Input):
                self.query_one(ChatInput).focus()
            return
        self._stop_requested = True
        self._stop_event.set()
        if self.session is not None:
            self.session.cancel()
        self._set_status("Stopping…")

    async def action_quit(self) -> None:
        self._leave()

    async def action_new_conversation(self) -> None:
        if self.generating:
            self.notify("Wait for the answer or press Esc to stop it first.", severity="warning")
            return
        await self._reset_conversation()
        self.refresh_history()
        self.query_one(ChatInput).focus()

    def action_toggle_sidebar(self) -> None:
        sidebar = self.query_one("#sidebar")
        sidebar.display = not sidebar.display
        if sidebar.display and not self.incognito and self.store is not None:
            self.refresh_history()
            self.query_one(ConversationList).focus()
        else:
            self.query_one(ChatInput).focus()

    def action_search_history(self) -> None:
        if self.incognito or self.store is None:
            self.notify("History is off in this session.")
            return
        self.query_one("#sidebar").display = True
        self.query_one("#history-search", Input).focus()

    def action_rename(self) -> None:
        self._ask_rename(self.conversation)

    def action_export(self) -> None:
        self._ask_export(self.conversation)

    def action_delete(self) -> None:
        self._ask_delete(self.conversation)

    def _answers(self) -> list[AssistantMessage]:
        return [w for w in self.query_one(ChatView).query(AssistantMessage) if w.status != "generating"]

    def action_copy_last(self) -> None:
        answers = self._answers()
        if not answers:
            self.notify("No answer to copy yet.")
            return
        self._copy(answers[-1].copy_text(), "the last answer")

    def _copy(self, text: str, what: str) -> None:
        self.copy_to_clipboard(text)
        self.notify(f"Copied {what} ({len(text):,} characters) to the clipboard.")

    @on(AssistantMessage.CopyRequested)
    def _copy_requested(self, event: AssistantMessage.CopyRequested) -> None:
        self._copy(event.widget.copy_text(), "this answer")

    @on(AssistantMessage.MenuRequested)
    def _menu_requested(self, event: AssistantMessage.MenuRequested) -> None:
        widget = event.widget

        def done(choice: str | None) -> None:
            if choice == "copy":
                self._copy(widget.copy_text(), "this answer")
            elif choice == "copy_raw":
                self._copy(widget.text, "this answer")
            elif choice == "copy_question":
                self._copy(widget.question, "the question")

        self.push_screen(MessageMenuScreen(classes="dialog"), done)

    def action_help(self) -> None:
        self.push_screen(HelpScreen(self._paths()))

    def _paths(self) -> dict[str, str]:
        from medchat.core import paths

        history = "off (--no-history)" if self.incognito else str(self.store.path if self.store else paths.history_db_path())
        return {"history": history, "config": str(paths.config_file()), "data": str(paths.data_dir()),
                "cache": str(paths.cache_dir())}

    def action_model_info(self) -> None:
        info = self.engine.info if self.engine is not None else None
        data = info.as_dict() if info is not None else None
        if self.model_status == "ready":
            status = info.summary()
        elif self.model_status == "failed":
            status = f"Not loaded: {self.model_error}"
        else:
            spec = self.spec
            status = f"Loading {spec.base if spec is not None else 'the model'}…"
            if spec is not None:
                data = {k: getattr(spec, k) for k in ("base", "adapter", "quantization", "device", "dtype")}
        extra = {"guard": self.guard_status, "settings": _settings_line(self.settings)}
        extra |= self._paths()
        self.push_screen(ModelInfoScreen(status, data, extra))

    def action_settings(self) -> None:
        def done(result: tuple[ChatSettings, bool] | None) -> None:
            if result is None:
                return
            settings, as_default = result
            self.settings = settings
            if self.conversation is not None and self.store is not None:
                data = settings.as_dict() | {"system_prompt": settings.effective_system_prompt}
                try:
                    self.store.update_settings(self.conversation.id, data)
                except Exception as exc:
                    self._history_failed(exc)
            if as_default:
                try:
                    path = save_defaults(settings)
                except OSError as exc:
                    self.notify(f"Could not write the config file: {exc}", severity="error")
                    return
                self.default_settings = settings
                self.notify(f"Saved as defaults in {path}")
            else:
                self.notify("Settings saved for this conversation." if self.conversation else
                            "Settings apply to this conversation.")

        self.push_screen(SettingsScreen(self.settings, allow_default=not self.incognito), done)

    def action_metrics_report(self) -> None:
        try:
            from medchat.app.report import ReportScreen
        except Exception as exc:
            self.notify(
                f"The metrics report view is not available ({type(exc).__name__}: {exc}). "
                "Run `medchat-metrics show` in a terminal instead.",
                severity="warning",
                timeout=10,
            )
            return
        try:
            self.push_screen(ReportScreen())
        except Exception as exc:
            self.notify(f"The metrics report could not open: {exc}", severity="error", timeout=10)

    # Actions of the chat screen; while a dialog is open they are off (F3 must not open a second one).
    _CHAT_ACTIONS = frozenset({
        "new_conversation", "toggle_sidebar", "search_history", "rename", "export", "copy_last",
        "model_info", "settings", "metrics_report", "help", "delete",
    })

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if (action in self._CHAT_ACTIONS or action == "stop") and len(self.screen_stack) > 1:
            return False
        return True

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        commands = (
            ("New conversation", "Start an empty conversation (Ctrl+N)", self.action_new_conversation),
            ("Stop generating", "Stop the answer being generated (Esc)", self.action_stop),
            ("Copy last answer", "Copy the last answer to the clipboard, over SSH too (Ctrl+O)", self.action_copy_last),
            ("Toggle history", "Show or hide the conversation list (Ctrl+B)", self.action_toggle_sidebar),
            ("Search history", "Search all conversations (Ctrl+F)", self.action_search_history),
            ("Rename conversation", "Give this conversation a new title (Ctrl+T)", self.action_rename),
            ("Delete conversation", "Delete this conversation and its messages", self.action_delete),
            ("Export conversation", "Write this conversation to Markdown or JSON (Ctrl+S)", self.action_export),
            ("Settings", "Temperature, top-p, max tokens, system prompt (F3)", self.action_settings),
            ("Model info", "What is loaded, and where medchat keeps files (F2)", self.action_model_info),
            ("Metrics report", "Base vs fine-tuned scores (F5)", self.action_metrics_report),
            ("Keys", "All key bindings (F1)", self.action_help),
        )
        for title, help_text, callback in commands:
            yield SystemCommand(title, help_text, callback)

    async def on_unmount(self) -> None:
        self._model_settled.set()
        if self._draft_timer is not None:
            self._draft_timer.stop()
        if self.session is not None:
            self.session.cancel()
        if self.store is not None:
            self.store.close()

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.state == WorkerState.ERROR and event.worker.group == "generate":
            self.notify(f"Generation failed: {_readable(event.worker.error)}", severity="error")


def _compact_summary(info) -> str:
    """base [+ adapter] · device dtype [· quantization] · params · load time: fits an 80-column status line."""
    try:
        parts = [Path(str(info.base)).name or str(info.base)]
        if info.adapter:
            parts[0] += f" + {Path(str(info.adapter)).parent.name or Path(str(info.adapter)).name}"
        parts.append(f"{info.device} {info.dtype}")
        if info.quantization not in (None, "none"):
            parts.append(str(info.quantization))
        parts.append(f"{info.params_total / 1e6:.0f}M")
        parts.append(f"{info.load_seconds:.1f} s")
        return " · ".join(parts) + " · F2 details"
    except Exception:  # an engine whose info lacks a field: the long summary says the same
        return info.summary()


def _settings_line(settings: ChatSettings) -> str:
    return ", ".join(f"{k}={v}" for k, v in settings.generation_dict().items())


def _readable(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown error"
    text = str(exc) or type(exc).__name__
    return text if type(exc).__name__ in ("EngineError", "ModelError") else f"{type(exc).__name__}: {text}"


def run_app(
    spec: Any,
    *,
    no_history: bool = False,
    history_path: Path | None = None,
    prompt_style: str = "chat",
    ood_policy: str | None = None,
) -> int:
    """Run the chat app in this terminal (called by `medchat`); return its exit status."""
    app = MedchatApp(spec, no_history=no_history, history_path=history_path, prompt_style=prompt_style,
                     ood_policy=ood_policy)
    # A loop of its own: asyncio.run() would join the worker threads before returning (the model or the
    # safety checker still loading, the engine reading a draft ahead), and Ctrl+Q would wait for them.
    app.run(loop=asyncio.new_event_loop())
    return app.return_code or 0


def _is_tty(stream) -> bool:
    try:
        return stream is not None and os.isatty(stream.fileno())
    except (OSError, ValueError):
        return False
