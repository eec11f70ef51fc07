"""The report view driven by Pilot: opens, lists runs, switches tabs, browses and sorts examples."""

from __future__ import annotations

import json

import pytest
from textual.app import App
from textual.widgets import DataTable, Static, TabbedContent

from medchat.app.report import ReportApp, ReportScreen
from medchat.app.report.widgets import ExampleBrowser, MetricsPanel, Notice, RunList
from metrics_fixtures import populated_runs_root, no_shipped_default_run  # noqa: F401

SIZE = (120, 36)
pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


def _text(widget: Static) -> str:
    return str(widget.render())


def _lines(widget: Static) -> list[str]:
    """What a Static holding a rich renderable shows, line by line, at its width."""
    from rich.console import Console

    console = Console(width=widget.size.width, record=True, file=open("/dev/null", "w"))
    console.print(widget.content)
    return [line.strip() for line in console.export_text().splitlines()]


async def test_opens_lists_runs_and_switches_tabs(isolated_user_dirs):
    paths = populated_runs_root(isolated_user_dirs / "runs")
    app = ReportApp()  # discovers the runs under MEDCHAT_RUNS_DIR
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, ReportScreen)
        ids = [r.id for r in screen.runs]
        assert ids[:3] == [p.name for p in paths]
        assert screen.query_one(RunList).option_count == len(ids)
        assert screen.current.id == "20261120-100000-qv"  # the newest evaluated run opens first
        table = screen.query_one("#metrics-table", DataTable)
        assert table.row_count == 7
        assert table.get_row("rougeL")[3].plain == "+20.0%"
        assert table.get_row("perplexity")[3].plain == "-25.0%"

        tabs = screen.query_one(TabbedContent)
        for key, tab in (("2", "experiments"), ("3", "loss"), ("4", "examples"), ("5", "probes"), ("1", "metrics")):
            await pilot.press(key)
            await pilot.pause()
            assert tabs.active == tab
        assert screen.query_one("#experiments-table", DataTable).row_count == len(ids)
        assert "capital of France" in _text(screen.query_one("#probes-text", Static))


async def test_example_browser_sorts_by_score_delta(isolated_user_dirs):
    populated_runs_root(isolated_user_dirs / "runs")
    app = ReportApp()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("4")
        await pilot.pause()
        screen = app.screen
        table = screen.query_one("#examples-table", DataTable)
        order = lambda: [table.coordinate_to_cell_key((i, 0)).row_key.value for i in range(table.row_count)]  # noqa: E731
        assert order() == ["2", "0", "1"]  # biggest ROUGE-L gain first
        detail = screen.query_one("#example-text", Static)
        assert "What fights bacteria?" in _text(detail)
        assert "White blood cells." in _text(detail)  # the fine-tuned answer
        assert "Antibiotics." in _text(detail)  # the base answer

        await pilot.press("s")  # biggest loss first
        await pilot.pause()
        assert order() == ["1", "0", "2"]
        await pilot.press("s")  # data order
        await pilot.pause()
        assert order() == ["0", "1", "2"]

        table.focus()
        await pilot.press("down")
        await pilot.pause()
        assert "How does aspirin work?" in _text(detail)

        await pilot.press("s", "m")  # back to gain-first, now by token F1
        await pilot.pause()
        browser = screen.query_one(ExampleBrowser)
        assert browser.metric == "token_f1" and browser.sort_mode == "delta_desc"
        assert "token F1" in _text(screen.query_one("#examples-status", Static))


async def test_incomplete_and_unevaluated_runs_are_explained(isolated_user_dirs):
    populated_runs_root(isolated_user_dirs / "runs")
    app = ReportApp()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        screen = app.screen
        run_list = screen.query_one(RunList)
        notice = screen.query_one("#metrics-notice", Notice)

        run_list.highlighted = 1  # complete, not evaluated
        await pilot.pause()
        assert screen.current.id == "20261121-090000-all-linear"
        assert "medchat-metrics evaluate 20261121-090000-all-linear" in _text(notice)
        assert notice.has_class("-shown")
        assert not screen.query_one("#metrics-table", DataTable).display

        run_list.highlighted = 2  # interrupted
        await pilot.pause()
        assert "interrupted" in _text(notice)
        assert "not scored as a complete run" in _text(notice)
        assert "interrupted" in _text(screen.query_one("#report-title", Static))
        await pilot.press("4")
        await pilot.pause()
        assert "interrupted" in _text(screen.query_one("#examples-status", Static))


async def test_no_runs_says_how_to_make_one(isolated_user_dirs):
    app = ReportApp(runs=[])
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        empty = app.screen.query_one("#report-empty", Static)
        assert empty.display
        assert "No runs found" in _text(empty) and "medchat-train" in _text(empty)


async def test_model_output_is_shown_as_plain_text(isolated_user_dirs):
    paths = populated_runs_root(isolated_user_dirs / "runs")
    examples = paths[0] / "eval" / "examples.jsonl"
    rows = [json.loads(line) for line in examples.read_text().splitlines()]
    rows[2]["finetuned"]["prediction"] = "[bold]not markup[/bold] \x1b[31mred\x1b[0m"
    examples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    app = ReportApp(runs=[paths[0]])
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("4")
        await pilot.pause()
        text = _text(app.screen.query_one("#example-text", Static))
        assert "[bold]not markup[/bold] red" in text
        assert "\x1b" not in text


async def test_report_screen_is_pushable_from_another_app(isolated_user_dirs):
    paths = populated_runs_root(isolated_user_dirs / "runs")

    class Host(App):
        def compose(self):
            yield Static("chat", id="host")

    app = Host()
    async with app.run_test(size=SIZE) as pilot:
        app.push_screen(ReportScreen([paths[0]]))
        await pilot.pause()
        assert isinstance(app.screen, ReportScreen)
        assert app.screen.query_one(MetricsPanel).query_one(DataTable).row_count == 7
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, ReportScreen)
        assert app.query_one("#host", Static)


async def test_corrupt_examples_file_is_a_message(isolated_user_dirs):
    paths = populated_runs_root(isolated_user_dirs / "runs")
    (paths[0] / "eval" / "examples.jsonl").write_text('{"index": 0}\n{broken\n')
    app = ReportApp(runs=[paths[0]])
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("4")
        await pilot.pause()
        status = _text(app.screen.query_one("#examples-status", Static))
        assert "examples.jsonl, line 2: not valid JSON" in status
        assert "medchat-metrics evaluate 20261120-100000-qv" in status


async def test_multiple_choice_tab_shows_accuracy_intervals_and_baselines(isolated_user_dirs):
    paths = populated_runs_root(isolated_user_dirs / "runs")
    app = ReportApp(runs=paths)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("6")
        await pilot.pause()
        screen = app.screen
        assert screen.query_one(TabbedContent).active == "mcq"
        accuracy = _lines(screen.query_one("#mcq-accuracy", Static))
        med = next(i for i, line in enumerate(accuracy) if line.startswith("medmcqa"))
        # 10 of 40 right is 25.0% with a standard error of 6.9 points: within two of chance (25%), and said so;
        # 12 more right answers after fine-tuning: the interval excludes zero, so "better"
        assert accuracy[med].split() == ["medmcqa", "40", "0", "25.0", "±", "6.9", "55.0", "±", "8.0", "+30.0",
                                         "pt", "better"]
        assert accuracy[med + 1].split()[:2] == ["≈", "chance"] and accuracy[med + 1].split()[2].startswith("[+")
        pub = next(i for i, line in enumerate(accuracy) if line.startswith("pubmedqa"))
        assert accuracy[pub].split()[3:11] == ["66.7", "±", "8.8", "70.0", "±", "8.5", "+3.3", "pt"]
        assert "no clear" in accuracy[pub] and "change" in accuracy[pub + 1]
        assert "chance" not in accuracy[pub + 1].replace("change", "")  # two standard errors above a third
        baselines = _lines(screen.query_one("#mcq-baselines", Static))
        assert any(line.split()[:4] == ["medmcqa", "25.0", "25.0", "(A)"] for line in baselines)
        assert any(line.split()[:2] == ["pubmedqa", "33.3"] for line in baselines)
        note = _text(screen.query_one("#mcq-note", Static))
        assert "within two standard errors of chance" in note and "1000 resamples" in note

        screen.query_one(RunList).highlighted = 1  # a run without multiple-choice results says how to make them
        await pilot.pause()
        assert not screen.query_one("#mcq-accuracy", Static).display
        assert "medchat-metrics mcq 20261121-090000-all-linear" in _text(screen.query_one("#mcq-note", Static))


async def test_intervals_beside_metrics_and_mcq_in_the_experiment_table(isolated_user_dirs):
    paths = populated_runs_root(isolated_user_dirs / "runs")
    app = ReportApp(runs=paths)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        screen = app.screen
        metrics = screen.query_one("#metrics-table", DataTable)
        row = [str(c) for c in metrics.get_row("rougeL")]
        assert row[4] == "[-0.6667, +0.7500]" and row[5] == "no clear change"
        await pilot.press("2")
        await pilot.pause()
        table = screen.query_one("#experiments-table", DataTable)
        cells = [c.plain for c in table.get_row("0")]
        assert "0.1800 (+20.0%, Δ [-0.6667, +0.7500])" in cells
        assert "medmcqa 55.0 (+30.0 pt [" in cells[9] and "pubmedqa 70.0 (+3.3 pt [" in cells[9]
        assert [c.plain for c in table.get_row("1")][9] == "—"


@pytest.mark.parametrize("size", [(40, 12), (80, 24)])
async def test_narrow_terminals_get_the_run_list_as_an_overlay(isolated_user_dirs, size):
    populated_runs_root(isolated_user_dirs / "runs")
    app = ReportApp()
    async with app.run_test(size=size) as pilot:
        await pilot.pause()
        screen = app.screen
        run_list, tabs = screen.query_one(RunList), screen.query_one(TabbedContent)
        assert not run_list.display and tabs.size.width == size[0]  # the metrics keep the whole width
        await pilot.press("l")
        await pilot.pause()
        assert run_list.display and run_list.has_focus
        assert run_list.region.width <= size[0] * 0.9 and tabs.size.width == size[0]  # over the tabs, not beside
        first = screen.current
        await pilot.press("up", "enter")
        await pilot.pause()
        assert not run_list.display and screen.current is not first
        assert screen.current.id in str(screen.query_one("#report-title", Static).render())
        await pilot.resize_terminal(120, 36)
        await pilot.pause()
        assert run_list.display and tabs.size.width < 120  # wide: the list is back beside the tabs
