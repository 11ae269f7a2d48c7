"""Dynamic batching: the inputs of concurrent requests merged into model calls, one at a time per model.

A request hands its inputs (cache misses) to `Batcher.submit` and awaits its `Ticket`. Identical
inputs share one `_Item`, whether queued or running, so a text asked for by two concurrent requests
is computed once. The batching task takes items round-robin across the waiting requests until the
token budget is spent, so one request of 2,048 texts goes out a budget at a time while single-text
requests behind it ride along in every batch, and runs `model.embed` (cache, dedupe, events) in one
worker thread, so the event loop never blocks. A request whose client went away is cancelled: its
queued items are dropped before they reach the model unless another request still wants them.
When the worker is idle and other requests are on their way (announced with `arriving()`: counting
tokens, reading the cache), the first input waits up to `max_wait` seconds for them; a lone request
never waits, and when the worker is busy, inputs gather on their own. A full queue refuses new work
(`QueueFull`, a 429) instead of growing.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import numpy.typing as npt

from embedstack.base import BaseEmbedding
from embedstack.errors import EmbedstackError
from embedstack.server.metrics import Metrics
from embedstack.types import Role

__all__ = ["Batcher", "QueueFull", "Ticket"]

Matrix = npt.NDArray[np.float32]

_QUEUED, _RUNNING, _DONE, _DROPPED = range(4)


class QueueFull(EmbedstackError, RuntimeError):
    """The model's queue holds `max_queue` inputs already: come back after `retry_after` seconds."""

    def __init__(self, depth: int, retry_after: int) -> None:
        super().__init__(f"the queue holds {depth} inputs already")
        self.depth = depth
        self.retry_after = retry_after


class _Item:
    """One distinct input, shared by every request that asked for it while it was queued or running."""

    __slots__ = ("cost", "key", "role", "row", "state", "tickets", "value")

    def __init__(self, key: Any, value: Any, role: Role, cost: int) -> None:
        self.key = key
        self.value = value
        self.role = role
        self.cost = cost
        self.state = _QUEUED
        self.row: Matrix | None = None
        self.tickets: set[Ticket] = set()


class Ticket:
    """One request's claim on the batcher: its inputs' items, resolved when all have vectors."""

    __slots__ = ("future", "items", "queue", "remaining", "role")

    def __init__(self, items: list[_Item], role: Role, future: asyncio.Future[None]) -> None:
        self.items = items  # one per input, in input order (repeats share an item)
        self.role = role
        self.future = future
        self.queue: deque[_Item] = deque()  # the items this request put in the queue, not yet taken
        self.remaining = 0  # distinct items still without a vector

    def rows(self) -> Matrix:
        """The vectors of the request's inputs, in input order (once the future is done)."""
        return np.stack([item.row for item in self.items])  # type: ignore[misc]


class Batcher:
    """The queue and batching task of one served model."""

    def __init__(
        self,
        model: BaseEmbedding,
        name: str,
        metrics: Metrics,
        *,
        max_batch_tokens: int,
        max_wait: float,
        max_queue: int,
    ) -> None:
        self.model = model
        self.name = name
        self.max_batch_tokens = max_batch_tokens
        self.max_wait = max_wait
        self.max_queue = max_queue
        self._metrics = metrics
        self._pending: dict[tuple[Role, Any], _Item] = {}  # queued or running items, for dedupe
        self._rotation: deque[Ticket] = deque()  # requests with queued items, served round-robin
        self._depth = 0  # queued items (not yet taken)
        self._queued_tokens = 0
        self._wake: asyncio.Event | None = None
        self._arriving = 0  # requests between arrival and submit (or failure)
        self._settled: asyncio.Event | None = None  # set while no request is arriving
        self._task: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"embedstack-serve-{name}")
        self._seconds_per_token = 0.0  # running estimate, for Retry-After
        self.calls = 0

    # -- lifecycle ------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the batching task on the running loop."""
        self._wake = asyncio.Event()
        self._settled = asyncio.Event()
        self._settled.set()
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"embedstack-batcher-{self.name}")

    async def stop(self, error: BaseException) -> None:
        """Stop batching; requests still waiting fail with `error`."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for item in list(self._pending.values()):
            for ticket in list(item.tickets):
                if not ticket.future.done():
                    ticket.future.set_exception(error)
        self._pending.clear()
        self._rotation.clear()
        self._depth = self._queued_tokens = 0
        self._executor.shutdown(wait=False, cancel_futures=True)

    @property
    def depth(self) -> int:
        """Inputs waiting for the model."""
        return self._depth

    # -- requests -------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def arriving(self) -> Iterator[None]:
        """Around a request's work before `submit`: an idle worker waits (up to max_wait) for it to join."""
        assert self._settled is not None, "Batcher.start() was not called"
        self._arriving += 1
        self._settled.clear()
        try:
            yield
        finally:
            self._arriving -= 1
            if not self._arriving:
                self._settled.set()

    def submit(self, values: Sequence[Any], role: Role, costs: Sequence[int]) -> Ticket:
        """Queue a request's inputs (each with its token cost); identical inputs already queued or running
        are joined, not queued again. Raises QueueFull when the queue cannot take the new ones."""
        assert self._wake is not None, "Batcher.start() was not called"
        fresh: dict[Any, int] = {}
        for i, value in enumerate(values):
            key = (role, value)
            if key not in self._pending and key not in fresh:
                fresh[key] = i
        if self._depth and self._depth + len(fresh) > self.max_queue:
            self._metrics.rejected.labels(self.name).inc()
            raise QueueFull(self._depth, self._retry_after())
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        items: list[_Item] = []
        ticket = Ticket(items, role, future)
        joined = 0
        for i, value in enumerate(values):
            key = (role, value)
            item = self._pending.get(key)
            if item is None:
                item = self._pending[key] = _Item(key, value, role, max(1, int(costs[i])))
                ticket.queue.append(item)
                self._depth += 1
                self._queued_tokens += item.cost
            elif ticket not in item.tickets and fresh.get(key) != i:
                joined += 1
            if ticket not in item.tickets:
                item.tickets.add(ticket)
                ticket.remaining += 1
            items.append(item)
        if joined:
            self._metrics.deduplicated.labels(self.name).inc(joined)
        if ticket.remaining == 0:  # everything was done already (cannot happen: done items leave _pending)
            future.set_result(None)
        if ticket.queue:
            self._rotation.append(ticket)
            self._wake.set()
        self._metrics.queue_depth.labels(self.name).set(self._depth)
        return ticket

    def cancel(self, ticket: Ticket) -> None:
        """The request is gone: its queued items that nobody else wants are dropped before the model."""
        dropped = 0
        for item in set(ticket.items):
            item.tickets.discard(ticket)
            if not item.tickets and item.state == _QUEUED:
                item.state = _DROPPED
                self._pending.pop(item.key, None)
                self._depth -= 1
                self._queued_tokens -= item.cost
                dropped += 1
        ticket.queue.clear()  # items others still want stay queued under their own tickets? see _take
        with contextlib.suppress(ValueError):
            self._rotation.remove(ticket)
        for item in set(ticket.items):
            if item.state == _QUEUED and item.tickets and not any(item in t.queue for t in item.tickets):
                other = next(iter(item.tickets))  # hand the item to a request still waiting for it
                other.queue.append(item)
                if other not in self._rotation:
                    self._rotation.append(other)
        if dropped:
            self._metrics.dropped.labels(self.name).inc(dropped)
        self._metrics.queue_depth.labels(self.name).set(self._depth)
        if not ticket.future.done():
            ticket.future.cancel()

    # -- batching ----------------------------------------------------------------------------------
    def _take(self) -> list[_Item]:
        """The next batch: one item per waiting request in turn (one role), until the token budget is spent."""
        batch: list[_Item] = []
        tokens = 0
        role: Role | None = None
        rotation = self._rotation
        while rotation:
            progressed = False
            for _ in range(len(rotation)):
                if not rotation:
                    break
                ticket = rotation[0]
                queue = ticket.queue
                while queue and queue[0].state != _QUEUED:
                    queue.popleft()
                if not queue:
                    rotation.popleft()
                    continue
                item = queue[0]
                if role is None:
                    role = item.role
                if item.role is not role:
                    rotation.rotate(-1)
                    continue
                if batch and tokens + item.cost > self.max_batch_tokens:
                    return batch
                queue.popleft()
                item.state = _RUNNING
                batch.append(item)
                tokens += item.cost
                self._depth -= 1
                self._queued_tokens -= item.cost
                progressed = True
                if queue:
                    rotation.rotate(-1)
                else:
                    rotation.popleft()
            if not progressed:
                break
        return batch

    async def _run(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while True:
            if not self._depth:
                self._wake.clear()
                await self._wake.wait()
                if self.max_wait > 0 and self._arriving and self._queued_tokens < self.max_batch_tokens:
                    assert self._settled is not None
                    with contextlib.suppress(asyncio.TimeoutError):  # let requests on their way join
                        await asyncio.wait_for(self._settled.wait(), self.max_wait)
            batch = self._take()
            self._metrics.queue_depth.labels(self.name).set(self._depth)
            if not batch:
                continue
            role = batch[0].role
            values = [item.value for item in batch]
            tokens = sum(item.cost for item in batch)
            self._metrics.batch_size.labels(self.name).observe(len(batch))
            self._metrics.batch_tokens.labels(self.name).observe(tokens)
            self._metrics.batches.labels(self.name).inc()
            self.calls += 1
            t0 = time.perf_counter()
            try:
                matrix = await loop.run_in_executor(self._executor, self._embed, values, role)
            except Exception as e:
                if len(batch) == 1:
                    self._finish(batch, None, e)
                    continue
                await self._one_by_one(batch, role)  # one bad input must not fail the other requests
                continue
            self._seconds_per_token = (time.perf_counter() - t0) / max(tokens, 1)
            self._metrics.items.labels(self.name).inc(len(batch))
            self._finish(batch, matrix, None)

    async def _one_by_one(self, batch: list[_Item], role: Role) -> None:
        """After a failed batch: each input alone, so only the requests of the inputs that fail get the error."""
        loop = asyncio.get_running_loop()
        for item in batch:
            if not item.tickets:  # every request that wanted it failed or went away meanwhile
                item.state = _DONE
                self._pending.pop(item.key, None)
                continue
            self._metrics.batches.labels(self.name).inc()
            self.calls += 1
            try:
                matrix = await loop.run_in_executor(self._executor, self._embed, [item.value], role)
            except Exception as e:
                self._finish([item], None, e)
            else:
                self._metrics.items.labels(self.name).inc()
                self._finish([item], matrix, None)

    def _embed(self, values: list[Any], role: Role) -> Matrix:
        """One model call, in the worker thread: the model's own pipeline (cache, dedupe, events)."""
        return self.model.embed(values, role)

    def _finish(self, batch: list[_Item], matrix: Matrix | None, error: BaseException | None) -> None:
        for i, item in enumerate(batch):
            item.state = _DONE
            self._pending.pop(item.key, None)
            if matrix is not None:
                item.row = matrix[i]
            for ticket in item.tickets:
                if ticket.future.done():
                    continue
                if error is not None:
                    ticket.future.set_exception(error)
                    continue
                ticket.remaining -= 1
                if ticket.remaining == 0:
                    ticket.future.set_result(None)
        if error is not None:  # the failed requests' other queued inputs are not needed any more
            for item in batch:
                for ticket in list(item.tickets):
                    self.cancel(ticket)

    def _retry_after(self) -> int:
        """Seconds until the queue has likely drained (at least 1)."""
        return max(1, int(self._queued_tokens * self._seconds_per_token + 0.999))
