"""Snapshots of the report view (fixture runs with fixed timestamps; nothing in the view reads the clock)."""

from __future__ import annotations

from medchat.app.report import ReportApp
from metrics_fixtures import populated_runs_root, no_shipped_default_run  # noqa: F401

SIZE = (110, 32)


def test_snapshot_metrics_tab(snap_compare, isolated_user_dirs):
    paths = populated_runs_root(isolated_user_dirs / "runs")
    assert snap_compare(ReportApp(runs=paths), terminal_size=SIZE)


def test_snapshot_examples_tab(snap_compare, isolated_user_dirs):
    paths = populated_runs_root(isolated_user_dirs / "runs")
    assert snap_compare(ReportApp(runs=paths), press=["4"], terminal_size=SIZE)


def test_snapshot_interrupted_run(snap_compare, isolated_user_dirs):
    paths = populated_runs_root(isolated_user_dirs / "runs")

    async def choose_interrupted(pilot):
        pilot.app.screen.query_one("#run-list").highlighted = 2
        await pilot.pause()

    assert snap_compare(ReportApp(runs=paths), run_before=choose_interrupted, terminal_size=SIZE)


def test_snapshot_experiments_tab(snap_compare, isolated_user_dirs):
    paths = populated_runs_root(isolated_user_dirs / "runs")
    assert snap_compare(ReportApp(runs=paths), press=["2"], terminal_size=SIZE)


def test_snapshot_loss_tab(snap_compare, isolated_user_dirs):
    paths = populated_runs_root(isolated_user_dirs / "runs")
    assert snap_compare(ReportApp(runs=paths), press=["3"], terminal_size=SIZE)


def test_snapshot_multiple_choice_tab(snap_compare, isolated_user_dirs):
    paths = populated_runs_root(isolated_user_dirs / "runs")
    assert snap_compare(ReportApp(runs=paths), press=["6"], terminal_size=SIZE)
