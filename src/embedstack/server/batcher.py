"""Dynamic batching: the inputs of concurrent requests merged into model calls, one at a time per model.

A request hands its inputs (cache misses), each with its token count and, for a model that prepares
its inputs, its tokens (`embedstack.server.tokens`: tokenised once, on arrival), to `Batcher.submit`
and awaits its `Ticket`. Identical inputs share one `_Item`, whether queued or running, so a text
asked for by two concurrent requests is computed once. Batches are taken round-robin across the
waiting requests until the token budget (exact counts, where the model counts) is spent, so one
request of 2,048 texts goes out a budget at a time while single-text requests behind it ride along
in every batch, and run through the model's public pipeline (`Pipeline.embed`: cache, dedupe,
events; handed the arrival tokens as `prepared`, so nothing is tokenised again) in one worker
thread, so the event loop never blocks. Any output kind travels: dense rows, scores, sparse vectors.
A request whose client went away is cancelled: its queued items are dropped before they reach the
model unless another request still wants them.

Scheduling is callback-driven, with one hand-off each way: a submit to an idle worker starts the
batch at once (no task to wake), and the worker thread hands the result back with one
`call_soon_threadsafe`, which resolves the tickets and starts the next batch. When the worker is
idle and other requests are on their way (announced with `arriving()`: tokenising, reading
the cache), the first input waits up to `max_wait` seconds for them; a lone request never waits,
and when the worker is busy, inputs gather on their own. A full queue refuses new work
(`QueueFull`, a 429) instead of growing.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from embedstack.errors import EmbedstackError
from embedstack.pipeline import Pipeline
from embedstack.provider import Prepared
from embedstack.server.metrics import Metrics
from embedstack.types import Role

__all__ = ["Batcher", "QueueFull", "Ticket"]

#: A batch's rows in item order: an (n, dim) float32 matrix (dense vectors, scores), or an object array of rows.
Rows = npt.NDArray[Any]
#: One model call, run in the worker thread: (values, role, their prepared tokens or None) -> rows.
EmbedFn = Callable[[list[Any], Role, "Prepared | None"], Rows]

_QUEUED, _RUNNING, _DONE, _DROPPED = range(4)


class QueueFull(EmbedstackError, RuntimeError):
    """The model's queue holds `max_queue` inputs already: come back after `retry_after` seconds."""

    def __init__(self, depth: int, retry_after: int) -> None:
        super().__init__(f"the queue holds {depth} inputs already")
        self.depth = depth
        self.retry_after = retry_after


class _Item:
    """One distinct input, shared by every request that asked for it while it was queued or running."""

    __slots__ = ("cost", "key", "prepared", "role", "row", "state", "tickets", "tokens", "value")

    def __init__(self, key: Any, value: Any, role: Role, tokens: int, prepared: Any) -> None:
        self.key = key
        self.value = value
        self.role = role
        self.tokens = tokens  # as tokenised on arrival (an estimate for a model that cannot count)
        self.cost = max(1, tokens)  # its weight in the batch's token budget
        self.prepared = prepared  # its tokens from arrival (`Provider.prepare`), or _NONE
        self.state = _QUEUED
        self.row: Any = None
        self.tickets: set[Ticket] = set()


#: An item with nothing prepared on arrival (its model call tokenises it).
_NONE = object()


class Ticket:
    """One request's claim on the batcher: its inputs' items, resolved when all have vectors."""

    __slots__ = ("future", "items", "queue", "remaining", "role")

    def __init__(self, items: list[_Item], role: Role, future: asyncio.Future[None]) -> None:
        self.items = items  # one per input, in input order (repeats share an item)
        self.role = role
        self.future = future
        self.queue: deque[_Item] = deque()  # the items this request put in the queue, not yet taken
        self.remaining = 0  # distinct items still without a vector

    def rows(self) -> Rows:
        """The rows of the request's inputs, in input order (once the future is done): a float32 matrix for
        dense rows, else an object array (sparse vectors)."""
        rows = [item.row for item in self.items]
        if isinstance(rows[0], np.ndarray):
            return np.stack(rows)
        out = np.empty(len(rows), dtype=object)
        for i, row in enumerate(rows):  # one by one: a row that is a tuple must not be unpacked
            out[i] = row
        return out

    @property
    def waiting(self) -> bool:
        """Some of the request's inputs are still queued (so a client gone away would save model work)."""
        return any(item.state == _QUEUED for item in self.items)


class Batcher:
    """The queue, scheduling and worker thread of one served model."""

    def __init__(
        self,
        pipeline: Pipeline,
        name: str,
        metrics: Metrics,
        *,
        max_batch_tokens: int,
        max_wait: float,
        max_queue: int,
        label: str = "input",
        embed: EmbedFn | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.name = name
        self.max_batch_tokens = max_batch_tokens
        self.max_wait = max_wait
        self.max_queue = max_queue
        self.label = label
        self._call: EmbedFn = embed or self._pipeline_call
        self.metrics = self._metrics = metrics
        self._queue_depth = metrics.queue_depth.labels(name)
        self._pending: dict[tuple[Role, Any], _Item] = {}  # queued or running items, for dedupe
        self._rotation: deque[Ticket] = deque()  # requests with queued items, served round-robin
        self._singles: deque[_Item] = deque()  # items of a failed batch, to run one by one
        self._depth = 0  # queued items (not yet taken)
        self._queued_tokens = 0
        self._arriving = 0  # requests between arrival and submit (or failure)
        self._busy = False  # a batch is in the worker
        self._timer: asyncio.TimerHandle | None = None  # the wait for requests on their way
        self._loop: asyncio.AbstractEventLoop | None = None
        self._jobs: queue.SimpleQueue[tuple[list[_Item], Role] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._seconds_per_token = 0.0  # running estimate, for Retry-After
        self.calls = 0

    # -- lifecycle ------------------------------------------------------------------------------------
    def start(self) -> None:
        """Bind to the running loop and start the worker thread."""
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._work, name=f"embedstack-serve-{self.name}", daemon=True)
        self._thread.start()

    async def stop(self, error: BaseException) -> None:
        """Stop batching; requests still waiting fail with `error` (a running model call is not waited for)."""
        loop, self._loop = self._loop, None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if loop is not None:
            self._jobs.put(None)
        for item in list(self._pending.values()):
            for ticket in list(item.tickets):
                if not ticket.future.done():
                    ticket.future.set_exception(error)
        self._pending.clear()
        self._rotation.clear()
        self._singles.clear()
        self._depth = self._queued_tokens = 0

    @property
    def depth(self) -> int:
        """Inputs waiting for the model."""
        return self._depth

    # -- requests -------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def arriving(self) -> Iterator[None]:
        """Around a request's work before and including `submit`: an idle worker waits (up to max_wait)
        for every request on its way to join the batch."""
        self._arriving += 1
        try:
            yield
        finally:
            self._arriving -= 1
            self._kick()

    def submit(
        self, values: Sequence[Any], role: Role, tokens: Sequence[int], prepared: Sequence[Any] | None = None
    ) -> Ticket:
        """Queue a request's inputs, each with its token count (its cost in the budget) and, when given, its
        prepared tokens (`Provider.prepare`, made on arrival); identical inputs already queued or running
        are joined, not queued again. Raises QueueFull when the queue cannot take the new ones."""
        assert self._loop is not None, "Batcher.start() was not called"
        fresh: dict[Any, int] = {}
        for i, value in enumerate(values):
            key = (role, value)
            if key not in self._pending and key not in fresh:
                fresh[key] = i
        if self._depth and self._depth + len(fresh) > self.max_queue:
            self._metrics.rejected.labels(self.name).inc()
            raise QueueFull(self._depth, self._retry_after())
        future: asyncio.Future[None] = self._loop.create_future()
        items: list[_Item] = []
        ticket = Ticket(items, role, future)
        joined = 0
        for i, value in enumerate(values):
            key = (role, value)
            item = self._pending.get(key)
            if item is None:
                ready = prepared[i] if prepared is not None else _NONE
                item = self._pending[key] = _Item(key, value, role, int(tokens[i]), ready)
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
        if ticket.queue:
            self._rotation.append(ticket)
        if not self._arriving:  # else the last request to arrive starts the batch (arriving's exit)
            self._kick()
        self._queue_depth.set(self._depth)
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
        ticket.queue.clear()
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
        self._queue_depth.set(self._depth)
        if not ticket.future.done():
            ticket.future.cancel()

    # -- scheduling (on the loop) -----------------------------------------------------------------------
    def _kick(self, gather: bool = True) -> None:
        """Start the next batch if the worker is idle and inputs wait. `gather`: an idle worker first waits (at
        most max_wait) while other requests are still arriving, unless the queue fills a batch already; right
        after a batch (gather=False) the inputs that queued meanwhile go at once."""
        if self._busy or self._loop is None:
            return
        if self._singles:
            single = self._single()
            if single:
                self._start(single)
                return
        if not self._depth:
            return
        if gather and self.max_wait > 0 and self._arriving and self._queued_tokens < self.max_batch_tokens:
            if self._timer is None:
                self._timer = self._loop.call_later(self.max_wait, self._waited)
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._start(self._take())

    def _waited(self) -> None:
        self._timer = None
        if not self._busy and self._depth:
            self._start(self._take())

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

    def _single(self) -> list[_Item]:
        """The next input of a failed batch still wanted by a request (each runs alone)."""
        while self._singles:
            item = self._singles.popleft()
            if item.tickets:
                return [item]
            item.state = _DONE  # every request that wanted it failed or went away meanwhile
            self._pending.pop(item.key, None)
        return []

    def _start(self, batch: list[_Item]) -> None:
        """Hand a batch to the worker thread."""
        self._queue_depth.set(self._depth)
        if not batch:
            return
        tokens = sum(item.cost for item in batch)
        name = self.name
        self._metrics.batch_size.labels(name).observe(len(batch))
        self._metrics.batch_tokens.labels(name).observe(tokens)
        self._metrics.batches.labels(name).inc()
        self.calls += 1
        self._busy = True
        self._jobs.put((batch, batch[0].role))

    def _done(self, batch: list[_Item], result: Any, error: BaseException | None, seconds: float) -> None:
        """The worker's answer, on the loop: resolve the tickets, then start the next batch."""
        self._busy = False
        if self._loop is None:  # stopped meanwhile: the tickets have failed already
            return
        if error is None:
            self._seconds_per_token = seconds / max(1, sum(item.cost for item in batch))
            self._metrics.items.labels(self.name).inc(len(batch))
            self._finish(batch, result, None)
        elif len(batch) == 1:
            self._finish(batch, None, error)
        else:  # one bad input must not fail the other requests: each input alone
            self._singles.extend(batch)
        self._kick(gather=False)

    # -- the worker thread --------------------------------------------------------------------------------
    def _work(self) -> None:
        jobs = self._jobs
        while True:
            job = jobs.get()
            loop = self._loop
            if job is None or loop is None:
                return
            batch, role = job
            t0 = time.perf_counter()
            result: Any = None
            error: BaseException | None = None
            try:
                result = self._embed(batch, role)
            except Exception as e:
                error = e
            try:
                loop.call_soon_threadsafe(self._done, batch, result, error, time.perf_counter() - t0)
            except RuntimeError:  # the loop is closed: the server has stopped
                return

    def _embed(self, batch: list[_Item], role: Role) -> Rows:
        """One model call, in the worker thread, with the batch's arrival tokens when every item has them."""
        values = [item.value for item in batch]
        prepared = None
        if all(item.prepared is not _NONE for item in batch):
            tokens = [item.tokens for item in batch]
            prepared = Prepared([item.prepared for item in batch], tokens, [False] * len(batch))
        return self._call(values, role, prepared)

    def _pipeline_call(self, values: list[Any], role: Role, prepared: Prepared | None) -> Rows:
        """The model's public pipeline (cache, dedupe, events) on one batch, reusing its arrival tokens."""
        out = self.pipeline.embed(values, role, label=self.label, prepared=prepared)
        return out.values  # type: ignore[no-any-return]

    def _finish(self, batch: list[_Item], rows: Rows | None, error: BaseException | None) -> None:
        for i, item in enumerate(batch):
            item.state = _DONE
            self._pending.pop(item.key, None)
            if rows is not None:
                item.row = rows[i]
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
