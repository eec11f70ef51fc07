"""A real, non-editable install works away from the checkout: the wheel carries the shipped assets.

The wheel is built from this checkout and installed with `pip install --no-deps` into a fresh venv. The
heavy dependencies (torch, transformers, the bundled model package) come from the running interpreter's
site-packages through a .pth file: a directory named in a .pth is added to sys.path without its own .pth
files being run, so an editable install of medchat there stays out of the way.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

from medchat.core.session import PHYSICIAN_REMINDER

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.bundled


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("install")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the checkout must not be importable
    wheels = root / "wheels"
    source = root / "source"  # a copy, so that the build leaves no build/ or egg-info in the checkout
    for name in ("medchat", "trainer", "metrics", "assets"):
        shutil.copytree(REPO / name, source / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(wheels), str(source)], check=True, cwd=root, env=env, timeout=600)
    env_dir = root / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    bin_dir = env_dir / "bin"
    site = Path(subprocess.run([str(bin_dir / "python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               capture_output=True, text=True, check=True, env=env).stdout.strip())
    [wheel] = wheels.glob("medchat-*.whl")
    subprocess.run([str(bin_dir / "python"), "-m", "pip", "install", "--no-deps", "-q", str(wheel)], check=True,
                   cwd=root, env=env, timeout=600)
    # After the install: pip would otherwise take the editable medchat it sees there as already installed.
    (site / "shared-deps.pth").write_text(sysconfig.get_path("purelib") + "\n", encoding="utf-8")
    work = root / "elsewhere"
    work.mkdir()
    env.update(HF_HUB_OFFLINE="1", MEDCHAT_RUNS_DIR=str(root / "runs"), MEDCHAT_DATA_DIR=str(root / "data"),
               MEDCHAT_CONFIG_DIR=str(root / "config"))
    return {"bin": bin_dir, "cwd": work, "env": env, "site": site}


def _run(installed: dict, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(installed["bin"] / args[0]), *args[1:]], cwd=installed["cwd"], env=installed["env"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return proc


def test_the_installed_package_is_the_wheel_not_the_checkout(installed):
    where = _run(installed, "python", "-c", "import medchat, medchat.core.paths as p; print(medchat.__file__); "
                 "print(p.ASSETS_DIR)").stdout.split()
    assert all(Path(w).is_relative_to(installed["site"]) for w in where), where
    assert not any(Path(w).is_relative_to(REPO) for w in where)


def test_every_command_finds_the_shipped_assets(installed):
    presets = _run(installed, "medchat-train", "presets").stdout
    assert "cpu-smollm2" in presets

    flagged = json.loads(_run(installed, "medchat", "guard", "--rules-only",
                              "I have crushing chest pain spreading to my arm").stdout)
    assert flagged["red_flags"] and flagged["red_flags"][0]["rule_id"] == "chest_pain"

    report = _run(installed, "medchat-metrics", "report").stdout
    assert "default" in report.lower() and "rouge" in report.lower()

    answer = _run(installed, "medchat", "ask", "--max-new-tokens", "4", "What is aspirin used for?").stdout
    assert answer.rstrip().endswith(PHYSICIAN_REMINDER)
