"""medchat.core.fileio: the one JSON Lines reader, the one file hash, the one staged write."""

from __future__ import annotations

import hashlib
import json

import pytest

from medchat.core.fileio import file_sha256, read_jsonl, staged_dir, staged_file


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


def test_a_staged_folder_replaces_the_target_whole_or_not_at_all(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with staged_dir(target) as staging:
            (staging / "new.txt").write_text("half")
            raise RuntimeError("the build failed")
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and (target / "old.txt").is_file()  # nothing left over
    with staged_dir(target) as staging:
        assert not target.joinpath("new.txt").exists()
        (staging / "new.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"] and [p.name for p in tmp_path.iterdir()] == ["out"]


def test_keep_existing_keeps_a_folder_made_meanwhile(tmp_path):
    target = tmp_path / "converted"
    with staged_dir(target, keep_existing=True) as staging:
        (staging / "mine").write_text("mine")
        target.mkdir()
        (target / "theirs").write_text("theirs")
    assert [p.name for p in target.iterdir()] == ["theirs"] and [p.name for p in tmp_path.iterdir()] == ["converted"]


def test_a_staged_file_appears_only_when_written(tmp_path):
    path = tmp_path / "sub" / "a.bin"
    with pytest.raises(OSError):
        with staged_file(path) as tmp:
            tmp.write_bytes(b"partial")
            raise OSError("disk full")
    assert not path.exists() and list(path.parent.iterdir()) == []
    with staged_file(path, suffix=".tmp.npy") as tmp:
        assert tmp.name.endswith(".tmp.npy")
        tmp.write_bytes(b"done")
    assert path.read_bytes() == b"done" and list(path.parent.iterdir()) == [path]
