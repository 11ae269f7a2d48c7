"""BaseKVStore: LlamaIndex's key-value store interface plus batched and vector operations."""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from embedstack.kvstore._codec import UNREADABLE, decode_blob, dict_to_blob, encode_dict

__all__ = ["DEFAULT_BATCH_SIZE", "DEFAULT_COLLECTION", "BaseKVStore"]

DEFAULT_COLLECTION = "data"
DEFAULT_BATCH_SIZE = 1


class BaseKVStore(ABC):
    """Dict values under string keys, grouped in collections; sync and async.

    Subclasses implement put/get/get_all/delete; the batched and vector methods have defaults built
    on those, which stores with a faster native path (SQLite) override.
    """

    #: What to do when the store fails (shown in the pipeline's one warning per store and operation).
    failure_hint: ClassVar[str] = "check the store, or turn the cache off (--no-cache, embeddings_cache=None)"

    @abstractmethod
    def put(self, key: str, val: dict[str, Any], collection: str = DEFAULT_COLLECTION) -> None:
        """Store `val` under `key`."""

    @abstractmethod
    def get(self, key: str, collection: str = DEFAULT_COLLECTION) -> dict[str, Any] | None:
        """The value under `key`, or None."""

    @abstractmethod
    def get_all(self, collection: str = DEFAULT_COLLECTION) -> dict[str, dict[str, Any]]:
        """Every key and value of a collection."""

    @abstractmethod
    def delete(self, key: str, collection: str = DEFAULT_COLLECTION) -> bool:
        """Remove `key`; whether it was there."""

    def put_all(
        self,
        kv_pairs: Sequence[tuple[str, dict[str, Any]]],
        collection: str = DEFAULT_COLLECTION,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> None:
        """Store many pairs (batch_size is accepted for LlamaIndex compatibility)."""
        self.put_many(dict(kv_pairs), collection=collection)

    def get_many(self, keys: Sequence[str], collection: str = DEFAULT_COLLECTION) -> list[dict[str, Any] | None]:
        """Values for `keys` in order (None where missing)."""
        return [self.get(k, collection=collection) for k in keys]

    def put_many(self, items: Mapping[str, dict[str, Any]], collection: str = DEFAULT_COLLECTION) -> None:
        """Store many values."""
        for k, v in items.items():
            self.put(k, v, collection=collection)

    def get_vector_blobs(self, keys: Sequence[str], collection: str) -> list[Any]:
        """Stored float32 bytes for `keys` in order: bytes, None (absent) or UNREADABLE (corrupt)."""
        return [None if v is None else dict_to_blob(v) for v in self.get_many(keys, collection=collection)]

    def get_vectors(self, keys: Sequence[str], collection: str) -> list[Any]:
        """Vectors for `keys` in order: an array, None (absent) or UNREADABLE (present but corrupt)."""
        return [
            b if b is None or b is UNREADABLE else decode_blob(len(b) // 4, b)
            for b in self.get_vector_blobs(keys, collection)
        ]

    def put_vectors(self, keys: Sequence[str], vectors: npt.NDArray[np.float32], collection: str) -> None:
        """Store one row of `vectors` per key, as float32, in one batched write."""
        self.put_many({k: encode_dict(v) for k, v in zip(keys, vectors)}, collection=collection)

    # Async twins: by default the sync method in a worker thread, so file or network I/O never
    # blocks an event loop. In-memory stores override them to run inline.
    async def aput(self, key: str, val: dict[str, Any], collection: str = DEFAULT_COLLECTION) -> None:
        """Async put."""
        await asyncio.to_thread(self.put, key, val, collection)

    async def aget(self, key: str, collection: str = DEFAULT_COLLECTION) -> dict[str, Any] | None:
        """Async get."""
        return await asyncio.to_thread(self.get, key, collection)

    async def aget_all(self, collection: str = DEFAULT_COLLECTION) -> dict[str, dict[str, Any]]:
        """Async get_all."""
        return await asyncio.to_thread(self.get_all, collection)

    async def adelete(self, key: str, collection: str = DEFAULT_COLLECTION) -> bool:
        """Async delete."""
        return await asyncio.to_thread(self.delete, key, collection)

    async def aput_all(
        self,
        kv_pairs: Sequence[tuple[str, dict[str, Any]]],
        collection: str = DEFAULT_COLLECTION,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> None:
        """Async put_all."""
        await asyncio.to_thread(self.put_all, kv_pairs, collection, batch_size)

    async def aget_many(self, keys: Sequence[str], collection: str = DEFAULT_COLLECTION) -> list[dict[str, Any] | None]:
        """Async get_many."""
        return await asyncio.to_thread(self.get_many, keys, collection)

    async def aput_many(self, items: Mapping[str, dict[str, Any]], collection: str = DEFAULT_COLLECTION) -> None:
        """Async put_many."""
        await asyncio.to_thread(self.put_many, items, collection)

    async def aget_vector_blobs(self, keys: Sequence[str], collection: str) -> list[Any]:
        """Async get_vector_blobs."""
        return await asyncio.to_thread(self.get_vector_blobs, keys, collection)

    async def aget_vectors(self, keys: Sequence[str], collection: str) -> list[Any]:
        """Async get_vectors."""
        return await asyncio.to_thread(self.get_vectors, keys, collection)

    async def aput_vectors(self, keys: Sequence[str], vectors: npt.NDArray[np.float32], collection: str) -> None:
        """Async put_vectors."""
        await asyncio.to_thread(self.put_vectors, keys, vectors, collection)
