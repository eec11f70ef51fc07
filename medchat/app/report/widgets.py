"""Widgets of the report view: run list, metrics tables, loss chart, example browser, probes.

Model output and file contents are shown as plain `rich.text.Text` (never parsed as markup) after
control characters are stripped.
"""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import DataTable, OptionList, Static
from textual.widgets.option_list import Option
from textual_plotext import PlotextPlot

from medchat.core.textsafe import strip_control
from metrics.report import (
    EXPERIMENT_COLUMNS,
    comparison_rows,
    VERDICT_STYLE,
    describe_bootstrap,
    describe_data,
    describe_settings,
    experiment_cells,
    experiment_row,
    fmt_acc,
    fmt_change,
    fmt_delta,
    fmt_interval,
    fmt_metric,
    fmt_pct,
    loss_series,
    mcq_note,
    mcq_rows,
    run_intervals,
)
from medchat.core.runs import RunDir, RunError, evaluate_command
from metrics.scores import LOWER_IS_BETTER, METRIC_LABELS

STATUS_MARK = {"complete": "●", "running": "◌", "interrupted": "◐", "failed": "✕", "unknown": "?"}


def safe(text: Any) -> Text:
    return Text(strip_control(str(text if text is not None else "")))


def shorten(text: str, width: int) -> str:
    text = " ".join(strip_control(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


class RunList(OptionList):
    """The runs, newest last, with their status and whether they have been evaluated."""

    DEFAULT_CSS = """
    RunList { width: 32; height: 1fr; border: round $primary 50%; }
    RunList:focus { border: round $primary; }
    """

    class RunChosen(Message):
        def __init__(self, index: int) -> None:
            super().__init__()
            self.index = index

    def set_runs(self, runs: list[RunDir]) -> None:
        self.clear_options()
        options = []
        for i, run in enumerate(runs):
            label = Text()
            label.append(STATUS_MARK.get(run.status, "?") + " ", style="green" if run.complete else "yellow")
            label.append(run.id)
            detail = run.status if not run.complete else ("evaluated" if run.evaluated else "not evaluated")
            label.append(f"\n  {detail}", style="dim" if run.complete and run.evaluated else "yellow")
            options.append(Option(label, id=f"run-{i}"))
        self.add_options(options)
        self.border_title = f"runs ({len(runs)})"

    def on_option_list_option_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        event.stop()
        if event.option_index is not None:
            self.post_message(self.RunChosen(event.option_index))


class Notice(Static):
    """What the reader must know before trusting the numbers (incomplete run, no evaluation yet, ...)."""

    DEFAULT_CSS = """
    Notice { color: $warning; padding: 0 1; height: auto; display: none; }
    Notice.-shown { display: block; }
    """

    def show_text(self, text: str | None) -> None:
        self.update(safe(text or ""))
        self.set_class(bool(text), "-shown")


class MetricsPanel(VerticalScroll):
    """Base vs fine-tuned for one run, with relative change and the evaluation settings."""

    DEFAULT_CSS = """
    MetricsPanel { height: 1fr; }
    MetricsPanel #metrics-title { text-style: bold; padding: 0 1; }
    MetricsPanel DataTable { height: auto; max-height: 12; margin: 1 0; }
    MetricsPanel #metrics-settings { color: $text-muted; padding: 0 1; }
    MetricsPanel #metrics-chart { height: 16; min-height: 10; margin-top: 1; }
    """

    CHART_METRICS = ("rouge1", "rouge2", "rougeL", "token_f1", "set_f1", "bleu")

    def compose(self) -> ComposeResult:
        yield Static(id="metrics-title")
        yield Notice(id="metrics-notice")
        table: DataTable = DataTable(id="metrics-table", cursor_type="row", zebra_stripes=True)
        yield table
        yield Static(id="metrics-settings")
        yield PlotextPlot(id="metrics-chart")

    def draw_chart(self, run: RunDir | None) -> None:
        chart = self.query_one("#metrics-chart", PlotextPlot)
        chart.display = bool(run is not None and run.evaluated)
        if not chart.display:
            return
        plt = chart.plt
        plt.clear_data()
        plt.clear_figure()
        names = [METRIC_LABELS[m].replace(" (seed)", "*") + ("/100" if m == "bleu" else "") for m in self.CHART_METRICS]
        scale = {"bleu": 0.01}
        base = [(run.metric("base", m) or 0.0) * scale.get(m, 1.0) for m in self.CHART_METRICS]
        tuned = [(run.metric("finetuned", m) or 0.0) * scale.get(m, 1.0) for m in self.CHART_METRICS]
        plt.multiple_bar(names, [base, tuned], labels=["base", "fine-tuned"])
        plt.title("base vs fine-tuned (higher is better; * = seed's set F1)")
        chart.refresh()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_column("metric", key="metric")
        table.add_column("base", key="base")
        table.add_column("tuned", key="finetuned")
        table.add_column("change", key="change")
        table.add_column("95% CI of Δ", key="interval")
        table.add_column("verdict", key="verdict")

    def show_run(self, run: RunDir | None) -> None:
        table = self.query_one(DataTable)
        table.clear()
        title = self.query_one("#metrics-title", Static)
        settings = self.query_one("#metrics-settings", Static)
        notice = self.query_one(Notice)
        if run is None:
            title.update("No run selected.")
            self.draw_chart(None)
            notice.show_text(None)
            settings.update("")
            table.display = False
            return
        title.update(safe(f"Base vs fine-tuned: {run.id}"))
        notice.show_text(run.notice())
        table.display = run.evaluated
        self.draw_chart(run)
        if not run.evaluated:
            settings.update("")
            return
        for row in comparison_rows(run):
            style = {True: "green", False: "red", None: ""}[row["better"]]
            label = row["label"] + (" ↓" if row["metric"] in LOWER_IS_BETTER else "")
            table.add_row(
                label,
                Text(fmt_metric(row["metric"], row["base"]), justify="right"),
                Text(fmt_metric(row["metric"], row["finetuned"]), justify="right"),
                Text(fmt_change(row["change"]), style=style, justify="right"),
                Text(fmt_interval(row["metric"], row["interval"]), justify="right"),
                Text(row["verdict"], style=VERDICT_STYLE.get(row["verdict"], "")),
                key=row["metric"],
            )
        results = run.results or {}
        settings.update(safe(f"{describe_data(results)}\n{describe_settings(results)}\n"
                             f"{describe_bootstrap(run_intervals(run)[1])}\n↓ lower is better "
                             "(perplexity of the reference answers, answer tokens only)"))


METRIC_CELLS = frozenset({"rougeL", "bleu", "token_f1", "perplexity", "mcq"})


class ExperimentsTable(DataTable):
    """Every run: hyperparameters and fine-tuned scores."""

    def on_mount(self) -> None:
        self.cursor_type = "row"
        self.zebra_stripes = True
        for key, label in EXPERIMENT_COLUMNS:
            self.add_column(label, key=key)

    def set_runs(self, runs: list[RunDir]) -> None:
        self.clear()
        for i, run in enumerate(runs):
            row = experiment_row(run)
            cells = experiment_cells(row)
            cells[1] = run.status
            style = "" if run.complete else "yellow"
            # metric cells carry their change and interval in full; only free text (ids, notes) is shortened
            self.add_row(*[Text(c if key in METRIC_CELLS else shorten(c, 40), style=style)
                           for (key, _), c in zip(EXPERIMENT_COLUMNS, cells)], key=str(i))


class McqPanel(VerticalScroll):
    """Multiple-choice accuracy of one run: base and fine-tuned with standard errors, the fine-tuned minus base
    difference with its paired bootstrap interval and verdict; then acc_norm and the chance / majority baselines.

    Two rich tables with fixed column widths (64 columns in all) rather than one DataTable: the twelve numbers of
    a task do not fit beside the run list, and a cell that wraps onto a second line ("≈ chance", the interval)
    stays readable where a squeezed or scrolled column does not."""

    DEFAULT_CSS = """
    McqPanel { height: 1fr; padding: 0 1; }
    McqPanel #mcq-title { text-style: bold; }
    McqPanel .mcq-table { height: auto; margin-top: 1; }
    McqPanel #mcq-note { color: $text-muted; margin-top: 1; }
    """

    def compose(self) -> ComposeResult:
        yield Static(id="mcq-title")
        yield Static(id="mcq-accuracy", classes="mcq-table")
        yield Static(id="mcq-baselines", classes="mcq-table")
        yield Static(id="mcq-note")

    def show_run(self, run: RunDir | None) -> None:
        rows = mcq_rows(run.mcq()) if run is not None else []
        accuracy, baselines = self.query_one("#mcq-accuracy", Static), self.query_one("#mcq-baselines", Static)
        accuracy.display = baselines.display = bool(rows)
        note = self.query_one("#mcq-note", Static)
        self.query_one("#mcq-title", Static).update(safe(f"Multiple choice: {run.id}" if run else "No run selected."))
        if run is None:
            note.update("")
        elif not rows:
            note.update(safe(f"No multiple-choice results in {run.eval_dir}. Make them with: medchat-metrics mcq "
                             f"{run.id} --task medmcqa --data FILE.jsonl"))
        else:
            accuracy.update(mcq_accuracy_table(rows))
            baselines.update(mcq_baselines_table(rows))
            note.update(safe(mcq_note(rows)))


def _acc_cell(agg: dict[str, Any], metric: str = "acc") -> Text:
    text = Text(fmt_acc(agg, metric))
    if metric == "acc" and agg.get("near_chance"):
        text.append(" ≈ chance", style="yellow")
    return text


def _delta_cell(interval: dict[str, Any] | None) -> Text:
    return Text(f"{fmt_delta('acc', interval)}\n{fmt_interval('acc', interval).removesuffix(' pt')}")


def _mcq_table(title: str, columns: list[tuple[str, int]]):
    from rich import box
    from rich.table import Table

    # the box's column dividers are the only spacing: no cell padding, no outer edge
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, padding=0, show_edge=False)
    for i, (label, width) in enumerate(columns):
        table.add_column(label, width=width, justify="left" if i == 0 else "right")
    return table


def mcq_accuracy_table(rows: list[dict[str, Any]]):
    table = _mcq_table("accuracy (%)", [("task", 12), ("n", 3), ("k", 2), ("base", 10), ("fine-tuned", 10),
                                         ("Δ [95% CI] pt", 14), ("verdict", 9)])
    for m in rows:
        table.add_row(safe(m["task"]), str(m["n"]), str(m["shots"]), _acc_cell(m["base"]), _acc_cell(m["finetuned"]),
                      _delta_cell(m["interval"]), Text(m["verdict"], style=VERDICT_STYLE.get(m["verdict"], "")))
    return table


def mcq_baselines_table(rows: list[dict[str, Any]]):
    table = _mcq_table("acc_norm (%) and baselines", [("task", 12), ("chance", 6), ("majority", 10), ("base", 10),
                                                      ("fine-tuned", 10), ("Δ [95% CI] pt", 14)])
    for m in rows:
        majority = fmt_pct(m["majority"]) + (f" ({m['majority_label']})" if m.get("majority_label") else "")
        table.add_row(safe(m["task"]), fmt_pct(m["chance"]), safe(majority), _acc_cell(m["base"], "acc_norm"),
                      _acc_cell(m["finetuned"], "acc_norm"), _delta_cell(m["interval_norm"]))
    return table


class LossChart(Vertical):
    """Train and eval loss against step, drawn with plotext."""

    DEFAULT_CSS = """
    LossChart { height: 1fr; }
    LossChart #loss-empty { padding: 1; color: $text-muted; display: none; }
    """

    def compose(self) -> ComposeResult:
        yield Static(id="loss-empty")
        yield PlotextPlot(id="loss-plot")

    def show_run(self, run: RunDir | None) -> None:
        plot = self.query_one(PlotextPlot)
        empty = self.query_one("#loss-empty", Static)
        plt = plot.plt
        plt.clear_data()
        plt.clear_figure()
        series = loss_series(run) if run is not None else {"train": ([], []), "eval": ([], [])}
        has = bool(series["train"][0] or series["eval"][0])
        empty.display = not has
        plot.display = has
        if not has:
            empty.update(safe(f"{run.path / 'loss_log.jsonl'} holds no loss values." if run else "No run selected."))
            return
        if series["train"][0]:
            if len(series["train"][0]) > 1:
                plt.plot(*series["train"], label="train loss", marker="braille", color="cyan")
            else:
                plt.scatter(*series["train"], label="train loss", marker="●", color="cyan")
        if series["eval"][0]:
            if len(series["eval"][0]) > 1:
                plt.plot(*series["eval"], marker="braille", color="orange")
            plt.scatter(*series["eval"], label="eval loss", marker="●", color="orange")
        title = run.id if run.complete else f"{run.id} ({run.status})"
        plt.title(title)
        plt.xlabel("step")
        plt.ylabel("loss")
        plot.refresh()


SORTS = [
    ("index", "data order"),
    ("delta_desc", "biggest gain first"),
    ("delta_asc", "biggest loss first"),
]
SORT_METRICS = ["rougeL", "token_f1", "bleu", "rouge1", "perplexity"]


class ExampleBrowser(Vertical):
    """Per-example predictions: a table sortable by score delta and the selected example in full."""

    DEFAULT_CSS = """
    ExampleBrowser { height: 1fr; }
    ExampleBrowser #examples-status { color: $text-muted; padding: 0 1; height: 1; }
    ExampleBrowser #examples-table { height: 1fr; min-height: 5; }
    ExampleBrowser #example-detail { height: 1fr; border-top: solid $primary 50%; padding: 0 1; }
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.examples: list[dict[str, Any]] = []
        self.sort_mode = "delta_desc"
        self.metric = "rougeL"
        self.empty_text = ""

    def compose(self) -> ComposeResult:
        yield Static(id="examples-status")
        yield DataTable(id="examples-table", cursor_type="row", zebra_stripes=True)
        with VerticalScroll(id="example-detail"):
            yield Static(id="example-text")

    def show_run(self, run: RunDir | None) -> None:
        try:
            self.examples = run.examples() if run is not None and run.evaluated else []
        except RunError as exc:
            self.examples = []
            self.empty_text = f"{exc} Re-create it with: {evaluate_command(run.path)}"
            self.refresh_table()
            return
        if run is None:
            self.empty_text = "No run selected."
        elif not run.evaluated:
            self.empty_text = run.notice() or "Not evaluated yet."
        else:
            self.empty_text = "This evaluation has no per-example rows (eval/examples.jsonl is empty)."
        self.refresh_table()

    def sorted_examples(self) -> list[dict[str, Any]]:
        rows = list(self.examples)
        if self.sort_mode == "index":
            return rows
        sign = -1.0 if self.metric in LOWER_IS_BETTER else 1.0  # "gain" means lower perplexity

        def gain(row: dict[str, Any]) -> float:
            value = (row.get("delta") or {}).get(self.metric)
            return sign * value if isinstance(value, (int, float)) else 0.0

        return sorted(rows, key=gain, reverse=self.sort_mode == "delta_desc")

    def refresh_table(self) -> None:
        table = self.query_one("#examples-table", DataTable)
        table.clear(columns=True)
        label = METRIC_LABELS[self.metric]
        status = self.query_one("#examples-status", Static)
        if not self.examples:
            status.update(safe(self.empty_text))
            table.display = False
            self.query_one("#example-text", Static).update("")
            return
        table.display = True
        sort_label = dict(SORTS)[self.sort_mode]
        status.update(Text(f"{len(self.examples)} examples · {label} · {sort_label}   (s: sort, m: metric)"))
        table.add_column("#", key="index")
        table.add_column("question", key="question")
        table.add_column(f"base {label}", key="base")
        table.add_column(f"tuned {label}", key="finetuned")
        table.add_column("Δ", key="delta")
        for row in self.sorted_examples():
            base = (row.get("base") or {}).get(self.metric)
            tuned = (row.get("finetuned") or {}).get(self.metric)
            delta = (row.get("delta") or {}).get(self.metric)
            better = None if not delta else (delta < 0) if self.metric in LOWER_IS_BETTER else (delta > 0)
            style = {True: "green", False: "red", None: ""}[better]
            table.add_row(
                str(row.get("index", "")),
                shorten(str(row.get("question", "")), 40),
                Text(fmt_metric(self.metric, base), justify="right"),
                Text(fmt_metric(self.metric, tuned), justify="right"),
                Text("—" if delta is None else f"{delta:+.3f}" if self.metric != "bleu" else f"{delta:+.1f}",
                     style=style, justify="right"),
                key=str(row.get("index")),
            )
        table.move_cursor(row=0)
        self.show_example(self.sorted_examples()[0])

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.data_table.id != "examples-table" or event.row_key is None:
            return
        event.stop()
        for row in self.examples:
            if str(row.get("index")) == event.row_key.value:
                self.show_example(row)
                break

    def show_example(self, row: dict[str, Any]) -> None:
        text = Text()
        text.append("Question\n", style="bold")
        text.append_text(safe(row.get("question")))
        text.append("\n\nReference\n", style="bold")
        text.append_text(safe(row.get("reference")))
        for which, title in (("base", "Base model"), ("finetuned", "Fine-tuned model")):
            data = row.get(which) or {}
            scores = " · ".join(
                f"{METRIC_LABELS[m]} {fmt_metric(m, data.get(m))}"
                for m in ("rougeL", "token_f1", "bleu", "perplexity")
            )
            text.append(f"\n\n{title}", style="bold")
            text.append(f"   {scores}\n", style="dim")
            text.append_text(safe(data.get("prediction")))
        self.query_one("#example-text", Static).update(text)

    def action_cycle_sort(self) -> None:
        modes = [m for m, _ in SORTS]
        self.sort_mode = modes[(modes.index(self.sort_mode) + 1) % len(modes)]
        self.refresh_table()

    def action_cycle_metric(self) -> None:
        self.metric = SORT_METRICS[(SORT_METRICS.index(self.metric) + 1) % len(SORT_METRICS)]
        self.refresh_table()


class ProbesPanel(VerticalScroll):
    """The seed's qualitative probes, base and fine-tuned answers."""

    DEFAULT_CSS = """
    ProbesPanel { height: 1fr; padding: 0 1; }
    """

    def compose(self) -> ComposeResult:
        yield Static(id="probes-text")

    def show_run(self, run: RunDir | None) -> None:
        probes = list((run.results or {}).get("probes") or []) if run is not None else []
        text = Text()
        if not probes:
            text.append_text(safe("No probes recorded for this run." if run is None or run.evaluated
                                  else (run.notice() or "Not evaluated yet.")))
        for p in probes:
            text.append_text(safe(p.get("question")))
            if p.get("kind") == "out_of_domain":
                text.append("  (out-of-domain probe)", style="yellow")
            text.append("\n")
            text.append("  base        ", style="bold dim")
            text.append_text(safe(p.get("base")))
            text.append("\n  fine-tuned  ", style="bold")
            text.append_text(safe(p.get("finetuned")))
            text.append("\n\n")
        self.query_one("#probes-text", Static).update(text)


__all__ = ["RunList", "Notice", "MetricsPanel", "McqPanel", "ExperimentsTable", "LossChart", "ExampleBrowser", "ProbesPanel"]
