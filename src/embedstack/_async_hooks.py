"""Calling a model's async hooks without blocking the loop, even when their body never awaits.

LlamaIndex's documented pattern is `async def _aget_query_embedding(self, q): return self._get_query_embedding(q)`:
a coroutine that runs blocking code and never yields. Awaited on the event loop it would stall every
other task, so a hook whose code contains no await is driven to completion in a worker thread.
"""

from __future__ import annotations

import asyncio
import dis
import functools
from collections.abc import Callable, Coroutine, Sequence
from types import CodeType
from typing import Any

__all__ = ["call_hook", "gather_hook", "is_sync_bodied"]

# Opcodes that only appear where a coroutine can suspend (await, async for, async with).
_SUSPENDING = frozenset(
    {"GET_AWAITABLE", "GET_AITER", "GET_ANEXT", "BEFORE_ASYNC_WITH", "END_ASYNC_FOR", "SEND", "YIELD_FROM"}
)


@functools.lru_cache(maxsize=1024)
def _never_suspends(code: CodeType) -> bool:
    return not any(ins.opname in _SUSPENDING for ins in dis.get_instructions(code))


def is_sync_bodied(hook: Callable[..., Any]) -> bool:
    """Whether `hook` is an `async def` whose body contains no await (so it blocks whoever awaits it)."""
    func = getattr(hook, "__func__", hook)
    code = getattr(func, "__code__", None)
    return code is not None and asyncio.iscoroutinefunction(func) and _never_suspends(code)


def _drive(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine that never suspends to its result, here and now."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise RuntimeError(f"{coro!r} suspended although its code has no await")


async def call_hook(hook: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> Any:
    """Await `hook(*args)`; a sync-bodied hook runs in a worker thread instead of on the loop."""
    if is_sync_bodied(hook):
        return await asyncio.to_thread(lambda: _drive(hook(*args)))
    return await hook(*args)


async def gather_hook(hook: Callable[[Any], Coroutine[Any, Any, Any]], items: Sequence[Any]) -> list[Any]:
    """`hook(item)` for every item: concurrently on the loop, or one after another in a worker thread."""
    if is_sync_bodied(hook):
        return await asyncio.to_thread(lambda: [_drive(hook(item)) for item in items])
    return list(await asyncio.gather(*(hook(item) for item in items)))
