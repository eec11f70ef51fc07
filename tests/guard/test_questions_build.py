"""Question files and the index-building command's error handling."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from medchat.app.guard_build import main as build_main
from medchat.core.guard.questions import QuestionFileError, calibration_sets, dedupe, read_questions, sample


def test_read_jsonl_keys_and_txt(tmp_path):
    f = tmp_path / "q.jsonl"
    f.write_text(
        json.dumps({"question": " What  is asthma? "}) + "\n\n"
        + json.dumps({"instruction": "Answer this question truthfully", "input": "What causes gout?"}) + "\n"
    )
    assert read_questions(f) == ["What is asthma?", "What causes gout?"]
    t = tmp_path / "q.txt"
    t.write_text("first question\n\n second  one \n")
    assert read_questions(t) == ["first question", "second one"]


def test_read_errors_name_file_and_line(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text(json.dumps({"question": "ok"}) + "\n{broken\n")
    with pytest.raises(QuestionFileError, match=r"bad\.jsonl, line 2: not valid JSON"):
        read_questions(f)
    f.write_text(json.dumps({"answer": "no question"}) + "\n")
    with pytest.raises(QuestionFileError, match=r"bad\.jsonl, line 1: no question text"):
        read_questions(f)


def test_dedupe_and_sample():
    assert dedupe(["A b", "a  B", "c"]) == ["A b", "c"]
    qs = [str(i) for i in range(100)]
    assert sample(qs, 10, seed=1) == sample(qs, 10, seed=1)
    assert len(sample(qs, 10)) == 10 and sample(qs, None) == qs


def test_calibration_sets(tmp_path):
    (tmp_path / "mcq").mkdir()
    (tmp_path / "ood").mkdir()
    (tmp_path / "mcq" / "a.jsonl").write_text(json.dumps({"question": "q1"}) + "\n")
    (tmp_path / "ood" / "b.jsonl").write_text(json.dumps({"question": "g1"}) + "\n")
    assert calibration_sets(tmp_path) == ({"a": ["q1"]}, {"b": ["g1"]})


def test_build_command_reports_bad_file(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text("{nope\n")
    res = CliRunner().invoke(build_main, ["--questions", str(f), "--out", str(tmp_path / "out")])
    assert res.exit_code == 1
    assert "bad.jsonl, line 1" in res.output and "Traceback" not in res.output
