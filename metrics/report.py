"""The report: base vs fine-tuned, the experiment table over every run, the probes; rich, markdown, JSON, PNG.

Everything here is built from the files in the run directories (run.json, loss_log.jsonl, eval/results.json,
eval/examples.jsonl), never from typed-in numbers.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medchat.core.fileio import json_finite
from medchat.core.runs import RunDir, evaluate_command
from metrics.scores import ALL_METRICS, LOWER_IS_BETTER, METRIC_LABELS, is_improvement, relative_change

EXPERIMENT_COLUMNS = [
    ("run", "run"),
    ("status", "status"),
    ("learning_rate", "lr"),
    ("epochs", "epochs"),
    ("effective_batch", "eff. batch"),
    ("rougeL", "ROUGE-L"),
    ("bleu", "BLEU"),
    ("token_f1", "token F1"),
    ("perplexity", "perplexity"),
    ("mcq", "MCQ acc"),
    ("elapsed_s", "time"),
    ("notes", "notes"),
]


# --------------------------------------------------------------------------- formatting


def fmt_metric(name: str, value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if name == "bleu":
        return f"{value:.2f}"
    if name == "perplexity":
        return f"{value:.2f}" if value < 1e6 else f"{value:.3g}"
    return f"{value:.4f}"


def fmt_change(change: float | None) -> str:
    return "—" if change is None else f"{change * 100:+.1f}%"


def fmt_interval(metric: str, interval: dict[str, Any] | None) -> str:
    """The 95% interval of fine-tuned minus base, in the metric's own units ("no interval" without per-example data)."""
    if not interval or interval.get("low") is None or interval.get("high") is None:
        return "no interval"
    low, high = interval["low"], interval["high"]
    if any(isinstance(v, float) and math.isnan(v) for v in (low, high)):
        return "no interval"
    if metric in ("bleu", "perplexity"):
        return f"[{low:+.2f}, {high:+.2f}]"
    if metric in ("acc", "acc_norm"):
        return f"[{low * 100:+.1f}, {high * 100:+.1f}] pt"
    return f"[{low:+.4f}, {high:+.4f}]"


def fmt_delta(metric: str, interval: dict[str, Any] | None) -> str:
    if not interval or interval.get("delta") is None:
        return "—"
    d = interval["delta"]
    if metric in ("acc", "acc_norm"):
        return f"{d * 100:+.1f} pt"
    return f"{d:+.2f}" if metric in ("bleu", "perplexity") else f"{d:+.4f}"


def fmt_acc(agg: dict[str, Any] | None, metric: str = "acc") -> str:
    if not agg or agg.get(metric) is None:
        return "—"
    se = agg.get(f"{metric}_stderr")
    text = f"{agg[metric] * 100:.1f}"
    return text + (f" ± {se * 100:.1f}" if isinstance(se, (int, float)) else "")


def fmt_duration(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)):
        return "—"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def fmt_value(value: Any) -> str:
    if value is None or value == "":
        return "—"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def describe_settings(results: dict[str, Any]) -> str:
    s = results.get("settings") or {}
    decoding = "greedy" if not s.get("temperature") else f"temperature {s.get('temperature')}, top_p {s.get('top_p')}"
    parts = [
        decoding,
        f"max_new_tokens {s.get('max_new_tokens', '?')}",
        f"repetition_penalty {s.get('repetition_penalty', '?')}",
        f"no_repeat_ngram_size {s.get('no_repeat_ngram_size', '?')}",
    ]
    return ", ".join(parts) + " (same for base and fine-tuned)"


def describe_data(results: dict[str, Any]) -> str:
    data = results.get("data") or {}
    n = results.get("n_examples", "?")
    where = data.get("path") or "?"
    run_dir = results.get("run_dir")
    if run_dir and where.startswith(str(run_dir).rstrip("/") + "/"):
        where = where[len(str(run_dir).rstrip("/")) + 1:]
    sha = (data.get("sha256") or "")[:12]
    limit = f", first {data['limit']}" if data.get("limit") else ""
    return f"{n} held-out examples from {where}{limit}" + (f" (sha256 {sha}…)" if sha else "")


# --------------------------------------------------------------------------- the report's data


@dataclass
class Report:
    experiments: list[dict[str, Any]]
    details: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)
    charts: list[str] = field(default_factory=list)
    selected: list[RunDir] = field(default_factory=list, repr=False)  # the runs behind `details` (not serialised)

    def as_dict(self) -> dict[str, Any]:
        return {"experiments": self.experiments, "details": self.details, "notes": self.notes, "charts": self.charts}


def run_intervals(run: RunDir) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(intervals by metric, bootstrap settings): stored by `evaluate`, else recomputed from examples.jsonl (seeded,
    so the same every time); ({}, None) when neither exists (results.json files from before intervals)."""
    if not run.results:
        return {}, None
    stored = run.results.get("intervals")
    if isinstance(stored, dict) and stored:
        return stored, run.results.get("bootstrap")
    try:
        rows = run.examples()
    except Exception:  # an unreadable examples file: the examples view names it
        rows = []
    if not rows or any(not isinstance(r.get("base"), dict) or "prediction" not in r["base"] for r in rows):
        return {}, None
    from metrics.bootstrap import BootstrapConfig, text_metric_intervals

    config = BootstrapConfig()
    try:
        return text_metric_intervals(rows, config), {**config.as_dict(), "computed_by": "report, from examples.jsonl"}
    except (KeyError, TypeError, ValueError):
        return {}, None


def mcq_rows(results_list: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per multiple-choice result: accuracies with standard errors, baselines, interval and verdict."""
    rows = []
    for r in results_list:
        few = r.get("fewshot") or {}
        lines = r.get("baselines") or {}
        interval = (r.get("intervals") or {}).get("acc")
        rows.append({
            "task": r.get("task"), "n": r.get("n_examples"), "shots": few.get("k", 0),
            "base": r.get("base") or {}, "finetuned": r.get("finetuned") or {},
            "interval": interval, "interval_norm": (r.get("intervals") or {}).get("acc_norm"),
            "verdict": (interval or {}).get("verdict") or "no interval",
            "chance": lines.get("chance"), "majority": lines.get("majority"), "majority_label": lines.get("majority_label"),
            "bootstrap": r.get("bootstrap"), "path": r.get("_path"),
        })
    return rows


def fmt_mcq_model(agg: dict[str, Any]) -> str:
    text = fmt_acc(agg)
    return text + (" ≈ chance" if agg.get("near_chance") else "")


def fmt_pct(value: Any) -> str:
    return f"{value * 100:.1f}" if isinstance(value, (int, float)) else "—"


def mcq_cell(run: RunDir) -> str:
    """The experiment table's MCQ column: each task's fine-tuned accuracy and its change against the base."""
    parts = []
    for row in mcq_rows(run.mcq()):
        d = (row["interval"] or {}).get("delta")
        change = f" ({d * 100:+.1f} pt {fmt_interval('acc', row['interval'])})" if d is not None else ""
        parts.append(f"{row['task']} {fmt_pct(row['finetuned'].get('acc'))}{change}")
    return "; ".join(parts)


def experiment_row(run: RunDir) -> dict[str, Any]:
    h = run.hyper
    eff = h.get("effective_batch")
    if eff is None and isinstance(h.get("batch_size"), int) and isinstance(h.get("grad_accum"), int):
        eff = h["batch_size"] * h["grad_accum"]
    row: dict[str, Any] = {
        "run": run.id,
        "path": str(run.path),
        "status": run.status,
        "preset": run.meta.get("preset"),
        "learning_rate": h.get("learning_rate"),
        "epochs": h.get("epochs"),
        "effective_batch": eff,
        "elapsed_s": run.meta.get("elapsed_s"),
        "notes": run.meta.get("notes") or "",
        "evaluated": run.evaluated,
    }
    intervals, _ = run_intervals(run)
    for name in ("rougeL", "bleu", "token_f1", "perplexity"):
        row[name] = run.metric("finetuned", name)
        row[f"{name}_base"] = run.metric("base", name)
        row[f"{name}_change"] = relative_change(row[f"{name}_base"], row[name])
        row[f"{name}_interval"] = intervals.get(name)
    row["mcq"] = [{"task": m["task"], "n": m["n"], "shots": m["shots"], "acc": m["finetuned"].get("acc"),
                   "acc_base": m["base"].get("acc"), "interval": m["interval"], "verdict": m["verdict"]}
                  for m in mcq_rows(run.mcq())]
    row["mcq_text"] = mcq_cell(run)
    return row


def comparison_rows(run: RunDir) -> list[dict[str, Any]]:
    rows = []
    intervals, _ = run_intervals(run)
    for name in ALL_METRICS:
        base, tuned = run.metric("base", name), run.metric("finetuned", name)
        interval = intervals.get(name)
        rows.append(
            {
                "metric": name,
                "label": METRIC_LABELS[name],
                "base": base,
                "finetuned": tuned,
                "change": relative_change(base, tuned),
                "better": is_improvement(name, base, tuned),
                "lower_is_better": name in LOWER_IS_BETTER,
                "interval": interval,
                # better / worse only when the 95% interval excludes zero
                "verdict": interval["verdict"] if interval else "no interval",
            }
        )
    return rows


def detail(run: RunDir) -> dict[str, Any]:
    out: dict[str, Any] = {
        "run": run.id,
        "path": str(run.path),
        "status": run.status,
        "notice": run.notice(),
        "evaluated": run.evaluated,
        "mcq": mcq_rows(run.mcq()),
    }
    if run.results:
        r = run.results
        out.update(
            {
                "base_model": r.get("base_model_name"),
                "adapter": r.get("adapter"),
                "prompt_style": r.get("prompt_style"),
                "n_examples": r.get("n_examples"),
                "settings": r.get("settings"),
                "settings_text": describe_settings(r),
                "data_text": describe_data(r),
                "comparison": comparison_rows(run),
                "bootstrap": run_intervals(run)[1],
                "probes": list(r.get("probes") or []),
                "perplexity_note": "perplexity of the reference answers (answer tokens only, training mask)",
            }
        )
    return out


def build_report(all_runs: list[RunDir], selected: list[RunDir] | None = None) -> Report:
    """Experiment table over `all_runs`; detail sections for `selected` (default: newest evaluated run)."""
    notes: list[str] = []
    if selected is None:
        evaluated = [r for r in all_runs if r.evaluated]
        selected = evaluated[-1:] if evaluated else []
        others = len(evaluated) - len(selected)
        if others > 0:
            notes.append(f"{others} more evaluated run(s): medchat-metrics report RUN shows their details.")
    if not all_runs:
        from medchat.core import paths

        notes.append(f"No runs found under {paths.runs_root()}. Train one with: medchat-train run")
    elif not any(r.evaluated for r in all_runs):
        complete = [r for r in all_runs if r.complete]
        if complete:
            notes.append(f"No run has been evaluated yet. Make an evaluation with: {evaluate_command(complete[-1].path)}")
        else:
            notes.append("No run has been evaluated yet, and none has completed: finish one with "
                         "medchat-train train --resume RUN, then medchat-metrics evaluate RUN.")
    return Report(experiments=[experiment_row(r) for r in all_runs], details=[detail(r) for r in selected], notes=notes,
                  selected=list(selected))


# --------------------------------------------------------------------------- fitting a table to the terminal


@dataclass
class Column:
    header: str
    options: dict[str, Any] = field(default_factory=dict)  # rich add_column keywords (justify, min_width, no_wrap)


def fitted_table(console, columns: list[Column], rows: list[list[Any]], priority: list[int], *, wide: bool = False,
                 row_styles: list[str] | None = None, **table_options):
    """A rich Table with the columns that fit the console, taken in `priority` order and shown in their own order;
    returns (table, headers left out). Fitting means the table's minimum width (every column at its narrowest
    without breaking a word, a no_wrap column whole) is within the console width; the room left is then shared
    out (_share_width), so cells wrap at spaces and no header is squeezed into "stat us" or "ROU…". `wide` keeps
    every column."""
    from rich.table import Table

    def build(keep: list[int]):
        table = Table(**table_options)
        for i in keep:
            table.add_column(columns[i].header, **columns[i].options)
        for n, row in enumerate(rows):
            table.add_row(*[row[i] for i in keep], style=(row_styles or [""] * len(rows))[n])
        return table

    chosen: list[int] = list(range(len(columns))) if wide else []
    if not wide:
        for i in priority:
            trial = sorted(chosen + [i])
            table = build(trial)
            if not chosen or sum(low for low, _ in _column_ranges(console, table)) + table._extra_width <= console.width:
                chosen = trial
    table = build(chosen)
    if not wide:
        _share_width(console, table)
    return table, [columns[i].header for i in range(len(columns)) if i not in chosen]


def _share_width(console, table) -> None:
    """Fix each column's width: its minimum plus a share of the room left, in proportion to how much wider it would
    like to be. Rich's own squeeze narrows the widest columns first, below their minimum, and then truncates
    ("mmlu-medic…"); this never goes under a minimum."""
    ranges = _column_ranges(console, table)
    room = console.width - table._extra_width - sum(low for low, _ in ranges)
    want = sum(high - low for low, high in ranges)
    if room < 0 or want <= room:
        return
    for index, (column, (low, high)) in enumerate(zip(table.columns, ranges)):
        column.width = low + (high - low) * room // want - table._get_padding_width(index)


def _column_ranges(console, table) -> list[tuple[int, int]]:
    """(narrowest, widest) of each column with its padding, by rich's own measurement (Table._measure_column); a
    no_wrap column is as wide as its widest cell."""
    unbounded = console.options.update_width(10_000)  # rich clamps a measurement to the width it is given
    ranges = [table._measure_column(console, unbounded, column) for column in table.columns]
    return [(r.maximum if c.no_wrap else r.minimum, r.maximum) for c, r in zip(table.columns, ranges)]


def print_fitted(console, table, hidden: list[str], wide: bool) -> None:
    """The table (at its natural width with --wide, wider than the terminal if need be) and what it left out."""
    from rich.measure import Measurement
    from rich.text import Text

    if wide:
        natural = Measurement.get(console, console.options.update_width(10_000), table).maximum
        width, console.width = console.width, max(console.width, natural)  # print(width=) cannot exceed it
        try:
            console.print(table)
        finally:
            console.width = width
    else:
        console.print(table)
    if hidden:
        console.print(Text(f"Not shown at {console.width} columns: {', '.join(hidden)} (--wide shows every column, "
                           "--format json everything).", style="dim"))


# --------------------------------------------------------------------------- JSON


def render_json(report: Report) -> str:
    return json.dumps(json_finite(report.as_dict()), indent=2, ensure_ascii=False)


# --------------------------------------------------------------------------- markdown


def _md_cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _md_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return lines


def verdict(row: dict[str, Any]) -> str:
    """From the interval only: a change whose 95% interval includes zero is no clear change."""
    return row.get("verdict") or "no interval"


VERDICT_STYLE = {"better": "green", "worse": "red"}


def describe_bootstrap(boot: dict[str, Any] | None) -> str:
    if not boot:
        return "no per-example data stored with these results, so no intervals (re-run evaluate to get them)"
    how = f"; {boot['computed_by']}" if boot.get("computed_by") else ""
    return (f"95% paired bootstrap interval of fine-tuned minus base ({boot.get('resamples')} resamples over "
            f"examples, seed {boot.get('seed')}{how}); better / worse only when it excludes zero")


def fmt_lr(value: Any) -> str:
    return f"{value:.0e}" if isinstance(value, float) and 0 < value < 0.01 else fmt_value(value)


def experiment_cells(row: dict[str, Any], changes: bool = True) -> list[str]:
    cells = []
    for key, _ in EXPERIMENT_COLUMNS:
        if key in ("rougeL", "bleu", "token_f1", "perplexity"):
            text = fmt_metric(key, row[key])
            interval = row.get(f"{key}_interval")
            if changes and row[key] is not None and row.get(f"{key}_change") is not None:
                ci = f", Δ {fmt_interval(key, interval)}" if interval else ""
                text += f" ({fmt_change(row[f'{key}_change'])}{ci})"
            elif interval and interval.get("verdict") in VERDICT_STYLE:
                text += " ▲" if interval["verdict"] == "better" else " ▼"
            cells.append(text)
        elif key == "mcq":
            cells.append(row.get("mcq_text") or "—")
        elif key == "elapsed_s":
            cells.append(fmt_duration(row[key]))
        elif key == "status":
            cells.append(row[key] + ("" if row["evaluated"] else ", not evaluated"))
        elif key == "learning_rate":
            cells.append(fmt_lr(row[key]))
        else:
            cells.append(fmt_value(row[key]))
    return cells


MCQ_HEADERS = ["task", "n", "shots", "base acc", "fine-tuned acc", "Δ", "95% CI of Δ", "verdict", "base acc_norm",
               "fine-tuned acc_norm", "chance", "majority"]


def mcq_cells(m: dict[str, Any]) -> list[str]:
    return [str(m["task"]), fmt_value(m["n"]), fmt_value(m["shots"]), fmt_mcq_model(m["base"]),
            fmt_mcq_model(m["finetuned"]), fmt_delta("acc", m["interval"]), fmt_interval("acc", m["interval"]),
            m["verdict"], fmt_acc(m["base"], "acc_norm"), fmt_acc(m["finetuned"], "acc_norm"), fmt_pct(m["chance"]),
            fmt_pct(m["majority"]) + (f" ({m['majority_label']})" if m.get("majority_label") else "")]


MCQ_NOTE = ("Accuracy in % ± standard error; log-likelihood of each option after lm-eval's prompt (no chat template); "
            "acc_norm divides by the option's length in characters. ≈ chance: within two standard errors of chance. "
            "Majority: always answering this data's most frequent answer.")


def mcq_note(rows: list[dict[str, Any]]) -> str:
    """What the multiple-choice numbers mean, with the bootstrap settings the intervals were made with."""
    boot = next((m["bootstrap"] for m in rows if m.get("bootstrap")), None)
    return MCQ_NOTE + " " + describe_bootstrap(boot).capitalize() + "."


def mcq_markdown(rows: list[dict[str, Any]]) -> list[str]:
    out = ["### Multiple choice", ""]
    out += _md_table(MCQ_HEADERS, [mcq_cells(m) for m in rows]) + [""]
    return out + [mcq_note(rows), ""]


def render_mcq_rich(results_list: list[dict[str, Any]], console, title: str = "Multiple choice", wide: bool = False) -> None:
    _render_mcq_rows(mcq_rows(results_list), console, title, wide)


# the MCQ table's columns, most wanted first: accuracy, its change and verdict, then the baselines
MCQ_PRIORITY = [0, 3, 4, 5, 7, 6, 10, 11, 1, 2, 8, 9]
MCQ_MIN_WIDTH = {"base acc": 10, "fine-tuned acc": 10, "95% CI of Δ": 12, "verdict": 8, "base acc_norm": 10,
                 "fine-tuned acc_norm": 10}


def _render_mcq_rows(rows: list[dict[str, Any]], console, title: str, wide: bool = False) -> None:
    from rich.text import Text

    if not rows:
        return
    columns = [Column(h, {"justify": "left" if i == 0 else "right", "min_width": MCQ_MIN_WIDTH.get(h)})
               for i, h in enumerate(MCQ_HEADERS)]
    body = []
    for m in rows:
        cells: list[Any] = mcq_cells(m)
        cells[7] = Text(cells[7], style=VERDICT_STYLE.get(m["verdict"], ""))
        body.append(cells)
    table, hidden = fitted_table(console, columns, body, MCQ_PRIORITY, wide=wide, title=title,
                                 caption=mcq_note(rows))
    print_fitted(console, table, hidden, wide)


def render_markdown(report: Report, charts: dict[str, str] | None = None) -> str:
    charts = charts or {}
    out: list[str] = ["# medchat evaluation report", ""]
    for d in report.details:
        out += [f"## Base vs fine-tuned: {d['run']}", ""]
        if d.get("notice"):
            out += [f"> **{line}**" if i == 0 else f"> {line}" for i, line in enumerate(d["notice"].splitlines())]
            out.append("")
        if d.get("mcq"):
            out += mcq_markdown(d["mcq"])
        if not d["evaluated"]:
            continue
        out += [
            f"- base model: `{d.get('base_model')}`, adapter: `{d.get('adapter')}`, prompt style: {d.get('prompt_style')}",
            f"- data: {d['data_text']}",
            f"- decoding: {d['settings_text']}",
            f"- perplexity: {d['perplexity_note']}; lower is better",
            f"- intervals: {describe_bootstrap(d.get('bootstrap'))}",
            "",
        ]
        rows = [
            [r["label"], fmt_metric(r["metric"], r["base"]), fmt_metric(r["metric"], r["finetuned"]),
             fmt_change(r["change"]), fmt_delta(r["metric"], r["interval"]), fmt_interval(r["metric"], r["interval"]),
             verdict(r)]
            for r in d["comparison"]
        ]
        out += _md_table(["metric", "base", "fine-tuned", "change", "Δ", "95% CI of Δ", "verdict"], rows) + [""]
        if d["run"] in charts:
            out += [f"![metrics: base vs fine-tuned]({charts[d['run']]})", ""]
        if d.get("probes"):
            out += ["### Qualitative probes", ""]
            for p in d["probes"]:
                kind = " (out-of-domain probe)" if p.get("kind") == "out_of_domain" else ""
                out += [f"**{_md_cell(p.get('question'))}**{kind}", ""]
                out += _md_table(["model", "answer"], [["base", p.get("base", "")], ["fine-tuned", p.get("finetuned", "")]])
                out.append("")
    out += ["## Experiments", ""]
    headers = [label for _, label in EXPERIMENT_COLUMNS]
    out += _md_table(headers, [experiment_cells(r) for r in report.experiments]) if report.experiments else ["(no runs)"]
    out += [
        "",
        "ROUGE-L, BLEU, token F1 and perplexity are the fine-tuned model's on the run's held-out split, with the "
        "change against the base model and the 95% paired bootstrap interval of the difference in parentheses; "
        "MCQ acc: fine-tuned accuracy (%) per task, with the change in points against the base and its interval. "
        "Runs that did not complete are marked as such.",
        "",
    ]
    if "loss" in charts:
        out += [f"![loss curves]({charts['loss']})", ""]
    for note in report.notes:
        out += [f"_{note}_", ""]
    return "\n".join(out).rstrip() + "\n"


# --------------------------------------------------------------------------- rich


def render_rich(report: Report, console, experiments: bool = True, wide: bool = False) -> None:
    """Each selected run's tables, then the experiment table; every table fitted to the console (see fitted_table)."""
    from rich.text import Text

    for d in report.details:
        if d.get("notice"):
            console.print(Text(d["notice"], style="bold yellow"))
        if d.get("mcq"):
            _render_mcq_rows(d["mcq"], console, f"Multiple choice: {d['run']}", wide)
        if d["evaluated"]:
            _render_comparison(d, console, wide)
    if experiments:
        _render_experiments(report, console, wide)
    for note in report.notes:
        console.print(Text(note, style="italic"))


def _render_comparison(d: dict[str, Any], console, wide: bool) -> None:
    from rich.table import Table
    from rich.text import Text

    columns = [Column("metric", {"min_width": 10}), Column("base", {"justify": "right"}),
               Column("fine-tuned", {"justify": "right"}), Column("change", {"justify": "right"}),
               Column("95% CI of Δ", {"justify": "right", "min_width": 9}), Column("verdict", {"min_width": 8})]
    rows = [[r["label"] + (" (lower is better)" if r["lower_is_better"] else ""), fmt_metric(r["metric"], r["base"]),
             fmt_metric(r["metric"], r["finetuned"]), fmt_change(r["change"]), fmt_interval(r["metric"], r["interval"]),
             Text(r["verdict"], style=VERDICT_STYLE.get(r["verdict"], ""))] for r in d["comparison"]]
    table, hidden = fitted_table(console, columns, rows, [0, 1, 2, 4, 5, 3], wide=wide,
                                 title=f"Base vs fine-tuned: {d['run']}",
                                 caption=f"{d['data_text']}\n{d['settings_text']}\n{describe_bootstrap(d.get('bootstrap'))}")
    print_fitted(console, table, hidden, wide)
    if d.get("probes"):
        probes = Table(title="Qualitative probes", show_lines=True)
        probes.add_column("question", ratio=1)
        probes.add_column("base", ratio=2)
        probes.add_column("fine-tuned", ratio=2)
        for p in d["probes"]:
            q = p.get("question", "") + (" (out of domain)" if p.get("kind") == "out_of_domain" else "")
            probes.add_row(q, p.get("base", ""), p.get("finetuned", ""))
        console.print(probes)


# the experiment table's columns, most wanted first: which run, its state, its scores, then its settings
EXPERIMENT_PRIORITY = ["run", "status", "rougeL", "mcq", "perplexity", "token_f1", "bleu", "learning_rate", "epochs",
                       "effective_batch", "elapsed_s", "notes"]
WRAPPING = {"mcq": 16, "notes": 8}  # free text wraps (at least this wide); ids and numbers never break


def _render_experiments(report: Report, console, wide: bool) -> None:
    from rich import box

    keys = [key for key, _ in EXPERIMENT_COLUMNS]
    columns = [Column(label, {"min_width": WRAPPING[key]} if key in WRAPPING else
                      {"no_wrap": True, "justify": "left" if key in ("run", "status") else "right"})
               for key, label in EXPERIMENT_COLUMNS]
    rows, styles = [], []
    for row in report.experiments:
        cells = experiment_cells(row, changes=False)
        cells[1] = row["status"]
        rows.append(cells)
        styles.append("" if row["status"] == "complete" else "yellow")
    table, hidden = fitted_table(console, columns, rows, [keys.index(k) for k in EXPERIMENT_PRIORITY], wide=wide,
                                 row_styles=styles, title="Experiments", box=box.SIMPLE_HEAD, pad_edge=False,
                                 caption="fine-tuned scores on each run's held-out split; — = not evaluated")
    print_fitted(console, table, hidden, wide)


# --------------------------------------------------------------------------- compare


def compare_table(runs: list[RunDir]) -> dict[str, Any]:
    """Runs side by side (fine-tuned scores and change against each run's base), with comparability warnings."""
    rows, warnings = [], []
    for run in runs:
        row: dict[str, Any] = {"run": run.id, "status": run.status, "evaluated": run.evaluated}
        if run.results:
            row["n_examples"] = run.results.get("n_examples")
            row["data_sha256"] = (run.results.get("data") or {}).get("sha256")
            row["settings"] = run.results.get("settings")
        for name in ALL_METRICS:
            row[name] = run.metric("finetuned", name)
            row[f"{name}_base"] = run.metric("base", name)
            row[f"{name}_change"] = relative_change(row[f"{name}_base"], row[name])
        rows.append(row)
        if not run.evaluated:
            warnings.append(f"{run.id}: not evaluated yet ({evaluate_command(run.path)}).")
        elif not run.complete:
            warnings.append(f"{run.id}: the run is {run.status}; its scores are not a complete run's.")
    evaluated = [r for r in rows if r["evaluated"]]
    if len({r.get("data_sha256") for r in evaluated}) > 1:
        warnings.append("The runs were evaluated on different data: compare the changes against each base, "
                        "not the absolute scores.")
    if len({json.dumps(r.get("settings"), sort_keys=True) for r in evaluated}) > 1:
        warnings.append("The runs were evaluated with different decoding settings: the scores are not comparable.")
    return {"metrics": list(ALL_METRICS), "rows": rows, "warnings": warnings}


def render_compare(table: dict[str, Any], console=None, markdown: bool = False, wide: bool = False) -> str:
    headers = ["run", "status", "n"] + [METRIC_LABELS[m] for m in table["metrics"]]

    def cells(row: dict[str, Any]) -> list[str]:
        out = [row["run"], row["status"], fmt_value(row.get("n_examples"))]
        for m in table["metrics"]:
            text = fmt_metric(m, row[m])
            if row[m] is not None and row.get(f"{m}_change") is not None:
                text += f" ({fmt_change(row[f'{m}_change'])})"
            out.append(text)
        return out

    if markdown:
        lines = _md_table(headers, [cells(r) for r in table["rows"]])
        lines += ["", "Fine-tuned scores; in parentheses the change against the same run's base model.", ""]
        lines += [f"_{w}_" for w in table["warnings"]]
        return "\n".join(lines).rstrip() + "\n"
    if console is None:
        return ""
    from rich.text import Text

    columns = [Column(h, {"no_wrap": h in ("run", "status"), "justify": "left" if h in ("run", "status") else "right"})
               for h in headers]
    order = ["run", "status", "rougeL", "token_f1", "perplexity", "bleu", "rouge1", "rouge2", "set_f1", "n"]
    keys = ["run", "status", "n", *table["metrics"]]
    fitted, hidden = fitted_table(console, columns, [cells(r) for r in table["rows"]],
                                  [keys.index(k) for k in order if k in keys], wide=wide,
                                  row_styles=["" if r["status"] == "complete" else "yellow" for r in table["rows"]],
                                  title="Runs compared (fine-tuned, change vs base)")
    print_fitted(console, fitted, hidden, wide)
    for w in table["warnings"]:
        console.print(Text(w, style="yellow"))
    return ""


# --------------------------------------------------------------------------- charts (PNG)


def _safe_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def loss_series(run: RunDir) -> dict[str, tuple[list[float], list[float]]]:
    """{"train": (steps, losses), "eval": (steps, losses)} from loss_log.jsonl."""
    series: dict[str, tuple[list[float], list[float]]] = {"train": ([], []), "eval": ([], [])}
    for i, row in enumerate(run.loss_rows()):
        step = row.get("step", i)
        for kind in ("train", "eval"):
            value = row.get(f"{kind}_loss")
            if isinstance(value, (int, float)) and isinstance(step, (int, float)):
                series[kind][0].append(float(step))
                series[kind][1].append(float(value))
    return series


def write_charts(all_runs: list[RunDir], selected: list[RunDir], out_dir: Path, stem: str = "report") -> dict[str, str]:
    """Loss curves (one panel per run) and a base-vs-fine-tuned bar chart per selected run; names relative to out_dir.
    Its length is matplotlib's: two figures, each a run of plotting calls with nothing to share between them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, str] = {}

    with_loss = [(r, loss_series(r)) for r in all_runs]
    with_loss = [(r, s) for r, s in with_loss if s["train"][0] or s["eval"][0]]
    if with_loss:
        n = len(with_loss)
        cols = min(n, 3)
        rows = math.ceil(n / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.4 * rows), squeeze=False)
        for ax, (run, s) in zip(axes.flat, with_loss):
            if s["train"][0]:
                ax.plot(*s["train"], label="train loss", color="tab:blue")
            if s["eval"][0]:
                ax.plot(*s["eval"], label="eval loss", color="tab:orange", marker="o")
            title = run.id if run.complete else f"{run.id} ({run.status})"
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("step")
            ax.set_ylabel("loss")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        for ax in list(axes.flat)[n:]:
            ax.axis("off")
        fig.tight_layout()
        name = f"{stem}-loss.png"
        fig.savefig(out_dir / name, dpi=110)
        plt.close(fig)
        written["loss"] = name

    for run in selected:
        if not run.evaluated:
            continue
        names = ["rouge1", "rouge2", "rougeL", "token_f1", "set_f1", "bleu"]
        # BLEU is 0-100; show it on the same 0-1 axis
        scale = {"bleu": 0.01}
        base = [(run.metric("base", m) or 0.0) * scale.get(m, 1.0) for m in names]
        tuned = [(run.metric("finetuned", m) or 0.0) * scale.get(m, 1.0) for m in names]
        fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.6), gridspec_kw={"width_ratios": [4, 1]})
        x = range(len(names))
        ax.bar([i - 0.2 for i in x], base, width=0.4, label="base", color="tab:gray")
        ax.bar([i + 0.2 for i in x], tuned, width=0.4, label="fine-tuned", color="tab:green")
        ax.set_xticks(list(x), [METRIC_LABELS[m] + (" /100" if m == "bleu" else "") for m in names], fontsize=8)
        ax.set_ylabel("score (higher is better)")
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        ppl = [run.metric("base", "perplexity") or 0.0, run.metric("finetuned", "perplexity") or 0.0]
        ax2.bar(["base", "fine-tuned"], ppl, color=["tab:gray", "tab:green"])
        ax2.set_title("answer perplexity\n(lower is better)", fontsize=9)
        fig.suptitle(f"{run.id}: base vs fine-tuned", fontsize=10)
        fig.tight_layout()
        name = f"{stem}-metrics-{_safe_name(run.id)}.png"
        fig.savefig(out_dir / name, dpi=110)
        plt.close(fig)
        written[run.id] = name
    return written
