"""MEDCHAT_* variables are read once, at the entry point, and passed down (the core reads none of them)."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from medchat.app import environment
from medchat.app.cli_options import MedchatCommand, model_options
from medchat.core import paths

ROOT = Path(__file__).resolve().parents[1]


def test_read_takes_every_variable():
    env = environment.Environment.read({"MEDCHAT_DATA_DIR": "/d", "MEDCHAT_RUNS_DIR": "/r", "MEDCHAT_THREADS": "3",
                                        "MEDCHAT_GGUF_TYPE": "q4_0", "MEDCHAT_ONNX_PRECISION": "int4"})
    assert env.dirs == {"data": "/d", "runs": "/r"}
    assert env.model_settings() == {"threads": 3, "gguf_type": "q4_0", "onnx_precision": "int4"}
    assert environment.Environment.read({}).model_settings() == {"threads": None, "gguf_type": None,
                                                                  "onnx_precision": None}


def test_the_core_follows_what_the_entry_point_read(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDCHAT_DATA_DIR", str(tmp_path / "elsewhere"))
    assert paths.data_dir() == tmp_path / "data"  # conftest's start; the core did not look again
    environment.start()
    assert paths.data_dir() == tmp_path / "elsewhere" and paths.history_db_path().parent == tmp_path / "elsewhere"


def _spec_command(seen):
    @click.command(cls=MedchatCommand)
    @model_options
    def show(spec):
        seen["spec"] = spec

    return show


def test_the_commands_model_spec_carries_the_decoding_variables(monkeypatch):
    seen = {}
    monkeypatch.setenv("MEDCHAT_THREADS", "2")
    monkeypatch.setenv("MEDCHAT_GGUF_TYPE", "q4_1")
    monkeypatch.setenv("MEDCHAT_ONNX_PRECISION", "fp32")
    assert CliRunner().invoke(_spec_command(seen), []).exit_code == 0
    spec = seen["spec"]
    assert (spec.threads, spec.gguf_type, spec.onnx_precision) == (2, "q4_1", "fp32")


@pytest.mark.parametrize("variable, value", [("MEDCHAT_THREADS", "many"), ("MEDCHAT_ONNX_PRECISION", "bogus"),
                                             ("MEDCHAT_ONNX_PRECISION", "fp32+fp32")])
def test_a_bad_variable_is_one_line_naming_it(monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)
    result = CliRunner().invoke(_spec_command({}), [])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [result.output.strip()] and variable in result.output
    assert "Traceback" not in result.output


def test_a_speculative_precision_is_accepted():
    assert environment.Environment.read({"MEDCHAT_ONNX_PRECISION": "int8+fp32"}).onnx_precision == "int8+fp32"


def test_no_module_below_the_app_reads_a_medchat_variable():
    reads = re.compile(r"(environ(\.get)?\s*[\[(]|getenv\()\s*[\"']MEDCHAT_")
    found = [f"{path.relative_to(ROOT)}:{n}" for package in ("medchat/core", "trainer", "metrics")
             for path in sorted((ROOT / package).rglob("*.py"))
             for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if reads.search(line)]
    assert found == []
