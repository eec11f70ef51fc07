"""medchat-train: fine-tune, inspect data, list runs, merge and export adapters, sweep a grid.

Heavy libraries (torch, transformers, peft) are imported inside the commands so `--help` stays fast.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from medchat.app.cli_options import MedchatGroup, model_flag, runs_dir_option
from medchat.core.gguf_export import RUN_TYPES
from medchat.core.quiet import quiet_known_warnings

from trainer.config import FIELDS, list_presets, load_config
from trainer.export import FORMATS, VLLM_DEFAULT_MAX_RANK, VLLM_LORA_RANKS

DEFAULT_PRESET = "cpu-smollm2"


# ---------------------------------------------------------------- options generated from the schema

# Config fields that are model flags take their declaration from cli_options; the preset gives the default.
# --precision, the field's own name (presets and config files keep it), stays as an alias of --dtype.
MODEL_FIELD_FLAGS = {"base": ("base",), "quantization": ("quantization",), "device": ("device",),
                     "precision": ("dtype", "--precision", "precision"), "trust_remote_code": ("trust_remote_code",)}


def _option_for(f, grid: bool = False):
    flag = "--" + f.name.replace("_", "-")
    if f.name in MODEL_FIELD_FLAGS and not grid:
        if f.type is bool:
            return model_flag(*MODEL_FIELD_FLAGS[f.name])
        return model_flag(*MODEL_FIELD_FLAGS[f.name], default=None, show_default=False, default_note="the preset's")
    if grid:
        return click.option(flag, f.name, type=str, default=None,
                            help=f"{f.help} Comma-separated values form the grid.")
    if f.type is bool:
        return click.option(f"{flag}/--no-{f.name.replace('_', '-')}", f.name, default=None, help=f.help)
    if f.multiple:
        return click.option(flag, f.name, multiple=True, metavar="NAME[,NAME]", help=f.help)
    if f.choices:
        kind = click.Choice(f.choices)
    elif f.type is list:
        kind = str
    else:
        kind = {int: int, float: float, str: str}[f.type]
    return click.option(flag, f.name, type=kind, default=None, help=f.help, show_default=False)


GRID_FIELDS = ("learning_rate", "epochs", "lora_r", "batch_size", "lora_alpha", "max_length")


def config_options(grid: bool = False, skip: tuple[str, ...] = ()):
    def decorate(func):
        for f in reversed(FIELDS):
            if not f.cli or f.name in skip:
                continue
            func = _option_for(f, grid=grid and f.name in GRID_FIELDS)(func)
        func = click.option("--data", "data", multiple=True, metavar="SOURCE",
                            help="A data file (.json/.jsonl/.csv/.parquet) or Hub dataset id; repeat, or list "
                                 "several after one --data.")(func)
        func = click.option("--spam-markers", "spam_markers", default=None,
                            help="Comma-separated spam markers (questions containing one are dropped).")(func)
        func = click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
                            help="A YAML file of options; overrides the preset.")(func)
        func = click.option("--preset", default=DEFAULT_PRESET, show_default=True,
                            help=f"A preset in assets/presets ({', '.join(list_presets())}) or a YAML path.")(func)
        func = click.argument("extra_data", nargs=-1, metavar="[SOURCE]...")(func)
        return func

    return decorate


def _overrides(ctx: click.Context, params: dict[str, Any], skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """Only options the user actually passed (command line or env), never Click defaults."""
    out = {}
    for f in FIELDS:
        if f.name in skip or f.name not in params:
            continue
        source = ctx.get_parameter_source(f.name)
        if source in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT) and params[f.name] is not None:
            out[f.name] = params[f.name]
    sources = [s for item in (*params.get("data", ()), *params.get("extra_data", ())) for s in item.split(",")
               if s.strip()]
    if sources:
        out["data"] = [s.strip() for s in sources]
    if params.get("spam_markers") is not None:
        out["spam_markers"] = params["spam_markers"]
    return out


def _load(ctx, params, skip=()):
    return load_config(params.get("preset"), params.get("config_file"), _overrides(ctx, params, skip))


# ---------------------------------------------------------------- commands


@click.group(cls=MedchatGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="medchat", prog_name="medchat-train")
def main() -> None:
    """Fine-tune a chat LLM on medical Q&A with LoRA / QLoRA, and record every run."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the tokenizers library reads it at its first fork
    quiet_known_warnings()


@main.command("train")
@config_options()
@click.option("--output-dir", type=click.Path(file_okay=False), default=None,
              help="Run directory (default: <runs root>/<YYYYmmdd-HHMMSS>-<preset>).")
@click.option("--name", default=None, help="Run id under the runs root instead of the timestamped one.")
@runs_dir_option
@click.option("--overwrite", is_flag=True, help="Replace an existing run in the output directory.")
@click.option("--resume", "resume", default=None, metavar="RUN",
              help="Continue an interrupted run (id or path) from its last checkpoint, with its saved config.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar or summary.")
@click.option("--print-config", is_flag=True, help="Print the resolved configuration (YAML) and exit.")
@click.pass_context
def train_cmd(ctx, output_dir, name, overwrite, resume, quiet, print_config, **params):
    """Fine-tune with a preset; options given here override the preset and --config.

    \b
    Examples:
      medchat-train train --preset cpu-smollm2 --data ../shared/data/train/medquad.jsonl --limit 400
      medchat-train train --preset seed-tinyllama-t4 --data flashcards.jsonl      # needs CUDA
      medchat-train train --resume 20260101-120000-cpu-smollm2
    """
    from trainer.train import train

    if print_config:
        from trainer.config import to_yaml

        click.echo(to_yaml(_load(ctx, params)), nl=False)
        return
    try:
        if resume:
            result = train(resume=resume, progress=not quiet)
        else:
            cfg = _load(ctx, params)
            result = train(cfg, output_dir=output_dir, name=name, overwrite=overwrite, progress=not quiet)
    except KeyboardInterrupt:
        click.echo("Aborted; the run is marked interrupted.", err=True)
        sys.exit(130)
    click.echo(str(result.run.path))
    if result.status == "interrupted":
        sys.exit(130)


@main.command("inspect-data")
@config_options(skip=("report_to",))
@click.option("-n", "--examples", "n_examples", default=3, show_default=True, help="Examples to show.")
@click.option("--split", type=click.Choice(["train", "eval"]), default="train", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON instead.")
@click.pass_context
def inspect_data(ctx, n_examples, split, as_json, **params):
    """Show formatted examples with the tokens that carry loss highlighted, and the data counts."""
    from rich.console import Console

    from trainer import data as data_mod
    from trainer.inspect import render_examples, render_counts

    cfg = _load(ctx, params)
    console = Console()
    prepared = data_mod.prepare(cfg)
    from medchat.core.prompting import DEFAULT_SYSTEM_PROMPT

    tokenizer = _tokenizer_for(cfg)
    system = DEFAULT_SYSTEM_PROMPT if cfg.system_prompt is None else cfg.system_prompt
    rows = prepared.train if split == "train" else prepared.eval
    encoded = {name: data_mod.encode_rows(tokenizer, part, cfg.prompt_style, system, cfg.max_length)
               for name, part in (("train", prepared.train), ("eval", prepared.eval))}
    manifest = dict(prepared.manifest)
    manifest["tokens"] = {k: data_mod.token_summary(v) for k, v in encoded.items()}
    if as_json:
        click.echo(json.dumps(manifest, indent=2, default=str))
        return
    render_examples(console, tokenizer, rows[:n_examples], encoded[split][:n_examples], split)
    render_counts(console, manifest, cfg)


def _tokenizer_for(cfg):
    """Only the tokenizer (inspect-data needs no weights): the base is resolved by the shared loader's rules."""
    from medchat.core.model import ModelError, hub_kwargs, resolve_base
    from medchat.core.tokens import ensure_pad_token
    from transformers import AutoTokenizer

    path = resolve_base(cfg.base)
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=cfg.trust_remote_code, **hub_kwargs(path))
    except (OSError, ValueError) as exc:
        raise ModelError(f"could not load the tokenizer of {cfg.base!r}: {str(exc).splitlines()[0][:300]}") from None
    ensure_pad_token(tok)
    return tok


@main.command("runs")
@runs_dir_option
@click.option("--json", "as_json", is_flag=True, help="JSON lines instead of a table.")
@click.option("--wide", is_flag=True, help="Every column, whatever the terminal width.")
@click.option("--no-default", is_flag=True, help="Leave out the shipped default run.")
def runs_cmd(as_json, wide, no_default):
    """List runs: id, preset, base, data, examples, epochs, lr, losses, time, status."""
    from rich.console import Console
    from rich.table import Table

    from medchat.core import paths

    from medchat.core.runs import RunDir, discover_runs, summarize

    root = paths.runs_root()
    rows = [summarize(RunDir(p)) for p in discover_runs(root, include_default=not no_default)]
    if as_json:
        for row in rows:
            click.echo(json.dumps(row))
        return
    console = Console()
    if not rows:
        console.print(f"No runs under {root}. Start one with `medchat-train train --preset cpu-smollm2 --data FILE`.")
        return
    style = {"complete": "green", "running": "cyan", "interrupted": "yellow", "failed": "red"}
    cells = {
        "id": lambda r: r["id"] + (" (shipped)" if Path(r["path"]).resolve() == paths.DEFAULT_RUN_DIR.resolve() else ""),
        "preset": lambda r: str(r["preset"] or "-"),
        "base": lambda r: _short(r["base"]),
        "data": lambda r: r["data"] or "-",
        "train/eval": lambda r: f"{r['train_examples'] or '-'}/{r['eval_examples'] or '-'}",
        "epochs": lambda r: _fmt(r["epochs"]),
        "lr": lambda r: _fmt(r["learning_rate"]),
        "train loss": lambda r: _fmt(r["train_loss"]),
        "eval loss": lambda r: _fmt(r["eval_loss"]),
        "time": lambda r: _duration(r["elapsed_s"]),
        "status": lambda r: f"[{style.get(r['status'], 'white')}]{r['status']}[/]",
    }
    # Below 120 columns the table keeps what tells runs apart; --wide (or --json) has the rest.
    columns = list(cells) if wide or console.width >= 120 else [
        "id", "train/eval", "lr", "eval loss", "time", "status"]
    table = Table(title=f"runs in {root}", title_justify="left")
    for col in columns:
        table.add_column(col, overflow="fold", no_wrap=col not in ("id", "data"))
    for r in rows:
        table.add_row(*(cells[col](r) for col in columns))
    console.print(table)


def _short(base):
    return "-" if not base else str(base).split("/")[-1]


def _fmt(v):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _duration(seconds):
    if not seconds:
        return "-"
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


@main.command("merge")
@click.argument("run")
@runs_dir_option
@click.option("--output", "output", type=click.Path(file_okay=False), default=None,
              help="Where to write the merged model (default: <run>/merged).")
@click.option("--dtype", type=click.Choice(["bf16", "fp32"]), default="bf16", show_default=True,
              help="Precision of the merged weights (never 4-bit: quantize at load time).")
@click.option("--overwrite", is_flag=True, help="Replace an existing merged model.")
def merge_cmd(run, output, dtype, overwrite):
    """Merge RUN's LoRA adapter into its base model (RUN: id, path, or 'default')."""
    from medchat.core.model import ModelSpec, load, write_merged

    from medchat.core.runs import RunDir, resolve_run

    rd = RunDir(resolve_run(run))
    info = rd.read()
    if not (rd.adapter / "adapter_config.json").is_file():
        raise click.ClickException(f"{rd.path} has no adapter yet (status {info.get('status', '?')}); "
                                   "finish or resume the run first.")
    target = Path(output).expanduser() if output else rd.path / "merged"
    if target.exists() and any(target.iterdir()) and not overwrite:
        raise click.ClickException(f"{target} already exists; pass --overwrite to replace it.")
    base = info.get("base") or "bundled"
    loaded = load(ModelSpec(base=base, adapter=str(rd.adapter), merge=True, quantization="none", device="cpu",
                            dtype=dtype))
    write_merged(loaded, target)
    meta = rd.adapter / "medchat.json"
    if meta.is_file():
        (target / "medchat.json").write_text(meta.read_text(encoding="utf-8"), encoding="utf-8")
    click.echo(str(target))


@main.command("export")
@click.argument("run")
@click.option("--format", "fmt", type=click.Choice(FORMATS), required=True,
              help="merged: bf16 safetensors for transformers; vllm: a LoRA adapter for `vllm serve --enable-lora`; "
                   "gguf: the merged model for llama.cpp; ollama: that GGUF and a Modelfile.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Directory to write (default: <run>/export/<format>).")
@click.option("--force", is_flag=True, help="Replace a non-empty --out.")
@click.option("--max-lora-rank", type=click.Choice([str(r) for r in VLLM_LORA_RANKS]),
              default=str(VLLM_DEFAULT_MAX_RANK), show_default=True, help="vllm: the --max-lora-rank vLLM will be started with.")
@click.option("--gguf-type", type=click.Choice(RUN_TYPES), default=None,
              help="gguf/ollama: the layers' weight type (default q8_0, which keeps the fine-tune).")
def export_cmd(run, fmt, out, force, max_lora_rank, gguf_type):
    """Export RUN (id, path, 'default', or an adapter directory) in a format another engine loads."""
    from trainer.export import export

    from medchat.app import environment

    result = export(run, fmt, out, force=force, max_lora_rank=int(max_lora_rank),
                    gguf_type=gguf_type or environment.current().gguf_type)
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
    click.echo(f"{result.path}: {', '.join(result.files)}", err=True)
    if result.command:
        click.echo(result.command)


@main.command("sweep")
@config_options(grid=True)
@runs_dir_option
@click.option("--name", "sweep_name", default=None, help="Sweep id (default: sweep-<timestamp>).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@click.option("--dry-run", is_flag=True, help="Print the grid and exit.")
@click.pass_context
def sweep_cmd(ctx, sweep_name, quiet, dry_run, **params):
    """Train every combination of comma-separated values as separate recorded runs.

    \b
    Example: medchat-train sweep --preset cpu-smollm2 --data d.jsonl --limit 200 --learning-rate 1e-4,2e-4 --epochs 1,2
    """
    from datetime import datetime

    from rich.console import Console

    from trainer.config import coerce
    from trainer.train import train

    grid = {}
    for key in GRID_FIELDS:
        raw = params.get(key)
        if raw is None:
            continue
        values = [v.strip() for v in str(raw).split(",") if v.strip()]
        grid[key] = [coerce(key, v, f"option --{key.replace('_', '-')}") for v in values]
    if not grid:
        raise click.UsageError("give at least one grid option with comma-separated values, e.g. "
                               "--learning-rate 1e-4,2e-4 --epochs 1,2")
    base_cfg = _load(ctx, params, skip=GRID_FIELDS)
    sweep_id = sweep_name or f"sweep-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    combos = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
    cfgs = [base_cfg.replace(**combo) for combo in combos]
    console = Console(stderr=True)
    console.print(f"sweep {sweep_id}: {len(combos)} runs over " + ", ".join(f"{k}={v}" for k, v in grid.items()))
    if dry_run:
        for combo in combos:
            click.echo(json.dumps(combo))
        return
    results = []
    for i, (combo, cfg) in enumerate(zip(combos, cfgs), start=1):
        label = "-".join(f"{_abbrev(k)}{v}" for k, v in combo.items() if len(grid[k]) > 1) or "run"
        console.print(f"[bold]({i}/{len(combos)})[/] {label}")
        try:
            result = train(cfg, name=f"{sweep_id}-{label}", progress=not quiet,
                           extra_run_fields={"sweep": {"id": sweep_id, "params": combo}})
        except KeyboardInterrupt:
            console.print("sweep aborted")
            sys.exit(130)
        results.append((label, result))
        if result.status == "interrupted":
            console.print("sweep stopped (Ctrl-C); finished runs are recorded.")
            sys.exit(130)
    for label, result in results:
        click.echo(f"{result.run.path}\t{result.final.get('eval_loss')}")


def _abbrev(key: str) -> str:
    return {"learning_rate": "lr", "epochs": "ep", "lora_r": "r", "batch_size": "bs", "lora_alpha": "alpha",
            "max_length": "len"}.get(key, key)


@main.command("presets")
def presets_cmd():
    """List the shipped presets with their descriptions."""
    for name in list_presets():
        cfg = load_config(name)
        click.echo(f"{name}: {cfg.description}")


if __name__ == "__main__":  # pragma: no cover
    main()
