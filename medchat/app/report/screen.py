"""ReportScreen: the report view, pushable from the chat app; ReportApp: what `medchat-metrics show` runs."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import Footer, Static, TabbedContent, Tabs, TabPane

from medchat.core.runs import RunDir, RunError, discover_runs, load_run
from medchat.app.report.widgets import (
    ExampleBrowser,
    ExperimentsTable,
    LossChart,
    McqPanel,
    MetricsPanel,
    ProbesPanel,
    RunList,
    safe,
)

NARROW_COLUMNS = 100  # below this the run list floats over the tabs, hidden until asked for (as the chat's sidebar)
# keys 1-6 in this order (the multiple-choice tab came last, so the older keys kept their numbers)
TABS = ("metrics", "experiments", "loss", "examples", "probes", "mcq")


class ReportScreen(Screen):
    """Runs on the left; metrics, experiments, loss chart, examples, probes and multiple choice on the right."""

    DEFAULT_CSS = """
    ReportScreen #report-title { height: 1; padding: 0 1; background: $primary 30%; text-style: bold; }
    ReportScreen #report-body { height: 1fr; layers: base overlay; }
    ReportScreen #report-body.narrow RunList { dock: left; layer: overlay; max-width: 90%; background: $surface; }
    ReportScreen TabbedContent { width: 1fr; height: 1fr; }
    ReportScreen TabPane { height: 1fr; padding: 0; }
    ReportScreen #report-empty { padding: 1 2; color: $warning; display: none; }
    """

    BINDINGS = [
        Binding("escape", "close", "close"),
        Binding("q", "close", "close", show=False),
        Binding("r", "reload", "reload"),
        Binding("l,ctrl+b", "toggle_runs", "runs"),
        Binding("s", "sort_examples", "sort examples"),
        Binding("m", "metric_examples", "example metric"),
        *[Binding(str(i), f"tab('{tab}')", tab, show=False) for i, tab in enumerate(TABS, 1)],
    ]

    def __init__(self, runs: list[Path] | None = None, *, name: str | None = None, id: str | None = None) -> None:
        super().__init__(name=name, id=id)
        self.run_paths = [Path(p) for p in runs] if runs is not None else None
        self.runs: list[RunDir] = []
        self.current: RunDir | None = None
        self.load_errors: list[str] = []

    def compose(self) -> ComposeResult:
        yield Static("medchat report", id="report-title")
        with Horizontal(id="report-body"):
            yield RunList(id="run-list")
            with TabbedContent(id="report-tabs", initial="metrics"):
                with TabPane("Metrics", id="metrics"):
                    yield Static(id="report-empty")
                    yield MetricsPanel(id="metrics-panel")
                with TabPane("Experiments", id="experiments"):
                    yield ExperimentsTable(id="experiments-table")
                with TabPane("Loss", id="loss"):
                    yield LossChart(id="loss-chart")
                with TabPane("Examples", id="examples"):
                    yield ExampleBrowser(id="example-browser")
                with TabPane("Probes", id="probes"):
                    yield ProbesPanel(id="probes-panel")
                with TabPane("Multiple choice", id="mcq"):
                    yield McqPanel(id="mcq-panel")
        yield Footer()

    def on_mount(self) -> None:
        self._fit_to(self.size.width)
        self.load()

    def on_resize(self, event) -> None:
        self._fit_to(event.size.width)

    def _fit_to(self, width: int) -> None:
        """Narrow: the run list becomes an overlay (l or Ctrl+B), so the tabs keep the whole width."""
        body = self.query_one("#report-body")
        narrow = width < NARROW_COLUMNS
        if narrow != body.has_class("narrow"):
            body.set_class(narrow, "narrow")
            self.query_one(RunList).display = not narrow

    # ------------------------------------------------------------------ data
    def load(self) -> None:
        self.load_errors = []
        paths = self.run_paths if self.run_paths is not None else discover_runs()
        runs = []
        for path in paths:
            try:
                runs.append(load_run(path))
            except RunError as exc:
                self.load_errors.append(str(exc))
        self.runs = runs
        run_list = self.query_one(RunList)
        run_list.set_runs(runs)
        self.query_one(ExperimentsTable).set_runs(runs)
        empty = self.query_one("#report-empty", Static)
        if not runs:
            from medchat.core import paths as medchat_paths

            lines = [f"No runs found under {medchat_paths.runs_root()}.", "Train one with: medchat-train run",
                     *self.load_errors]
            empty.update(safe("\n".join(lines)))
            empty.display = True
            self.show_run(None)
            return
        empty.display = bool(self.load_errors)
        empty.update(safe("\n".join(self.load_errors)))
        newest_evaluated = max((i for i, r in enumerate(runs) if r.evaluated), default=len(runs) - 1)
        run_list.highlighted = newest_evaluated
        self.show_run(runs[newest_evaluated])

    def show_run(self, run: RunDir | None) -> None:
        self.current = run
        title = self.query_one("#report-title", Static)
        if run is None:
            title.update("medchat report")
        else:
            text = Text(f"medchat report · {run.id}")
            if not run.complete:
                text.append(f" · {run.status_label}", style="yellow")
            elif not run.evaluated:
                text.append(" · not evaluated", style="yellow")
            title.update(text)
        self.query_one(MetricsPanel).show_run(run)
        self.query_one(McqPanel).show_run(run)
        self.query_one(LossChart).show_run(run)
        self.query_one(ExampleBrowser).show_run(run)
        self.query_one(ProbesPanel).show_run(run)

    def on_option_list_option_selected(self, event) -> None:
        """Enter on a run in the overlay: it is shown, and the overlay gives the screen back."""
        if event.option_list.id == "run-list" and self.query_one("#report-body").has_class("narrow"):
            self.action_toggle_runs()

    def on_run_list_run_chosen(self, event: RunList.RunChosen) -> None:
        if 0 <= event.index < len(self.runs) and self.runs[event.index] is not self.current:
            self.show_run(self.runs[event.index])

    def on_data_table_row_selected(self, event) -> None:
        if event.data_table.id == "experiments-table" and event.row_key is not None:
            index = int(event.row_key.value)
            self.query_one(RunList).highlighted = index
            self.show_run(self.runs[index])
            self.action_tab("metrics")

    # ------------------------------------------------------------------ actions
    def action_tab(self, tab: str) -> None:
        self.query_one(TabbedContent).active = tab

    def action_sort_examples(self) -> None:
        self.action_tab("examples")
        self.query_one(ExampleBrowser).action_cycle_sort()

    def action_metric_examples(self) -> None:
        self.action_tab("examples")
        self.query_one(ExampleBrowser).action_cycle_metric()

    def action_toggle_runs(self) -> None:
        run_list = self.query_one(RunList)
        run_list.display = not run_list.display
        if run_list.display:
            run_list.focus()
        else:
            self.query_one(TabbedContent).query_one(Tabs).focus()

    def action_reload(self) -> None:
        self.load()
        self.notify("Runs reloaded.", timeout=2)

    def action_close(self) -> None:
        self.dismiss(None)


class ReportApp(App):
    """`medchat-metrics show`: the report view on its own."""

    TITLE = "medchat report"

    def __init__(self, runs: list[Path] | None = None) -> None:
        super().__init__()
        self.run_paths = runs

    def on_mount(self) -> None:
        self.push_screen(ReportScreen(self.run_paths), callback=lambda _: self.exit())
