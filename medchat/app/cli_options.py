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
                     help="Generation: auto = llama.cpp on CPU when installed and the base is a GGUF, else torch."),
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


# ---------------------------------------------------------------- OpenAI-compatible servers

MODEL_NAME_OPTION = click.option(
    "--model", "model_name", default=None, metavar="NAME",
    help="The model to ask the server for (default: [endpoint] model in config.toml, else the first it lists).")
API_KEY_ENV_OPTION = click.option(
    "--api-key-env", default=None, metavar="VAR",
    help="Environment variable that holds the server's API key (default: [endpoint] api_key_env, else "
         "OPENAI_API_KEY). The key itself is never stored.")


def endpoint_options(func):
    """Add --endpoint/--model/--api-key-env; the command gets `endpoint`: RemoteEngine's keyword arguments
    (url, model, api_key_env), or None to run the local model. Flags win over config.toml's [endpoint]."""
    options = [
        click.option("--endpoint", default=None, metavar="URL",
                     help="Generate through an OpenAI-compatible server (vLLM, llama.cpp, Ollama, transformers "
                          "serve, medchat serve), e.g. http://127.0.0.1:8000/v1. The guard, notices and reminder "
                          "stay local. Default: [endpoint] url in config.toml."),
        MODEL_NAME_OPTION,
        API_KEY_ENV_OPTION,
    ]
    for option in reversed(options):
        func = option(func)

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        kwargs["endpoint"] = resolve_endpoint(kwargs.pop("endpoint"), kwargs.pop("model_name"),
                                              kwargs.pop("api_key_env"))
        return func(*args, **kwargs)

    return wrapper


def resolve_endpoint(url: str | None, model: str | None, api_key_env: str | None) -> dict | None:
    from medchat.core.remote import DEFAULT_API_KEY_ENV
    from medchat.core.settings import SettingsError, load_endpoint

    try:
        config = load_endpoint()
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None
    url = url or config.get("url")
    if not url:
        if model or api_key_env:
            raise click.UsageError("--model and --api-key-env need --endpoint URL (or [endpoint] url in config.toml).")
        return None
    return {"url": url, "model": model or config.get("model"),
            "api_key_env": api_key_env or config.get("api_key_env") or DEFAULT_API_KEY_ENV}


DEFAULT_MAX_CONCURRENT = 4
DEFAULT_MAX_REQUEST_BYTES = 1_000_000


def serve_options(func):
    """Add what `medchat serve` takes besides the model flags: where it listens, an optional upstream server,
    the served name and the limits."""
    options = [
        click.option("--host", default="127.0.0.1", show_default=True,
                     help="Address to listen on. There is no authentication: keep it on 127.0.0.1 or put a proxy "
                          "with authentication in front."),
        click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True),
        click.option("--upstream", default=None, metavar="URL",
                     help="Generate through this OpenAI-compatible server (e.g. vLLM) instead of a local model; "
                          "medchat adds the guard, the notices and the reminder."),
        MODEL_NAME_OPTION,
        API_KEY_ENV_OPTION,
        click.option("--served-model-name", default="medchat", show_default=True,
                     help="The model id clients ask for (GET /v1/models lists it)."),
        click.option("--max-concurrent", type=click.IntRange(1), default=DEFAULT_MAX_CONCURRENT, show_default=True,
                     help="Generations at once; more get HTTP 429."),
        click.option("--max-request-bytes", type=click.IntRange(1), default=DEFAULT_MAX_REQUEST_BYTES,
                     show_default=True, help="Larger request bodies get HTTP 413."),
    ]
    for option in reversed(options):
        func = option(func)
    return func
