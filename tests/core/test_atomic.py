"""embedstack._atomic: a target is replaced whole or left as it was, and no temp file stays behind."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from embedstack._atomic import atomic_path, atomic_write_bytes, atomic_write_text, publish


class Boom(Exception):
    pass


def _leftovers(folder: Path, keep: str) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != keep)


def test_text_and_bytes_write_and_replace(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    atomic_write_text(target, "é first")
    assert target.read_text(encoding="utf-8") == "é first"
    atomic_write_bytes(target, b"second")
    assert target.read_bytes() == b"second"
    assert _leftovers(tmp_path, "out.json") == []


def test_parent_folders_are_created(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "out.txt"
    atomic_write_text(str(target), "x")
    assert target.read_text() == "x"
    atomic_write_bytes(tmp_path / "c" / "d.bin", b"y")
    assert (tmp_path / "c" / "d.bin").read_bytes() == b"y"


@pytest.mark.skipif(os.name == "nt", reason="POSIX permissions")
def test_permissions_as_before(tmp_path: Path) -> None:
    # Without `mode` the file keeps mkstemp's 0600 (what atomic_write_text always gave) ...
    atomic_write_text(tmp_path / "private.json", "{}")
    assert stat.S_IMODE((tmp_path / "private.json").stat().st_mode) == 0o600
    # ... and `mode` is applied before the rename (the ONNX cache's shared graphs).
    atomic_write_bytes(tmp_path / "shared.onnx", b"g", mode=0o644)
    assert stat.S_IMODE((tmp_path / "shared.onnx").stat().st_mode) == 0o644


def test_a_writer_that_raises_midway_leaves_the_old_content(tmp_path: Path) -> None:
    target = tmp_path / "data.bin"
    target.write_bytes(b"old content")
    with pytest.raises(Boom), atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp != target
        with open(tmp, "wb") as fh:
            fh.write(b"half of the new")
            fh.flush()
            raise Boom
    assert target.read_bytes() == b"old content"
    assert _leftovers(tmp_path, "data.bin") == []


def test_a_failed_write_of_a_new_file_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "new.txt"
    with pytest.raises(Boom), atomic_path(target) as tmp:
        tmp.write_text("partial")
        raise Boom
    assert list(tmp_path.iterdir()) == []


def test_interrupts_clean_up_too(tmp_path: Path) -> None:
    target = tmp_path / "t.txt"
    target.write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as tmp:
        tmp.write_text("new")
        raise KeyboardInterrupt
    assert target.read_text() == "old"
    assert _leftovers(tmp_path, "t.txt") == []


def test_text_that_cannot_be_encoded_leaves_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "t.txt"
    target.write_text("old")
    with pytest.raises(UnicodeEncodeError):
        atomic_write_text(target, "lone surrogate \ud800")
    assert target.read_text() == "old"
    assert _leftovers(tmp_path, "t.txt") == []


def test_a_failing_rename_removes_the_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "t.txt"
    target.write_text("old")

    def refuse(src: object, dst: object) -> None:
        raise OSError("rename refused")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError, match="rename refused"):
        atomic_write_text(target, "new")
    monkeypatch.undo()
    assert target.read_text() == "old"
    assert _leftovers(tmp_path, "t.txt") == []


def test_a_named_temp_is_used_and_cleaned(tmp_path: Path) -> None:
    target = tmp_path / "meta.json"
    named = tmp_path / ".meta.json.host.1.abc.tmp"
    atomic_write_text(target, "{}", tmp=named)
    assert target.read_text() == "{}" and not named.exists()
    with pytest.raises(Boom), atomic_path(target, tmp=named) as tmp:
        assert tmp == named
        tmp.write_text("half")
        raise Boom
    assert not named.exists() and target.read_text() == "{}"


def test_streaming_writer(tmp_path: Path) -> None:
    target = tmp_path / "rows.jsonl"
    with atomic_path(target) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for i in range(3):
            fh.write(f"{i}\n")
        assert not target.exists()  # nothing visible until the block ends
    assert target.read_text() == "0\n1\n2\n"
    assert _leftovers(tmp_path, "rows.jsonl") == []


def test_publish_moves_a_finished_file(tmp_path: Path) -> None:
    tmp = tmp_path / "x.tmp"
    tmp.write_bytes(b"done")
    publish(tmp, tmp_path / "x", mode=0o640)
    assert (tmp_path / "x").read_bytes() == b"done" and not tmp.exists()
    if os.name != "nt":
        assert stat.S_IMODE((tmp_path / "x").stat().st_mode) == 0o640


def test_kvstore_reexport_is_the_shared_helper() -> None:
    from embedstack import _atomic
    from embedstack.kvstore.simple import atomic_write_text as reexported

    assert reexported is _atomic.atomic_write_text


def test_callers_use_the_shared_helper(tmp_path: Path) -> None:
    from embedstack.jobs import _output

    target = tmp_path / "o.meta.json"
    _output._write_json_atomic(target, {"a": 1})
    assert target.read_text(encoding="utf-8") == '{\n "a": 1\n}\n'
    assert _leftovers(tmp_path, "o.meta.json") == []
