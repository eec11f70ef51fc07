"""What can be done to a message already on screen: edit an earlier question, regenerate an answer, resend
from a question (the later turns go, on screen and in the history), copy, and the answer's menu.

The app routes the keys and the widgets' requests here; this owns the state of an edit in progress.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from medchat.core.history import HistoryError
from medchat.app.chat.screens import MessageMenuScreen
from medchat.app.chat.widgets import AssistantMessage, ChatInput, UserMessage

if TYPE_CHECKING:
    from medchat.app.chat.app import MedchatApp


class MessageActions:
    def __init__(self, app: MedchatApp):
        self.app = app
        self.editing: UserMessage | None = None  # the earlier message being edited, resent from on Enter

    # ---- edit

    def start_edit(self, question: UserMessage) -> None:
        app = self.app
        if app.generating:
            app.notify("Wait for the answer or press Esc to stop it first.", severity="warning")
            return
        self.editing = question
        question.add_class("editing")
        prompt = app.query_one(ChatInput)
        prompt.load_text(question.text)
        prompt.move_cursor(prompt.document.end)
        prompt.focus()
        app.status_bar.show("Editing an earlier message: Enter resends from there (the later turns are "
                            "dropped) · Esc cancels")

    def end_edit(self) -> None:
        self.editing.remove_class("editing")
        self.editing = None
        self.app.query_one(ChatInput).clear()
        self.app.status_bar.show_ready()

    def submit_edit(self, text: str) -> bool:
        """Enter while editing: resend from the edited question with `text`. False when no edit is open."""
        if self.editing is None:
            return False
        edited, self.editing = self.editing, None
        self.resend_from(edited, text)
        return True

    # ---- regenerate and resend

    def regenerate_last(self) -> None:
        answers = self.app.chat_view.answers()
        if not answers:
            self.app.notify("No answer to regenerate yet.")
            return
        self.regenerate(answers[-1])

    def regenerate(self, answer: AssistantMessage) -> None:
        question = self.app.chat_view.question_before(answer)
        if question is not None:
            self.resend_from(question, question.text)

    def resend_from(self, question: UserMessage, text: str) -> None:
        self.app.run_worker(self._resend_from(question, text), exclusive=True, group="resend", exit_on_error=False)

    async def _resend_from(self, question: UserMessage, text: str) -> None:
        """Edit or regenerate: drop `question` and every later turn (screen and history), then send `text`.
        The conversation stays one line of turns, the same in the history as on screen."""
        app = self.app
        if not app.can_send() or app.loader.engine is None:
            return
        if app.store is not None and app.conversation is not None and question.message_id is not None:
            try:
                app.store.delete_messages_from(app.conversation.id, question.message_id)
            except HistoryError as exc:
                app.history_failed(exc)
                return
        app.turns = await app.chat_view.drop_from(question)
        app.session = None  # the next turn starts from the turns that are left
        app.start_turn(text)

    # ---- copy and the answer's menu

    def copy_last(self) -> None:
        answers = self.app.chat_view.answers()
        if not answers:
            self.app.notify("No answer to copy yet.")
            return
        self.copy(answers[-1].copy_text(), "the last answer")

    def copy(self, text: str, what: str) -> None:
        self.app.copy_to_clipboard(text)
        self.app.notify(f"Copied {what} ({len(text):,} characters) to the clipboard.")

    def open_menu(self, widget: AssistantMessage) -> None:
        def done(choice: str | None) -> None:
            if choice == "copy":
                self.copy(widget.copy_text(), "this answer")
            elif choice == "copy_raw":
                self.copy(widget.text, "this answer")
            elif choice == "copy_question":
                self.copy(widget.question, "the question")
            elif choice == "regenerate":
                self.regenerate(widget)
            elif choice == "edit" and (question := self.app.chat_view.question_before(widget)) is not None:
                self.start_edit(question)

        self.app.push_screen(MessageMenuScreen(classes="dialog"), done)
