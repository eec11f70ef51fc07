"""medchat-metrics: evaluate base vs fine-tuned, report over every run, browse it in a terminal view."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from medchat.app.cli_options import MedchatGroup, hardware_options, model_flag, runs_dir_option
from medchat.core.quiet import quiet_known_warnings

# Libraries' own variables, set before transformers / huggingface_hub are first imported (they read them then).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

FORMATS = ("rich", "markdown", "json")


def _wide_option(func):
    return click.option("--wide", is_flag=True,
                        help="Every column, however wide the terminal (default: the columns that fit).")(func)


@click.group(cls=MedchatGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="medchat", prog_name="medchat-metrics")
def main() -> None:
    """Measure base vs fine-tuned models (ROUGE-1/2/L, BLEU, token F1, perplexity), compare runs, show the report.

    \b
    medchat-metrics evaluate RUN          score a run's held-out split (base and fine-tuned)
    medchat-metrics mcq RUN --task T      multiple-choice accuracy (MedQA, MedMCQA, PubMedQA, MMLU medical)
    medchat-metrics report [RUNS...]      tables: base vs fine-tuned, every experiment, probes
    medchat-metrics compare RUN RUN...    the runs' scores side by side
    medchat-metrics show [RUNS...]        the interactive report view
    """
    quiet_known_warnings()


@main.command()
@runs_dir_option
@click.argument("run_or_adapter")
@model_flag("base", default=None, show_default=False, default_note="the run's recorded base")
@click.option("--data", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="JSONL of {question, answer} (default: the run's splits/eval.jsonl; required for a bare adapter).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the first N examples.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True, help="Prompts per generate call.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--repetition-penalty", type=float, default=1.1, show_default=True, help="Same for both models (1.0 = off).")
@click.option("--no-repeat-ngram-size", type=click.IntRange(min=0), default=4, show_default=True,
              help="Same for both models (0 = off).")
@click.option("--probes/--no-probes", default=True, show_default=True, help="Also answer the seed's qualitative probes.")
@click.option("--allow-incomplete", is_flag=True, help="Score a run that did not complete (marked as such).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where results go (default: RUN/eval, or ADAPTER/eval).")
@hardware_options
@click.option("--report-to", default="none", show_default=True, metavar="auto|NAME[,NAME]",
              help="Also log the scores to the run's own tracker runs (tensorboard, wandb, mlflow; auto = every "
                   "tracker the run was trained with), at its last training step.")
def evaluate(run_or_adapter, base, data, limit, batch_size, max_new_tokens, repetition_penalty, no_repeat_ngram_size,
             probes, allow_incomplete, out, device, dtype, quantization, report_to) -> None:
    """Generate answers with the base and the fine-tuned model on held-out questions and score them.

    RUN_OR_ADAPTER is a run directory (or run id) made by medchat-train, or a bare LoRA adapter directory
    (then --data is required). Decoding is greedy with the same repetition guards for both models; the
    settings are recorded with the results. Predictions are cached: a rerun costs nothing, and an
    interrupted evaluation resumes where it stopped.
    """
    from rich.console import Console

    from medchat.core import tracking
    from metrics.evaluate import default_settings, resolve_target
    from metrics.evaluate import evaluate as run_evaluation
    from metrics.report import build_report, render_rich

    _quiet_libraries()
    err = Console(stderr=True)
    target = resolve_target(run_or_adapter, base=base, data=data, out=out, allow_incomplete=allow_incomplete)
    trackers = tracking.run_trackers(target.run_dir, report_to)  # checked before the models load
    for note in target.notes:
        err.print(f"[yellow]note:[/] {note}", markup=True, highlight=False)
    if target.run_status not in (None, "complete"):
        err.print(f"[yellow]warning:[/] run is {target.run_status}; results are marked as incomplete.", highlight=False)
    settings = default_settings(max_new_tokens, repetition_penalty, no_repeat_ngram_size)
    err.print(f"evaluating {target.adapter} against base {target.base!r} on {target.data_path}", highlight=False)

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    tasks: dict[tuple[str, str], int] = {}
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err, transient=True) as bar:

        def progress(which: str, phase: str, done: int, total: int) -> None:
            key = (which, phase)
            if key not in tasks:
                label = "fine-tuned" if which == "finetuned" else which
                tasks[key] = bar.add_task(f"{label}: {'answers' if phase == 'generate' else 'perplexity'}", total=total)
            bar.update(tasks[key], completed=done)

        try:
            summary = run_evaluation(target, settings, limit=limit, batch_size=batch_size, probes=probes,
                                     device=device, dtype=dtype, quantization=quantization, progress=progress)
        except KeyboardInterrupt:
            err.print("Interrupted. Finished batches are cached: run the same command again to resume.")
            sys.exit(130)

    gen = summary.generated
    cached = "all cached, nothing generated" if not summary.loaded else (
        f"generated {gen['base']} base and {gen['finetuned']} fine-tuned answers")
    err.print(f"{cached}; results in {summary.results_path}", highlight=False)
    for line in tracking.log_evaluation(target.run_dir, trackers, summary.results):
        err.print(f"logged to {line}", highlight=False, markup=False)
    # Print what was just measured (summary.results), never what the run directory held before: with --out or
    # --data the run's own eval/results.json is another evaluation.
    report = build_report([], [_just_measured(target, summary.results, summary.results_path.parent)])
    render_rich(report, Console(), experiments=False)


def _just_measured(target, results: dict, eval_dir: Path):
    """A RunDir whose results are the ones just written (its eval_dir is where they went)."""
    from medchat.core.runs import RunDir, load_run

    if target.run_dir is not None:
        run = load_run(target.run_dir)
    else:
        run = RunDir(Path(target.adapter), record={"id": Path(target.adapter).name, "status": "complete",
                                                   "base": target.base})
    run.results, run.results_problem, run.eval_path = results, None, Path(eval_dir)
    return run


def _quiet_libraries() -> None:
    """Library chatter (deprecation notices, optional-kernel probes) is noise in an evaluation's output."""
    import logging
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    for name in ("bitsandbytes", "kernels", "transformers", "peft"):
        logging.getLogger(name).setLevel(logging.ERROR)


@main.command()
@runs_dir_option
@click.argument("run_or_adapter")
@click.option("--task", "task_name", required=True,
              help="medqa, medmcqa, pubmedqa, mmlu-medical, or a YAML task file.")
@click.option("--data", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="JSONL of questions (question, options, answer letter; PubMedQA: question, context, yes/no/maybe).")
@click.option("--fewshot-data", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="JSONL the k shots are drawn from (a separate file, same shape).")
@click.option("--num-fewshot", "-k", type=click.IntRange(min=0), default=None,
              help="Shots per question (default 0; 5 with --fewshot-data).")
@click.option("--fewshot-seed", type=int, default=1234, show_default=True, help="Seed of the shot sampler (lm-eval's).")
@click.option("--fewshot-sampler", type=click.Choice(["random", "first_n"]), default=None,
              help="Default: first_n for mmlu-medical (lm-eval's MMLU), random otherwise.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the first N questions.")
@model_flag("base", default=None, show_default=False, default_note="the run's recorded base")
@click.option("--max-batch-tokens", type=click.IntRange(min=64), default=4096, show_default=True,
              help="Prompt tokens per forward pass.")
@click.option("--bootstrap-resamples", type=click.IntRange(min=100), default=1000, show_default=True)
@click.option("--bootstrap-seed", type=int, default=12345, show_default=True)
@click.option("--allow-incomplete", is_flag=True, help="Score a run that did not complete (marked as such).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where mcq_<task>.json goes (default: RUN/eval, or ADAPTER/eval).")
@hardware_options
def mcq(run_or_adapter, task_name, data, fewshot_data, num_fewshot, fewshot_seed, fewshot_sampler, limit, base,
        max_batch_tokens, bootstrap_resamples, bootstrap_seed, allow_incomplete, out, device, dtype, quantization) -> None:
    """Multiple-choice accuracy of the base and the fine-tuned model, scored as lm-evaluation-harness does.

    Each option's log-likelihood after the prompt (lm-eval's task templates, no chat template); acc and
    acc_norm with standard errors, chance and majority-class baselines, and a paired bootstrap interval on
    the fine-tuned minus base difference. Results go to RUN/eval/mcq_<task>.json, where `report` and
    `show` find them.
    """
    from rich.console import Console

    from metrics.bootstrap import BootstrapConfig
    from metrics.evaluate import resolve_target
    from metrics.mcq import TaskError, run_mcq
    from metrics.mcq_tasks import resolve_task
    from metrics.report import render_mcq_rich

    _quiet_libraries()
    err = Console(stderr=True)
    spec = resolve_task(task_name)
    data = data or spec.defaults.get("data")
    if data is None:
        raise TaskError(f"--data FILE.jsonl is required for task {spec.name}.")
    target = resolve_target(run_or_adapter, base=base, data=data, out=out, allow_incomplete=allow_incomplete)
    for note in target.notes:
        err.print(f"[yellow]note:[/] {note}", markup=True, highlight=False)

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bars: dict[str, int] = {}
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err, transient=True) as bar:

        def progress(which: str, done: int, total: int) -> None:
            if which not in bars:
                bars[which] = bar.add_task(f"{'fine-tuned' if which == 'finetuned' else which}: {spec.name}", total=total)
            bar.update(bars[which], completed=done)

        try:
            summary = run_mcq(target, spec, data, fewshot_data=fewshot_data, num_fewshot=num_fewshot,
                              fewshot_seed=fewshot_seed, fewshot_sampler=fewshot_sampler, limit=limit,
                              max_batch_tokens=max_batch_tokens,
                              bootstrap=BootstrapConfig(resamples=bootstrap_resamples, seed=bootstrap_seed),
                              device=device, dtype=dtype, quantization=quantization, progress=progress)
        except KeyboardInterrupt:
            err.print("Interrupted; nothing was written.")
            sys.exit(130)
    err.print(f"results in {summary.results_path}", highlight=False)
    render_mcq_rich([summary.results], Console(), title=f"Multiple choice: {target.run_id or target.adapter.name}")


@main.command()
@runs_dir_option
@click.argument("runs", nargs=-1)
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="rich", show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write to this file; with markdown, PNG charts are written next to it.")
@click.option("--charts/--no-charts", default=True, show_default=True, help="PNG charts next to a markdown --output.")
@click.option("--all-runs/--only-given", default=True, show_default=True,
              help="Experiment table over every recorded run, or only the RUNS given.")
@_wide_option
def report(runs, fmt, output, charts, all_runs, wide) -> None:
    """The base-vs-fine-tuned table, the experiment table over every run, and the qualitative probes.

    RUNS are run directories or run ids (default: every run; details for the newest evaluated one).
    """
    from metrics.report import build_report, render_json, render_markdown, render_rich, write_charts
    from medchat.core.runs import discover_runs, load_run, load_runs

    selected = load_runs(list(runs)) if runs else None
    if all_runs or not runs:
        every = [load_run(p) for p in discover_runs()]
        known = {r.path.resolve() for r in every}
        every += [r for r in (selected or []) if r.path.resolve() not in known]
    else:
        every = list(selected or [])
    rep = build_report(every, selected)
    if fmt == "rich" and output is None:
        from rich.console import Console

        render_rich(rep, Console(), wide=wide)
        return
    if fmt == "json":
        text = render_json(rep)
    elif fmt == "markdown":
        chart_names: dict[str, str] = {}
        if output is not None and charts:
            chart_names = write_charts(every, rep.selected, output.parent, stem=output.stem)
            rep.charts = [str(output.parent / n) for n in chart_names.values()]
        text = render_markdown(rep, chart_names)
    else:  # rich to a file: plain text
        from rich.console import Console

        with open(output, "w", encoding="utf-8") as handle:
            render_rich(rep, Console(file=handle, width=160, no_color=True))
        click.echo(f"wrote {output}", err=True)
        return
    if output is None:
        click.echo(text, nl=False)
    else:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text, encoding="utf-8")
        click.echo(f"wrote {output}" + (f" and {len(rep.charts)} chart(s)" if rep.charts else ""), err=True)


@main.command()
@runs_dir_option
@click.argument("runs", nargs=-1, required=True)
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="rich", show_default=True)
@_wide_option
def compare(runs, fmt, wide) -> None:
    """Evaluated runs side by side: every metric, base and each run's fine-tuned model."""
    from metrics.report import compare_table, render_compare
    from medchat.core.runs import load_runs

    loaded = load_runs(list(runs))
    table = compare_table(loaded)
    if fmt == "json":
        import json

        click.echo(json.dumps(table, indent=2))
        return
    if fmt == "markdown":
        click.echo(render_compare(table, markdown=True), nl=False)
        return
    from rich.console import Console

    render_compare(table, console=Console(), wide=wide)


@main.command()
@runs_dir_option
@click.argument("runs", nargs=-1)
def show(runs) -> None:
    """Open the report view (runs, metrics tables, loss chart, per-example browser)."""
    from medchat.core.runs import resolve_run

    paths = [resolve_run(r) for r in runs] if runs else None
    from medchat.app.report import ReportApp

    ReportApp(runs=paths).run()


if __name__ == "__main__":  # pragma: no cover
    main()
