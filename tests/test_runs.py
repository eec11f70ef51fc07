"""medchat.core.runs: the one run-directory module under medchat-train and medchat-metrics."""

from __future__ import annotations

import json

import pytest

from medchat.core import paths
from medchat.core.errors import MedchatError
from medchat.core.runs import RunDir, RunError, discover_runs, resolve_run


def test_the_record_is_held_in_memory_and_rewritten_atomically_only_when_it_changes(tmp_path):
    run = RunDir(tmp_path / "r")
    run.write({"id": "r", "status": "running"})
    first = run.run_json.stat().st_ino
    assert run.update(status="running") == {"id": "r", "status": "running"}
    assert run.run_json.stat().st_ino == first  # nothing changed: nothing written
    run.update(status="complete", final={"eval_loss": 1.5})
    assert run.run_json.stat().st_ino != first  # a new file renamed over the old one
    assert json.loads(run.run_json.read_text()) == {"id": "r", "status": "complete", "final": {"eval_loss": 1.5}}
    assert [p.name for p in run.path.iterdir()] == ["run.json"]  # no temp file left behind

    copy = run.read()
    copy["status"] = "edited"
    assert run.status == "complete"  # read() hands out a copy

    other = RunDir(run.path)  # another process resumes the run: this handle sees it
    other.update(status="running")
    assert run.status == "running"


def test_a_broken_run_json_is_a_medchat_error_naming_the_file(tmp_path):
    (tmp_path / "run.json").write_text("{\n oops")
    with pytest.raises(RunError, match=r"run\.json is not valid JSON \(line 2") as caught:
        RunDir(tmp_path).read()
    assert isinstance(caught.value, MedchatError)


def test_resolve_run_by_path_id_unique_part_or_default(tmp_path):
    root = paths.runs_root()
    for name in ("20261121-090000-cpu", "20261122-080000-long"):
        RunDir(root / name).write({"id": name, "created": name})
    assert resolve_run("20261121-090000-cpu") == root / "20261121-090000-cpu"
    assert resolve_run("long") == root / "20261122-080000-long"
    assert resolve_run(root / "20261121-090000-cpu") == root / "20261121-090000-cpu"
    assert resolve_run("default") == paths.DEFAULT_RUN_DIR
    with pytest.raises(RunError, match="matches several runs"):
        resolve_run("2026112")
    with pytest.raises(RunError, match="Known runs: .*20261122-080000-long"):
        resolve_run("nope")
    assert discover_runs(include_default=False) == [root / "20261121-090000-cpu", root / "20261122-080000-long"]
