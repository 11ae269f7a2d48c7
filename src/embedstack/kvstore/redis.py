"""RedisKVStore: one cache shared by many processes and machines (extra `redis`, redis-py).

The same keys and float32 values as SQLiteKVStore, under `NAMESPACE:v:COLLECTION:KEY` (vectors,
raw little-endian float32 bytes) and `NAMESPACE:d:COLLECTION:KEY` (dict values, JSON); a ':' or '%' in
COLLECTION is written %3A or %25, so no two collections share a key. A batch
read is one MGET, a batch write one pipeline of SET/SETEX. Cache keys are content hashes, so
concurrent writers of one key write the same bytes: sharing needs no locking.

When Redis is down or slow, calls fail fast (short socket timeouts, no client-side retries) and a
small circuit breaker then refuses calls for `retry_after` seconds without touching the network,
so the embedding pipeline (which turns store errors into one warning, misses and dropped writes)
never waits on a dead server; the first call after that tries again and reconnects. The password
of the URL never appears in repr, logs or errors; a pickled store carries its settings but no
connection (a Ray actor or a forked process opens its own).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, TypeVar
from urllib.parse import quote, urlsplit, urlunsplit

import numpy as np
import numpy.typing as npt

from embedstack.errors import EmbedstackError
from embedstack.kvstore.base import DEFAULT_COLLECTION, BaseKVStore

__all__ = ["RedisCacheError", "RedisKVStore", "redact_url"]

logger = logging.getLogger(__name__)
T = TypeVar("T")


class RedisCacheError(EmbedstackError, ConnectionError):
    """Redis could not serve a cache call (down, slow, refused); the message never holds the password."""


def redact_url(url: str) -> str:
    """`url` with its password (and a bare token user) replaced by `***`."""
    try:
        parts = urlsplit(url)
        password, user, host = parts.password, parts.username, parts.hostname
        port = parts.port
    except ValueError:
        return "<unparseable Redis URL>"
    if "password=" in parts.query:  # unix:///path?password=...
        query = "&".join("password=***" if q.startswith("password=") else q for q in parts.query.split("&"))
        parts = parts._replace(query=query)
    if password is None and user is None:
        return url.split("?", 1)[0] + "?" + parts.query if parts.query else url
    netloc = ("" if user is None or password is None else quote(user, safe="")) + ":***@"
    if password is None:  # redis://TOKEN@host: the user part is the secret
        netloc = "***@"
    netloc += f"[{host}]" if host and ":" in host else (host or "")
    if port is not None:
        netloc += f":{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class RedisKVStore(BaseKVStore):
    """A key-value store in Redis, shared by every process that uses the same URL and namespace.

    `ttl` (seconds) makes entries expire (SETEX); `socket_timeout` bounds each call;
    `retry_after` is how long the breaker stays open after a connection failure.
    """

    failure_hint: ClassVar[str] = (
        "check that the Redis server is up and reachable (it is tried again after retry_after seconds), "
        "or turn the cache off (--no-cache, embeddings_cache=None)"
    )

    def __init__(
        self,
        url: str = "redis://localhost:6379/0",
        namespace: str = "embedstack",
        ttl: int | None = None,
        *,
        socket_timeout: float = 2.0,
        connect_timeout: float = 1.0,
        retry_after: float = 5.0,
    ) -> None:
        if not isinstance(url, str) or urlsplit(url).scheme not in ("redis", "rediss", "unix"):
            shown = redact_url(url) if isinstance(url, str) else repr(url)
            raise ValueError(f"not a Redis URL: {shown!r}; use redis://[:PASSWORD@]HOST[:PORT][/DB]")
        if ttl is not None and (not isinstance(ttl, int) or isinstance(ttl, bool) or ttl <= 0):
            raise ValueError(f"ttl must be a positive number of seconds or None, got {ttl!r}")
        if not namespace or ":" in namespace or any(c in namespace for c in "*?[]"):
            raise ValueError(f"namespace must be a non-empty name without ':' or glob characters, got {namespace!r}")
        self._url = url
        self.url = redact_url(url)  #: the URL as shown (password replaced)
        self.namespace = namespace
        self.ttl = ttl
        self.socket_timeout = socket_timeout
        self.connect_timeout = connect_timeout
        self.retry_after = retry_after
        self._client: Any = None
        self._pid = -1
        self._lock = threading.Lock()
        self._down_until = 0.0
        self._down = False

    def __repr__(self) -> str:
        return f"RedisKVStore(url={self.url!r}, namespace={self.namespace!r})"

    def __getstate__(self) -> dict[str, Any]:
        return {
            "url": self._url,
            "namespace": self.namespace,
            "ttl": self.ttl,
            "socket_timeout": self.socket_timeout,
            "connect_timeout": self.connect_timeout,
            "retry_after": self.retry_after,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]

    # -- connection and breaker --------------------------------------------------------------
    def client(self) -> Any:
        """This process's redis.Redis client (a connection pool), created on first use."""
        if self._client is not None and self._pid == os.getpid():
            return self._client
        with self._lock:
            if self._client is None or self._pid != os.getpid():
                from embedstack._optional import require

                redis = require("redis", extra="redis")
                retry = require("redis.retry", extra="redis")
                backoff = require("redis.backoff", extra="redis")
                try:
                    self._client = redis.Redis.from_url(
                        self._url,
                        socket_timeout=self.socket_timeout,
                        socket_connect_timeout=self.connect_timeout,
                        retry=retry.Retry(backoff.NoBackoff(), 0),  # fail fast; the breaker decides when to retry
                        health_check_interval=30,
                    )
                except ValueError as e:
                    raise ValueError(self._scrub(f"bad Redis URL {self.url!r}: {e}")) from None
                self._pid = os.getpid()
        return self._client

    def _scrub(self, text: str) -> str:
        parts = urlsplit(self._url)
        password, user = parts.password, parts.username
        in_query = [q.split("=", 1)[1] for q in parts.query.split("&") if q.startswith("password=")]
        for secret in (password, user if password is None else None, *in_query):
            if secret:
                text = text.replace(secret, "***")
        return text

    def _call(self, op: str, fn: Callable[[Any], T]) -> T:
        """Run `fn(client)`; a Redis failure opens the breaker and becomes a RedisCacheError."""
        from embedstack._optional import require

        exceptions = require("redis.exceptions", extra="redis")
        if self._down and time.monotonic() < self._down_until:
            raise RedisCacheError(
                f"Redis at {self.url} is unavailable (failed less than {self.retry_after:g}s ago); {op} skipped"
            )
        try:
            result = fn(self.client())
        except (exceptions.ConnectionError, exceptions.TimeoutError, OSError) as e:
            self._trip()
            raise RedisCacheError(
                self._scrub(f"Redis at {self.url} did not answer {op} ({type(e).__name__}: {e}); is it running?")
            ) from None
        except exceptions.RedisError as e:
            raise RedisCacheError(self._scrub(f"Redis at {self.url} refused {op} ({type(e).__name__}: {e})")) from None
        if self._down:
            self._down = False
            logger.info("Redis at %s is reachable again", self.url)
        return result

    def _trip(self) -> None:
        self._down = True
        self._down_until = time.monotonic() + self.retry_after
        client = self._client
        if client is not None:
            try:
                client.connection_pool.disconnect()
            except Exception:  # a broken pool is rebuilt on the next connection anyway
                pass

    def close(self) -> None:
        """Close this process's connections."""
        client, self._client = self._client, None
        if client is not None and self._pid == os.getpid():
            client.close()

    def ping(self) -> bool:
        """Whether Redis answers now (never raises)."""
        try:
            return bool(self._call("PING", lambda c: c.ping()))
        except RedisCacheError:
            return False

    # -- keys --------------------------------------------------------------------------------
    @staticmethod
    def _coll(collection: str) -> str:
        """The collection as a key part without ':' (and '%' escaped too, so distinct names stay distinct):
        otherwise collection "a:b" key "c" and collection "a" key "b:c" would be one Redis key."""
        return collection.replace("%", "%25").replace(":", "%3A")

    def _vkey(self, collection: str, key: str) -> str:
        return f"{self.namespace}:v:{self._coll(collection)}:{key}"

    def _dkey(self, collection: str, key: str) -> str:
        return f"{self.namespace}:d:{self._coll(collection)}:{key}"

    def _scan(self, client: Any, pattern: str) -> list[bytes]:
        return list(client.scan_iter(match=pattern, count=1000))

    @staticmethod
    def _glob_escape(text: str) -> str:
        return "".join("\\" + c if c in "*?[]\\" else c for c in text)

    # -- dict values -------------------------------------------------------------------------
    def put(self, key: str, val: dict[str, Any], collection: str = DEFAULT_COLLECTION) -> None:
        """Store `val` as JSON."""
        self.put_many({key: val}, collection)

    def put_many(self, items: Mapping[str, dict[str, Any]], collection: str = DEFAULT_COLLECTION) -> None:
        """Store many values in one pipelined round trip."""
        pairs = [(self._dkey(collection, k), json.dumps(v)) for k, v in items.items()]
        if pairs:
            self._call("SET", lambda c: self._set_all(c, pairs))

    def get(self, key: str, collection: str = DEFAULT_COLLECTION) -> dict[str, Any] | None:
        """The value, or None."""
        return self.get_many([key], collection)[0]

    def get_many(self, keys: Sequence[str], collection: str = DEFAULT_COLLECTION) -> list[dict[str, Any] | None]:
        """Values in key order (one MGET)."""
        if not keys:
            return []
        names = [self._dkey(collection, k) for k in keys]
        raw = self._call("MGET", lambda c: c.mget(names))
        return [None if r is None else json.loads(r) for r in raw]

    def get_all(self, collection: str = DEFAULT_COLLECTION) -> dict[str, dict[str, Any]]:
        """Every dict value of a collection (SCAN, then MGET)."""
        prefix = self._dkey(collection, "")

        def run(c: Any) -> dict[str, dict[str, Any]]:
            names = self._scan(c, self._glob_escape(prefix) + "*")
            values = c.mget(names) if names else []
            return {n.decode()[len(prefix) :]: json.loads(v) for n, v in zip(names, values) if v is not None}

        return self._call("SCAN", run)

    def delete(self, key: str, collection: str = DEFAULT_COLLECTION) -> bool:
        """Remove a key (dict or vector); whether it was there."""
        names = [self._dkey(collection, key), self._vkey(collection, key)]
        return int(self._call("DEL", lambda c: c.delete(*names))) > 0

    # -- vectors -----------------------------------------------------------------------------
    def get_vector_blobs(self, keys: Sequence[str], collection: str) -> list[Any]:
        """Stored float32 bytes in key order (None when absent), in one MGET; the pipeline checks lengths."""
        if not keys:
            return []
        names = [self._vkey(collection, k) for k in keys]
        return list(self._call("MGET", lambda c: c.mget(names)))

    def put_vectors(self, keys: Sequence[str], vectors: npt.NDArray[np.float32], collection: str) -> None:
        """Store each row as float32 bytes, in one pipelined round trip of SET (SETEX with a ttl)."""
        mat = np.ascontiguousarray(vectors, dtype="<f4")
        pairs = [(self._vkey(collection, k), mat[i].tobytes()) for i, k in enumerate(keys)]
        if pairs:
            self._call("SET", lambda c: self._set_all(c, pairs))

    def _set_all(self, client: Any, pairs: Sequence[tuple[str, Any]]) -> None:
        pipe = client.pipeline(transaction=False)
        for name, value in pairs:
            if self.ttl is None:
                pipe.set(name, value)
            else:
                pipe.setex(name, self.ttl, value)
        pipe.execute()

    def count_vectors(self, collection: str) -> int:
        """How many vectors a collection holds (a SCAN: for tests and tools, not hot paths)."""
        pattern = self._glob_escape(self._vkey(collection, "")) + "*"
        return self._call("SCAN", lambda c: len(self._scan(c, pattern)))

    def clear(self, collection: str | None = None) -> int:
        """Delete this namespace's entries (of one collection, or all); how many were deleted."""
        pattern = f"{self.namespace}:*" if collection is None else None

        def run(c: Any) -> int:
            if pattern is not None:
                names = self._scan(c, pattern)
            else:
                assert collection is not None
                names = self._scan(c, self._glob_escape(self._vkey(collection, "")) + "*")
                names += self._scan(c, self._glob_escape(self._dkey(collection, "")) + "*")
            deleted = 0
            for i in range(0, len(names), 1000):
                deleted += int(c.delete(*names[i : i + 1000]))
            return deleted

        return self._call("DEL", run)
