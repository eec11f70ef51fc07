"""medchat.core.fileio: the one JSON Lines reader and the one file hash."""

from __future__ import annotations

import hashlib
import json

import pytest

from medchat.core.fileio import file_sha256, read_jsonl


class BadFile(Exception):
    pass


def test_a_line_separator_inside_a_json_string_does_not_end_the_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    rows = [{"question": "first\u2028part", "answer": "a\x85b"}, {"question": "second"}]
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n\n", encoding="utf-8")
    assert read_jsonl(path, BadFile) == [(1, rows[0]), (2, rows[1])]


def test_a_bad_line_names_the_file_and_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n\n[1, 2]\n', encoding="utf-8")
    with pytest.raises(BadFile, match=r"rows\.jsonl, line 3: expected a JSON object"):
        read_jsonl(path, BadFile)


def test_the_memo_remembers_a_digest_until_the_file_changes(tmp_path):
    path, memo = tmp_path / "weights.bin", tmp_path / "hashes.json"
    path.write_bytes(b"x" * 3_000_000)
    digest = file_sha256(path, memo=memo)
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest() == file_sha256(path)
    [(key, value)] = json.loads(memo.read_text()).items()
    memo.write_text(json.dumps({key: "remembered"}))
    assert file_sha256(path, memo=memo) == "remembered"  # not read again
    path.write_bytes(b"y")  # size and mtime change: hashed again
    assert file_sha256(path, memo=memo) == hashlib.sha256(b"y").hexdigest()
