"""Question files and the index-building command's error handling."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from medchat.app.guard_build import main as build_main
from medchat.core.guard.questions import QuestionFileError, asset_groups, data_groups, dedupe, read_questions, sample


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


def _data_dir(tmp_path, clinc_line=None):
    from medchat.core.guard.questions import CLINC_FILE, GENERAL_FILES, MEDICAL_FILES

    for i, rel in enumerate([*MEDICAL_FILES.values(), *GENERAL_FILES.values()]):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("".join(json.dumps({"question": f"q{i} {j}"}) + "\n" for j in range(5)))
    rows = [{"question": f"r {d} {j}", "domain": d} for d in ("banking", "home") for j in range(3)]
    (tmp_path / CLINC_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows) + (clinc_line or ""))
    return tmp_path


def test_data_groups_one_per_source_and_clinc_domain(tmp_path):
    medical, general = data_groups(_data_dir(tmp_path), max_per_group=4)
    assert set(medical) == {"wikidoc_patient_info", "medquad", "medmcqa", "mmlu_medical", "pubmedqa"}
    assert {"nq_open", "clinc150_banking", "clinc150_home"} <= set(general)
    assert all(len(v) == 4 for v in medical.values()) and len(general["clinc150_home"]) == 3


def test_data_groups_errors_name_the_file(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(QuestionFileError, match="missing .*medquad.jsonl"):
        data_groups(tmp_path / "empty")
    with pytest.raises(QuestionFileError, match="clinc150.jsonl, line 7"):
        data_groups(_data_dir(tmp_path, '{"question": "no domain"}\n'))


def test_the_shipped_groups_are_disjoint():
    from medchat.core.paths import ASSETS_DIR

    medical, general = asset_groups(ASSETS_DIR / "guard")
    med = {q.lower() for v in medical.values() for q in v}
    assert len(medical["lay_medical"]) > 300 and len(general["own_requests"]) > 400
    assert not med & {q.lower() for v in general.values() for q in v}


def test_build_command_reports_a_bad_data_dir(tmp_path):
    res = CliRunner().invoke(build_main, ["--data-dir", str(tmp_path), "--out", str(tmp_path / "out")])
    assert res.exit_code == 1
    assert "expected a copy of ../shared/data" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_build_command_names_a_bad_questions_file(tmp_path):
    f = tmp_path / "mine.jsonl"
    f.write_text("{nope\n")
    res = CliRunner().invoke(build_main, ["--data-dir", str(_data_dir(tmp_path / "data")), "--questions", str(f),
                                          "--out", str(tmp_path / "out")])
    assert res.exit_code == 1
    assert "mine.jsonl, line 1" in res.output and "Traceback" not in res.output
