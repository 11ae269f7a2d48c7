"""The one embedding pipeline: validate → key → cache lookup → dedupe → batch → hook → write → order.

`EmbedJob` holds all the logic and does no I/O; `run_sync` and `run_async` are the only places
that call the store and the model hooks, so query/text/image × sync/async share one body.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import logging
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from embedstack._images import check_image, image_bytes, image_label
from embedstack.callbacks.manager import EventContext
from embedstack.callbacks.schema import CBEventType, EventPayload
from embedstack.instrumentation.events import EmbeddingEndEvent, EmbeddingStartEvent
from embedstack.kvstore._codec import UNREADABLE
from embedstack.types import EmbedResult, Role

if TYPE_CHECKING:
    from embedstack.base import BaseEmbedding

__all__ = ["CACHE_COLLECTION", "EmbedJob", "run_async", "run_sync"]

logger = logging.getLogger("embedstack")
CACHE_COLLECTION = "embeddings"
Matrix = npt.NDArray[np.float32]
Write = tuple[list[str], Matrix]


@dataclass
class Batch:
    """Unique items embedded by one hook call, and the slots their vectors fill."""

    slots: list[int]
    items: list[Any]


def _check_texts(items: Sequence[Any], label: str) -> None:
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise TypeError(f"{label}[{i}] is {type(item).__name__}, expected str")


def as_matrix(raw: Any, n: int) -> Matrix:
    """A hook's output as an (n, dim) float32 matrix; ValueError if it is not one."""
    if isinstance(raw, np.ndarray):
        mat = raw.astype(np.float32, copy=False)
    else:
        try:
            rows = list(raw)
        except TypeError:
            raise ValueError(f"the model returned {type(raw).__name__}, expected a list of vectors or a 2-D array") from None
        lengths = {len(r) for r in rows}
        if len(lengths) > 1:
            raise ValueError(f"the model returned vectors of inconsistent length {sorted(lengths)} in one batch")
        mat = np.asarray(rows, dtype=np.float32).reshape(len(rows), -1) if rows else np.zeros((0, 0), np.float32)
    if mat.ndim != 2 or mat.shape[0] != n:
        raise ValueError(f"the model returned an array of shape {mat.shape} for {n} items, expected ({n}, dim)")
    return mat


class EmbedJob:
    """The plan and state of one embedding call; pure logic, no I/O."""

    def __init__(self, model: BaseEmbedding, items: Sequence[Any], role: Role, label: str, show_progress: bool = False):
        self.model = model
        self.role = role
        self.n = len(items)
        if role is Role.IMAGE:
            for i, item in enumerate(items):
                check_image(item, i, label)
        else:
            _check_texts(items, label)
        self.store = model.embeddings_cache
        self.keys: list[str] = []
        uniques: list[Any] = []
        self.slot_of: list[int] = []
        seen: dict[Any, int] = {}
        key_of = model._key_factory(role) if self.store is not None else None
        for item in items:
            ident = key_of(item) if key_of else (item if isinstance(item, str) else id(item))
            slot = seen.get(ident)
            if slot is None:
                slot = seen[ident] = len(uniques)
                uniques.append(item)
                if key_of:
                    self.keys.append(ident)
            self.slot_of.append(slot)
        self.uniques = uniques
        self.vectors: list[Matrix | None] = [None] * len(uniques)
        self.counts = np.bincount(self.slot_of, minlength=len(uniques)) if uniques else np.zeros(0, int)
        self.dim: int | None = None
        self._events = _Events(model) if uniques else None
        self._bar = _progress_bar(self.n, show_progress)

    # -- cache -------------------------------------------------------------------------------
    def accept_cached(self, found: Sequence[Any]) -> None:
        """Take the vectors a cache read found; unreadable entries become misses (and are rewritten)."""
        bad = 0
        hits = 0
        for slot, vec in enumerate(found):
            if vec is UNREADABLE:
                bad += 1
            elif vec is not None:
                self.vectors[slot] = vec
                hits += int(self.counts[slot])
        if bad:
            msg = f"{bad} unreadable cache entries in {self.store!r} were treated as misses and will be rewritten"
            logger.warning(msg)
            warnings.warn(msg, RuntimeWarning, stacklevel=4)
        self._advance(hits)

    # -- batches -----------------------------------------------------------------------------
    def batches(self) -> list[Batch]:
        """The missing items, in the model's preferred order, in batches of embed_batch_size."""
        misses = [s for s, v in enumerate(self.vectors) if v is None]
        order = self.model._batch_order([self.uniques[s] for s in misses])
        if order is not None:
            misses = [misses[i] for i in order]
        size = self.model.embed_batch_size
        return [
            Batch(chunk, [self.uniques[s] for s in chunk])
            for chunk in (misses[i : i + size] for i in range(0, len(misses), size))
        ]

    @contextmanager
    def observe(self, batch: Batch) -> Iterator[Callable[[Any], Write | None]]:
        """Events around one hook call; yields `finish(raw)`, which stores the result and says what to write."""
        token = self._events.start(self.role) if self._events else None

        def finish(raw: Any) -> Write | None:
            meta = raw if isinstance(raw, EmbedResult) else None
            mat = as_matrix(meta.vectors if meta else raw, len(batch.items))
            if self.dim is None:
                self.dim = mat.shape[1]
            elif mat.shape[1] != self.dim:
                raise ValueError(f"the model returned vectors of inconsistent length ({self.dim} and {mat.shape[1]})")
            for slot, row in zip(batch.slots, mat):
                self.vectors[slot] = row
            if self._events:
                self._events.end(token, self.role, batch.items, mat, meta)
            self._advance(int(self.counts[batch.slots].sum()))
            return ([self.keys[s] for s in batch.slots], mat) if self.keys else None

        try:
            yield finish
        except BaseException as e:
            if self._events:
                self._events.fail(token, e)
            raise

    # -- result ------------------------------------------------------------------------------
    def result(self) -> Matrix:
        """All vectors in input order, as an (n, dim) float32 matrix."""
        self.close()
        if self.n == 0:
            return np.zeros((0, 0), dtype=np.float32)
        dims = {v.shape[0] for v in self.vectors if v is not None}
        if len(dims) > 1:
            raise ValueError(f"vectors of inconsistent length {sorted(dims)}: the cache holds vectors from another model")
        unique = np.stack(self.vectors)  # type: ignore[arg-type]
        return unique[np.asarray(self.slot_of)] if len(self.uniques) != self.n else unique

    def _advance(self, n: int) -> None:
        if self._bar is not None and n:
            self._bar.update(n)

    def close(self) -> None:
        """Close the progress bar."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _progress_bar(total: int, show: bool) -> Any:
    if not show or total == 0:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="Generating embeddings", unit="item")


class _Events:
    """Start/end events and legacy callbacks for one call; does nothing when nobody listens."""

    def __init__(self, model: BaseEmbedding) -> None:
        from embedstack.base import dispatcher

        self.model = model
        self.dispatcher = dispatcher if dispatcher.has_event_handlers() else None
        self.callbacks = model.callback_manager if model.callback_manager.handlers else None

    def start(self, role: Role) -> tuple[float, EventContext | None]:
        descriptor = self.model._descriptor() if (self.dispatcher or self.callbacks) else {}
        if self.dispatcher:
            self.dispatcher.event(EmbeddingStartEvent(model_dict=descriptor))
        ctx = None
        if self.callbacks:
            ctx = EventContext(self.callbacks, CBEventType.EMBEDDING)
            ctx.on_start(payload={EventPayload.SERIALIZED: descriptor})
        return time.perf_counter(), ctx

    def end(self, token: Any, role: Role, items: list[Any], mat: Matrix, meta: EmbedResult | None) -> None:
        t0, ctx = token
        if not (self.dispatcher or ctx):
            return
        chunks = items if role is not Role.IMAGE else [image_label(i) for i in items]
        vectors = mat.tolist()
        if ctx:
            ctx.on_end(payload={EventPayload.CHUNKS: chunks, EventPayload.EMBEDDINGS: vectors})
        if self.dispatcher:
            self.dispatcher.event(
                EmbeddingEndEvent(
                    chunks=chunks,
                    embeddings=vectors,
                    token_count=meta.token_count if meta else None,
                    truncated=meta.truncated if meta else 0,
                    role=role.value,
                    duration_s=time.perf_counter() - t0,
                )
            )

    def fail(self, token: Any, exc: BaseException) -> None:
        _, ctx = token
        if ctx:
            self.callbacks.on_event_start(CBEventType.EXCEPTION, payload={EventPayload.EXCEPTION: exc})  # type: ignore[union-attr]
            ctx.on_end()


def run_sync(job: EmbedJob) -> Matrix:
    """Drive a job with blocking calls; batches run in a thread pool when the model allows it."""
    model, role, store = job.model, job.role, job.store
    try:
        if store is not None and job.keys:
            job.accept_cached(store.get_vectors(job.keys, CACHE_COLLECTION))

        def one(batch: Batch) -> None:
            with job.observe(batch) as finish:
                write = finish(model._embed_batch_sync(batch.items, role))
            if write and store is not None:
                store.put_vectors(*write, CACHE_COLLECTION)

        batches = job.batches()
        workers = model._sync_workers()
        if workers > 1 and len(batches) > 1:
            with ThreadPoolExecutor(workers) as pool:
                for f in [pool.submit(contextvars.copy_context().run, one, b) for b in batches]:
                    f.result()
        else:
            for batch in batches:
                one(batch)
        return job.result()
    finally:
        job.close()


async def run_async(job: EmbedJob) -> Matrix:
    """Drive a job on the event loop; batches run concurrently up to the model's worker limit."""
    model, role, store = job.model, job.role, job.store
    try:
        if store is not None and job.keys:
            job.accept_cached(await store.aget_vectors(job.keys, CACHE_COLLECTION))
        limit = model._async_workers()
        gate = asyncio.Semaphore(limit) if limit else None

        async def one(batch: Batch) -> None:
            async with gate or _NO_GATE:
                with job.observe(batch) as finish:
                    write = finish(await model._embed_batch_async(batch.items, role))
                if write and store is not None:
                    await store.aput_vectors(*write, CACHE_COLLECTION)

        await _all_or_cancel([one(b) for b in job.batches()])
        return job.result()
    finally:
        job.close()


class _NoGate:
    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: object) -> None:
        return None


_NO_GATE = _NoGate()


async def _all_or_cancel(coros: list[Any]) -> None:
    """Run coroutines concurrently; on the first failure cancel the rest and raise it."""
    if len(coros) <= 1:
        for c in coros:
            await c
        return
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    for t in pending:
        t.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for t in tasks:
        if t.done() and not t.cancelled() and t.exception() is not None:
            raise t.exception()  # type: ignore[misc]


def make_key_factory(prefix: bytes, role: Role, instruction: str | None) -> Callable[[Any], str]:
    """A function item → cache key: sha256 over prefix (schema + model identity), role, instruction, item."""
    base = hashlib.sha256(prefix)
    base.update(b"\0role=" + role.value.encode() + b"\0instruction=" + (instruction or "").encode("utf-8") + b"\0item=")
    to_bytes: Callable[[Any], bytes] = image_bytes if role is Role.IMAGE else (lambda s: s.encode("utf-8", "surrogatepass"))

    def key(item: Any) -> str:
        h = base.copy()
        h.update(to_bytes(item))
        return h.hexdigest()

    return key
