"""The transformers-free tokenizer of the fast engines gives the same ids, text and prompts as AutoTokenizer."""

from __future__ import annotations

import json
import shutil

import pytest
from transformers import AutoTokenizer

from medchat.core import light_tokenizer
from medchat.core.fastdecode import load_tokenizer
from medchat.core.model import ModelSpec, resolve
from medchat.core.prompting import build_messages, prompt_token_ids, render_prompt

TEXTS = [
    "What are the symptoms of diabetes?",
    "  leading spaces , a space before punctuation . and trailing  ",
    "Dosage: 500 mg ×2/day — ask a pharmacist; ünïcödé, 日本語, emoji 🩺🫀",
    "a line\nanother\n\n\ttab",
    "literal <|im_end|> and <|im_start|>user inside the text",
    "",
]


@pytest.fixture(scope="module")
def bundled_tokenizer_dir():
    return resolve(ModelSpec()).tokenizer_dir()


@pytest.fixture(params=["tiny", "bundled"])
def folder(request, tiny_tokenizer_dir, bundled_tokenizer_dir):
    return tiny_tokenizer_dir if request.param == "tiny" else bundled_tokenizer_dir


def test_same_ids_text_and_prompts_as_transformers(folder):
    light, reference = light_tokenizer.load(folder), AutoTokenizer.from_pretrained(str(folder))
    assert light is not None
    for text in TEXTS:
        for special in (False, True):
            assert light(text, add_special_tokens=special)["input_ids"] == \
                reference(text, add_special_tokens=special)["input_ids"], text
        ids = reference(text, add_special_tokens=False)["input_ids"]
        for skip in (False, True):
            assert light.decode(ids, skip_special_tokens=skip) == reference.decode(ids, skip_special_tokens=skip)
        assert light.decode(ids[:3], skip_special_tokens=True) == reference.decode(ids[:3], skip_special_tokens=True)
    history = [{"role": "user", "content": TEXTS[2]}, {"role": "assistant", "content": TEXTS[1]}]
    for messages in (build_messages(TEXTS[0]), build_messages(TEXTS[3], system=None, history=history)):
        assert render_prompt(light, messages) == render_prompt(reference, messages)
        assert prompt_token_ids(light, render_prompt(light, messages)) == \
            prompt_token_ids(reference, render_prompt(reference, messages))
    for name in ("eos_token", "eos_token_id", "pad_token_id", "bos_token"):
        assert getattr(light, name) == getattr(reference, name), name


def test_fast_engines_get_it_without_importing_transformers_for_it(bundled_tokenizer_dir):
    assert isinstance(load_tokenizer(bundled_tokenizer_dir), light_tokenizer.LightTokenizer)


def test_folders_that_need_transformers_get_none(tiny_tokenizer_dir, tmp_path):
    assert light_tokenizer.load(tiny_tokenizer_dir, trust_remote_code=True) is None
    copy = tmp_path / "tok"
    shutil.copytree(tiny_tokenizer_dir, copy)
    config_file = copy / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "add_bos_token": True}))
    assert light_tokenizer.load(copy) is None
    assert load_tokenizer(copy).__class__.__module__.startswith("transformers")
    config_file.write_text(json.dumps({**config, "tokenizer_class": "LlamaTokenizer"}))
    assert light_tokenizer.load(copy) is None
    (copy / "tokenizer.json").unlink()
    config_file.write_text(json.dumps(config))
    assert light_tokenizer.load(copy) is None
