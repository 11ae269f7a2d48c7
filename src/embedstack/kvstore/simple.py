"""SimpleKVStore: an in-memory store that persists to one JSON file (LlamaIndex's format)."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from typing_extensions import Self

from embedstack._atomic import atomic_write_text
from embedstack.kvstore._codec import dict_to_blob, encode_dict
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
    """Collections of dicts in memory; persist(path) / from_persist_path(path) as JSON.

    Vectors written with `put_vectors` are kept as their float32 bytes (a warm read is a dict lookup,
    not a base64 decode) and shown as LlamaIndex-style dicts to `get`, `get_all` and `persist`.
    """

    def __init__(self, data: dict[str, dict[str, dict[str, Any]]] | None = None) -> None:
        self._data: dict[str, dict[str, dict[str, Any]]] = data if data is not None else {}
        self._blobs: dict[str, dict[str, bytes]] = {}
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {"_data": self._data, "_blobs": self._blobs}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._data = state["_data"]
        self._blobs = state.get("_blobs", {})
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"SimpleKVStore(collections={len(set(self._data) | set(self._blobs))})"

    def put(self, key: str, val: dict[str, Any], collection: str = DEFAULT_COLLECTION) -> None:
        """Store a copy of `val`."""
        with self._lock:
            self._data.setdefault(collection, {})[key] = dict(val)
            self._blobs.get(collection, {}).pop(key, None)

    def get(self, key: str, collection: str = DEFAULT_COLLECTION) -> dict[str, Any] | None:
        """A copy of the value, or None."""
        blob = self._blobs.get(collection, {}).get(key)
        if blob is not None:
            return _as_dict(blob)
        val = self._data.get(collection, {}).get(key)
        return None if val is None else dict(val)

    def get_all(self, collection: str = DEFAULT_COLLECTION) -> dict[str, dict[str, Any]]:
        """A copy of a collection."""
        out = {k: dict(v) for k, v in self._data.get(collection, {}).items()}
        out.update({k: _as_dict(b) for k, b in self._blobs.get(collection, {}).items()})
        return out

    def delete(self, key: str, collection: str = DEFAULT_COLLECTION) -> bool:
        """Remove a key."""
        with self._lock:
            had_blob = self._blobs.get(collection, {}).pop(key, None) is not None
            return self._data.get(collection, {}).pop(key, None) is not None or had_blob

    def get_vector_blobs(self, keys: Sequence[str], collection: str) -> list[Any]:
        """Stored float32 bytes in key order (None when absent, UNREADABLE when not a vector)."""
        blobs = self._blobs.get(collection, {})
        data = self._data.get(collection, {})
        out: list[Any] = [blobs.get(k) for k in keys]
        if data:
            for i, k in enumerate(keys):
                if out[i] is None and k in data:
                    out[i] = dict_to_blob(data[k])
        return out

    def put_vectors(self, keys: Sequence[str], vectors: npt.NDArray[np.float32], collection: str) -> None:
        """Keep each row's float32 bytes."""
        mat = np.ascontiguousarray(vectors, dtype="<f4")
        with self._lock:
            blobs = self._blobs.setdefault(collection, {})
            data = self._data.get(collection)
            for i, k in enumerate(keys):
                blobs[k] = mat[i].tobytes()
                if data:
                    data.pop(k, None)

    def get_many(self, keys: Sequence[str], collection: str = DEFAULT_COLLECTION) -> list[dict[str, Any] | None]:
        """Values in key order; dict values are shared, not copied."""
        coll = self._data.get(collection, {})
        blobs = self._blobs.get(collection, {})
        return [_as_dict(blobs[k]) if k in blobs else coll.get(k) for k in keys]

    def put_many(self, items: Mapping[str, dict[str, Any]], collection: str = DEFAULT_COLLECTION) -> None:
        """Store many values under one lock."""
        with self._lock:
            self._data.setdefault(collection, {}).update(items)
            blobs = self._blobs.get(collection)
            if blobs:
                for k in items:
                    blobs.pop(k, None)

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
            text = json.dumps(self._merged())
        atomic_write_text(persist_path, text)

    def _merged(self) -> dict[str, dict[str, dict[str, Any]]]:
        """Every collection as dicts (vectors kept as bytes shown in LlamaIndex's dict form)."""
        if not any(self._blobs.values()):
            return self._data
        out = {c: dict(v) for c, v in self._data.items()}
        for c, blobs in self._blobs.items():
            out.setdefault(c, {}).update({k: _as_dict(b) for k, b in blobs.items()})
        return out

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
        with self._lock:
            return self._merged()

    @classmethod
    def from_dict(cls, save_dict: dict[str, Any]) -> Self:
        """A store over `save_dict`."""
        return cls(save_dict)


def _as_dict(blob: bytes) -> dict[str, Any]:
    return encode_dict(np.frombuffer(blob, dtype="<f4"))
