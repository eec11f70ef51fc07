"""The Textual report view (the only part of `metrics` that imports textual).

    ReportScreen(runs: list[Path] | None = None)  a Screen; push it from any Textual app (the chat app does)
    ReportApp(runs=None)                          what `medchat-metrics show` runs
"""

from __future__ import annotations

from medchat.app.report.screen import ReportApp, ReportScreen

__all__ = ["ReportApp", "ReportScreen"]
