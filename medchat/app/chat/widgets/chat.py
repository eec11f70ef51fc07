"""The conversation pane: it renders the chat session's events and owns the streaming state (generating,
stopping, and finishing a stopped turn in the background). It holds no safety logic: the session decides
every notice, the pane only shows them."""

from __future__ import annotations

import asyncio
from typing import Iterator

from rich.text import Text
from textual import events
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.message import Message
from textual.widgets import Static

from medchat.core.guard.notices import PHYSICIAN_REMINDER
from medchat.core.history import Message as StoredMessage
from medchat.core.history import format_stats
from medchat.core.session import (
    ChatSession,
    Checked,
    Declined,
    Event,
    Finished,
    Notice,
    Reminder,
    Stats,
    Token,
    Waiting,
    stored_notices,
)
from medchat.app.chat.widgets.messages import AssistantMessage, UserMessage
from medchat.app.chat.widgets.status import PinnedNotice, StatusBar

_DONE = object()
_ABANDONED = object()


class ChatView(VerticalScroll):
    """Scrolls with new text only while the view is at the bottom (Textual's anchor)."""

    can_focus = True
    STOP_GRACE_S = 1.5  # after Esc, how long to wait for the engine before leaving it to finish alone

    BINDINGS = [
        Binding("home", "scroll_home", "Top", show=False),
        Binding("end", "scroll_end", "Bottom", show=False),
    ]

    WELCOME = (
        "Ask a health question and press Enter. Answers stream in; Esc stops one.\n"
        "medchat is a small language model, not a doctor: check what it says with a licensed physician, "
        "and call your local emergency number in an emergency.\n"
        "F1 keys · F2 model · F3 settings · Ctrl+B history · Ctrl+P all commands"
    )
    # Under 60 columns the long text would fill the whole pane of a 40x12 terminal.
    WELCOME_NARROW = "medchat is not a doctor: check answers with a physician. Emergency? Call your local number. F1 keys"

    class ConversationSaved(Message):
        """The session saved the first message of a new conversation."""

        def __init__(self, session: ChatSession) -> None:
            super().__init__()
            self.session = session

    class TurnEnded(Message):
        """A turn is over (answered, stopped, declined or failed); the session holds its messages."""

        def __init__(self, session: ChatSession, answer: AssistantMessage, error: str | None) -> None:
            super().__init__()
            self.session = session
            self.answer = answer
            self.error = error

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.generating = False
        self.draining: asyncio.Future | None = None  # a stopped turn the engine is still finishing
        self._stop_requested = False
        self._stop_event = asyncio.Event()

    def compose(self):
        yield Static(self._welcome(self.app.size.width), id="welcome")

    def on_mount(self) -> None:
        self.anchor()

    def on_resize(self, event: events.Resize) -> None:
        welcome = self.query_one("#welcome", Static)
        self.call_after_refresh(welcome.update, self._welcome(event.size.width))  # after this layout pass

    def _welcome(self, width: int) -> Text:
        return Text(self.WELCOME_NARROW if width < 60 else self.WELCOME)

    # ---------------------------------------------------------------- what is shown

    async def clear_messages(self) -> None:
        await self.query(".message").remove()
        self.query_one("#welcome").display = True
        self._pinned.unpin()

    def hide_welcome(self) -> None:
        self.query_one("#welcome").display = False

    async def show_messages(self, messages: list[StoredMessage], reminder: str) -> None:
        """A saved conversation, as it was shown: each answer with the notices saved with its question."""
        await self.clear_messages()
        if messages:
            self.hide_welcome()
        notices: list[Notice] = []
        question = ""
        for message in messages:
            if message.role == "user":
                guard = message.guard or {}
                notices, question = stored_notices(guard), message.content
                await self.mount(UserMessage(message.content, level=guard.get("ood_level"), message_id=message.id))
            elif message.role == "assistant":
                answer = AssistantMessage(reminder=reminder, message_id=message.id)
                answer.question = question
                await self.mount(answer)
                for notice in notices:
                    answer.add_notice(notice.kind, notice.text)
                await answer.finish(message.content, message.status, message.stats)
        self.anchor()

    def question_before(self, answer: AssistantMessage) -> UserMessage | None:
        """The user message that `answer` answers."""
        messages = list(self.query(".message"))
        earlier = messages[:messages.index(answer)]
        return next((w for w in reversed(earlier) if isinstance(w, UserMessage)), None)

    async def drop_from(self, message: UserMessage) -> list[dict]:
        """Remove `message` and everything after it; return the turns that are left ([{"role", "content"}],
        as the session keeps them: answers without text are not turns)."""
        messages = list(self.query(".message"))
        await self.remove_children(messages[messages.index(message):])
        turns = []
        for widget in messages[:messages.index(message)]:
            if isinstance(widget, UserMessage):
                turns.append({"role": "user", "content": widget.text})
            elif isinstance(widget, AssistantMessage) and widget.text:
                turns.append({"role": "assistant", "content": widget.text})
        return turns

    def answers(self) -> list[AssistantMessage]:
        """The finished answers, oldest first."""
        return [w for w in self.query(AssistantMessage) if w.status != "generating"]

    @property
    def busy(self) -> bool:
        """A turn runs, or a stopped one is still finishing in the engine."""
        return self.generating or (self.draining is not None and not self.draining.done())

    @property
    def _status(self) -> StatusBar:
        return self.screen.query_one(StatusBar)

    @property
    def _pinned(self) -> PinnedNotice:
        return self.screen.query_one(PinnedNotice)

    # ---------------------------------------------------------------- scrolling

    def _unpin_if_in_view(self) -> None:
        """The answer is over: the pinned copy goes if the notice in the answer itself is in full view."""
        shown = [box for box in self.query(".notices") if box.display]
        if shown and self.can_view_entire(shown[-1]):
            self._pinned.unpin()

    def scroll_by_page(self, direction: int) -> None:
        """Page Up / Down from the prompt (-1 / 1), Ctrl+Home / End (-2 / 2)."""
        self._pinned.unpin()  # the user scrolls: the notice is where they can find it, above the answer
        if direction == -2:
            self.scroll_home(animate=False)
        elif direction < 0:
            self.scroll_page_up(animate=False)
        elif direction == 2 or self.max_scroll_y - self.scroll_y <= self.size.height:
            self.anchor()  # back at the bottom: follow new text again
        else:
            self.scroll_page_down(animate=False)

    def on_mouse_scroll_up(self, event: events.MouseScrollUp) -> None:
        self._pinned.unpin()

    def on_mouse_scroll_down(self, event: events.MouseScrollDown) -> None:
        self._pinned.unpin()

    # ---------------------------------------------------------------- one turn

    def stop(self) -> None:
        """Esc: the answer shown so far is kept; the session stops the model."""
        self._stop_requested = True
        self._stop_event.set()

    async def run_turn(self, session: ChatSession, text: str) -> None:
        """Show one turn of the session: the question, its notices before any text, the streamed answer."""
        self.generating = True
        self._stop_requested = False
        self._stop_event = asyncio.Event()
        self._pinned.unpin()
        self._status.show("Generating… Esc stops")
        try:
            await self._render_turn(session, text)
        finally:
            self.generating = False
            self._unpin_if_in_view()
            if self.busy:
                self._status.show("Stopped. The model finishes its current step in the background…")
            else:
                self._status.show_ready()

    async def _render_turn(self, session: ChatSession, text: str) -> None:
        for pending in self.query(".pending"):
            await pending.remove()
        question = UserMessage(text, level="checking")
        answer = AssistantMessage()
        answer.question = text
        self.hide_welcome()
        await self.mount_all([question, answer])
        self.anchor()
        iterator = session.send(text)
        stats: dict | None = None
        error: str | None = None
        while (event := await self._next_event(iterator)) is not _DONE:
            if event is _ABANDONED:  # stopped; the engine finishes its current step in the background
                await self._abandon(answer, session)
                break
            if isinstance(event, Checked):
                if self._status.loading:  # it said the check waits for the safety checker: no longer
                    self._status.show_ready()
                result = event.result
                question.set_level(result.ood_level if result else None, result.ood_score if result else None)
                question.message_id = session.last_user_message_id
                self.post_message(self.ConversationSaved(session))
            elif isinstance(event, Stats):
                stats = event.stats.as_dict()
            elif isinstance(event, Finished):
                error = event.error
                await self._finish(answer, event, stats)
                answer.message_id = session.last_answer_message_id
            else:
                await self._show(event, answer)
        self.post_message(self.TurnEnded(session, answer, error))

    async def _show(self, event: Event, answer: AssistantMessage) -> None:
        if isinstance(event, Waiting):
            self._status.show(event.text, loading=True)
        elif isinstance(event, Notice):
            answer.add_notice(event.kind, event.text)
            if event.kind == "emergency":
                self._pinned.pin(event.text)
        elif isinstance(event, (Token, Declined)):
            if not self._stop_requested:  # what was shown at Esc is what is kept
                await answer.write(event.text)
        elif isinstance(event, Reminder):
            answer.reminder = event.text

    async def _finish(self, answer: AssistantMessage, event: Finished, stats: dict | None) -> None:
        status = {"cancelled": "stopped", "error": "error"}.get(event.stop_reason, "complete")
        record = (stats or {"ttft_s": None, "tokens": None}) | {"stop_reason": event.stop_reason}
        await answer.finish(event.answer, status, record, event.error)

    async def _abandon(self, answer: AssistantMessage, session: ChatSession) -> None:
        """The engine did not stop in time: show the answer as stopped now, its real stats once it has."""
        answer.reminder = PHYSICIAN_REMINDER  # the session's own Reminder event comes only with the drain
        await answer.finish(answer.text.strip(), "stopped", {"ttft_s": None, "tokens": None,
                                                              "stop_reason": "cancelled"})
        if self.draining is not None:
            self.draining.add_done_callback(lambda task: self._late_stats(task, answer, session))

    async def _next_event(self, iterator: Iterator[Event]) -> object:
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
            self.draining = asyncio.ensure_future(self._drain(iterator, pending))
            return _ABANDONED

    async def _drain(self, iterator: Iterator[Event], pending: asyncio.Future) -> list[Event]:
        """Run what is left of a stopped turn so the engine's thread finishes and the session saves the
        answer; return the events it still produced. The session turns engine failures into a Finished
        event, so an exception here is a bug worth seeing in the log, not a user error."""
        events_left: list[Event] = []
        try:
            event = await pending
            while event is not _DONE:
                events_left.append(event)
                event = await asyncio.to_thread(next, iterator, _DONE)
        finally:
            if not self.generating:
                self._status.show_ready()
        return events_left

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
        self.post_message(self.TurnEnded(session, answer, None))

