"""Click options that build a ModelSpec, shared by medchat, medchat-train and medchat-metrics."""

from __future__ import annotations

import functools

import click

from medchat.core.model import BACKENDS, BUNDLED, DEVICES, DTYPES, QUANTIZATIONS, ModelSpec
from medchat.core.paths import default_adapter_dir


# Where and how the weights run: part of model_options, and on their own for commands that take the model
# from a run (medchat-metrics evaluate / mcq).
HARDWARE_OPTIONS = [
    click.option("--quantization", type=click.Choice(QUANTIZATIONS), default="auto", show_default=True,
                 help="auto = 4-bit NF4 on a CUDA GPU, none on CPU."),
    click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True),
    click.option("--dtype", type=click.Choice(DTYPES), default="auto", show_default=True,
                 help="auto = bf16 on CUDA and on CPUs with bf16 instructions, else fp32."),
]


def hardware_options(func):
    """Add --quantization/--device/--dtype (passed on as they are)."""
    for option in reversed(HARDWARE_OPTIONS):
        func = option(func)
    return func


def model_options(func):
    """Add --base/--adapter/--no-adapter/--quantization/--device/--dtype/--trust-remote-code."""
    options = [
        click.option("--base", default=BUNDLED, show_default=True, metavar="ID|DIR|FILE.gguf",
                     help="Base model: 'bundled' (SmolLM2-135M-Instruct), a Hub id, a local directory or a .gguf file."),
        click.option("--adapter", type=click.Path(file_okay=False), default=None,
                     help="LoRA adapter directory. Default: the shipped adapter when the base is the bundled model."),
        click.option("--no-adapter", is_flag=True, help="Use the base model alone."),
        *HARDWARE_OPTIONS,
        click.option("--trust-remote-code", is_flag=True,
                     help="Allow a Hub model to run its own Python code (off by default)."),
        click.option("--backend", type=click.Choice(BACKENDS), default="auto", envvar="MEDCHAT_BACKEND",
                     show_default=True,
                     help="Generation: auto = on CPU llama.cpp if installed (GGUF base), else ONNX Runtime; torch on a GPU."),
    ]
    for option in reversed(options):
        func = option(func)

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        kwargs["spec"] = spec_from_options(
            kwargs.pop("base"), kwargs.pop("adapter"), kwargs.pop("no_adapter"), kwargs.pop("quantization"),
            kwargs.pop("device"), kwargs.pop("dtype"), kwargs.pop("trust_remote_code"), kwargs.pop("backend"),
        )
        return func(*args, **kwargs)

    return wrapper


def spec_from_options(base, adapter, no_adapter, quantization, device, dtype, trust_remote_code,
                      backend="auto") -> ModelSpec:
    if adapter and no_adapter:
        raise click.UsageError("--adapter and --no-adapter contradict each other; pass one.")
    if adapter is None and not no_adapter and base == BUNDLED:
        shipped = default_adapter_dir()
        adapter = str(shipped) if shipped else None
    return ModelSpec(base=base, adapter=None if no_adapter else adapter, quantization=quantization,
                     device=device, dtype=dtype, trust_remote_code=trust_remote_code, backend=backend)


def ood_policy_option(func):
    """--ood-policy note|decline (default: config.toml's [chat] ood_policy, else note)."""
    from medchat.core.guard.policy import POLICIES

    return click.option(
        "--ood-policy", type=click.Choice(POLICIES), default=None,
        help="Questions outside medicine: note = answer with a visible note, decline = a polite fixed answer "
             "and no generation (a red flag is never declined). Default: [chat] ood_policy in config.toml, "
             "else note.",
    )(func)


def resolve_ood_policy(flag: str | None) -> str:
    """The flag, else config.toml, else "note"; a bad config value is a one-line error naming the file."""
    from medchat.core.guard.policy import DEFAULT_POLICY
    from medchat.core.settings import SettingsError, load_ood_policy

    if flag is not None:
        return flag
    try:
        return load_ood_policy() or DEFAULT_POLICY
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None
