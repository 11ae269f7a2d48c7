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
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from embedstack._images import check_image, image_bytes, image_label, materialize
from embedstack.callbacks.manager import EventContext
from embedstack.callbacks.schema import CBEventType, EventPayload
from embedstack.kvstore._codec import UNREADABLE
from embedstack.types import EmbedResult, PartialResult, Role

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
            mat = np.asarray(raw, dtype=np.float32)
        except (ValueError, TypeError):
            lengths = sorted({len(r) for r in raw if hasattr(r, "__len__")})
            if len(lengths) > 1:
                raise ValueError(f"the model returned vectors of inconsistent length {lengths} in one batch") from None
            raise ValueError(
                f"the model returned {type(raw).__name__}, expected a list of vectors or a 2-D array"
            ) from None
    if mat.ndim != 2 or mat.shape[0] != n:
        raise ValueError(f"the model returned an array of shape {mat.shape} for {n} items, expected ({n}, dim)")
    return mat


class EmbedJob:
    """The plan and state of one embedding call; pure logic, no I/O.

    Vectors land in one (unique items × dim) matrix as cache hits and batches arrive; duplicates
    in the input share a slot, and the result is gathered back into input order at the end.
    """

    def __init__(self, model: BaseEmbedding, items: Sequence[Any], role: Role, label: str, show_progress: bool = False):
        self.model = model
        self.role = role
        self.n = len(items)
        if role is Role.IMAGE:
            for i, item in enumerate(items):
                check_image(item, i, label)
            items = [materialize(x) for x in items]
        else:
            _check_texts(items, label)
        self.store = model.embeddings_cache
        self.keys: list[str] = []
        key_of = model._key_factory(role) if self.store is not None else None
        idents = [key_of(i) for i in items] if key_of else [i if isinstance(i, str) else id(i) for i in items]
        seen: dict[Any, int] = {}
        self.slot_of = [seen.setdefault(ident, len(seen)) for ident in idents]
        self.dups = len(seen) != self.n
        self.uniques = [items[i] for i in _first_positions(self.slot_of, len(seen))] if self.dups else list(items)
        if key_of:
            self.keys = list(seen)
        self.have = np.zeros(len(seen), dtype=bool)
        self.out: Matrix | None = None
        self._events = _Events(model) if seen else None
        self._bar = _progress_bar(self.n, show_progress)
        self._counts: npt.NDArray[np.intp] | None = None

    @property
    def dim(self) -> int | None:
        """Vector dimension, once the first vector has arrived."""
        return None if self.out is None else int(self.out.shape[1])

    def _fill(self, slots: Sequence[int] | npt.NDArray[np.intp], mat: Matrix) -> None:
        if self.out is None and len(slots) == len(self.have) and not self._bar:
            self.out = mat[np.argsort(slots)] if list(slots) != sorted(slots) else mat  # whole job in one go
            self.have[:] = True
            return
        if self.out is None:
            self.out = np.empty((len(self.have), mat.shape[1]), dtype=np.float32)
        elif mat.shape[1] != self.out.shape[1]:
            raise ValueError(
                f"the model returned vectors of inconsistent length ({self.out.shape[1]} and {mat.shape[1]})"
            )
        self.out[slots] = mat
        self.have[slots] = True
        if self._bar is not None:
            if self._counts is None:
                self._counts = np.bincount(self.slot_of, minlength=len(self.have))
            self._bar.update(int(self._counts[slots].sum()))

    # -- cache -------------------------------------------------------------------------------
    def accept_cached(self, blobs: Sequence[Any]) -> None:
        """Take the float32 blobs a cache read found; unreadable ones become misses (and are rewritten)."""
        sizes = Counter(len(b) for b in blobs if isinstance(b, (bytes, bytearray)) and b)
        if not sizes:
            bad = sum(b is not None for b in blobs)
        else:
            width = 4 * self.dim if self.dim else sizes.most_common(1)[0][0]
            slots = [s for s, b in enumerate(blobs) if b is not None and b is not UNREADABLE and len(b) == width]
            bad = sum(b is not None for b in blobs) - len(slots)
            if slots and width % 4 == 0:
                mat = np.frombuffer(b"".join(blobs[s] for s in slots), dtype="<f4").reshape(len(slots), width // 4)
                finite = np.isfinite(mat).all(axis=1)
                if not finite.all():
                    bad += int((~finite).sum())
                    mat, slots = mat[finite], [s for s, ok in zip(slots, finite) if ok]
                self._fill(slots, mat)
            else:
                bad += len(slots)
        if bad:
            msg = f"{bad} unreadable cache entries in {self.store!r} were treated as misses and will be rewritten"
            logger.warning(msg)
            warnings.warn(msg, RuntimeWarning, stacklevel=4)

    # -- batches -----------------------------------------------------------------------------
    def batches(self) -> list[Batch]:
        """The missing items, in the model's preferred order, in batches of embed_batch_size."""
        misses = np.flatnonzero(~self.have).tolist() if self.have.any() else list(range(len(self.have)))
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
        token = self._events.start() if self._events else None

        def finish(raw: Any) -> Write | None:
            meta = raw if isinstance(raw, EmbedResult) else None
            mat = as_matrix(meta.vectors if meta else raw, len(batch.items))
            self._fill(batch.slots, mat)
            if self._events:
                self._events.end(token, self.role, batch.items, mat, meta)
            return ([self.keys[s] for s in batch.slots], mat) if self.keys else None

        try:
            yield finish
        except BaseException as e:
            if self._events:
                self._events.fail(token, e)
            raise

    def salvage(self, batch: Batch, exc: BaseException) -> Write | None:
        """The cache write for what a failed batch did obtain (`exc.partial`), if anything."""
        part = getattr(exc, "partial", None)
        if not isinstance(part, PartialResult) or not part.positions or not self.keys:
            return None
        try:
            mat = as_matrix(part.vectors, len(part.positions))
            keys = [self.keys[batch.slots[p]] for p in part.positions]
        except (ValueError, IndexError) as e:  # a provider bug must not hide the real failure
            logger.warning("ignored a malformed partial result from %s: %s", type(self.model).__name__, e)
            return None
        return keys, mat

    # -- result ------------------------------------------------------------------------------
    def result(self) -> Matrix:
        """All vectors in input order, as an (n, dim) float32 matrix."""
        self.close()
        if self.out is None:
            return np.zeros((0, 0), dtype=np.float32)
        return self.out[self.slot_of] if self.dups else self.out

    def close(self) -> None:
        """Close the progress bar."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _first_positions(slot_of: list[int], n_unique: int) -> list[int]:
    """Input position of each slot's first occurrence."""
    first = [-1] * n_unique
    for pos, slot in enumerate(slot_of):
        if first[slot] < 0:
            first[slot] = pos
    return first


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

    def start(self) -> tuple[float, EventContext | None]:
        descriptor = self.model._descriptor() if (self.dispatcher or self.callbacks) else {}
        if self.dispatcher:
            from embedstack.instrumentation.events import EmbeddingStartEvent

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
            from embedstack.instrumentation.events import EmbeddingEndEvent

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
            job.accept_cached(store.get_vector_blobs(job.keys, CACHE_COLLECTION))
        failed: list[BaseException] = []

        def one(batch: Batch) -> None:
            if failed:  # a batch already failed: start nothing new
                return
            try:
                with job.observe(batch) as finish:
                    write = finish(model._embed_batch_sync(batch.items, role))
                if write and store is not None:
                    store.put_vectors(*write, CACHE_COLLECTION)
            except Exception as e:
                failed.append(e)
                salvaged = job.salvage(batch, e) if store is not None else None
                if salvaged:
                    store.put_vectors(*salvaged, CACHE_COLLECTION)  # type: ignore[union-attr]

        batches = job.batches()
        workers = model._sync_workers()
        if workers > 1 and len(batches) > 1:
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(lambda b: contextvars.copy_context().run(one, b), batches))
        else:
            for batch in batches:
                one(batch)
        if failed:
            raise failed[0]
        return job.result()
    finally:
        job.close()


async def run_async(job: EmbedJob) -> Matrix:
    """Drive a job on the event loop; batches run concurrently up to the model's worker limit."""
    model, role, store = job.model, job.role, job.store
    try:
        if store is not None and job.keys:
            job.accept_cached(await store.aget_vector_blobs(job.keys, CACHE_COLLECTION))
        limit = model._async_workers()
        gate = asyncio.Semaphore(limit) if limit else None
        failed: list[BaseException] = []

        async def one(batch: Batch) -> None:
            async with gate or _NO_GATE:
                if failed:  # a batch already failed: start nothing new, let running ones finish
                    return
                try:
                    with job.observe(batch) as finish:
                        write = finish(await model._embed_batch_async(batch.items, role))
                    if write and store is not None:
                        await store.aput_vectors(*write, CACHE_COLLECTION)
                except Exception as e:
                    failed.append(e)
                    salvaged = job.salvage(batch, e) if store is not None else None
                    if salvaged:
                        await store.aput_vectors(*salvaged, CACHE_COLLECTION)  # type: ignore[union-attr]

        await asyncio.gather(*(one(b) for b in job.batches()))
        if failed:
            raise failed[0]
        return job.result()
    finally:
        job.close()


class _NoGate:
    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: object) -> None:
        return None


_NO_GATE = _NoGate()


def make_key_factory(prefix: bytes, role: Role, instruction: str | None) -> Callable[[Any], str]:
    """A function item → cache key: sha256 over prefix (schema + model identity), role, instruction, item."""
    base = hashlib.sha256(prefix)
    base.update(b"\0role=" + role.value.encode() + b"\0instruction=" + (instruction or "").encode("utf-8") + b"\0item=")
    to_bytes: Callable[[Any], bytes] = (
        image_bytes if role is Role.IMAGE else (lambda s: s.encode("utf-8", "surrogatepass"))
    )

    def key(item: Any) -> str:
        h = base.copy()
        h.update(to_bytes(item))
        return h.hexdigest()

    return key
