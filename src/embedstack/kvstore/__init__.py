"""Key-value stores for the embedding cache: in memory (SimpleKVStore) and SQLite (SQLiteKVStore)."""

from embedstack.kvstore._codec import UNREADABLE
from embedstack.kvstore.base import DEFAULT_COLLECTION, BaseKVStore
from embedstack.kvstore.simple import SimpleKVStore
from embedstack.kvstore.sqlite import SQLiteKVStore

__all__ = ["DEFAULT_COLLECTION", "UNREADABLE", "BaseKVStore", "SQLiteKVStore", "SimpleKVStore"]
