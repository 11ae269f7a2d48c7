"""SQLiteKVStore: the persistent default; WAL, one transaction per batch, vectors as float32 blobs.

Safe for several threads and processes on one file: a connection per thread (and per process
after a fork), busy_timeout for waiting writers, BEGIN IMMEDIATE so writers queue instead of
deadlocking. A process killed mid-write leaves the last committed batch intact (WAL rollback).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from embedstack.kvstore._codec import UNREADABLE
from embedstack.kvstore.base import DEFAULT_COLLECTION, BaseKVStore

__all__ = ["SQLiteKVStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    collection TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
    PRIMARY KEY (collection, key)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS vectors (
    collection TEXT NOT NULL, key TEXT NOT NULL, dim INTEGER NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY (collection, key)) WITHOUT ROWID;
"""
_CHUNK = 500  # keys per IN (...) query, well under SQLite's variable limit


class SQLiteKVStore(BaseKVStore):
    """A key-value store in one SQLite file."""

    failure_hint: ClassVar[str] = (
        "check the cache file's permissions and free disk space, delete it if it is corrupt, "
        "or turn the cache off (--no-cache, embeddings_cache=None)"
    )

    def __init__(self, path: str | os.PathLike[str], timeout: float = 30.0, memory_entries: int = 100_000) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise IsADirectoryError(
                f"SQLiteKVStore path {self.path} is a directory; pass a file path such as {self.path / 'cache.sqlite'}"
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.timeout = timeout
        self.memory_entries = memory_entries
        self._local = threading.local()
        self._mem: dict[str, dict[str, bytes]] = {}
        self._mem_lock = threading.Lock()
        #: True when the file could only be opened read-only: reads work, writes raise.
        self.read_only = False
        self._conn()  # create the file and schema now, so a bad path fails here

    def __repr__(self) -> str:
        return f"SQLiteKVStore(path={str(self.path)!r})"

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "timeout": self.timeout, "memory_entries": self.memory_entries}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            return conn
        try:
            conn = self._open_rw()
        except sqlite3.OperationalError as e:
            conn = self._open_ro(e)  # a read-only file or folder: serve what it holds, writes will fail
        except sqlite3.DatabaseError as e:
            raise sqlite3.DatabaseError(
                f"cannot open SQLite cache {self.path}: {e}; delete the file to start a fresh cache"
            ) from e
        self._local.conn = conn
        self._local.pid = os.getpid()
        return conn

    def _open_rw(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False)
        try:
            conn.execute(f"PRAGMA busy_timeout={int(self.timeout * 1000)}")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(_SCHEMA)
        except BaseException:
            conn.close()
            raise
        return conn

    def _open_ro(self, cause: sqlite3.OperationalError) -> sqlite3.Connection:
        """Open the file read-only (immutable when its folder cannot hold WAL files); re-raise `cause` if absent."""
        if not self.path.is_file():
            raise sqlite3.OperationalError(
                f"cannot create SQLite cache {self.path}: {cause}; pick a writable path or turn the cache off"
            ) from cause
        uri = self.path.resolve().as_uri()
        last: sqlite3.Error = cause
        for query in ("mode=ro", "mode=ro&immutable=1"):
            try:
                conn = sqlite3.connect(
                    f"{uri}?{query}", uri=True, timeout=self.timeout, isolation_level=None, check_same_thread=False
                )
                conn.execute("SELECT 1 FROM vectors LIMIT 1").fetchall()
                self.read_only = True
                return conn
            except sqlite3.Error as e:
                last = e
        raise sqlite3.OperationalError(f"cannot open SQLite cache {self.path}: {last}") from cause

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction: committed whole, or rolled back whole."""
        conn = self._conn()
        if self.read_only:
            raise sqlite3.OperationalError(self._read_only_message())
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:  # SQLite may already have rolled back (disk full, I/O error)
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as e:
            if "readonly" in str(e):  # a read-only file opened read-write falls back to read-only
                self.read_only = True
                raise sqlite3.OperationalError(self._read_only_message()) from e
            raise

    def _read_only_message(self) -> str:
        return f"SQLite cache {self.path} is read-only (no write permission on the file or its folder)"

    def close(self) -> None:
        """Close this thread's connection."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # -- dict values -------------------------------------------------------------------------
    def put(self, key: str, val: dict[str, Any], collection: str = DEFAULT_COLLECTION) -> None:
        """Store `val` as JSON."""
        self.put_many({key: val}, collection)

    def put_many(self, items: Mapping[str, dict[str, Any]], collection: str = DEFAULT_COLLECTION) -> None:
        """Store many values in one transaction."""
        rows = [(collection, k, json.dumps(v)) for k, v in items.items()]
        with self._write() as conn:
            conn.executemany("INSERT OR REPLACE INTO kv (collection, key, value) VALUES (?, ?, ?)", rows)

    def get(self, key: str, collection: str = DEFAULT_COLLECTION) -> dict[str, Any] | None:
        """The value, or None."""
        return self.get_many([key], collection)[0]

    def get_many(self, keys: Sequence[str], collection: str = DEFAULT_COLLECTION) -> list[dict[str, Any] | None]:
        """Values in key order."""
        found = {k: v for k, v in self._select("SELECT key, value FROM kv", keys, collection)}
        out: list[dict[str, Any] | None] = []
        for k in keys:
            raw = found.get(k)
            out.append(None if raw is None else json.loads(raw))
        return out

    def get_all(self, collection: str = DEFAULT_COLLECTION) -> dict[str, dict[str, Any]]:
        """Every dict value of a collection."""
        rows = self._conn().execute("SELECT key, value FROM kv WHERE collection = ?", (collection,))
        return {k: json.loads(v) for k, v in rows}

    def delete(self, key: str, collection: str = DEFAULT_COLLECTION) -> bool:
        """Remove a key (dict or vector)."""
        self._forget(collection, key)
        with self._write() as conn:
            n = conn.execute("DELETE FROM kv WHERE collection = ? AND key = ?", (collection, key)).rowcount
            n += conn.execute("DELETE FROM vectors WHERE collection = ? AND key = ?", (collection, key)).rowcount
        return n > 0

    def _select(self, head: str, keys: Sequence[str], collection: str) -> list[tuple[Any, ...]]:
        conn = self._conn()
        rows: list[tuple[Any, ...]] = []
        for i in range(0, len(keys), _CHUNK):
            chunk = list(keys[i : i + _CHUNK])
            marks = ",".join("?" * len(chunk))
            rows += conn.execute(f"{head} WHERE collection = ? AND key IN ({marks})", [collection, *chunk]).fetchall()
        return rows

    # -- vectors -----------------------------------------------------------------------------
    def get_vector_blobs(self, keys: Sequence[str], collection: str) -> list[Any]:
        """Stored float32 bytes in key order (None when absent); the pipeline checks their length.

        Vectors this process read or wrote recently come from a bounded in-memory layer: cache
        keys are content hashes, so an entry's value never changes while it exists.
        """
        mem = self._mem.get(collection, {})
        out: list[Any] = [mem.get(k) for k in keys]
        missing = [k for k, b in zip(keys, out) if b is None]
        if missing:
            found, unreadable = self._select_tolerant("SELECT key, data FROM vectors", missing, collection)
            if found or unreadable:
                out = [
                    b if b is not None else (UNREADABLE if k in unreadable else found.get(k)) for k, b in zip(keys, out)
                ]
                self._remember(collection, found)
        return out

    def _select_tolerant(self, head: str, keys: Sequence[str], collection: str) -> tuple[dict[str, Any], set[str]]:
        """Rows for `keys`; where a damaged page makes a query fail, key by key, so what is readable is kept.

        Raises only when nothing at all could be read (the caller's error handling then takes over).
        """
        try:
            return dict(self._select(head, keys, collection)), set()
        except sqlite3.OperationalError:
            raise  # busy, locked, I/O: not a damaged page, so key-by-key reads would only wait again
        except sqlite3.DatabaseError as e:
            first_error = e
        found: dict[str, Any] = {}
        unreadable: set[str] = set()
        conn = self._conn()
        for key in keys:
            try:
                row = conn.execute(f"{head} WHERE collection = ? AND key = ?", (collection, key)).fetchone()
            except sqlite3.OperationalError:
                raise
            except sqlite3.DatabaseError:
                unreadable.add(key)
                continue
            if row is not None:
                found[row[0]] = row[1]
        if len(unreadable) == len(keys):
            raise first_error
        return found, unreadable

    def _remember(self, collection: str, items: Mapping[str, bytes]) -> None:
        if self.memory_entries <= 0:
            return
        with self._mem_lock:
            mem = self._mem.setdefault(collection, {})
            mem.update(items)
            for _ in range(len(mem) - self.memory_entries):
                del mem[next(iter(mem))]

    def _forget(self, collection: str, key: str | None = None) -> None:
        with self._mem_lock:
            if key is None:
                self._mem.pop(collection, None)
            else:
                self._mem.get(collection, {}).pop(key, None)

    def put_vectors(self, keys: Sequence[str], vectors: npt.NDArray[np.float32], collection: str) -> None:
        """Store each row as float32 bytes, all in one transaction."""
        mat = np.ascontiguousarray(vectors, dtype="<f4")
        dim = int(mat.shape[1]) if mat.ndim == 2 else 0
        rows = [(collection, k, dim, mat[i].tobytes()) for i, k in enumerate(keys)]
        with self._write() as conn:
            conn.executemany("INSERT OR REPLACE INTO vectors (collection, key, dim, data) VALUES (?, ?, ?, ?)", rows)
        self._remember(collection, {r[1]: r[3] for r in rows})

    def count_vectors(self, collection: str) -> int:
        """How many vectors a collection holds."""
        row = self._conn().execute("SELECT COUNT(*) FROM vectors WHERE collection = ?", (collection,)).fetchone()
        return int(row[0])
