"""The MEDCHAT_* environment variables: read here, once, when a command starts, and passed down.

The core, trainer and metrics read none of them: the directories go to `medchat.core.paths.configure`,
the decoding choices into every ModelSpec the command builds (`model_settings`). MEDCHAT_BACKEND is the
--backend flag's own envvar (click reads it with the flag). The variables libraries read themselves
(HF_*, TOKENIZERS_PARALLELISM, WANDB_*, MLFLOW_*, RANK/WORLD_SIZE set by torchrun) stay where they are used.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

from medchat.core import paths
from medchat.core.errors import MedchatError

# variable -> the directory it sets in medchat.core.paths
DIR_VARIABLES = {"MEDCHAT_CACHE_DIR": "cache", "MEDCHAT_DATA_DIR": "data", "MEDCHAT_CONFIG_DIR": "config",
                 "MEDCHAT_RUNS_DIR": "runs"}


class EnvironmentVariableError(MedchatError):
    """A MEDCHAT_* variable holds a value medchat cannot use."""


@dataclass(frozen=True)
class Environment:
    dirs: dict[str, str]  # paths.DIRS name -> the directory the variable names
    threads: int | None = None  # MEDCHAT_THREADS: decoding threads of the ONNX and llama.cpp backends
    gguf_type: str | None = None  # MEDCHAT_GGUF_TYPE: the llama.cpp backend's layer weight type
    onnx_precision: str | None = None  # MEDCHAT_ONNX_PRECISION: the ONNX backend's weight precision

    @classmethod
    def read(cls, environ: Mapping[str, str] | None = None) -> "Environment":
        environ = os.environ if environ is None else environ
        threads = environ.get("MEDCHAT_THREADS", "").strip()
        if threads and not (threads.isdigit() and int(threads) >= 1):
            raise EnvironmentVariableError(f"MEDCHAT_THREADS must be a whole number of threads (1 or more), not {threads!r}; "
                                    "set it right or unset it to use half the CPUs.")
        precision = environ.get("MEDCHAT_ONNX_PRECISION") or None
        if precision:
            from medchat.core.onnx_export import OnnxExportError, precisions

            try:
                precisions(precision)
            except OnnxExportError as exc:  # now, not as a traceback from deep in the backend choice
                raise EnvironmentVariableError(f"{exc} Set it right or unset it for int8.") from None
        return cls(dirs={name: environ[var] for var, name in DIR_VARIABLES.items() if environ.get(var)},
                   threads=int(threads) if threads else None,
                   gguf_type=environ.get("MEDCHAT_GGUF_TYPE") or None,
                   onnx_precision=precision)

    def apply(self) -> None:
        """Point medchat.core.paths at the directories chosen here (every other one back to its default)."""
        paths.configure(**{name: self.dirs.get(name) for name in paths.DIRS})

    def model_settings(self) -> dict:
        """The ModelSpec fields these variables choose."""
        return {"threads": self.threads, "gguf_type": self.gguf_type, "onnx_precision": self.onnx_precision}


_current = Environment(dirs={})


def start() -> Environment:
    """At an entry point: read the environment, apply it, and keep it for the command's ModelSpecs."""
    global _current
    _current = Environment.read()
    _current.apply()
    return _current


def current() -> Environment:
    """What `start` read (nothing set before a command started)."""
    return _current
