"""Atomic file writes: a temp file in the target's folder, fsync, then os.replace.

A reader sees the old file or the new one, never a half-written one; on any failure the temp file
is removed and the target is left as it was.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text", "publish"]

StrPath = str | os.PathLike[str]


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(tmp: StrPath, target: StrPath, *, mode: int | None = None) -> None:
    """Flush the finished `tmp` to disk, give it `mode` (when set) and rename it over `target`."""
    _fsync(Path(tmp))
    if mode is not None:
        os.chmod(tmp, mode)
    os.replace(tmp, target)


def _new_temp(target: Path, suffix: str) -> Path:
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=suffix)
    os.close(fd)
    return Path(name)


@contextlib.contextmanager
def atomic_path(
    path: StrPath, *, mode: int | None = None, tmp: StrPath | None = None, suffix: str = ".tmp"
) -> Iterator[Path]:
    """Yield a temp path next to `path` for a writer that streams; on a clean exit it replaces `path`.

    The temp file is made with mkstemp (mode 0600) unless `tmp` names one; `mode` is applied before
    the rename. The parent folder is created. If the block raises, the temp file is removed.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = Path(tmp) if tmp is not None else _new_temp(target, suffix)
    try:
        yield temp
        publish(temp, target, mode=mode)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise


def atomic_write_bytes(path: StrPath, data: bytes, *, mode: int | None = None, tmp: StrPath | None = None) -> None:
    """Write `data` to `path` atomically (see `atomic_path`)."""
    with atomic_path(path, mode=mode, tmp=tmp) as temp, open(temp, "wb") as fh:
        fh.write(data)


def atomic_write_text(
    path: StrPath,
    text: str,
    *,
    encoding: str = "utf-8",
    mode: int | None = None,
    tmp: StrPath | None = None,
) -> None:
    """Write `text` to `path` through a temporary file and a rename: never a half-written file."""
    with atomic_path(path, mode=mode, tmp=tmp) as temp, open(temp, "w", encoding=encoding) as fh:
        fh.write(text)
