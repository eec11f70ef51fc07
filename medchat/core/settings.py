"""Chat settings: generation parameters and the system prompt, per conversation.

Defaults live in ``config.toml`` in the user config directory::

    [generation]
    temperature = 0.0          # 0 = greedy
    top_p = 0.95
    max_new_tokens = 256
    repetition_penalty = 1.1
    no_repeat_ngram_size = 4

    [chat]
    system_prompt = "..."      # omit to use medchat's built-in system prompt
    ood_policy = "note"        # out-of-domain questions: "note" (answer with a note) or "decline"
    theme = "textual-dark"     # the chat app's theme (Ctrl+P, Theme); saved when changed there

    [keys]                     # the chat app's key bindings, by binding id (F1 lists them)
    regenerate = "ctrl+g"

    [endpoint]                 # chat through an OpenAI-compatible server instead of the local model
    url = "http://127.0.0.1:8000/v1"
    model = "my-model"         # omit to use the first model the server lists
    api_key_env = "OPENAI_API_KEY"   # the NAME of the variable holding the key (the key is never stored)

Each conversation stores its own copy (``ChatSettings.as_dict()``) in the history database.
Headless: no Textual import here.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from medchat.core.errors import MedchatError
from medchat.core.fileio import write_text_atomic

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib

__all__ = [
    "ChatSettings",
    "SettingsError",
    "default_system_prompt",
    "load_config",
    "load_defaults",
    "load_endpoint",
    "load_keys",
    "load_ood_policy",
    "load_theme",
    "save_defaults",
    "save_theme",
    "to_toml",
]


class SettingsError(MedchatError):
    """A user-facing settings problem: names the file or field and what to do."""


def default_system_prompt() -> str:
    from medchat.core.prompting import DEFAULT_SYSTEM_PROMPT

    return DEFAULT_SYSTEM_PROMPT


# name -> (type, minimum, maximum, help)
_LIMITS: dict[str, tuple[type, float, float, str]] = {
    "temperature": (float, 0.0, 2.0, "0 = greedy (deterministic); higher = more varied"),
    "top_p": (float, 0.01, 1.0, "nucleus sampling mass (used when temperature > 0)"),
    "max_new_tokens": (int, 1, 8192, "longest answer, in tokens"),
    "repetition_penalty": (float, 1.0, 2.0, "1.0 = off; 1.1 keeps a small model out of loops"),
    "no_repeat_ngram_size": (int, 0, 16, "forbid repeating any n-gram of this size; 0 = off"),
}
GENERATION_FIELDS = tuple(_LIMITS)


@dataclass(frozen=True)
class ChatSettings:
    temperature: float = 0.0
    top_p: float = 0.95
    max_new_tokens: int = 256
    repetition_penalty: float = 1.1
    no_repeat_ngram_size: int = 4
    system_prompt: str | None = None  # None: the built-in DEFAULT_SYSTEM_PROMPT

    @property
    def effective_system_prompt(self) -> str:
        return self.system_prompt if self.system_prompt is not None else default_system_prompt()

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def generation_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in GENERATION_FIELDS}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, base: "ChatSettings | None" = None) -> "ChatSettings":
        """Build from a (possibly partial or old) dict; unknown keys are ignored, bad values raise."""
        base = base or cls()
        values: dict[str, Any] = {}
        for name, value in (data or {}).items():
            if name in _LIMITS:
                values[name] = coerce(name, value)
            elif name == "system_prompt":
                if value is not None and not isinstance(value, str):
                    raise SettingsError("system_prompt must be text.")
                values[name] = value
        return replace(base, **values)

    def validated(self) -> "ChatSettings":
        for name in GENERATION_FIELDS:
            coerce(name, getattr(self, name))
        return self

    def to_generation(self):
        """The engine's GenerationSettings for these values."""
        from medchat.core.engine import GenerationSettings

        data = self.generation_dict()
        if hasattr(GenerationSettings, "from_dict"):
            return GenerationSettings.from_dict(data)
        return GenerationSettings(**data)


def coerce(name: str, value: Any) -> Any:
    """Convert ``value`` (text from a form, TOML or JSON) for field ``name``; SettingsError if invalid."""
    kind, low, high, hint = _LIMITS[name]
    label = name.replace("_", " ")
    if isinstance(value, bool):
        raise SettingsError(f"{label} must be a number between {low:g} and {high:g}, not {value!r}.")
    try:
        if kind is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            number: float = int(str(value).strip()) if isinstance(value, str) else int(value)
        else:
            number = float(str(value).strip()) if isinstance(value, str) else float(value)
    except (TypeError, ValueError):
        kind_word = "a whole number" if kind is int else "a number"
        raise SettingsError(f"{label} must be {kind_word} between {low:g} and {high:g} ({hint}); got {value!r}.")
    if isinstance(number, float) and not math.isfinite(number) or not (low <= number <= high):
        raise SettingsError(f"{label} must be between {low:g} and {high:g} ({hint}); got {value!r}.")
    return number


def field_help(name: str) -> str:
    kind, low, high, hint = _LIMITS[name]
    return f"{low:g}–{high:g}: {hint}"


def _config_path(path: str | os.PathLike | None) -> Path:
    if path is not None:
        return Path(path)
    from medchat.core.paths import config_file

    return config_file()


def load_config(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """The whole config file as a dict ({} when it does not exist)."""
    file = _config_path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"Cannot read the config file {file}: {exc}.") from exc
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(
            f"The config file {file} is not valid TOML: {exc}. Fix that line or delete the file "
            "to go back to the defaults."
        ) from exc


def load_defaults(path: str | os.PathLike | None = None) -> ChatSettings:
    """Defaults for new conversations: built-in values overridden by config.toml."""
    file = _config_path(path)
    config = load_config(file)
    data: dict[str, Any] = {}
    generation = config.get("generation", {})
    chat = config.get("chat", {})
    if not isinstance(generation, dict) or not isinstance(chat, dict):
        raise SettingsError(f"In {file}: [generation] and [chat] must be tables.")
    data.update({k: v for k, v in generation.items() if k in _LIMITS})
    if "system_prompt" in chat:
        data["system_prompt"] = chat["system_prompt"]
    try:
        return ChatSettings.from_dict(data)
    except SettingsError as exc:
        raise SettingsError(f"In {file}: {exc} Fix it or delete the file to use the defaults.") from exc


def load_ood_policy(path: str | os.PathLike | None = None) -> str | None:
    """`[chat] ood_policy` from config.toml ("note" or "decline"), or None when it is not set."""
    from medchat.core.guard.policy import POLICIES

    file = _config_path(path)
    chat = load_config(file).get("chat", {})
    if not isinstance(chat, dict) or "ood_policy" not in chat:
        return None
    value = chat["ood_policy"]
    if value not in POLICIES:
        raise SettingsError(f"In {file}: [chat] ood_policy must be one of {', '.join(map(repr, POLICIES))}, "
                            f"not {value!r}. Fix it or remove the line to use \"note\".")
    return value


ENDPOINT_KEYS = ("url", "model", "api_key_env")


def load_endpoint(path: str | os.PathLike | None = None) -> dict[str, str]:
    """`[endpoint]` from config.toml: the keys of ENDPOINT_KEYS that are set ({} when there is none)."""
    file = _config_path(path)
    table = load_config(file).get("endpoint", {})
    if not isinstance(table, dict):
        raise SettingsError(f"In {file}: [endpoint] must be a table (url, model, api_key_env).")
    unknown = sorted(set(table) - set(ENDPOINT_KEYS))
    if unknown:
        raise SettingsError(f"In {file}: [endpoint] has no setting {unknown[0]!r}; "
                            f"it takes {', '.join(ENDPOINT_KEYS)}.")
    for key, value in table.items():
        if not isinstance(value, str) or not value.strip():
            raise SettingsError(f"In {file}: [endpoint] {key} must be non-empty text, not {value!r}.")
    return {key: value.strip() for key, value in table.items()}


def load_theme(path: str | os.PathLike | None = None) -> str | None:
    """`[chat] theme` from config.toml, or None when it is not set (the app checks the name)."""
    chat = load_config(path).get("chat", {})
    value = chat.get("theme") if isinstance(chat, dict) else None
    return value if isinstance(value, str) and value else None


def save_theme(theme: str, path: str | os.PathLike | None = None) -> Path:
    """Write `[chat] theme` into config.toml, keeping everything else there."""
    file = _config_path(path)
    config = load_config(file)
    config["chat"] = (dict(config["chat"]) if isinstance(config.get("chat"), dict) else {}) | {"theme": theme}
    return _write_config(file, config)


def _write_config(file: Path, config: dict[str, Any]) -> Path:
    write_text_atomic(file, "# medchat configuration (written by medchat; comments are not kept)\n\n" + to_toml(config))
    return file


def load_keys(path: str | os.PathLike | None = None) -> dict[str, str]:
    """The `[keys]` table of config.toml: binding id -> keys ("ctrl+g", or several: "ctrl+g,f9")."""
    file = _config_path(path)
    keys = load_config(file).get("keys", {})
    if not isinstance(keys, dict) or not all(isinstance(v, str) and v.strip() for v in keys.values()):
        raise SettingsError(f'In {file}: [keys] must map binding ids to key names, e.g. regenerate = "ctrl+g".')
    return dict(keys)


def save_defaults(settings: ChatSettings, path: str | os.PathLike | None = None) -> Path:
    """Write the defaults into config.toml, keeping any other tables already there."""
    file = _config_path(path)
    try:
        config = load_config(file)
    except SettingsError:
        config = {}  # an unreadable file is replaced (the user asked to save)
    config["generation"] = settings.generation_dict()
    chat = dict(config.get("chat", {})) if isinstance(config.get("chat"), dict) else {}
    if settings.system_prompt is None:
        chat.pop("system_prompt", None)
    else:
        chat["system_prompt"] = settings.system_prompt
    if chat:
        config["chat"] = chat
    else:
        config.pop("chat", None)
    return _write_config(file, config)


# --- a small TOML writer: tables of scalars (and one level of nested tables), enough for config.toml ---


def _toml_string(value: str) -> str:
    out = ['"']
    for ch in value:
        code = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04X}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _toml_key(key: str) -> str:
    return key if key and all(c.isalnum() or c in "-_" for c in key) and key.isascii() else _toml_string(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def to_toml(data: dict[str, Any], _prefix: str = "") -> str:
    scalars = [(k, v) for k, v in data.items() if not isinstance(v, dict)]
    tables = [(k, v) for k, v in data.items() if isinstance(v, dict)]
    lines = [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in scalars if v is not None]
    chunks = ["\n".join(lines) + "\n"] if lines else []
    for key, table in tables:
        name = f"{_prefix}.{_toml_key(key)}" if _prefix else _toml_key(key)
        body = to_toml(table, name)
        header = f"[{name}]\n"
        chunks.append(header + body if not body.startswith("[") else header + "\n" + body)
    return "\n".join(chunks)
