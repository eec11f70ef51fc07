"""Result files: written so that a crash never leaves half of one behind, hashed for the records, and read
back with errors that name the file and line."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


@contextmanager
def staged_file(path: Path, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary file beside `path` for the block to write; renamed over `path` when the block ends
    without an error, removed when it raises. `suffix`: for writers that insist on an ending (np.save)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def staged_dir(target: Path, keep_existing: bool = False) -> Iterator[Path]:
    """A fresh folder beside `target` for the block to fill; it takes `target`'s place whole when the block
    ends without an error, and is removed when it raises, so a reader never sees half a folder.
    `keep_existing`: a `target` already there by then (a concurrent build that won the race) stays, and
    this one is dropped; otherwise the old `target` is removed only once the new one is in place."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield staging
        if target.exists() and keep_existing:
            shutil.rmtree(staging)
            return
        old = target.with_name(f".{target.name}.old-{os.getpid()}") if target.exists() else None
        if old is not None:
            os.replace(target, old)
        os.replace(staging, target)
        if old is not None:
            shutil.rmtree(old) if old.is_dir() else old.unlink()
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    """Write to a temporary file beside `path`, flush it to disk, then rename it over `path`."""
    with staged_file(path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def json_finite(obj: Any) -> Any:
    """NaN and infinity are not JSON: write them as null."""
    if isinstance(obj, float) and (math.isnan(obj) or math.isinf(obj)):
        return None
    if isinstance(obj, dict):
        return {k: json_finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [json_finite(v) for v in obj]
    return obj


def file_sha256(path: Path, memo: Path | None = None) -> str:
    """SHA-256 of a file. With `memo` (a JSON file) the digest is remembered per (path, size, mtime), so that a
    large file hashed on every load (the bundled GGUF, a base for export) is read once."""
    path = Path(path)
    if memo is not None:
        stat = path.stat()
        key = f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
        try:
            known = json.loads(memo.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            known = {}
        if key in known:
            return known[key]
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    if memo is not None:
        known[key] = digest.hexdigest()
        write_text_atomic(memo, json.dumps(known, indent=1))
    return digest.hexdigest()


def read_jsonl(path: Path, error: type[Exception]) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line of a JSON Lines file; a bad line raises `error` naming
    the file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise error(f"cannot read {path}: {exc.strerror or exc}") from exc
    rows = []
    # Lines end at "\n" only: str.splitlines would also cut at U+2028 or \x85, which JSON strings may hold.
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise error(f"{path}, line {lineno}: not valid JSON ({exc.msg}).") from exc
        if not isinstance(row, dict):
            raise error(f"{path}, line {lineno}: expected a JSON object.")
        rows.append((lineno, row))
    return rows
