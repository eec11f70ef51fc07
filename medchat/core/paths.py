"""Where medchat keeps things: user dirs (platformdirs, overridable by env) and the shipped assets."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import platformdirs

APP = "medchat"
# The shipped data is package data: in a checkout medchat/assets links to the top-level assets/, in an
# installed wheel it is a plain folder inside the package; importlib.resources finds either.
ASSETS_DIR = Path(str(resources.files("medchat") / "assets")).resolve()


def _dir(env: str, default: str) -> Path:
    return Path(os.environ.get(env) or default).expanduser()


def cache_dir() -> Path:
    return _dir("MEDCHAT_CACHE_DIR", platformdirs.user_cache_dir(APP))


def data_dir() -> Path:
    return _dir("MEDCHAT_DATA_DIR", platformdirs.user_data_dir(APP))


def config_dir() -> Path:
    return _dir("MEDCHAT_CONFIG_DIR", platformdirs.user_config_dir(APP))


_chosen_runs_root: Path | None = None


def use_runs_root(path: str | os.PathLike | None) -> None:
    """--runs-dir: the runs root for this command, over MEDCHAT_RUNS_DIR (None: back to the default)."""
    global _chosen_runs_root
    _chosen_runs_root = Path(path).expanduser() if path else None


def runs_root() -> Path:
    return _chosen_runs_root or _dir("MEDCHAT_RUNS_DIR", str(data_dir() / "runs"))


def history_db_path() -> Path:
    return data_dir() / "history.sqlite3"


def hash_memo_file() -> Path:
    """Digests of large files already hashed (see fileio.file_sha256)."""
    return cache_dir() / "hashes.json"


def config_file() -> Path:
    return config_dir() / "config.toml"


# The shipped default adapter is a complete run directory (run card, manifest, metrics, guard index).
DEFAULT_RUN_DIR = ASSETS_DIR / "default-run"


def default_adapter_dir() -> Path | None:
    """The adapter shipped in assets/default-run/adapter, if this install has one."""
    candidate = DEFAULT_RUN_DIR / "adapter"
    return candidate if (candidate / "adapter_config.json").is_file() else None
