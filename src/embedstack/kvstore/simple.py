"""SimpleKVStore: an in-memory store that persists to one JSON file (LlamaIndex's format)."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from typing_extensions import Self

from embedstack._atomic import atomic_write_text
from embedstack.kvstore.base import DEFAULT_BATCH_SIZE, DEFAULT_COLLECTION, BaseKVStore

__all__ = ["SimpleKVStore", "atomic_write_text"]


def _not_ours(path: Path, why: str) -> ValueError:
    return ValueError(
        f"{path}: not a SimpleKVStore file ({why}); pass a file written by SimpleKVStore.persist() "
        '(JSON: {"collection": {"key": {...}}}), or delete it to start empty'
    )


def _shape_problem(data: Any) -> str | None:
    """What keeps `data` from being {collection: {key: dict}}, or None."""
    if not isinstance(data, dict):
        return f"top level is {_kind(data)}, expected an object"
    for name, coll in data.items():
        if not isinstance(coll, dict):
            return f"collection {name!r} is {_kind(coll)}, expected an object"
        for key, val in coll.items():
            if not isinstance(val, dict):
                return f"entry {key!r} of collection {name!r} is {_kind(val)}, expected an object"
    return None


def _kind(value: Any) -> str:
    kinds = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return kinds.get(type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__)


class SimpleKVStore(BaseKVStore):
    """Collections of dicts in memory; persist(path) / from_persist_path(path) as JSON."""

    def __init__(self, data: dict[str, dict[str, dict[str, Any]]] | None = None) -> None:
        self._data: dict[str, dict[str, dict[str, Any]]] = data if data is not None else {}
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {"_data": self._data}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._data = state["_data"]
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"SimpleKVStore(collections={len(self._data)})"

    def put(self, key: str, val: dict[str, Any], collection: str = DEFAULT_COLLECTION) -> None:
        """Store a copy of `val`."""
        with self._lock:
            self._data.setdefault(collection, {})[key] = dict(val)

    def get(self, key: str, collection: str = DEFAULT_COLLECTION) -> dict[str, Any] | None:
        """A copy of the value, or None."""
        val = self._data.get(collection, {}).get(key)
        return None if val is None else dict(val)

    def get_all(self, collection: str = DEFAULT_COLLECTION) -> dict[str, dict[str, Any]]:
        """A copy of a collection."""
        return {k: dict(v) for k, v in self._data.get(collection, {}).items()}

    def delete(self, key: str, collection: str = DEFAULT_COLLECTION) -> bool:
        """Remove a key."""
        with self._lock:
            return self._data.get(collection, {}).pop(key, None) is not None

    def get_many(self, keys: Sequence[str], collection: str = DEFAULT_COLLECTION) -> list[dict[str, Any] | None]:
        """Values in key order; values are shared, not copied (the vector path only reads them)."""
        coll = self._data.get(collection, {})
        return [coll.get(k) for k in keys]

    def put_many(self, items: Mapping[str, dict[str, Any]], collection: str = DEFAULT_COLLECTION) -> None:
        """Store many values under one lock."""
        with self._lock:
            self._data.setdefault(collection, {}).update(items)

    # In memory: the async twins run inline, no thread hop.
    async def aput(self, key: str, val: dict[str, Any], collection: str = DEFAULT_COLLECTION) -> None:
        """Async put."""
        self.put(key, val, collection)

    async def aget(self, key: str, collection: str = DEFAULT_COLLECTION) -> dict[str, Any] | None:
        """Async get."""
        return self.get(key, collection)

    async def aget_all(self, collection: str = DEFAULT_COLLECTION) -> dict[str, dict[str, Any]]:
        """Async get_all."""
        return self.get_all(collection)

    async def adelete(self, key: str, collection: str = DEFAULT_COLLECTION) -> bool:
        """Async delete."""
        return self.delete(key, collection)

    async def aput_all(
        self,
        kv_pairs: Sequence[tuple[str, dict[str, Any]]],
        collection: str = DEFAULT_COLLECTION,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> None:
        """Async put_all."""
        self.put_all(kv_pairs, collection, batch_size)

    async def aget_many(self, keys: Sequence[str], collection: str = DEFAULT_COLLECTION) -> list[dict[str, Any] | None]:
        """Async get_many."""
        return self.get_many(keys, collection)

    async def aput_many(self, items: Mapping[str, dict[str, Any]], collection: str = DEFAULT_COLLECTION) -> None:
        """Async put_many."""
        self.put_many(items, collection)

    async def aget_vector_blobs(self, keys: Sequence[str], collection: str) -> list[Any]:
        """Async get_vector_blobs, inline."""
        return self.get_vector_blobs(keys, collection)

    async def aget_vectors(self, keys: Sequence[str], collection: str) -> list[Any]:
        """Async get_vectors, inline."""
        return self.get_vectors(keys, collection)

    async def aput_vectors(self, keys: Sequence[str], vectors: Any, collection: str) -> None:
        """Async put_vectors, inline."""
        self.put_vectors(keys, vectors, collection)

    def persist(self, persist_path: str | os.PathLike[str], fs: Any = None) -> None:
        """Write everything to `persist_path` as JSON, atomically."""
        with self._lock:
            text = json.dumps(self._data)
        atomic_write_text(persist_path, text)

    @classmethod
    def from_persist_path(cls, persist_path: str | os.PathLike[str], fs: Any = None) -> Self:
        """Load a store written by persist()."""
        path = Path(persist_path)
        if not path.exists():
            raise FileNotFoundError(f"no SimpleKVStore file at {path}; call persist() first or pass an existing path")
        raw = path.read_bytes()
        try:
            data = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise _not_ours(path, f"bytes that are not UTF-8 (0x{raw[e.start]:02x} at byte {e.start + 1})") from None
        except json.JSONDecodeError as e:
            raise _not_ours(path, f"not JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
        problem = _shape_problem(data)
        if problem:
            raise _not_ours(path, problem)
        return cls(data)

    def to_dict(self) -> dict[str, Any]:
        """All collections as a dict."""
        return self._data

    @classmethod
    def from_dict(cls, save_dict: dict[str, Any]) -> Self:
        """A store over `save_dict`."""
        return cls(save_dict)
