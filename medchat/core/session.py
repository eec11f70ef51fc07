"""The headless chat session: one safety path under every front end (the chat app, `medchat ask`, `medchat serve`).

A turn runs the whole guard check (text rules, the semantic red-flag layer, the out-of-domain score) before
the model starts, applies the out-of-domain policy, streams the answer, appends the physician reminder, and
hands out typed events that a front end only renders. With a HistoryStore it also persists the turn.

    session = ChatSession(engine, guard, policy="note", store=store)
    for event in session.send("I have crushing chest pain"):
        ...   # Checked, Notice("emergency", ...), Token..., Stats, Reminder, Finished

Order of one turn (Finished is always last, also after an error, a cancel or a decline):

    [Waiting] Checked Notice* (Declined | Token*) [Stats] Reminder Finished

Notice kinds: "emergency" (one per distinct red-flag notice), "dosing", "out_of_domain", "uncertain",
"guard_degraded" (only the rules ran: no or a corrupt index, the embedder failed; said once per session and
again if the reason changes) and "truncated" (part of the message or of the conversation was left out).
No Textual here: iterate `send()` in a worker thread; `cancel()` may be called from any thread.

With a store, the question is committed before the model starts, and the answer is a `streaming` row that
grows as it is generated (within SAVE_EVERY_S of a chunk, at once every SAVE_EVERY_CHUNKS): a kill keeps the
text up to the last save, and the next open of the store marks it `interrupted`. `cancel()` saves the text
handed out so far as `stopped` at once, without waiting for the model to stop, so a front end may exit
right after it (Ctrl+Q, a hang-up) and lose nothing.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Union

from medchat.core.engine import EngineError, GenerationSettings, GenerationStats
from medchat.core.guard.notices import (
    DECLINE_MESSAGE,
    DOSING_NOTE,
    OUT_OF_DOMAIN_NOTE,
    PHYSICIAN_REMINDER,
    UNCERTAIN_NOTE,
)
from medchat.core.guard.policy import DEFAULT_POLICY, check_policy, should_decline
from medchat.core.prompting import DEFAULT_SYSTEM_PROMPT
from medchat.core.protocols import Engine, GuardChecker
from medchat.core.textsafe import strip_control

if TYPE_CHECKING:
    from medchat.core.guard.guard import GuardResult
    from medchat.core.history import HistoryStore

__all__ = [
    "MAX_MESSAGE_CHARS",
    "ChatSession",
    "Checked",
    "Declined",
    "Event",
    "Finished",
    "Notice",
    "Reminder",
    "SessionBusy",
    "Stats",
    "Token",
    "Waiting",
    "guard_index_dir",
    "load_guard",
    "stored_notices",
    "title_from",
]

# Longer messages are cut here (with a notice): the red-flag rules' time grows with the text, and a pasted
# megabyte would hold the answer up for seconds. Below this, the whole message is checked and saved, and
# the engine cuts what does not fit the model's context (its own notice says how much).
MAX_MESSAGE_CHARS = 200_000
WAITING_TEXT = "Loading the safety checker (emergency and out-of-domain checks)… the answer starts once it is ready."
EMPTY_MESSAGE = "The message is empty: type a question."
GUARD_OFF = "no safety checker is loaded: no emergency notices and no out-of-domain check"


# ---------------------------------------------------------------- events


@dataclass(frozen=True)
class Waiting:
    """The safety checker (the embedder) is still loading; the session blocks until it is ready."""

    text: str


@dataclass(frozen=True)
class Checked:
    """The whole guard verdict, before any generation. degraded: why only the rules ran, if they did."""

    result: GuardResult | None
    degraded: str | None


@dataclass(frozen=True)
class Notice:
    """A fixed text shown before the answer (see the module doc for the kinds)."""

    kind: str
    text: str

    def as_dict(self) -> dict:
        return {"kind": self.kind, "text": self.text}


@dataclass(frozen=True)
class Declined:
    """Policy "decline" and an out-of-domain question (never a red flag): nothing is generated."""

    text: str


@dataclass(frozen=True)
class Token:
    """A chunk of generated text (control and escape sequences already removed)."""

    text: str


@dataclass(frozen=True)
class Stats:
    stats: GenerationStats


@dataclass(frozen=True)
class Reminder:
    """PHYSICIAN_REMINDER, added by the application to every answer (stopped, failed, declined too)."""

    text: str


@dataclass(frozen=True)
class Finished:
    """Always the last event. stop_reason: "eos" | "length" | "cancelled" | "error" | "declined"."""

    answer: str
    stop_reason: str
    error: str | None


Event = Union[Waiting, Checked, Notice, Declined, Token, Stats, Reminder, Finished]


class SessionBusy(RuntimeError):
    """send() was called while another turn of the same session is still running."""


# ---------------------------------------------------------------- helpers shared by the front ends


def title_from(text: str) -> str:
    """A conversation title: the first non-empty line, at most 60 characters."""
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "Conversation")
    return line if len(line) <= 60 else line[:59] + "…"


def guard_index_dir(adapter: str | None) -> Path | None:
    """The guard's reference index for an adapter: <run>/guard_index beside <run>/adapter.
    None lets the guard pick its shipped default index."""
    if adapter:
        candidate = Path(adapter).parent / "guard_index"
        if candidate.is_dir():
            return candidate
    return None


def load_guard(adapter: str | None = None, index_dir: Path | None = None) -> GuardChecker:
    """The guard for an adapter (or an explicit index directory). Never raises for a missing or corrupt
    index: the guard then runs its text rules alone and `ood_error` says why (the session tells the user)."""
    from medchat.core.guard import Guard, GuardIndexError

    index_dir = index_dir if index_dir is not None else guard_index_dir(adapter)
    try:
        return Guard.load(index_dir)
    except GuardIndexError as exc:
        guard = Guard(None)  # the red-flag and dosing rules need no index
        guard.ood_error = str(exc)
        return guard


def notices_for(result: GuardResult | None, degraded: str | None, declined: bool) -> list[Notice]:
    """The notices a verdict shows before the answer: emergencies first, then dosing, then the scope note.
    A red flag is never hedged with a scope note; a declined question gets the Declined text instead."""
    out: list[Notice] = []
    if result is not None:
        for flag in result.red_flags:
            if all(n.text != flag.notice for n in out):
                out.append(Notice("emergency", flag.notice))
        if result.dosing_note:
            out.append(Notice("dosing", DOSING_NOTE))
        if not result.red_flags and not declined:
            if result.ood_level == "out_of_domain":
                out.append(Notice("out_of_domain", OUT_OF_DOMAIN_NOTE))
            elif result.ood_level == "uncertain":
                out.append(Notice("uncertain", UNCERTAIN_NOTE))
    if degraded:
        out.append(Notice("guard_degraded", degraded_text(degraded)))
    return out


def degraded_text(reason: str) -> str:
    return (f"Safety checks are limited: {reason}. Emergency notices come from the text rules alone "
            "and the out-of-domain check is off.")


def stored_notices(guard: dict | None) -> list[Notice]:
    """The notices saved with a user message (history), to show them again when a conversation is reopened.
    Messages saved before the session existed carry only the verdict: their notices are rebuilt from it."""
    guard = guard or {}
    if isinstance(guard.get("notices"), list):
        return [Notice(str(n.get("kind", "")), str(n.get("text", ""))) for n in guard["notices"] if isinstance(n, dict)]
    out: list[Notice] = []
    flags = [f for f in guard.get("red_flags") or [] if isinstance(f, dict)]
    for flag in flags:
        from medchat.core.guard.policy import emergency_notice

        text = flag.get("notice") or emergency_notice(str(flag.get("category", "emergency")))
        if all(n.text != text for n in out):
            out.append(Notice("emergency", text))
    if guard.get("dosing_note"):
        out.append(Notice("dosing", DOSING_NOTE))
    if not flags and guard.get("ood_level") == "out_of_domain":
        out.append(Notice("out_of_domain", OUT_OF_DOMAIN_NOTE))
    return out


def _readable(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if isinstance(exc, EngineError) else f"{type(exc).__name__}: {text}"


# ---------------------------------------------------------------- the session


class ChatSession:
    """One conversation with one engine behind the guard. `messages` holds the turns so far
    ([{"role", "content"}], no system prompt, no reminder text); `conversation_id` is set once the
    first message is saved (with a store)."""

    def __init__(self, engine: Engine, guard: GuardChecker | None, *, policy: str = DEFAULT_POLICY,
                 settings: GenerationSettings | None = None, system_prompt: str | None = None,
                 messages: list[dict] | None = None, store: HistoryStore | None = None,
                 conversation_id: int | None = None):
        self.engine = engine
        self.guard = guard
        self.policy = check_policy(policy)
        self.settings = settings or GenerationSettings()
        turns = [{"role": m["role"], "content": m["content"]} for m in messages or []]
        if turns and turns[0]["role"] == "system":  # e.g. an API request's own system message
            first = turns.pop(0)
            if system_prompt is None:
                system_prompt = first["content"]
        # None: medchat's medical system prompt; "": none at all.
        self.system_prompt = DEFAULT_SYSTEM_PROMPT if system_prompt is None else system_prompt
        self.messages: list[dict] = turns
        self.store = store
        self.conversation_id = conversation_id
        self.model_record: dict | None = None  # what create_conversation records about the model
        self.last_user_message_id: int | None = None
        self.last_answer_message_id: int | None = None
        self.history_error: str | None = None  # the last failure to save, if any (the front end says so)
        self._cancel = threading.Event()
        self._stream = None
        self._live: _LiveAnswer | None = None
        self._busy = threading.Lock()
        self._said_degraded: str | None = None

    # ---- the prompt

    def prompt_messages(self, text: str | None = None) -> list[dict]:
        """What the model reads: the system prompt, the turns so far and (if given) the new message."""
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        user = [{"role": "user", "content": text}] if text is not None else []
        return system + self.messages + user

    def prefill(self, draft: str = "") -> None:
        """Let the engine read the conversation (and the user's draft) ahead of the next send."""
        self.engine.prefill(self.prompt_messages(), draft=draft)

    # ---- control

    def cancel(self) -> None:
        """Stop the turn in progress: the model stops, the answer shown so far is kept (marked stopped)."""
        self._cancel.set()
        stream = self._stream
        if stream is not None:
            stream.cancel()
        live = self._live
        if live is not None:
            live.stop()

    @property
    def busy(self) -> bool:
        return self._busy.locked()

    # ---- one turn

    def send(self, text: str) -> Iterator[Event]:
        """Run one whole turn for the user's `text` (see the module doc for the events)."""
        if not self._busy.acquire(blocking=False):
            raise SessionBusy("A turn is still running in this session; cancel it or wait for it to finish.")
        self._cancel = threading.Event()
        self.history_error = None
        try:
            yield from self._turn(text)
        finally:
            self._stream = None
            self._live = None
            self._busy.release()

    def _turn(self, text: str) -> Iterator[Event]:
        text = strip_control(text or "").strip()
        if not text:
            yield Checked(None, None)
            yield Reminder(PHYSICIAN_REMINDER)
            yield Finished("", "error", EMPTY_MESSAGE)
            return
        extra: list[Notice] = []
        if len(text) > MAX_MESSAGE_CHARS:
            extra.append(Notice("truncated", f"Your message is {len(text):,} characters long: only its first "
                                             f"{MAX_MESSAGE_CHARS:,} were read."))
            text = text[:MAX_MESSAGE_CHARS]

        result, degraded = None, None
        if self.guard is None:
            degraded = GUARD_OFF
        else:
            if self.guard.ood_error is None and not self.guard.ready:
                yield Waiting(WAITING_TEXT)
            result, degraded = self._check(text)
        declined = result is not None and should_decline(result, self.policy)
        notices = notices_for(result, degraded if degraded != self._said_degraded else None, declined) + extra
        self._said_degraded = degraded
        self._save_user(text, result, degraded, declined, notices)
        yield Checked(result, degraded)
        yield from notices

        if declined:
            yield Declined(DECLINE_MESSAGE)
            yield Reminder(PHYSICIAN_REMINDER)
            self._finish_turn(text, DECLINE_MESSAGE, "complete", {"stop_reason": "declined"})
            yield Finished(DECLINE_MESSAGE, "declined", None)
            return
        yield from self._generate(text)

    def _check(self, text: str) -> tuple[GuardResult | None, str | None]:
        """The whole verdict; on any failure of the embedder or the index, the rules alone and why."""
        guard = self.guard
        try:
            if guard.ood_error is None and not guard.ready:
                guard.warm_up()  # blocks until loaded (also while another thread is loading it)
            if guard.ood_error is None:
                result = guard.check(text)
                if guard.ood_error is None and result.ood_level is not None:
                    return result, None
                return result, guard.ood_error or "the out-of-domain score is unavailable"
        except Exception as exc:  # a corrupt index found on first use, an embedder that fails to load...
            reason = guard.ood_error or _readable(exc)
        else:
            reason = guard.ood_error
        try:
            return guard.check_rules(text), reason
        except Exception as exc:
            return None, f"{reason}; the red-flag rules failed too ({_readable(exc)})"

    def _generate(self, text: str) -> Iterator[Event]:
        live = self._live = _LiveAnswer(self)
        error: str | None = None
        stream = None
        started = time.perf_counter()
        first_at: float | None = None
        try:
            if not self._cancel.is_set():  # else: stopped while the guard was loading, nothing to generate
                stream = self.engine.stream(self.prompt_messages(text), self.settings, cancel=self._cancel)
                self._stream = stream
                if self._cancel.is_set():
                    stream.cancel()
                if stream.truncated_turns:
                    n = stream.truncated_turns
                    yield Notice("truncated", f"The conversation is longer than the model's context: the oldest "
                                              f"{n} message{'s' if n != 1 else ''} were left out of this answer.")
                if stream.truncated_chars:
                    yield Notice("truncated", f"Your message is too long for the model: its last "
                                              f"{stream.truncated_chars:,} characters were cut.")
                for chunk in stream:
                    if self._cancel.is_set():
                        continue  # the model is stopping; what was handed out before the stop is the answer
                    chunk = strip_control(chunk)
                    if chunk:
                        if first_at is None:
                            first_at = time.perf_counter()
                        live.add(chunk)
                        yield Token(chunk)
        except GeneratorExit:  # the consumer left (a closed HTTP stream, a dropped iterator): stop and keep
            self.cancel()
            if stream is not None:
                _drain(stream)
            record = self._record(stream, started, first_at, "cancelled")
            self._finish_turn(text, live.text(), "stopped", record, live)
            raise
        except Exception as exc:  # EngineError and anything a backend lets through: a message, not a traceback
            error = _readable(exc)

        stats = stream.stats if stream is not None else None
        if error is not None:
            reason = "error"
        elif self._cancel.is_set():
            reason = "cancelled"
        else:
            reason = stats.stop_reason if stats is not None else "eos"
        record = self._record(stream, started, first_at, reason)
        if stats is not None:
            yield Stats(GenerationStats(**record))
        yield Reminder(PHYSICIAN_REMINDER)
        answer = live.text()
        status = {"error": "error", "cancelled": "stopped"}.get(reason, "complete")
        self._finish_turn(text, answer, status, record, live)
        yield Finished(answer, reason, error)

    @staticmethod
    def _record(stream, started: float, first_at: float | None, reason: str) -> dict:
        """The stats saved with the answer: the stream's own, with the session's stop reason."""
        stats = stream.stats if stream is not None else None
        record = stats.as_dict() if stats is not None else {
            "ttft_s": round(first_at - started, 4) if first_at else None, "tokens": None,
            "tokens_per_s": None, "elapsed_s": round(time.perf_counter() - started, 4)}
        record["stop_reason"] = reason
        return record

    # ---- state and persistence

    def _finish_turn(self, text: str, answer: str, status: str, stats: dict, live: _LiveAnswer | None = None) -> None:
        from medchat.core.history import answer_model

        info = self.engine.info  # which model wrote the answer: the chat can switch runs within a conversation
        stats = stats | {"model": answer_model(info.base, info.adapter, stats.get("model"))}
        self.messages.append({"role": "user", "content": text})
        if answer:
            self.messages.append({"role": "assistant", "content": answer})
        self.last_answer_message_id = None
        if live is not None and live.message_id is not None:
            live.finish(answer, status, stats)
            self.last_answer_message_id = live.message_id
        elif self.store is not None and self.conversation_id is not None:
            self._saving(lambda: setattr(self, "last_answer_message_id", self.store.add_message(
                self.conversation_id, "assistant", answer, status=status, stats=stats).id))

    def _saving(self, write) -> None:
        """Run one history write; a failure (a full disk, a locked file) must not cost the user the answer on
        screen: it is kept in `history_error` for the front end to show."""
        try:
            write()
        except Exception as exc:
            self.history_error = f"Could not save the answer to the history: {_readable(exc)}"

    def _save_user(self, text: str, result: GuardResult | None, degraded: str | None, declined: bool,
                   notices: list[Notice]) -> None:
        """The question is committed before the model starts (a crash keeps it), with its verdict."""
        self.last_user_message_id = None
        if self.store is None:
            return
        verdict = (result.as_dict() if result is not None else {}) | {
            "notices": [n.as_dict() for n in notices], "declined": declined, "degraded": degraded,
            "policy": self.policy}
        try:
            if self.conversation_id is None:
                settings = self.settings.as_dict() | {"system_prompt": self.system_prompt}
                self.conversation_id = self.store.create_conversation(
                    title_from(text), settings=settings, model=self.model_record or self._model_record()).id
            self.last_user_message_id = self.store.add_message(self.conversation_id, "user", text,
                                                               guard=verdict).id
        except Exception as exc:
            self.history_error = f"Could not save the message to the history: {_readable(exc)}"

    def _model_record(self) -> dict:
        data = self.engine.info.as_dict()
        return {k: data.get(k) for k in ("base", "adapter", "quantization", "device", "dtype")}


class _LiveAnswer:
    """The answer of the turn in progress, saved as it streams: at once every SAVE_EVERY_CHUNKS chunks, and
    by a timer SAVE_EVERY_S after any chunk not saved yet (so text shown just before the model stalls is
    saved too). `stop()` (from any thread) saves the text handed out so far as stopped; later partial
    saves are then skipped, and `finish()` writes the final text and stats."""

    SAVE_EVERY_S = 0.5
    SAVE_EVERY_CHUNKS = 16

    def __init__(self, session: ChatSession):
        self.session = session
        self.pieces: list[str] = []
        self.message_id: int | None = None
        self._lock = threading.RLock()  # RLock: a SIGINT handler may call stop() in the thread that holds it
        self._stopped = False
        self._unsaved = 0
        self._timer: threading.Timer | None = None
        store, conversation_id = session.store, session.conversation_id
        if store is not None and conversation_id is not None:
            session._saving(lambda: setattr(self, "message_id", store.add_message(
                conversation_id, "assistant", "", status="streaming").id))

    def text(self) -> str:
        with self._lock:
            return "".join(self.pieces).strip()

    def add(self, chunk: str) -> None:
        with self._lock:
            self.pieces.append(chunk)
            self._unsaved += 1
            if self._unsaved >= self.SAVE_EVERY_CHUNKS:
                self._save_partial()
            elif self._timer is None and self.message_id is not None and not self._stopped:
                self._timer = threading.Timer(self.SAVE_EVERY_S, self._save_partial)
                self._timer.daemon = True
                self._timer.start()

    def _save_partial(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if self._unsaved and not self._stopped and self.message_id is not None:
                self.session._saving(lambda: self.session.store.save_partial(self.message_id, self.text()))
                self._unsaved = 0

    def stop(self) -> None:
        with self._lock:
            if not self._stopped and self.message_id is not None:
                self._close("stopped", self.text(), {"stop_reason": "cancelled"})

    def finish(self, answer: str, status: str, stats: dict) -> None:
        with self._lock:
            self._close(status, answer, stats)

    def _close(self, status: str, answer: str, stats: dict) -> None:
        self._stopped = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.session._saving(lambda: self.session.store.finish_message(self.message_id, answer, status, stats))


def _drain(stream) -> None:
    try:
        for _ in stream:
            pass
    except Exception:
        pass
