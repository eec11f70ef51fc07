"""The report built from fixture run directories: experiment table, markdown, JSON, charts, CLI messages."""

from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner

from medchat.app.metrics_cli import main
from metrics.report import build_report, render_markdown
from medchat.core.runs import discover_runs, load_run, resolve_run
from metrics_fixtures import BASE_SCORES, FT_SCORES, fake_results, make_run, populated_runs_root, no_shipped_default_run  # noqa: F401


@pytest.fixture
def runs_root(isolated_user_dirs):
    root = isolated_user_dirs / "runs"
    populated_runs_root(root)
    return root


def _invoke(*args):
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result


def test_experiment_table_from_run_directories(runs_root):
    runs = [load_run(p) for p in discover_runs(include_default=False)]
    report = build_report(runs)
    rows = {r["run"]: r for r in report.experiments}
    assert list(rows) == ["20261120-100000-qv", "20261121-090000-all-linear", "20261122-080000-long"]

    qv = rows["20261120-100000-qv"]
    assert qv["learning_rate"] == 2e-4 and qv["epochs"] == 2 and qv["effective_batch"] == 8
    assert qv["rougeL"] == FT_SCORES["rougeL"] and qv["bleu"] == FT_SCORES["bleu"]
    assert qv["perplexity"] == FT_SCORES["perplexity"]
    assert qv["rougeL_change"] == pytest.approx((0.18 - 0.15) / 0.15)
    assert qv["elapsed_s"] == 754.0 and qv["notes"] == "seed recipe (q/v)"

    assert rows["20261121-090000-all-linear"]["rougeL"] is None  # not evaluated: no numbers invented
    assert rows["20261122-080000-long"]["status"] == "interrupted"
    # details default to the newest evaluated run
    assert [d["run"] for d in report.details] == ["20261120-100000-qv"]
    comparison = {c["metric"]: c for c in report.details[0]["comparison"]}
    assert comparison["perplexity"]["better"] is True and comparison["perplexity"]["change"] == pytest.approx(-0.25)


def test_markdown_output(runs_root):
    result = _invoke("report", "--format", "markdown")
    assert result.exit_code == 0
    md = result.output
    assert "## Base vs fine-tuned: 20261120-100000-qv" in md
    # the verdict comes from the paired bootstrap over the 3 fixture examples (recomputed from examples.jsonl):
    # a +20% change on 3 examples is no clear change
    assert "| ROUGE-L | 0.1500 | 0.1800 | +20.0% | +0.1944 | [-0.6667, +0.7500] | no clear change |" in md
    assert "| perplexity | 20.00 | 15.00 | -25.0% |" in md
    assert "1000 resamples over examples, seed 12345; report, from examples.jsonl" in md
    assert "3 held-out examples from splits/eval.jsonl" in md
    assert "repetition_penalty 1.1, no_repeat_ngram_size 4" in md
    assert "| 20261120-100000-qv | complete | 2e-04 | 2 | 8 | 0.1800 (+20.0%, Δ [-0.6667, +0.7500]) |" in md
    assert "| 20261122-080000-long | interrupted, not evaluated |" in md
    assert "**What is the capital of France?** (out-of-domain probe)" in md


def test_markdown_file_gets_png_charts(runs_root, tmp_path):
    out = tmp_path / "out" / "report.md"
    result = _invoke("report", "--format", "markdown", "-o", str(out))
    assert result.exit_code == 0, result.output
    md = out.read_text()
    loss, metrics_png = out.parent / "report-loss.png", out.parent / "report-metrics-20261120-100000-qv.png"
    for png in (loss, metrics_png):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({png.name})" in md


def test_json_output(runs_root):
    result = _invoke("report", "20261120-100000-qv", "--format", "json")
    data = json.loads(result.output)
    assert [r["run"] for r in data["experiments"]][:3] == [
        "20261120-100000-qv", "20261121-090000-all-linear", "20261122-080000-long"]
    detail = data["details"][0]
    assert detail["run"] == "20261120-100000-qv"
    assert {c["metric"]: c["finetuned"] for c in detail["comparison"]} == FT_SCORES
    assert detail["settings"]["max_new_tokens"] == 128


def test_rich_output_and_compare(runs_root):
    result = _invoke("report")
    assert result.exit_code == 0
    assert "Base vs fine-tuned: 20261120-100000-qv" in result.output
    assert "Experiments" in result.output
    result = _invoke("compare", "qv", "all-linear", "--format", "markdown")
    assert result.exit_code == 0
    assert "| 20261120-100000-qv | complete | 3 | 0.2500 (+25.0%) |" in result.output
    assert "medchat-metrics evaluate 20261121-090000-all-linear" in result.output


def test_runs_are_named_by_id_or_unique_part(runs_root):
    assert resolve_run("20261121-090000-all-linear").name == "20261121-090000-all-linear"
    assert resolve_run("long").name == "20261122-080000-long"
    result = CliRunner().invoke(main, ["report", "2026112"])
    assert result.exit_code != 0 and "matches several runs" in result.output
    result = CliRunner().invoke(main, ["report", "nope"])
    assert result.exit_code != 0 and "No run directory 'nope'" in result.output
    assert "Traceback" not in result.output


def test_no_evaluation_yet_says_how(isolated_user_dirs):
    make_run(isolated_user_dirs / "runs", "20261125-100000-fresh")
    result = _invoke("report", "--format", "markdown")
    assert "No run has been evaluated yet. Make an evaluation with: medchat-metrics evaluate 20261125-100000-fresh" in result.output
    result = _invoke("report", "fresh", "--format", "markdown")
    assert "Not evaluated yet. Make an evaluation with: medchat-metrics evaluate 20261125-100000-fresh" in result.output


def test_no_runs_at_all(isolated_user_dirs):
    result = _invoke("report", "--format", "markdown", "--only-given")
    assert "No runs found" in result.output


def test_scores_from_an_incomplete_run_are_flagged(isolated_user_dirs):
    run = make_run(isolated_user_dirs / "runs", "20261126-100000-partial", status="interrupted")
    fake_results(run, base=BASE_SCORES, finetuned=FT_SCORES, run_status="interrupted")
    md = _invoke("report", "partial", "--format", "markdown").output
    assert "is interrupted: it did not finish, so it is not scored as a complete run" in md
    assert "These scores were computed while the run was interrupted" in md
    assert "| 20261126-100000-partial | interrupted |" in md


def test_cli_evaluate_bad_input_messages(isolated_user_dirs, tmp_path):
    runs = isolated_user_dirs / "runs"
    make_run(runs, "20261127-100000-stopped", status="interrupted")
    result = CliRunner().invoke(main, ["evaluate", "stopped"])
    assert result.exit_code == 1
    assert "Run 20261127-100000-stopped is interrupted" in result.output and "--allow-incomplete" in result.output

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    result = CliRunner().invoke(main, ["evaluate", str(adapter), "--data", str(empty)])
    assert result.exit_code == 1 and "holds no examples" in result.output
    result = CliRunner().invoke(main, ["evaluate", str(adapter)])
    assert result.exit_code == 1 and "pass --data" in result.output
    assert "Traceback" not in result.output


def test_markdown_renderer_handles_pipes_in_answers(isolated_user_dirs):
    run = make_run(isolated_user_dirs / "runs", "20261128-100000-pipes")
    fake_results(run, base=BASE_SCORES, finetuned=FT_SCORES)
    results = json.loads((run / "eval" / "results.json").read_text())
    results["probes"][0]["finetuned"] = "a | b\nc"
    (run / "eval" / "results.json").write_text(json.dumps(results))
    md = render_markdown(build_report([load_run(run)]))
    assert "| fine-tuned | a \\| b c |" in md


def test_base_mismatch_is_flagged(isolated_user_dirs):
    run = make_run(isolated_user_dirs / "runs", "20261129-100000-other", base="HuggingFaceTB/SmolLM2-360M-Instruct")
    fake_results(run, base=BASE_SCORES, finetuned=FT_SCORES)  # evaluated against "bundled"
    notice = load_run(run).notice()
    assert "Base mismatch: the run was trained on 'HuggingFaceTB/SmolLM2-360M-Instruct'" in notice
    assert "medchat-metrics evaluate 20261129-100000-other" in notice


def test_runs_dir_option(tmp_path):
    populated_runs_root(tmp_path / "elsewhere")
    result = _invoke("report", "--runs-dir", str(tmp_path / "elsewhere"), "--format", "json")
    assert "20261121-090000-all-linear" in [r["run"] for r in json.loads(result.output)["experiments"]]


def test_the_shipped_default_run_is_listed(isolated_user_dirs, monkeypatch):
    from medchat.core import paths

    populated_runs_root(isolated_user_dirs / "runs")
    shipped = make_run(isolated_user_dirs / "assets", "default-run", created="2026-11-01T00:00:00+00:00")
    monkeypatch.setattr(paths, "DEFAULT_RUN_DIR", shipped)
    assert resolve_run("default") == shipped
    assert shipped in discover_runs()
    assert "medchat-metrics evaluate default" in load_run(shipped).notice()


def test_the_shipped_run_is_listed_once_when_its_original_is_in_the_runs_root(isolated_user_dirs, monkeypatch):
    import shutil

    from medchat.core import paths

    original = make_run(isolated_user_dirs / "runs", "default-smollm2", created="2026-11-01T00:00:00+00:00")
    shipped = isolated_user_dirs / "assets" / "default-run"
    shutil.copytree(original, shipped)
    monkeypatch.setattr(paths, "DEFAULT_RUN_DIR", shipped)
    assert discover_runs() == [original]
    shutil.rmtree(original)
    assert discover_runs() == [shipped]


@pytest.mark.parametrize("command", [["report"], ["compare", "20261120-100000-qv", "20261121-090000-all-linear"]])
def test_tables_fit_80_columns_and_wide_shows_every_column(runs_root, command):
    narrow = CliRunner(env={"COLUMNS": "80"}).invoke(main, command, catch_exceptions=False)
    assert narrow.exit_code == 0, narrow.output
    lines = narrow.output.splitlines()
    assert max(len(line) for line in lines) <= 80
    # nothing truncated ("ROU…", "fine-tu…"), cells wrap at spaces; only the data file's hash is shortened on purpose
    assert not re.search(r"(?<![0-9a-f]{6})…", narrow.output)
    assert not re.search(r"\bstat\s+us\b", narrow.output)
    flat = " ".join(narrow.output.split())
    assert "Not shown at 80 columns:" in flat and "--wide shows every column" in flat
    if command[0] == "report":
        header = next(line for line in lines if line.split()[:2] == ["run", "status"])
        assert "ROUGE-L" in header and "MCQ acc" in header and "eff. batch" not in header
        assert "medmcqa 55.0" in narrow.output  # the MCQ accuracy of the run that has one
        assert "25.0 ± 6.9" in narrow.output and "≈ chance" in narrow.output

    wide = CliRunner(env={"COLUMNS": "80"}).invoke(main, [*command, "--wide"], catch_exceptions=False)
    assert "Not shown" not in wide.output
    assert ("eff. batch" in wide.output and "fine-tuned acc_norm" in wide.output) if command[0] == "report" else \
        ("set F1 (seed)" in wide.output)
    full = CliRunner(env={"COLUMNS": "80"}).invoke(main, [*command, "--format", "json"], catch_exceptions=False)
    data = json.loads(full.output)
    if command[0] == "report":
        assert data["experiments"][0]["effective_batch"] == 8 and data["experiments"][0]["mcq"][0]["task"] == "medmcqa"
    else:
        assert data["rows"][0]["set_f1"] == FT_SCORES["set_f1"]
