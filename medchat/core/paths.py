"""Where medchat keeps things: user dirs (platformdirs, or what the entry point configured) and the shipped assets."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import platformdirs

APP = "medchat"
# The shipped data is package data: in a checkout medchat/assets links to the top-level assets/, in an
# installed wheel it is a plain folder inside the package; importlib.resources finds either.
ASSETS_DIR = Path(str(resources.files("medchat") / "assets")).resolve()


# The user's choices of directory (MEDCHAT_*_DIR, --runs-dir): the entry points read them
# (medchat.app.environment) and set them here with `configure`; the core reads no MEDCHAT_* variable.
_chosen: dict[str, Path] = {}
DIRS = ("cache", "data", "config", "runs")


def configure(**dirs: str | os.PathLike | None) -> None:
    """Set the directories named by DIRS (cache=, data=, config=, runs=); None or "" goes back to the default."""
    for name, value in dirs.items():
        if name not in DIRS:
            raise TypeError(f"configure() takes {', '.join(DIRS)}, not {name!r}")
        if value:
            _chosen[name] = Path(value).expanduser()
        else:
            _chosen.pop(name, None)


def cache_dir() -> Path:
    return _chosen.get("cache") or Path(platformdirs.user_cache_dir(APP))


def data_dir() -> Path:
    return _chosen.get("data") or Path(platformdirs.user_data_dir(APP))


def config_dir() -> Path:
    return _chosen.get("config") or Path(platformdirs.user_config_dir(APP))


def runs_root() -> Path:
    return _chosen.get("runs") or data_dir() / "runs"


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
