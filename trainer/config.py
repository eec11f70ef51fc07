"""Training configuration: YAML presets, an optional --config file, and the CLI options the user passed.

Precedence (lowest to highest): built-in defaults < preset (assets/presets/NAME.yaml) < --config FILE <
options actually given on the command line. One flat schema (FIELDS) drives the YAML keys, the Click
options and the validation, so the three can never disagree.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medchat.core.errors import MedchatError
from medchat.core.paths import ASSETS_DIR

PRESETS_DIR = ASSETS_DIR / "presets"

SEED_SPAM_MARKERS = ("http", "www.", "click here", "subscribe")
DEFAULT_DATASET = "medalpaca/medical_meadow_medical_flashcards"


class ConfigError(MedchatError):
    """A user mistake in a preset, config file or option; the message says what to fix."""


@dataclass
class Field:
    name: str
    type: type  # str, int, float, bool, list (of str)
    default: Any
    help: str
    choices: tuple[str, ...] | None = None
    cli: bool = True  # exposed as --name-with-dashes
    group: str = "training"
    multiple: bool = False  # a list option that may be repeated on the CLI, each value comma-separated too


FIELDS: list[Field] = [
    # model
    Field("base", str, "bundled", "Base model: 'bundled', a Hub id or a local directory.", group="model"),
    Field("quantization", str, "none", "Load the base 4-bit for QLoRA (nf4: CUDA, or slowly with --device cpu).",
          ("auto", "nf4", "none"), group="model"),
    Field("device", str, "auto", "Where to train.", ("auto", "cpu", "cuda"), group="model"),
    Field("precision", str, "auto", "Mixed precision: auto = bf16 where supported, else fp16 on CUDA, else fp32.",
          ("auto", "bf16", "fp16", "fp32"), group="model"),
    Field("trust_remote_code", bool, False, "Allow the base model's own code to run (off by default).",
          group="model"),
    # prompt
    Field("prompt_style", str, "chat", "chat = the model's chat template; seed = the seed's ### format.",
          ("chat", "seed"), group="prompt"),
    Field("system_prompt", str, None, "System prompt (default: medchat's built-in one).", group="prompt"),
    Field("max_length", int, 512, "Maximum tokens per example (prompt + answer); answers are truncated.",
          group="prompt"),
    # data
    Field("data", list, [DEFAULT_DATASET], "Data sources: Hub dataset ids or .json/.jsonl/.csv/.parquet files.",
          cli=False, group="data"),
    Field("question_column", str, None, "Column holding the question (default: the first of input, "
          "question, instruction, prompt).", group="data"),
    Field("answer_column", str, None, "Column holding the answer (default: the first of output, answer, "
          "response, completion).", group="data"),
    Field("limit", int, None, "Use at most N examples after filtering and shuffling (the seed used 2000).",
          group="data"),
    Field("eval_fraction", float, 0.1, "Fraction held out for evaluation.", group="data"),
    Field("eval_size", int, None, "Hold out exactly N rows, the first N of the shuffled pool whatever --limit is "
          "(--limit then counts training rows): runs on growing subsets share one held-out split. Replaces "
          "--eval-fraction.", group="data"),
    Field("seed", int, 42, "Seed for shuffling, splitting, LoRA init and data order.", group="data"),
    Field("min_question_chars", int, 10, "Drop questions shorter than this (seed filter).", group="data"),
    Field("min_answer_chars", int, 5, "Drop answers shorter than this (seed filter).", group="data"),
    Field("spam_markers", list, list(SEED_SPAM_MARKERS), "Drop questions containing any of these "
          "(case-insensitive).", cli=False, group="data"),
    Field("dedupe", bool, True, "Drop exact duplicate question/answer pairs.", group="data"),
    # LoRA
    Field("lora_r", int, 16, "LoRA rank.", group="lora"),
    Field("lora_alpha", int, 32, "LoRA alpha.", group="lora"),
    Field("lora_dropout", float, 0.05, "LoRA dropout.", group="lora"),
    Field("target_modules", list, ["q_proj", "v_proj"], "Modules to adapt (comma-separated on the CLI).",
          group="lora"),
    # optimisation
    Field("epochs", float, 1.0, "Training epochs.", group="training"),
    Field("max_steps", int, None, "Stop after this many optimizer steps (overrides epochs).", group="training"),
    Field("learning_rate", float, 2e-4, "Peak learning rate.", group="training"),
    Field("batch_size", int, 8, "Examples per device per step.", group="training"),
    Field("grad_accum", int, 1, "Gradient accumulation steps.", group="training"),
    Field("eval_batch_size", int, None, "Examples per eval batch (default: batch size).", group="training"),
    Field("optimizer", str, "auto", "auto = paged_adamw_32bit with nf4 on CUDA, else adamw_torch.",
          ("auto", "adamw_torch", "paged_adamw_32bit", "adamw_8bit", "sgd"), group="training"),
    Field("lr_scheduler", str, "cosine", "Learning rate schedule.",
          ("cosine", "linear", "constant", "constant_with_warmup"), group="training"),
    Field("warmup_steps", int, None, "Warmup steps (wins over warmup_ratio).", group="training"),
    Field("warmup_ratio", float, 0.05, "Warmup as a fraction of the total steps.", group="training"),
    Field("weight_decay", float, 0.0, "Weight decay.", group="training"),
    Field("max_grad_norm", float, 1.0, "Gradient clipping norm.", group="training"),
    Field("packing", bool, False, "Pack each batch into one row (position ids restart per example, no padding).",
          group="training"),
    Field("group_by_length", bool, False, "Batch examples of similar length together. Off by default: batches "
          "of short answers then weigh as much as batches of long ones (1% worse held-out loss in "
          "bench/train_throughput.py), and max_tokens_per_pass already removes most padding.", group="training"),
    Field("max_tokens_per_pass", int, 1024, "Run each batch as forward/backward passes of at most this many "
          "tokens (rows x their longest row), grouping rows of similar length: the same gradients with little "
          "padding and less memory. 0 = one pass per batch.", group="training"),
    Field("gradient_checkpointing", bool, False, "Trade compute for memory.", group="training"),
    Field("logging_steps", int, 5, "Log train loss every N steps.", group="training"),
    Field("report_to", list, [], "Also log to these trackers through the Trainer's integrations: tensorboard, "
          "wandb, mlflow (repeat or comma-separate), or none. Offline, inside the run directory, unless the "
          "tracker is configured (pip install 'medchat[tracking]').", group="training", multiple=True),
    Field("eval_steps", int, None, "Evaluate every N steps (default: about 4 times per run).", group="training"),
    Field("save_steps", int, None, "Checkpoint every N steps (default: same as eval_steps).", group="training"),
    Field("save_total_limit", int, 2, "Keep at most N checkpoints.", group="training"),
    Field("early_stopping_patience", int, None, "Stop after N evaluations without eval-loss improvement.",
          group="training"),
    Field("guard_index", bool, True, "Build the guard's reference index from the training questions.",
          group="training"),
]
FIELD_BY_NAME = {f.name: f for f in FIELDS}

# Extra keys a preset may carry that are not training options.
META_KEYS = {"description", "requires"}


@dataclass
class TrainConfig:
    values: dict[str, Any] = field(default_factory=dict)
    preset: str | None = None
    description: str = ""
    requires: list[str] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)  # key -> "default" | "preset" | "config" | "cli"

    def __getattr__(self, name: str) -> Any:
        values = self.__dict__.get("values", {})
        if name in values:
            return values[name]
        raise AttributeError(name)

    def as_dict(self) -> dict[str, Any]:
        out = {"preset": self.preset}
        out.update(self.values)
        return out

    def replace(self, **changes: Any) -> "TrainConfig":
        new = dataclasses.replace(self, values=dict(self.values), sources=dict(self.sources))
        for k, v in changes.items():
            new.values[k] = coerce(k, v, origin="override")
            new.sources[k] = "cli"
        validate(new)
        return new


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def _read_yaml(path: Path, what: str) -> dict[str, Any]:
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist.") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{what} {path}{where} is not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path} must be a mapping of option: value, not {type(data).__name__}.")
    return data


def coerce(key: str, value: Any, origin: str) -> Any:
    f = FIELD_BY_NAME.get(key)
    if f is None:
        import difflib

        close = difflib.get_close_matches(key, FIELD_BY_NAME, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"unknown option '{key}' in {origin}.{hint}")
    if value is None:
        return None
    try:
        if f.type is list:
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            if not isinstance(value, (list, tuple)):
                raise TypeError
            value = [str(v) for v in value]
            if f.multiple:
                value = [part.strip() for v in value for part in v.split(",") if part.strip()]
        elif f.type is bool:
            if isinstance(value, str):
                low = value.strip().lower()
                if low not in ("true", "false", "yes", "no", "1", "0", "on", "off"):
                    raise TypeError
                value = low in ("true", "yes", "1", "on")
            elif not isinstance(value, bool):
                raise TypeError
        elif f.type is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError
            value = int(value)
        elif f.type is float:
            if isinstance(value, bool):
                raise TypeError
            value = float(value)
        else:
            value = str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"option '{key}' in {origin} must be {f.type.__name__}, got {value!r}.") from None
    if key == "report_to":
        from medchat.core.tracking import TrackingError, parse_report_to

        try:
            value = parse_report_to(value)
        except TrackingError as exc:
            raise ConfigError(f"option 'report_to' in {origin}: {exc}") from None
    elif f.choices and value not in f.choices:
        raise ConfigError(f"option '{key}' in {origin} must be one of {', '.join(f.choices)}; got {value!r}.")
    return value


def _apply(cfg: TrainConfig, data: dict[str, Any], origin: str, source: str) -> None:
    for key, value in data.items():
        if key in META_KEYS:
            if key == "description":
                cfg.description = str(value)
            else:
                cfg.requires = [str(v) for v in (value or [])]
            continue
        cfg.values[key] = coerce(key, value, origin)
        cfg.sources[key] = source


def load_config(
    preset: str | None = None,
    config_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> TrainConfig:
    """Defaults < preset < config file < overrides (only what the user passed)."""
    cfg = TrainConfig(values={f.name: _copy(f.default) for f in FIELDS},
                      sources={f.name: "default" for f in FIELDS})
    if preset:
        path = Path(preset)
        if path.suffix in (".yaml", ".yml") and path.exists():
            cfg.preset = path.stem
        else:
            path = PRESETS_DIR / f"{preset}.yaml"
            if not path.is_file():
                known = ", ".join(list_presets()) or "(none)"
                raise ConfigError(f"unknown preset '{preset}'. Known presets: {known}.")
            cfg.preset = preset
        _apply(cfg, _read_yaml(path, "preset"), f"preset {path}", "preset")
    if config_file:
        path = Path(config_file)
        data = _read_yaml(path, "config file")
        data.pop("preset", None)
        _apply(cfg, data, f"config file {path}", "config")
    if overrides:
        for key, value in overrides.items():
            cfg.values[key] = coerce(key, value, f"option --{key.replace('_', '-')}")
            cfg.sources[key] = "cli"
    validate(cfg)
    return cfg


def _copy(v: Any) -> Any:
    return list(v) if isinstance(v, list) else v


def validate(cfg: TrainConfig) -> None:
    v = cfg.values
    problems = []

    def positive(name: str, allow_none: bool = False) -> None:
        val = v.get(name)
        if val is None and allow_none:
            return
        if val is None or val <= 0:
            problems.append(f"{name} must be > 0 (got {val})")

    for name in ("learning_rate", "lora_r", "lora_alpha", "batch_size", "grad_accum", "max_length", "epochs",
                 "logging_steps"):
        positive(name)
    for name in ("max_steps", "eval_batch_size", "eval_steps", "save_steps", "limit", "early_stopping_patience",
                 "eval_size"):
        positive(name, allow_none=True)
    if not 0 <= v["lora_dropout"] < 1:
        problems.append(f"lora_dropout must be in [0, 1) (got {v['lora_dropout']})")
    if not 0 < v["eval_fraction"] < 1:
        problems.append(f"eval_fraction must be between 0 and 1, exclusive (got {v['eval_fraction']}); "
                        "training needs held-out rows for eval loss and metrics")
    if not 0 <= v["warmup_ratio"] < 1:
        problems.append(f"warmup_ratio must be in [0, 1) (got {v['warmup_ratio']})")
    if v["warmup_steps"] is not None and v["warmup_steps"] < 0:
        problems.append(f"warmup_steps must be >= 0 (got {v['warmup_steps']})")
    if v["weight_decay"] < 0:
        problems.append(f"weight_decay must be >= 0 (got {v['weight_decay']})")
    if v["max_grad_norm"] < 0:
        problems.append(f"max_grad_norm must be >= 0 (got {v['max_grad_norm']})")
    if v["max_length"] is not None and v["max_length"] < 16:
        problems.append(f"max_length must be at least 16 tokens (got {v['max_length']})")
    if not v["target_modules"]:
        problems.append("target_modules must name at least one module (e.g. q_proj,v_proj)")
    if not v["data"]:
        problems.append("data must name at least one source (a file or a Hub dataset id)")
    if v["limit"] is not None and v["limit"] < 2:
        problems.append(f"limit must be at least 2 so both splits get a row (got {v['limit']})")
    if problems:
        raise ConfigError("invalid configuration: " + "; ".join(problems) + ".")


def to_yaml(cfg: TrainConfig) -> str:
    import yaml

    return yaml.safe_dump(cfg.as_dict(), sort_keys=False, allow_unicode=True)


def from_resolved_yaml(path: Path) -> TrainConfig:
    """Read a run's config.yaml back (resume, sweep reruns)."""
    data = _read_yaml(path, "run config")
    preset = data.pop("preset", None)
    cfg = TrainConfig(values={f.name: _copy(f.default) for f in FIELDS},
                      sources={f.name: "default" for f in FIELDS}, preset=preset)
    _apply(cfg, data, f"run config {path}", "config")
    validate(cfg)
    return cfg
