"""Key-value stores for the embedding cache: in memory (SimpleKVStore), SQLite (SQLiteKVStore), Redis (RedisKVStore).

RedisKVStore is imported on first access, so `import embedstack` never needs (or imports) redis-py.
"""

from typing import TYPE_CHECKING, Any

from embedstack.kvstore._codec import UNREADABLE
from embedstack.kvstore.base import DEFAULT_COLLECTION, BaseKVStore
from embedstack.kvstore.simple import SimpleKVStore
from embedstack.kvstore.sqlite import SQLiteKVStore

if TYPE_CHECKING:
    from embedstack.kvstore.redis import RedisKVStore

__all__ = ["DEFAULT_COLLECTION", "UNREADABLE", "BaseKVStore", "RedisKVStore", "SQLiteKVStore", "SimpleKVStore"]


def __getattr__(name: str) -> Any:
    if name == "RedisKVStore":
        from embedstack.kvstore.redis import RedisKVStore

        return RedisKVStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
