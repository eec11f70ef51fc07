"""`medchat`: the chat app (default), `medchat ask` for one-shot answers, and friends."""

from __future__ import annotations

import sys

import click

from medchat.core import paths
from medchat.app.cli_options import (
    MedchatGroup,
    endpoint_options,
    model_options,
    ood_policy_option,
    resolve_endpoint,
    resolve_ood_policy,
    serve_options,
    spec_from_options,
)
from medchat.app.process_exit import exit_now
from medchat.core.quiet import quiet_known_warnings

# The group's model options (before a subcommand, `medchat --base X ask ...`) apply to the subcommands that
# load a model; the subcommand's own, where given, win.
MODEL_PARAMS = ("base", "adapter", "no_adapter", "quantization", "device", "dtype", "trust_remote_code", "backend")
MODEL_SUBCOMMANDS = ("ask",)


def _show_paths() -> None:
    rows = {
        "data": paths.data_dir(),
        "history": paths.history_db_path(),
        "config": paths.config_file(),
        "cache": paths.cache_dir(),
        "runs": paths.runs_root(),
        "shipped adapter": paths.default_adapter_dir() or "(none in this install)",
    }
    for name, value in rows.items():
        click.echo(f"{name:>15}: {value}")


@click.group(cls=MedchatGroup, invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--paths", "show_paths", is_flag=True, help="Print where medchat keeps data, config and cache, then exit.")
@click.option("--no-history", is_flag=True, help="Incognito: write no conversation history.")
@ood_policy_option
@endpoint_options
@model_options
@click.pass_context
def main(ctx: click.Context, show_paths: bool, no_history: bool, ood_policy: str | None, endpoint, spec) -> None:
    """Chat with a local medical assistant model in your terminal.

    Not a doctor: every answer ends with a reminder to consult a licensed physician.
    """
    quiet_known_warnings()
    if show_paths:
        _show_paths()
        return
    if ctx.invoked_subcommand is not None:
        given = _given(ctx, (*MODEL_PARAMS, "ood_policy"))
        if given and ctx.invoked_subcommand not in MODEL_SUBCOMMANDS:
            flags = ", ".join("--" + name.replace("_", "-") for name in given)
            raise click.UsageError(f"{flags} before `{ctx.invoked_subcommand}` has no effect: "
                                   f"`medchat {ctx.invoked_subcommand}` loads no model.")
        return
    from medchat.app.chat.app import run_app

    engine_factory = None
    if endpoint is not None:
        from medchat.core.remote import RemoteEngine

        engine_factory = lambda: RemoteEngine(**endpoint)  # noqa: E731
    exit_now(run_app(spec, no_history=no_history, ood_policy=resolve_ood_policy(ood_policy),
                     engine_factory=engine_factory) or 0)


def _given(ctx: click.Context, names) -> dict:
    """The options among `names` that were set on this command line (or by their environment variable)."""
    return {name: ctx.params[name] for name in names
            if ctx.get_parameter_source(name) not in (None, click.core.ParameterSource.DEFAULT)}


def _with_group_options(ctx: click.Context, endpoint: dict | None) -> tuple:
    """The subcommand's ModelSpec, --ood-policy and endpoint, each taken from the subcommand if given there,
    else from the group (`medchat --base X ask`, `medchat --endpoint URL ask`), else its default."""
    values = {name: ctx.params[name] for name in MODEL_PARAMS} | {"ood_policy": ctx.params["ood_policy"]}
    values |= {name: value for name, value in _given(ctx.parent, values).items() if name not in _given(ctx, values)}
    ood_policy = values.pop("ood_policy")
    group = ctx.parent.params
    if group.get("endpoint") and not ctx.params.get("endpoint"):
        endpoint = resolve_endpoint(group["endpoint"], group.get("model_name"), group.get("api_key_env"))
    return spec_from_options(**values), ood_policy, endpoint


@main.command()
@click.argument("question", required=False)
@click.option("--system", "system_prompt", default=None, help="System prompt (default: medchat's medical one).")
@click.option("--style", type=click.Choice(["chat", "seed"]), default="chat", show_default=True,
              help="Prompt format: the model's chat template, or the seed's ### format.")
@click.option("--max-new-tokens", type=click.IntRange(1), default=256, show_default=True)
@click.option("--temperature", type=click.FloatRange(0), default=0.0, show_default=True, help="0 = greedy.")
@click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=0.95, show_default=True)
@click.option("--repetition-penalty", type=click.FloatRange(0, min_open=True), default=1.1, show_default=True)
@click.option("--stats", is_flag=True, help="Print timing and token counts to stderr.")
@click.option("--bare", "output", flag_value="bare",
              help="Only the model's text on stdout; the guard's verdict as one JSON line on stderr.")
@click.option("--json", "output", flag_value="json",
              help="One JSON object on stdout: answer, notices, ood_level, red_flags, declined, reminder, stats...")
@ood_policy_option
@endpoint_options
@model_options
@click.pass_context
def ask(ctx, question, system_prompt, style, max_new_tokens, temperature, top_p, repetition_penalty, stats, output,
        ood_policy, endpoint, spec):
    """Answer one QUESTION (or the text piped on stdin), streaming to stdout.

    Emergency notices come before the answer and the physician reminder after it, as in the chat.
    """
    from medchat.app.ask import Interrupted, run_ask
    from medchat.core.engine import GenerationSettings

    spec, ood_policy, endpoint = _with_group_options(ctx, endpoint)

    if question is None:
        if sys.stdin.isatty():
            raise click.UsageError("Give a QUESTION, or pipe one on stdin.")
        question = sys.stdin.read()
    if not question.strip():
        raise click.UsageError("The question is empty.")
    settings = GenerationSettings(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                  repetition_penalty=repetition_penalty)
    ood_policy = resolve_ood_policy(ood_policy)
    try:
        code = run_ask(question.strip(), spec, settings, system_prompt=system_prompt, style=style,
                       show_stats=stats, output=output or "text", ood_policy=ood_policy, endpoint=endpoint)
    except click.ClickException as exc:
        exc.show()
        code = exc.exit_code
    except Interrupted as exc:
        code = exc.exit_code
    exit_now(code)


@main.command()
@click.argument("run", required=False)
@serve_options
@ood_policy_option
@model_options
def serve(run, host, port, upstream, model_name, api_key_env, served_model_name, max_concurrent, max_request_bytes,
          ood_policy, spec):
    """Serve an OpenAI-compatible API (/v1/chat/completions, /v1/models) with medchat's guard in front.

    The model: RUN's adapter (a run id or directory), the --base/--adapter flags, or --upstream URL (vLLM,
    llama.cpp server...). Every answer carries the emergency notice first and the physician reminder last.
    """
    from medchat.app.serve import load_gateway, run_server
    from medchat.core.remote import DEFAULT_API_KEY_ENV

    if upstream and run:
        raise click.UsageError("Give RUN or --upstream, not both: with --upstream the model is the server's.")
    if run:
        spec = _spec_for_run(run, spec)
    if host not in ("127.0.0.1", "localhost", "::1"):
        click.echo(f"medchat serve: listening on {host} with no authentication; anyone who reaches it can use "
                   "the model.", err=True)
    gateway = load_gateway(spec, upstream=upstream, model=model_name, api_key_env=api_key_env or DEFAULT_API_KEY_ENV,
                           served_model=served_model_name, policy=resolve_ood_policy(ood_policy),
                           max_concurrent=max_concurrent, max_request_bytes=max_request_bytes)
    run_server(gateway, host, port)


def _spec_for_run(ref: str, spec):
    """The spec with RUN's adapter, on RUN's base unless --base was given."""
    import dataclasses

    from medchat.core.runs import RunDir, resolve_run

    found = RunDir(resolve_run(ref))  # a RunError is printed as one line by MedchatGroup
    base = found.read().get("base") if spec.base == "bundled" else None
    if not found.adapter.is_dir():
        raise click.ClickException(f"{found.path} has no adapter/ folder (has the run finished?).")
    return dataclasses.replace(spec, adapter=str(found.adapter), base=base or spec.base)


# Subcommands that live beside the modules they drive.
from medchat.app.guard_cli import guard_command  # noqa: E402
from medchat.app.history_cli import history  # noqa: E402

main.add_command(guard_command)
main.add_command(history)

if __name__ == "__main__":
    main()
