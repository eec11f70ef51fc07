"""A Hugging Face tokenizer folder read with `tokenizers` and `jinja2` alone, for the fast CPU engines.

Importing transformers costs 2-4 s on this machine, more than the rest of a warm chat start together
(bench/startup.py), and the ONNX and llama.cpp engines use only the part of a tokenizer listed below.
The tokenizer.json is the same Rust tokenizer transformers' `TokenizersBackend` drives, and the chat
template is rendered the way transformers renders it (sandboxed jinja2, trim_blocks and lstrip_blocks,
its `tojson`, `raise_exception` and `strftime_now`, the special tokens as variables), so the ids are
the same (tests/test_light_tokenizer.py compares them with AutoTokenizer's).

    tokenizer = load(folder)   # None: the folder needs transformers (no tokenizer.json, remote code, ...)
    tokenizer(text, add_special_tokens=False)["input_ids"]; tokenizer.decode(ids, skip_special_tokens=True)
    tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

SPECIAL_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
# tokenizer_config.json settings that make transformers change the Rust tokenizer's output (or that only
# its own classes implement): such a folder is loaded by transformers.
NEEDS_TRANSFORMERS = ("add_bos_token", "add_eos_token", "auto_map", "chat_control_tokens")
# Classes that run tokenizer.json as it is; model-specific ones (LlamaTokenizer, ...) may rebuild parts of it.
PLAIN_CLASSES = ("TokenizersBackend", "PreTrainedTokenizerFast", "GPT2Tokenizer", "GPT2TokenizerFast")


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):  # an AddedToken saved as {"content": ...}
        return value.get("content")
    return value if isinstance(value, str) else None


class LightTokenizer:
    """The subset of a transformers tokenizer that medchat's TokenEngines call."""

    def __init__(self, backend, config: dict[str, Any], chat_template: str | None):
        self._backend = backend
        self.chat_template = chat_template
        self.model_max_length = config.get("model_max_length")
        for name in SPECIAL_NAMES:
            setattr(self, name, _token_text(config.get(name)))
        self._template = _compile(chat_template) if chat_template else None

    def _id(self, token: str | None) -> int | None:
        return None if token is None else self._backend.token_to_id(token)

    @property
    def eos_token_id(self) -> int | None:
        return self._id(self.eos_token)

    @property
    def pad_token_id(self) -> int | None:
        return self._id(self.pad_token)

    @property
    def bos_token_id(self) -> int | None:
        return self._id(self.bos_token)

    @property
    def special_tokens_map(self) -> dict[str, str]:
        return {name: getattr(self, name) for name in SPECIAL_NAMES if getattr(self, name) is not None}

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": self._backend.encode(text, add_special_tokens=add_special_tokens).ids}

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self(text, add_special_tokens)["input_ids"]

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return self._backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages: list[dict], tokenize: bool = False, add_generation_prompt: bool = False):
        if self._template is None:
            raise ValueError("This tokenizer has no chat template.")
        text = self._template.render(messages=[dict(m) for m in messages], add_generation_prompt=add_generation_prompt,
                                     **self.special_tokens_map)
        return self(text, add_special_tokens=False)["input_ids"] if tokenize else text


def _compile(template: str):
    """The template in the environment transformers renders chat templates in (chat_template_utils)."""
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    import jinja2

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template)


def load(folder: str | Path, trust_remote_code: bool = False) -> LightTokenizer | None:
    """The folder's tokenizer without transformers, or None where only transformers reads it as it should:
    remote code, no tokenizer.json, settings that transformers applies on top, or a template using its
    own tags ({% generation %})."""
    folder = Path(folder)
    if trust_remote_code or not (folder / "tokenizer.json").is_file():
        return None
    try:
        config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if (any(key in config for key in NEEDS_TRANSFORMERS) or config.get("clean_up_tokenization_spaces")
            or config.get("backend", "tokenizers") != "tokenizers" or config.get("tokenizer_class") not in PLAIN_CLASSES):
        return None
    template_file = folder / "chat_template.jinja"
    template = template_file.read_text(encoding="utf-8") if template_file.is_file() else config.get("chat_template")
    if template is not None and not isinstance(template, str):  # named templates: transformers picks
        return None
    from tokenizers import Tokenizer

    try:
        tokenizer = LightTokenizer(Tokenizer.from_file(str(folder / "tokenizer.json")), config, template)
    except Exception:  # a template jinja2 alone cannot compile (transformers' extensions), a newer format
        return None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
