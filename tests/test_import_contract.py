"""The layers contract in pyproject.toml is enforced: an upward import breaks `lint-imports`.

A copy of the three packages is linted in a tmp dir (cwd and PYTHONPATH there, so the copy wins over any
install of medchat); one injected import at a time must break the layers contract.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
LAYERS = "Layers: app above trainer and metrics, both above the headless core"

pytestmark = pytest.mark.skipif(not LINT_IMPORTS.is_file(), reason="import-linter is not installed (pip install .[dev])")


@pytest.fixture
def copy(tmp_path) -> Path:
    for package in ("medchat", "trainer", "metrics"):
        shutil.copytree(REPO / package, tmp_path / package, symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__", "assets"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    return tmp_path


def _lint(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=root, env=env, capture_output=True, text=True,
                          timeout=300)


def _inject(path: Path, line: str) -> None:
    path.write_text(path.read_text(encoding="utf-8") + f"\n\ndef _upward():\n    {line}\n", encoding="utf-8")


def test_the_unmodified_copy_keeps_every_contract(copy):
    result = _lint(copy)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{LAYERS} KEPT" in result.stdout


@pytest.mark.parametrize(("module", "line", "shown"), [
    ("medchat/core/engine.py", "import medchat.app.cli", "medchat.core.engine -> medchat.app.cli"),
    ("metrics/scores.py", "import trainer.config", "metrics.scores -> trainer.config"),
    ("medchat/core/history.py", "from metrics import report", "medchat.core.history -> metrics.report"),
])
def test_an_upward_import_even_inside_a_function_breaks_the_layers(copy, module, line, shown):
    _inject(copy / module, line)
    result = _lint(copy)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{LAYERS} BROKEN" in result.stdout
    assert shown in result.stdout
