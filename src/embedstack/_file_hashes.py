"""Content hashes (sha256) of model files, memoised so that an untouched file costs one stat.

Cache keys that pin a model's files use these hashes, never sizes or times: a file replaced in place with the
same size and a preserved mtime (``cp -p``, ``touch -r``, ``rsync -t``) is a new key, and keys stay the same on
every machine that has the same files (a shared Redis cache).

The memo maps a file's (resolved path, size, mtime_ns, ctime_ns, inode) to its sha256, in the process and in a
small JSON file written atomically. The ctime is the part a copy cannot preserve: any write or metadata change
sets it to now, so a rewritten file is hashed again. A Hugging Face cache blob (``blobs/<sha256>``, what a
snapshot's LFS files link to) is named by its sha256 already and is never read.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import threading
from pathlib import Path

from embedstack._atomic import atomic_write_text

__all__ = ["MEMO_NAME", "cache_root", "file_sha256", "sha256_file"]

#: The memo's file name (in embedstack's cache directory, or the folder a caller passes).
MEMO_NAME = "file-hashes.json"
#: Entries kept in a memo file (the most recently hashed); older ones are simply hashed again.
_MAX_ENTRIES = 4096
_SHA256 = re.compile(r"[0-9a-f]{64}")

_lock = threading.Lock()
_in_process: dict[tuple[str, int, int, int, int], str] = {}


def cache_root() -> Path:
    """$EMBEDSTACK_CACHE_DIR, else the user cache directory's embedstack folder."""
    env = os.environ.get("EMBEDSTACK_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    try:
        import platformdirs

        return Path(platformdirs.user_cache_dir("embedstack"))
    except ImportError:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        return Path(base) / "embedstack"


def _stamp(path: str, st: os.stat_result) -> tuple[str, int, int, int, int]:
    return (path, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def _blob_sha256(real: Path) -> str | None:
    """The sha256 a Hugging Face cache blob is named by (``…/blobs/<sha256>``; LFS files), else None."""
    if real.parent.name == "blobs" and _SHA256.fullmatch(real.name):
        return real.name
    return None


def sha256_file(path: Path) -> str:
    """The sha256 of `path`'s content, read now (no memo)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


#: The memo files read in this process, with the (mtime_ns, size) they had: a model's files are looked up one by
#: one, and the file is parsed again only when it changed.
_parsed: dict[str, tuple[tuple[int, int], dict[str, dict[str, object]]]] = {}


def _read_memo(memo: Path) -> dict[str, dict[str, object]]:
    try:
        st = memo.stat()
        version = (st.st_mtime_ns, st.st_size)
        known = _parsed.get(str(memo))
        if known is not None and known[0] == version:
            return dict(known[1])
        data = json.loads(memo.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    _parsed[str(memo)] = (version, data)
    return dict(data)


def _entry(stamp: tuple[str, int, int, int, int], sha256: str) -> dict[str, object]:
    return {"size": stamp[1], "mtime_ns": stamp[2], "ctime_ns": stamp[3], "inode": stamp[4], "sha256": sha256}


def _remember(memo: Path, stamp: tuple[str, int, int, int, int], sha256: str) -> None:
    """Add one entry to the memo file (read, update, atomic replace); a failed write only costs a rehash later."""
    data = _read_memo(memo)
    data.pop(stamp[0], None)
    data[stamp[0]] = _entry(stamp, sha256)  # last: the newest survive the trim below
    if len(data) > _MAX_ENTRIES:
        data = dict(list(data.items())[-_MAX_ENTRIES:])
    with contextlib.suppress(OSError):
        atomic_write_text(memo, json.dumps(data, indent=0, sort_keys=False))


def file_sha256(path: Path, memo_dir: Path | None = None) -> str:
    """The sha256 of `path`'s content (symlinks followed), from the memo when the file is untouched since.

    `memo_dir`: the folder of the memo file (default: `cache_root()`).
    """
    real = Path(os.path.realpath(path))
    named = _blob_sha256(real)
    if named is not None:
        return named
    st = os.stat(real)
    stamp = _stamp(str(real), st)
    with _lock:
        known = _in_process.get(stamp)
    if known is not None:
        return known
    memo = (memo_dir if memo_dir is not None else cache_root()) / MEMO_NAME
    entry = _read_memo(memo).get(stamp[0])
    found = entry.get("sha256") if isinstance(entry, dict) else None
    if isinstance(found, str) and _SHA256.fullmatch(found) and entry == _entry(stamp, found):
        with _lock:
            _in_process[stamp] = found
        return found
    sha256 = sha256_file(real)
    after = _stamp(str(real), os.stat(real))
    if after != stamp:  # written while it was read: hash what is there now, remember nothing
        return sha256_file(real)
    with _lock:
        _in_process[stamp] = sha256
        _remember(memo, stamp, sha256)
    return sha256
