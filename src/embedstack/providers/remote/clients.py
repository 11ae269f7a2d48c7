"""HTTP clients of one remote model: a sync client, and an async client for each event loop that uses one
(httpx clients, or the openai SDK's)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import weakref
from collections.abc import AsyncIterator, Callable
from typing import Any

__all__ = ["Clients"]


async def _close_with_loop(client: Any) -> AsyncIterator[None]:
    """Closes `client` when its event loop shuts down: asyncio.run() finalises unfinished async
    generators (loop.shutdown_asyncgens) while the loop still runs, which is exactly when the
    connections can still be closed properly."""
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            close = getattr(client, "aclose", None) or client.close  # httpx: aclose(); the openai SDK: close()
            await close()


class Clients:
    """One model's SDK clients in this process: a sync client, and an async client per event loop.

    An httpx async pool belongs to the loop that opened it, so each loop gets its own client,
    closed when that loop shuts down (see `_close_with_loop`): asyncio.run() after asyncio.run()
    neither reuses dead connections nor leaks them.
    """

    def __init__(self) -> None:
        self._sync: Any = None
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[Any, Any]] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def sync(self, make: Callable[[], Any]) -> Any:
        """The sync client, made by `make` on first use."""
        client = self._sync
        if client is None:
            with self._lock:
                if self._sync is None:
                    self._sync = make()
                client = self._sync
        return client

    async def of_running_loop(self, make: Callable[[], Any]) -> Any:
        """The async client of the running event loop, made by `make` on first use in that loop."""
        loop = asyncio.get_running_loop()
        entry = self._loops.get(loop)
        if entry is None:
            client = make()
            closer = _close_with_loop(client)
            await closer.__anext__()  # runs to its `yield` at once: this loop now tracks it
            with self._lock:
                entry = self._loops.setdefault(loop, (client, closer))  # the closer must stay referenced
        return entry[0]

    def close(self) -> None:
        """Close the sync client (the next call opens a new one)."""
        with self._lock:
            client, self._sync = self._sync, None
        if client is not None:
            client.close()
