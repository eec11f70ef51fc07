"""What the three commands share: the model flags (declared once here), and the one place a user-facing
error (MedchatError) becomes one line on stderr."""

from __future__ import annotations

import functools

import click

from medchat.app import environment
from medchat.core import paths
from medchat.core.errors import MedchatError
from medchat.core.model import BACKENDS, BUNDLED, DEVICES, DTYPES, QUANTIZATIONS, ModelSpec
from medchat.core.paths import default_adapter_dir


class _PrintsUserErrors:
    """A MedchatError from any subcommand becomes click's one-line `Error: ...` with exit status 1 (usage
    errors keep click's exit status 2); a bug still shows its traceback. The top command reads the
    environment first (medchat.app.environment), before its options' callbacks run."""

    def make_context(self, info_name, args, parent=None, **extra):
        if parent is None:
            try:
                environment.start()
            except MedchatError as exc:
                raise click.ClickException(str(exc)) from None
        return super().make_context(info_name, args, parent, **extra)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except MedchatError as exc:
            raise click.ClickException(str(exc)) from None


class MedchatGroup(_PrintsUserErrors, click.Group):
    pass


class MedchatCommand(_PrintsUserErrors, click.Command):
    pass


# Every model flag, declared once: (flag names, click.option settings). The commands take them by name
# through model_flag, so the names, choices and help are the same on medchat, medchat ask, medchat-train
# and medchat-metrics; only a default may differ where the command has its own (a run's base, a preset's).
MODEL_FLAGS: dict[str, tuple[tuple[str, ...], dict]] = {
    "base": (("--base",), dict(
        default=BUNDLED, show_default=True, metavar="ID|DIR|FILE.gguf",
        help="Base model: 'bundled' (SmolLM2-135M-Instruct), a Hub id, a local directory or a .gguf file.")),
    "adapter": (("--adapter",), dict(
        type=click.Path(file_okay=False), default=None,
        help="LoRA adapter directory. Default: the shipped adapter when the base is the bundled model.")),
    "no_adapter": (("--no-adapter",), dict(is_flag=True, help="Use the base model alone.")),
    "quantization": (("--quantization",), dict(
        type=click.Choice(QUANTIZATIONS), default="auto", show_default=True,
        help="auto = 4-bit NF4 on a CUDA GPU, none on CPU; nf4 on CPU only with --device cpu (slow).")),
    "device": (("--device",), dict(type=click.Choice(DEVICES), default="auto", show_default=True,
                                   help="auto = CUDA when a GPU is visible, else CPU.")),
    "dtype": (("--dtype",), dict(
        type=click.Choice(DTYPES), default="auto", show_default=True,
        help="auto = bf16 where the GPU or CPU has it, else fp16 on CUDA and fp32 on CPU.")),
    "trust_remote_code": (("--trust-remote-code",), dict(
        is_flag=True, help="Allow a Hub model to run its own Python code (off by default).")),
    "backend": (("--backend",), dict(
        type=click.Choice(BACKENDS), default="auto", envvar="MEDCHAT_BACKEND", show_default=True,
        help="Generation: auto = llama.cpp on CPU when installed and the base is a GGUF, else torch.")),
}
# Where and how the weights run: on their own for commands that take the model from a run.
HARDWARE_FLAGS = ("quantization", "device", "dtype")


def model_flag(name: str, *aliases: str, default_note: str | None = None, **default):
    """The click option for model flag `name`. `aliases` adds old flag names (and the parameter name), `default`
    may replace the default (then `default_note` says what it is in the help)."""
    decls, settings = MODEL_FLAGS[name]
    settings = {**settings, **default}
    if default_note:
        settings["help"] = f"{settings['help']} Default: {default_note}."
    return click.option(*decls, *aliases, **settings)


def hardware_options(func):
    """Add --quantization/--device/--dtype (passed on as they are)."""
    for name in reversed(HARDWARE_FLAGS):
        func = model_flag(name)(func)
    return func


def runs_dir_option(func):
    """--runs-dir: where run ids are looked up, runs are listed and new runs are written."""

    def apply(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
        if value:  # over MEDCHAT_RUNS_DIR, which the command read when it started
            paths.configure(runs=value)

    return click.option("--runs-dir", type=click.Path(file_okay=False), default=None, expose_value=False,
                        is_eager=True, callback=apply,
                        help="Runs root (default: env MEDCHAT_RUNS_DIR, else <data dir>/runs).")(func)


def model_options(func):
    """Add every model flag and pass the command one `spec` (a ModelSpec) instead."""
    for name in reversed(MODEL_FLAGS):
        func = model_flag(name)(func)

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        kwargs["spec"] = spec_from_options(*(kwargs.pop(name) for name in MODEL_FLAGS))
        return func(*args, **kwargs)

    return wrapper


def spec_from_options(base, adapter, no_adapter, quantization, device, dtype, trust_remote_code,
                      backend="auto") -> ModelSpec:
    """A ModelSpec from the model flags, in MODEL_FLAGS order."""
    if adapter and no_adapter:
        raise click.UsageError("--adapter and --no-adapter contradict each other; pass one.")
    if adapter is None and not no_adapter and base == BUNDLED:
        shipped = default_adapter_dir()
        adapter = str(shipped) if shipped else None
    return ModelSpec(base=base, adapter=None if no_adapter else adapter, quantization=quantization,
                     device=device, dtype=dtype, trust_remote_code=trust_remote_code, backend=backend,
                     **environment.current().model_settings())


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
    from medchat.core.settings import load_ood_policy

    if flag is not None:
        return flag
    return load_ood_policy() or DEFAULT_POLICY  # a SettingsError: one line, printed by _PrintsUserErrors


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
    from medchat.core.settings import load_endpoint

    config = load_endpoint()
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
