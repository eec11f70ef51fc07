import pytest
from transformers import AutoTokenizer

from medchat.core.prompting import (
    IGNORE_INDEX,
    PromptError,
    build_messages,
    encode_example,
    render_prompt,
)


@pytest.fixture(scope="module")
def tok(tiny_tokenizer_dir):
    return AutoTokenizer.from_pretrained(tiny_tokenizer_dir)


def test_chat_prompt_uses_the_template(tok):
    text = render_prompt(tok, build_messages("What is aspirin?", system="Be careful."))
    assert text == (
        "<|im_start|>system\nBe careful.<|im_end|>\n"
        "<|im_start|>user\nWhat is aspirin?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_seed_prompt_is_the_notebook_format(tok):
    history = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    text = render_prompt(tok, build_messages("What is aspirin?", system="Be careful.", history=history), "seed")
    assert text == (
        "### System:\nBe careful.\n\n### Instruction:\nHi\n\n### Response:\nHello\n\n"
        "### Instruction:\nWhat is aspirin?\n\n### Response:\n"
    )


def test_labels_cover_the_answer_and_eos_only(tok):
    enc = encode_example(tok, "What is aspirin?", "It blocks cyclooxygenase.", system="Be careful.")
    prompt = render_prompt(tok, build_messages("What is aspirin?", system="Be careful."))
    prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tok("It blocks cyclooxygenase.<|im_end|>", add_special_tokens=False)["input_ids"]
    assert enc.input_ids == prompt_ids + answer_ids
    assert enc.labels == [IGNORE_INDEX] * len(prompt_ids) + answer_ids
    assert enc.labels[-1] == tok.eos_token_id
    assert (enc.prompt_tokens, enc.answer_tokens, enc.truncated) == (len(prompt_ids), len(answer_ids), False)


def test_seed_style_appends_eos_to_the_answer(tok):
    enc = encode_example(tok, "What is aspirin?", "A drug.", style="seed", system=None)
    supervised = [t for t in enc.labels if t != IGNORE_INDEX]
    assert supervised[-1] == tok.eos_token_id
    assert tok.decode(supervised[:-1]) == "A drug."


def test_truncation_cuts_the_answer_end(tok):
    full = encode_example(tok, "What is aspirin?", "word " * 50, system=None)
    limit = full.prompt_tokens + 5
    enc = encode_example(tok, "What is aspirin?", "word " * 50, system=None, max_length=limit)
    assert enc.truncated and len(enc.input_ids) == limit and enc.answer_tokens == 5
    assert enc.input_ids == full.input_ids[:limit]


def test_no_answer_token_left_is_an_error(tok):
    with pytest.raises(PromptError, match="no answer token is left"):
        encode_example(tok, "What is aspirin? " * 20, "A drug.", max_length=10)


def test_model_without_template_falls_back_to_seed(tok, tiny_tokenizer_dir):
    plain = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    plain.chat_template = None
    assert render_prompt(plain, build_messages("Q?", system=None)) == "### Instruction:\nQ?\n\n### Response:\n"


def test_unknown_style(tok):
    with pytest.raises(PromptError, match="Unknown prompt style"):
        render_prompt(tok, build_messages("Q?"), "alpaca")
