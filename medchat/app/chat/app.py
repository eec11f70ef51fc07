"""medchat: the Textual chat app.

The app is thin: every turn runs through the headless chat session (`medchat.core.session`: the guard's
whole verdict before the model starts, the policy, the reminder, the history), which the conversation pane
(widgets/chat.py) renders; the model and the guard load in `loader.py`, dialogs live in `screens/`, export
in `export.py`, settings in `medchat.core.settings`; the actions on a message on screen (edit, regenerate,
resend, copy) in `message_actions.py`, on a saved conversation (rename, delete, export) in
`conversation_actions.py`. The app wires them together and routes the keys.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Callable, Iterable

from textual import events, on, work
from textual.app import App, ComposeResult, SuspendNotSupported, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Footer, Header, Input, TextArea
from textual.worker import Worker, WorkerState

from medchat.core.guard.notices import PHYSICIAN_REMINDER
from medchat.core.history import Conversation, HistoryError, HistoryStore
from medchat.core.model import ModelSpec
from medchat.core.session import ChatSession
from medchat.core.settings import (
    ChatSettings,
    SettingsError,
    load_defaults,
    load_keys,
    load_ood_policy,
    load_theme,
    save_theme,
)
from medchat.core.textsafe import strip_control
from medchat.app.process_exit import exit_now
from medchat.app.chat.conversation_actions import ConversationActions
from medchat.app.chat.editor import EditorError, edit_text
from medchat.app.chat.loader import (
    EngineFactory,
    GuardFactory,
    Loader,
    compact_summary,
    default_engine_factory,
    default_guard_factory,
)
from medchat.app.chat.message_actions import MessageActions
from medchat.app.chat.paste import use_paste_safe_parser
from medchat.app.chat.screens import HelpScreen, ModelInfoScreen, RunPickerScreen, SettingsScreen, known_adapters
from medchat.app.chat.widgets import (
    AssistantMessage,
    ChatInput,
    ChatView,
    ConversationList,
    HistorySidebar,
    PinnedNotice,
    StatusBar,
    UserMessage,
)

NARROW_COLUMNS = 100  # below this the history sidebar is an overlay, hidden until asked for
SHORT_ROWS = 16  # below this the title bar gives its row to the conversation
HANGUP_EXIT_S = 2.0  # how long a hang-up's exit may take to restore a terminal that is gone


class MedchatApp(App):
    """Chat with a local medical assistant model."""

    CSS_PATH = "medchat.tcss"
    DRAFT_PAUSE_S = 0.4  # a pause in typing this long lets the engine read the draft ahead of Enter
    PASTE_CHARS = 20  # the draft grew by more at once: a paste (or a recalled prompt), read it at once
    TITLE = "medchat"
    ENABLE_COMMAND_PALETTE = True

    # The footer shows the keys a newcomer needs first, all of them at 80 columns.
    # Every binding has an id: `[keys]` in config.toml overrides it (e.g. regenerate = "ctrl+g,f6").
    BINDINGS = [
        Binding("escape", "stop", "Stop", priority=False, id="stop"),
        Binding("f1", "help", "Help", id="help"),
        Binding("f3", "settings", "Settings", id="settings"),
        Binding("f5,ctrl+r", "metrics_report", "Report", id="metrics_report"),
        Binding("ctrl+b,f4", "toggle_sidebar", "History", id="toggle_sidebar"),
        Binding("ctrl+n", "new_conversation", "New", id="new_conversation"),
        Binding("f2", "model_info", "Model", show=False, id="model_info"),
        Binding("ctrl+f", "search_history", "Search", show=False, id="search_history"),
        Binding("ctrl+t", "rename", "Rename", show=False, id="rename"),
        Binding("ctrl+s", "export", "Export", show=False, id="export"),
        Binding("ctrl+o", "copy_last", "Copy", show=False, id="copy_last"),
        Binding("ctrl+g", "regenerate", "Regenerate", show=False, id="regenerate"),
        Binding("ctrl+l", "compose_in_editor", "Editor", show=False, id="compose_in_editor"),
        Binding("f8", "switch_run", "Run", show=False, id="switch_run"),
    ]

    def __init__(
        self,
        spec: ModelSpec | None = None,
        *,
        no_history: bool = False,
        history_path: Path | None = None,
        engine_factory: EngineFactory | None = None,
        guard_factory: GuardFactory | None = None,
        factories_for_adapter: Callable[[str | None], tuple[EngineFactory, GuardFactory]] | None = None,
        prompt_style: str = "chat",
        cursor_blink: bool = True,
        ood_policy: str | None = None,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.incognito = no_history
        self.history_path = history_path
        self.cursor_blink = cursor_blink
        self.loader = Loader(engine_factory or default_engine_factory(spec, prompt_style),
                             guard_factory if guard_factory is not None else default_guard_factory(spec),
                             self.call_from_thread, self.call_after_refresh)
        # F8: the engine and guard for another run's adapter (None: the base model alone)
        self.factories_for_adapter = factories_for_adapter or partial(_factories_for_adapter, spec, prompt_style)
        self.store: HistoryStore | None = None
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
        self.message_actions = MessageActions(self)  # edit, regenerate, resend, copy
        self.conversation_actions = ConversationActions(self)  # rename, delete, export
        self._pending: str | None = None
        self._draft_timer = None
        self._draft_length = 0

    # ---------------------------------------------------------------- layout

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False, icon="✚")
        with Horizontal(id="main"):
            yield HistorySidebar(incognito=self.incognito, id="sidebar")
            with Vertical(id="chat-column"):
                yield ChatView(id="chat")
                yield PinnedNotice(id="pinned-notice")
                yield StatusBar(id="status-bar")
                yield ChatInput(id="prompt", placeholder="Ask a medical question · Enter sends · F1 help")
        yield Footer()

    @property
    def chat_view(self) -> ChatView:
        return self.query_one(ChatView)

    @property
    def status_bar(self) -> StatusBar:
        return self.query_one(StatusBar)

    @property
    def generating(self) -> bool:
        return self.chat_view.generating

    def on_descendant_focus(self, event: events.DescendantFocus) -> None:
        # cursor_blink for every text field on every screen (a cursor is only drawn where the focus is)
        if isinstance(event.widget, (Input, TextArea)):
            event.widget.cursor_blink = self.cursor_blink

    def on_mount(self) -> None:
        self.query_one(ChatInput).focus()
        self._fit_to(self.size.width, self.size.height)
        self.query_one(HistorySidebar).display = self.size.width >= 120 and not self.incognito
        self._open_history()
        self._apply_config()
        if self.settings_error:
            self.notify(self.settings_error, title="Settings", severity="warning", timeout=15)
        self.update_title()
        self.refresh_history()
        self._start_loading()
        if not self.is_headless and _is_tty(sys.__stdin__):
            self.set_interval(1.0, self._quit_if_terminal_hung_up)
        if not self.is_headless and os.name == "posix" and threading.current_thread() is threading.main_thread():
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self._leave, 129)

    def _start_loading(self) -> None:
        self.status_bar.show("Loading the model… you can type meanwhile.", loading=True)
        self.run_worker(partial(self.loader.load_model, self._conversation_so_far(), self._model_loaded,
                                self._model_failed), thread=True, group="load", exit_on_error=False)
        self.run_worker(self.loader.load_guard, thread=True, group="guard", exit_on_error=False)

    def _apply_config(self) -> None:
        """`[keys]` and `[chat] theme` from config.toml; a mistake there is reported, never fatal."""
        try:
            keys, theme = load_keys(), load_theme()
        except SettingsError as exc:
            self.settings_error = str(exc)
            return
        known = {b.id for b in self.BINDINGS}
        unknown = sorted(set(keys) - known)
        if unknown:
            self.settings_error = (f"[keys] in config.toml: no binding called {', '.join(unknown)}. "
                                   f"The ids are: {', '.join(sorted(known))}.")
        self.set_keymap({k: v for k, v in keys.items() if k in known})
        if theme is not None and theme not in self.available_themes:
            self.settings_error = f"[chat] theme in config.toml: no theme called {theme!r} (Ctrl+P, Theme lists them)."
        elif theme is not None:
            self.theme = theme
        self.theme_changed_signal.subscribe(self, self._save_theme)

    def _save_theme(self, theme) -> None:
        """A theme picked in the command palette is kept for next time."""
        if self.incognito:
            return
        try:
            save_theme(theme.name)
        except (SettingsError, OSError) as exc:
            self.notify(f"Could not save the theme: {exc}", severity="error")

    def _open_history(self) -> None:
        if self.incognito:
            return
        try:
            self.store = HistoryStore(self.history_path)
        except HistoryError as exc:
            self.notify(f"{exc}\nThis session is not saved.", severity="error", timeout=15)
            return
        self.query_one(HistorySidebar).store = self.store

    def on_resize(self, event) -> None:
        self._fit_to(event.size.width, event.size.height)

    def _fit_to(self, width: int, height: int) -> None:
        """Narrow: the sidebar becomes an overlay (Ctrl+B); short: the title bar gives its row away."""
        self.query_one("#main").set_class(width < NARROW_COLUMNS, "narrow")
        self.query_one(Header).display = height >= SHORT_ROWS

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
        if return_code == 129 and not self.is_headless:
            # Textual's output thread can die writing to the dead terminal, and its shutdown then waits for it
            # for ever (seen under tmux kill-session): the answer is saved by then, so the process ends anyway.
            watchdog = threading.Timer(HANGUP_EXIT_S, exit_now, args=(129,))
            watchdog.daemon = True
            watchdog.start()
        self.exit(return_code=return_code)

    def update_title(self) -> None:
        title = strip_control(self.conversation.title) if self.conversation else "New conversation"
        self.title = f"medchat — {title}"
        self.sub_title = "incognito" if self.incognito else ("not saved" if self.store is None else "")

    # ---------------------------------------------------------------- the model

    def _model_loaded(self) -> None:
        self.status_bar.show_ready(f"Ready · {compact_summary(self.loader.engine.info)}")
        if self._pending is not None:
            text, self._pending = self._pending, None
            self.start_turn(text)

    def _model_failed(self) -> None:
        message = self.loader.model_error
        if self._pending is not None:  # give the waiting message back, unsent
            prompt = self.query_one(ChatInput)
            if not prompt.text:
                prompt.load_text(self._pending)
            self._pending = None
            self.chat_view.query(".pending").remove()
        self.status_bar.show(f"The model did not load: {message}", error=True)
        self.notify(message, title="Model not loaded", severity="error", timeout=30)

    def _conversation_so_far(self) -> list[dict]:
        """What the model reads before the next question: the system prompt and the turns so far."""
        return [{"role": "system", "content": self.settings.effective_system_prompt}] + self.turns

    @on(TextArea.Changed, "#prompt")
    def _draft_changed(self, event: TextArea.Changed) -> None:
        if self._draft_timer is not None:
            self._draft_timer.stop()
        length = len(event.text_area.text)
        # Enter often follows a paste at once: waiting for a pause would leave the whole prompt to read then.
        pasted = length - self._draft_length > self.PASTE_CHARS
        self._draft_length = length
        self._draft_timer = self.set_timer(0.01 if pasted else self.DRAFT_PAUSE_S, self._read_draft_ahead)

    def _read_draft_ahead(self) -> None:
        """Let the engine read the draft while the user is still typing: Enter then costs only the rest."""
        prompt = self.query(ChatInput)
        if not prompt:  # the timer fired while the app was closing
            return
        text = strip_control(prompt.first().text).strip()
        if text and self.loader.engine is not None and not self.chat_view.busy:
            self.prefill_draft(self._conversation_so_far(), text)

    @work(thread=True, exclusive=True, group="prefill", exit_on_error=False)
    def prefill_draft(self, context: list[dict], text: str) -> None:
        try:
            self.loader.engine.prefill(context, draft=text)
        except Exception as exc:  # only a head start: the turn itself reports real errors
            self.log.warning(f"reading the draft ahead failed: {exc!r}")

    # ---------------------------------------------------------------- history

    def refresh_history(self, highlight: int | None = None) -> None:
        if highlight is None and self.conversation is not None:
            highlight = self.conversation.id
        self.query_one(HistorySidebar).refresh_list(highlight)

    @on(HistorySidebar.Open)
    async def _history_open(self, event: HistorySidebar.Open) -> None:
        await self.open_conversation(event.conversation.id)
        if self.size.width < 120:  # a narrow terminal needs the room for the chat
            self.query_one(HistorySidebar).display = False

    @on(ConversationList.Action)
    def _history_action(self, event: ConversationList.Action) -> None:
        self.conversation_actions.run(event.action, event.conversation)

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
        self.conversation, self.session = conv, None
        try:
            self.settings = ChatSettings.from_dict(conv.settings, base=self.default_settings)
        except SettingsError:
            self.settings = self.default_settings
        await self.chat_view.show_messages(messages, self.reminder)
        self.turns = [{"role": m.role, "content": m.content} for m in messages if m.content]
        self.query_one(ChatInput).set_history([t["content"] for t in self.turns if t["role"] == "user"])
        self.update_title()
        self.refresh_history()
        self.query_one(ChatInput).focus()

    async def reset_conversation(self) -> None:
        self.conversation, self.session, self.turns = None, None, []
        self.settings = self.default_settings
        await self.chat_view.clear_messages()
        self.query_one(ChatInput).set_history([])
        self.update_title()

    # ---------------------------------------------------------------- sending

    @on(ChatInput.ScrollChat)
    def _scroll_chat(self, event: ChatInput.ScrollChat) -> None:
        self.chat_view.scroll_by_page(event.direction)

    @on(ChatInput.Submitted)
    def _submitted(self, event: ChatInput.Submitted) -> None:
        text = strip_control(event.text).strip()
        if not text or not self.can_send():
            return
        prompt = event.chat_input
        prompt.remember(text)
        prompt.clear()
        if self.message_actions.submit_edit(text):
            return
        if self.loader.engine is None:
            self._pending = text
            self.notify("The model is still loading; your message is sent as soon as it is ready.")
            self.chat_view.hide_welcome()
            pending = UserMessage(text, level=None)
            pending.add_class("pending")
            self.chat_view.mount(pending)
            return
        self.start_turn(text)

    def can_send(self) -> bool:
        """Say why a message cannot be sent now, if it cannot."""
        if self.generating:
            self.notify("An answer is still being generated: press Esc to stop it first.", severity="warning")
        elif self.loader.model_status == "failed":
            self.notify(f"The model is not loaded: {self.loader.model_error}", severity="error", timeout=10)
        elif self.chat_view.busy:
            self.notify("The model is still finishing the stopped answer (a long prompt is read in one "
                        "step); try again in a moment.", severity="warning")
        else:
            return True
        return False

    def start_turn(self, text: str) -> None:
        self.chat_view.generating = True  # at once: a second Enter before the worker starts is refused
        self.run_turn(text)

    @work(exclusive=True, group="generate", exit_on_error=False)
    async def run_turn(self, text: str) -> None:
        await self.loader.guard_ready.wait()  # the guard object (not its embedder) is there within moments
        await self.chat_view.run_turn(self._session_for_turn(), text)

    def _session_for_turn(self) -> ChatSession:
        """The conversation's session, with the settings and system prompt as they are now (F3 may change them)."""
        if self.session is None:
            self.session = ChatSession(
                self.loader.engine, self.loader.guard, policy=self.ood_policy, store=self.store,
                messages=self.turns, conversation_id=self.conversation.id if self.conversation else None)
        self.session.settings = self.settings.to_generation()
        self.session.system_prompt = self.settings.effective_system_prompt
        return self.session

    @on(ChatView.ConversationSaved)
    def _conversation_saved(self, event: ChatView.ConversationSaved) -> None:
        """The session saved the first message: show the new conversation in the title and the sidebar."""
        session = event.session
        if self.conversation is None and session.conversation_id is not None and self.store is not None:
            try:
                self.conversation = self.store.get_conversation(session.conversation_id)
            except HistoryError as exc:
                self.history_failed(exc)
                return
            self.update_title()
            self.refresh_history()

    @on(ChatView.TurnEnded)
    def _turn_ended(self, event: ChatView.TurnEnded) -> None:
        self.turns = list(event.session.messages)
        if event.error:
            self.notify(event.error, title="Generation failed", severity="error", timeout=15)
        if event.session.history_error:
            self.history_failed(event.session.history_error)
        self.refresh_history()

    def history_failed(self, exc: Exception | str) -> None:
        self.notify(f"Could not save to the history: {exc}", severity="error", timeout=10)

    # ---------------------------------------------------------------- actions

    def action_stop(self) -> None:
        if self.message_actions.editing is not None and not self.generating:
            self.message_actions.end_edit()
            return
        if not self.generating:
            if isinstance(self.focused, (ConversationList, Input)):
                self.query_one(ChatInput).focus()
            return
        self.chat_view.stop()
        if self.session is not None:
            self.session.cancel()
        self.status_bar.show("Stopping…")

    async def action_quit(self) -> None:
        self._leave()

    async def action_new_conversation(self) -> None:
        if self.generating:
            self.notify("Wait for the answer or press Esc to stop it first.", severity="warning")
            return
        await self.reset_conversation()
        self.refresh_history()
        self.query_one(ChatInput).focus()

    def action_toggle_sidebar(self) -> None:
        sidebar = self.query_one(HistorySidebar)
        sidebar.display = not sidebar.display
        if sidebar.display and self.store is not None:
            self.refresh_history()
            self.query_one(ConversationList).focus()
        else:
            self.query_one(ChatInput).focus()

    def action_search_history(self) -> None:
        if self.store is None:
            self.notify("History is off in this session.")
            return
        self.query_one(HistorySidebar).display = True
        self.query_one("#history-search", Input).focus()

    def action_rename(self) -> None:
        self.conversation_actions.rename(self.conversation)

    def action_export(self) -> None:
        self.conversation_actions.export(self.conversation)

    def action_delete(self) -> None:
        self.conversation_actions.delete(self.conversation)

    def action_regenerate(self) -> None:
        self.message_actions.regenerate_last()

    @on(UserMessage.EditRequested)
    def _edit_requested(self, event: UserMessage.EditRequested) -> None:
        self.message_actions.start_edit(event.widget)

    def action_compose_in_editor(self) -> None:
        """Write the message in $EDITOR; what is saved there replaces the draft (not sent until Enter)."""
        prompt = self.query_one(ChatInput)
        try:
            with self.suspend():
                text = edit_text(prompt.text)
        except EditorError as exc:
            self.notify(str(exc), title="Editor", severity="error", timeout=10)
            return
        except SuspendNotSupported:
            self.notify("This terminal cannot hand over to an editor.", title="Editor", severity="error")
            return
        prompt.load_text(text)
        prompt.move_cursor(prompt.document.end)
        prompt.focus()

    def action_switch_run(self) -> None:
        """Answer with another run's adapter from the next message on (the conversation is kept)."""
        if self.chat_view.busy or self.loader.model_status == "loading":
            self.notify("Wait for the answer (or the model load) to finish first.", severity="warning")
            return
        engine = self.loader.engine
        current = engine.info.adapter if engine is not None else None

        def done(adapter: str | None) -> None:
            if adapter is None:
                return
            engine_factory, guard_factory = self.factories_for_adapter(adapter or None)
            self.loader = Loader(engine_factory, guard_factory, self.call_from_thread)
            self.session = None  # the next turn starts a session on the new engine, with the turns so far
            self._start_loading()

        self.push_screen(RunPickerScreen(known_adapters(), current), done)

    def action_copy_last(self) -> None:
        self.message_actions.copy_last()

    @on(AssistantMessage.CopyRequested)
    def _copy_requested(self, event: AssistantMessage.CopyRequested) -> None:
        self.message_actions.copy(event.widget.copy_text(), "this answer")

    @on(AssistantMessage.MenuRequested)
    def _menu_requested(self, event: AssistantMessage.MenuRequested) -> None:
        self.message_actions.open_menu(event.widget)

    def action_help(self) -> None:
        self.push_screen(HelpScreen(self._paths()))

    def _paths(self) -> dict[str, str]:
        from medchat.core import paths

        history = "off (--no-history)" if self.incognito else str(self.store.path if self.store else paths.history_db_path())
        return {"history": history, "config": str(paths.config_file()), "data": str(paths.data_dir()),
                "cache": str(paths.cache_dir())}

    def action_model_info(self) -> None:
        loader = self.loader
        info = loader.engine.info if loader.engine is not None else None
        data = info.as_dict() if info is not None else None
        if loader.model_status == "ready":
            status = info.summary()
        elif loader.model_status == "failed":
            status = f"Not loaded: {loader.model_error}"
        else:
            spec = self.spec
            status = f"Loading {spec.base if spec is not None else 'the model'}…"
            if spec is not None:
                data = {"base": spec.base, "adapter": spec.adapter, "quantization": spec.quantization,
                        "device": spec.device, "dtype": spec.dtype}
        extra = {"guard": loader.guard_status, "settings": _settings_line(self.settings)} | self._paths()
        self.push_screen(ModelInfoScreen(status, data, extra))

    def action_settings(self) -> None:
        def done(result: tuple[ChatSettings, bool] | None) -> None:
            if result is not None:
                self.conversation_actions.apply_settings(*result)

        self.push_screen(SettingsScreen(self.settings, allow_default=not self.incognito), done)

    def action_metrics_report(self) -> None:
        from medchat.app.report import ReportScreen

        self.push_screen(ReportScreen())

    # Actions of the chat screen; while a dialog is open they are off (F3 must not open a second one).
    _CHAT_ACTIONS = frozenset({
        "new_conversation", "toggle_sidebar", "search_history", "rename", "export", "copy_last",
        "model_info", "settings", "metrics_report", "help", "delete", "regenerate", "compose_in_editor",
        "switch_run",
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
            ("Regenerate answer", "Answer the last question again (Ctrl+G)", self.action_regenerate),
            ("Compose in editor", "Write the message in $EDITOR (Ctrl+L)", self.action_compose_in_editor),
            ("Switch run", "Answer with another training run's adapter from here on (F8)", self.action_switch_run),
            ("Help", "Keys, the out-of-domain legend, and where files are (F1)", self.action_help),
        )
        for title, help_text, callback in commands:
            yield SystemCommand(title, help_text, callback)

    async def on_unmount(self) -> None:
        self.loader.model_shown.set()
        self.loader.model_settled.set()
        if self._draft_timer is not None:
            self._draft_timer.stop()
        if self.session is not None:
            self.session.cancel()
        if self.store is not None:
            self.store.close()

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """A bug in a turn must not pass silently: the session turns every engine failure into a Finished
        event, so what arrives here is unexpected, and the user should hear of it."""
        if event.state == WorkerState.ERROR and event.worker.group == "generate":
            error = event.worker.error
            self.notify(f"Generation failed: {type(error).__name__}: {error}", severity="error")


def _factories_for_adapter(spec: ModelSpec | None, prompt_style: str,
                           adapter: str | None) -> tuple[EngineFactory, GuardFactory]:
    spec = replace(spec or ModelSpec(), adapter=adapter)
    return default_engine_factory(spec, prompt_style), default_guard_factory(spec)


def _settings_line(settings: ChatSettings) -> str:
    return ", ".join(f"{k}={v}" for k, v in settings.generation_dict().items())


def run_app(
    spec: ModelSpec,
    *,
    no_history: bool = False,
    history_path: Path | None = None,
    prompt_style: str = "chat",
    ood_policy: str | None = None,
    engine_factory: EngineFactory | None = None,
) -> int:
    """Run the chat app in this terminal (called by `medchat`); engine_factory: e.g. an endpoint's engine.
    Returns the app's exit status."""
    use_paste_safe_parser()
    app = MedchatApp(spec, no_history=no_history, history_path=history_path, prompt_style=prompt_style,
                     ood_policy=ood_policy, engine_factory=engine_factory)
    # A loop of its own: asyncio.run() would join the worker threads before returning (the model or the
    # safety checker still loading, the engine reading a draft ahead), and Ctrl+Q would wait for them.
    app.run(loop=asyncio.new_event_loop())
    return app.return_code or 0


def _is_tty(stream) -> bool:
    try:
        return stream is not None and os.isatty(stream.fileno())
    except (OSError, ValueError):
        return False
