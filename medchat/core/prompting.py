"""Prompt formats shared by chat, training and evaluation, and the answer-only label masking.

Two styles: "chat" uses the tokenizer's own chat template; "seed" is the seed notebook's
"### System: / ### Instruction: / ### Response:" format (also the fallback for models without a template).
"""

from __future__ import annotations

from dataclasses import dataclass

from medchat.core.errors import MedchatError

PROMPT_STYLES = ("chat", "seed")
DEFAULT_SYSTEM_PROMPT = (
    "You are a careful medical assistant. Answer health questions accurately, clearly and briefly, "
    "in plain language. You do not replace a physician."
)
IGNORE_INDEX = -100  # label value that the loss skips


class PromptError(MedchatError, ValueError):
    """An example cannot be formatted or encoded as asked."""


@dataclass
class EncodedExample:
    input_ids: list[int]
    labels: list[int]
    truncated: bool
    prompt_tokens: int
    answer_tokens: int


def build_messages(question: str, system: str | None = DEFAULT_SYSTEM_PROMPT, history=()) -> list[dict]:
    """System prompt + earlier turns (dicts with role/content) + the new user question."""
    messages = [{"role": "system", "content": system}] if system else []
    messages.extend({"role": m["role"], "content": m["content"]} for m in history)
    messages.append({"role": "user", "content": question})
    return messages


def effective_style(tokenizer, style: str) -> str:
    if style not in PROMPT_STYLES:
        raise PromptError(f"Unknown prompt style {style!r}; choose one of {', '.join(PROMPT_STYLES)}.")
    if style == "chat" and not getattr(tokenizer, "chat_template", None):
        return "seed"  # a base model without a chat template still gets a consistent format
    return style


def render_prompt(tokenizer, messages: list[dict], style: str = "chat") -> str:
    """The text the model continues with its answer."""
    if effective_style(tokenizer, style) == "chat":
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return _render_seed(messages) + "### Response:\n"


def _render_seed(messages: list[dict]) -> str:
    parts = []
    for message in messages:
        if message["role"] == "system":
            parts.append(f"### System:\n{message['content']}\n\n")
        elif message["role"] == "user":
            parts.append(f"### Instruction:\n{message['content']}\n\n")
        else:
            parts.append(f"### Response:\n{message['content']}\n\n")
    return "".join(parts)


def prompt_token_ids(tokenizer, text: str, style: str = "chat") -> list[int]:
    """Tokenize a rendered prompt. Chat templates already contain their special tokens; the seed
    style gets the tokenizer's usual BOS, as the seed notebook's `tokenizer(text)` did."""
    add_special = effective_style(tokenizer, style) == "seed"
    return tokenizer(text, add_special_tokens=add_special)["input_ids"]


def answer_text(tokenizer, messages: list[dict], answer: str, style: str = "chat") -> str:
    """What follows the prompt in a training example: the answer and the end-of-turn marker."""
    prompt = render_prompt(tokenizer, messages, style)
    if effective_style(tokenizer, style) == "chat":
        full = tokenizer.apply_chat_template(
            messages + [{"role": "assistant", "content": answer}], tokenize=False
        )
        if full.startswith(prompt):
            completion = full[len(prompt):]
            eos = tokenizer.eos_token or ""
            # Stop the labels right after the end-of-turn token (templates add a newline after it).
            if eos and eos in completion:
                completion = completion[: completion.rindex(eos) + len(eos)]
            return completion
    return answer


def encode_example(
    tokenizer,
    question: str,
    answer: str,
    style: str = "chat",
    system: str | None = DEFAULT_SYSTEM_PROMPT,
    max_length: int = 512,
) -> EncodedExample:
    """input_ids and labels with the prompt masked (-100) and the answer + EOS supervised.

    Truncation cuts from the end; an example whose answer loses every token raises PromptError.
    """
    messages = build_messages(question, system)
    prompt_ids = prompt_token_ids(tokenizer, render_prompt(tokenizer, messages, style), style)
    answer_ids = tokenizer(answer_text(tokenizer, messages, answer, style), add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    if eos is not None and (not answer_ids or answer_ids[-1] != eos):
        answer_ids = answer_ids + [eos]  # without EOS in the labels the model never learns to stop
    input_ids = prompt_ids + answer_ids
    labels = [IGNORE_INDEX] * len(prompt_ids) + answer_ids
    truncated = len(input_ids) > max_length
    input_ids, labels = input_ids[:max_length], labels[:max_length]
    kept = sum(1 for label in labels if label != IGNORE_INDEX)
    if kept == 0:
        raise PromptError(
            f"The prompt takes {len(prompt_ids)} tokens, so no answer token is left within max_length="
            f"{max_length}. Raise max_length or shorten the question: {question[:80]!r}"
        )
    return EncodedExample(input_ids, labels, truncated, len(prompt_ids), kept)
