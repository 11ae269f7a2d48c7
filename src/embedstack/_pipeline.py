"""The one embedding pipeline: validate → key → cache lookup → dedupe → batch → hook → write → order.

`EmbedJob` holds all the logic and does no I/O; `run_sync` and `run_async` are the only places
that call the store and the model hooks, so query/text/image × sync/async share one body.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
import time
import warnings
import weakref
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from embedstack._images import check_image, image_label, materialize
from embedstack.cache_key import CACHE_COLLECTION, DIM_COLLECTION
from embedstack.callbacks.manager import EventContext
from embedstack.callbacks.schema import CBEventType, EventPayload
from embedstack.errors import BadVectorsError, InvalidInputError
from embedstack.instrumentation import get_dispatcher
from embedstack.progress import Progress, ProgressArg
from embedstack.types import Batch, EmbedResult, PartialResult, Role

if TYPE_CHECKING:
    from embedstack.contract import PipelineModel
    from embedstack.kvstore.base import BaseKVStore

__all__ = ["CACHE_COLLECTION", "DIM_COLLECTION", "EmbedJob", "as_matrix", "cached_rows", "run_async", "run_sync"]

logger = logging.getLogger("embedstack")
Matrix = npt.NDArray[np.float32]
Write = tuple[list[str], Matrix]


@dataclass
class Planned:
    """One hook call as planned: the batch the model sees, and the slots its vectors fill."""

    slots: list[int]
    batch: Batch

    @property
    def items(self) -> list[Any]:
        """The batch's items."""
        return self.batch.items


def _check_texts(items: Sequence[Any], label: str, offset: int = 0) -> None:
    if isinstance(items, (str, bytes, bytearray)):
        raise TypeError(
            f"{label} must be a list of texts, not a single {type(items).__name__} "
            f"(it would be embedded one character at a time); wrap it in a list: [text]"
        )
    for i, item in enumerate(items, offset):
        if not isinstance(item, str):
            raise TypeError(f"{label}[{i}] is {type(item).__name__}, expected str")
        if not item.isascii():
            try:
                item.encode("utf-8")
            except UnicodeEncodeError as e:
                raise InvalidInputError(
                    f"{label}[{i}] contains a lone surrogate ({item[e.start]!r}) at character {e.start}, which is not "
                    "valid Unicode and cannot be embedded; fix the source text, or decode it with errors='replace'",
                    label,
                    i,
                ) from None


_NOT_NUMBERS = (bool, np.bool_, str, bytes, type(None))


def _non_numeric(raw: Any) -> str | None:
    """The name of a non-numeric value type among a list of vectors (booleans, strings, None), if any."""
    types: set[type] = set()
    try:
        for row in raw:
            if isinstance(row, np.ndarray):
                if row.dtype.kind not in "fiu":
                    return str(row.dtype)
            else:
                types.update(map(type, row))
    except TypeError:
        return None  # not a list of rows: the shape check reports it
    bad = sorted(t.__name__ for t in types if issubclass(t, _NOT_NUMBERS))
    return ", ".join(bad) or None


def as_matrix(raw: Any, n: int) -> Matrix:
    """A hook's output as an (n, dim) float32 matrix of finite numbers; BadVectorsError if it is not one.

    Non-finite rows are reported by their row numbers in `BadVectorsError.positions`.
    """
    if isinstance(raw, np.ndarray):
        if raw.dtype.kind not in "fiu":
            raise BadVectorsError(f"the model returned an array of dtype {raw.dtype}, expected numbers")
        if raw.dtype == np.float32:
            mat = raw
        else:
            with np.errstate(over="ignore"):
                mat = raw.astype(np.float32)
    else:
        bad_type = _non_numeric(raw)
        if bad_type:
            raise BadVectorsError(f"the model returned {bad_type} values in its vectors, expected numbers")
        try:
            with np.errstate(over="ignore"):
                mat = np.asarray(raw, dtype=np.float32)
        except (ValueError, TypeError):
            lengths = sorted({len(r) for r in raw if hasattr(r, "__len__")})
            if len(lengths) > 1:
                raise BadVectorsError(
                    f"the model returned vectors of inconsistent length {lengths} in one batch"
                ) from None
            raise BadVectorsError(
                f"the model returned {type(raw).__name__}, expected a list of vectors or a 2-D array"
            ) from None
    if mat.ndim != 2 or mat.shape[0] != n:
        raise BadVectorsError(f"the model returned an array of shape {mat.shape} for {n} items, expected ({n}, dim)")
    if mat.shape[1] == 0:
        raise BadVectorsError(f"the model returned empty vectors for {n} items")
    if not np.isfinite(mat).all():
        rows = np.flatnonzero(~np.isfinite(mat).all(axis=1)).tolist()
        raise BadVectorsError(
            f"the model returned non-finite values (NaN or infinity, or beyond float32's range) for {len(rows)} of "
            f"{n} items",
            rows,
        )
    return mat


class EmbedJob:
    """The plan and state of one embedding call; no store or model I/O (image inputs are read to key them).

    Vectors land in one (unique items × dim) matrix as cache hits and batches arrive; duplicates
    in the input share a slot, and the result is gathered back into input order at the end.
    The vector length is checked against what the model declared or returned before; a cached
    entry of another length is a miss.
    """

    def __init__(
        self,
        model: PipelineModel,
        items: Sequence[Any],
        role: Role,
        label: str,
        show_progress: ProgressArg = False,
        offset: int = 0,
    ):
        self.model = model
        self.role = role
        self.label = label
        #: Position of items[0] in the caller's input (embed_iter's chunks): errors name `label[offset + i]`.
        self.offset = offset
        if role is Role.IMAGE:
            if isinstance(items, (str, bytes, bytearray)):
                raise TypeError(
                    f"{label} must be a list of images, not a single {type(items).__name__}; wrap it in a list"
                )
            for i, item in enumerate(items, offset):
                check_image(item, i, label)
            items = [materialize(x) for x in items]
        else:
            _check_texts(items, label, offset)
        model._check_items(items, role, label, offset)
        self.n = len(items)
        self.store = model.embeddings_cache
        self.keys: list[str] = []
        key_of = model._key_factory(role) if self.store is not None else None
        idents = [key_of(i) for i in items] if key_of else [i if isinstance(i, str) else id(i) for i in items]
        seen: dict[Any, int] = {}
        self.slot_of = [seen.setdefault(ident, len(seen)) for ident in idents]
        self.dups = len(seen) != self.n
        #: Input position of each slot's first occurrence (computed once; identity when nothing repeats).
        self._first = _first_positions(self.slot_of, len(seen)) if self.dups else []
        self.uniques = [items[i] for i in self._first] if self.dups else list(items)
        if key_of:
            self.keys = list(seen)
        self.have = np.zeros(len(seen), dtype=bool)
        self.out: Matrix | None = None
        #: The model's vector length, when it declared one or returned vectors before (trusted).
        self.expected_dim, self._dim_source = model._known_dim()
        self._cached: list[int] = []  # slots filled from the cache while the length was only assumed
        self._cached_dim: int | None = None  # the length assumed for them
        self._recorded_dim: int | None = None  # the length the cache records for this model
        self._lock = threading.Lock()  # batches may finish together in worker threads
        self._events = _Events(model) if seen else None
        self._progress, self._own_progress = _progress(self.n, show_progress)
        self._counts: npt.NDArray[np.intp] | None = None
        self._repeats: dict[int, list[int]] | None = None  # slot → later positions of a repeated item
        self._planned = False  # batches() has planned the first round
        self.redo = False  # cache hits were found wrong after planning: plan another round
        self._none_cached = True  # no slot was filled from the cache

    @property
    def dim(self) -> int | None:
        """Vector dimension, once known."""
        return self.expected_dim if self.out is None else int(self.out.shape[1])

    def positions(self, slots: Sequence[int]) -> list[int]:
        """The input position (first occurrence) of each slot."""
        first = slots if not self.dups else [self._first[s] for s in slots]
        return [p + self.offset for p in first] if self.offset else list(first)

    def _names(self, slots: Sequence[int]) -> str:
        shown = ", ".join(f"{self.label}[{p}]" for p in self.positions(slots[:5]))
        return shown + (f" and {len(slots) - 5} more" if len(slots) > 5 else "")

    def _fill(self, slots: Sequence[int] | npt.NDArray[np.intp], mat: Matrix, computed: bool) -> None:
        if self.out is None and len(slots) == len(self.have) and self._progress is None:
            whole = mat[np.argsort(slots)] if list(slots) != sorted(slots) else mat  # whole job in one go
            self.out = whole if whole.flags.writeable else whole.copy()
            self.have[:] = True
            return
        if self.out is None:
            self.out = np.empty((len(self.have), mat.shape[1]), dtype=np.float32)
        self.out[slots] = mat
        self.have[slots] = True
        if self._progress is not None:
            self._advance(slots, computed)

    def _advance(self, slots: Sequence[int] | npt.NDArray[np.intp], computed: bool, sign: int = 1) -> None:
        """Report `slots` done (sign -1: undone) to the progress reporter, counting repeated items."""
        assert self._progress is not None
        if not self.dups:
            items = len(slots)
        else:
            if self._counts is None:
                self._counts = np.bincount(self.slot_of, minlength=len(self.have))
            items = int(self._counts[slots].sum())
        self._progress.advance(sign * items, sign * len(slots) if computed else 0)

    def _check_dim(self, slots: Sequence[int], mat: Matrix) -> None:
        """Hold the model to one vector length: what it declared, returned before, or in this call."""
        dim = int(mat.shape[1])
        if self.expected_dim is None:
            self.expected_dim, self._dim_source = dim, "returned earlier in this call"
            self.model._learn_dim(dim)
        elif dim != self.expected_dim:
            raise BadVectorsError(
                f"the model returned {dim}-dim vectors for {self._names(slots)}, but its vectors have "
                f"{self.expected_dim} dimensions ({self._dim_source}); a model must always return one length",
                self.positions(slots),
            )
        if self._cached and self._cached_dim != dim:  # what the cache claimed was wrong: recompute those
            self.have[self._cached] = False
            if self._progress is not None:
                self._advance(self._cached, False, -1)
            self.redo = True
            _warn(
                f"{len(self._cached)} cache entries in {self.store!r} had {self._cached_dim}-dim vectors but "
                f"{type(self.model).__name__} returns {dim}-dim ones; they were treated as misses and will be rewritten"
            )
            if self.out is not None and self.out.shape[1] != dim:
                self.out = None
        self._cached = []

    # -- cache -------------------------------------------------------------------------------
    def accept_cached(self, blobs: Sequence[Any], dim_blob: Any = None) -> None:
        """Take the float32 blobs a cache read found; unreadable, non-finite or wrong-length ones become misses.

        The length is the model's own when known, else the one the cache recorded for this model
        (`dim_blob`), else the most common; an assumed length is checked again when the model runs.
        """
        recorded = self._recorded_dim = _decode_dim(dim_blob)
        sizes = Counter(len(b) for b in blobs if isinstance(b, (bytes, bytearray)) and b)
        present = sum(b is not None for b in blobs)
        if not sizes:
            bad = present
        else:
            dim = self.expected_dim or recorded or sizes.most_common(1)[0][0] // 4
            width = 4 * dim
            slots = [s for s, b in enumerate(blobs) if isinstance(b, (bytes, bytearray)) and len(b) == width]
            bad = present - len(slots)
            if slots:
                mat = np.frombuffer(b"".join(blobs[s] for s in slots), dtype="<f4").reshape(len(slots), dim)
                finite = np.isfinite(mat).all(axis=1)
                if not finite.all():
                    bad += int((~finite).sum())
                    mat, slots = mat[finite], [s for s, ok in zip(slots, finite) if ok]
                if slots:
                    self._none_cached = False
                    with self._lock:
                        self._fill(slots, mat, False)
                    if self.expected_dim is None:
                        self._cached, self._cached_dim = slots, dim
        if bad:
            expect = f" (this model's vectors have {self.dim} values)" if self.dim else ""
            _warn(
                f"{bad} unreadable or wrong-length cache entries in {self.store!r}{expect} were treated as misses "
                "and will be rewritten"
            )

    def dim_record(self) -> Write | None:
        """The cache write that records this model's vector length, when the cache lacks it or has it wrong."""
        dim = self.expected_dim
        if dim is None or self._recorded_dim == dim or not self.keys:
            return None
        self._recorded_dim = dim
        return [self.model._dim_key()], np.array([[dim]], dtype=np.float32)

    # -- batches -----------------------------------------------------------------------------
    def batches(self) -> list[Planned]:
        """The missing items, in the model's preferred order, in batches of embed_batch_size.

        Called once per round: the first plans every miss; a later round exists only when cache hits
        turned out to have the wrong length (`redo`).
        """
        if self._planned and not self.redo:
            return []
        self._planned, self.redo = True, False
        if self._none_cached:
            misses = list(range(len(self.have)))
        else:
            misses = np.flatnonzero(~self.have).tolist()
            if not misses:
                return []
        plan = self.model._plan([self.uniques[s] for s in misses], self.role)
        prepared = plan.prepared
        if prepared is not None and len(prepared) != len(misses):
            raise ValueError(
                f"{type(self.model).__name__}._plan returned {len(prepared)} prepared values for {len(misses)} items"
            )
        if plan.order is not None:
            order = plan.order
            if sorted(order) != list(range(len(misses))):
                raise ValueError(f"{type(self.model).__name__}._plan returned an order that is not a permutation")
            misses = [misses[i] for i in order]
            if prepared is not None:
                prepared = [prepared[i] for i in order]
        size = self.model.embed_batch_size
        return [
            Planned(
                misses[i : i + size], self._batch(misses[i : i + size], prepared[i : i + size] if prepared else None)
            )
            for i in range(0, len(misses), size)
        ]

    def _batch(self, slots: list[int], prepared: list[Any] | None = None) -> Batch:
        items = [self.uniques[s] for s in slots]
        if not self.dups:
            return Batch(items, self.role, self.label, list(slots), prepared=prepared)
        if self._repeats is None:
            self._repeats = {}
            for pos, slot in enumerate(self.slot_of):
                if pos != self._first[slot]:
                    self._repeats.setdefault(slot, []).append(pos)
        repeats = {i: self._repeats[s] for i, s in enumerate(slots) if s in self._repeats}
        return Batch(items, self.role, self.label, self.positions(slots), repeats, prepared)

    @contextmanager
    def observe(self, batch: Planned) -> Iterator[Callable[[Any], Write | None]]:
        """Events around one hook call; yields `finish(raw)`, which stores the result and says what to write."""
        token = self._events.start() if self._events else None

        def finish(raw: Any) -> Write | None:
            meta = raw if isinstance(raw, EmbedResult) else None
            try:
                mat = as_matrix(meta.vectors if meta else raw, len(batch.items))
            except BadVectorsError as e:
                if e.positions:
                    slots = [batch.slots[r] for r in e.positions]
                    raise BadVectorsError(
                        f"{e}: {self._names(slots)}; nothing was cached for them",
                        self.positions(slots),
                    ) from None
                raise BadVectorsError(f"{e} (for {self._names(batch.slots)})") from None
            with self._lock:
                self._check_dim(batch.slots, mat)
                self._fill(batch.slots, mat, True)
            if self._events:
                self._events.end(token, self.role, batch.items, mat, meta)
            return ([self.keys[s] for s in batch.slots], mat) if self.keys else None

        try:
            yield finish
        except BaseException as e:
            if self._events:
                self._events.fail(token, e)
            raise

    def salvage(self, batch: Planned, exc: BaseException) -> Write | None:
        """The cache write for what a failed batch did obtain (`exc.partial`), if anything."""
        part = getattr(exc, "partial", None)
        if not isinstance(part, PartialResult) or not part.positions or not self.keys:
            return None
        try:
            mat = as_matrix(part.vectors, len(part.positions))
            if self.expected_dim is not None and mat.shape[1] != self.expected_dim:
                raise ValueError(f"{mat.shape[1]}-dim vectors, expected {self.expected_dim}")
            keys = [self.keys[batch.slots[p]] for p in part.positions]
        except (ValueError, IndexError) as e:  # a provider bug must not hide the real failure
            logger.warning("ignored a malformed partial result from %s: %s", type(self.model).__name__, e)
            return None
        return keys, mat

    # -- result ------------------------------------------------------------------------------
    def result(self) -> Matrix:
        """All vectors in input order, as a writeable (n, dim) float32 matrix."""
        self.close()
        if self.out is None:
            return np.zeros((0, self.expected_dim or 0), dtype=np.float32)
        if not self.have.all():  # never hand out uninitialised memory
            missing = np.flatnonzero(~self.have).tolist()
            raise RuntimeError(f"internal error: no vector for {self._names(missing)}; please report this")
        out = self.out[self.slot_of] if self.dups else self.out
        return out if out.flags.writeable else out.copy()

    def close(self) -> None:
        """Close this call's own progress bar (a shared Progress is its owner's to close)."""
        if self._own_progress and self._progress is not None:
            self._progress.close()


def _decode_dim(blob: Any) -> int | None:
    if not isinstance(blob, (bytes, bytearray)) or len(blob) != 4:
        return None
    value = float(np.frombuffer(blob, dtype="<f4")[0])
    return int(value) if value.is_integer() and 0 < value < 1 << 20 else None


def _warn(msg: str) -> None:
    logger.warning(msg)
    warnings.warn(msg, RuntimeWarning, stacklevel=5)


def _first_positions(slot_of: list[int], n_unique: int) -> list[int]:
    """Input position of each slot's first occurrence."""
    first = [-1] * n_unique
    for pos, slot in enumerate(slot_of):
        if first[slot] < 0:
            first[slot] = pos
    return first


def _progress(total: int, show: ProgressArg) -> tuple[Progress | None, bool]:
    """The job's progress reporter and whether the job owns it (a bool makes one; a Progress is shared)."""
    if isinstance(show, Progress):
        return show, False
    if not show or total == 0:
        return None, False
    return Progress(total), True


class _Events:
    """Start/end events and legacy callbacks for one call; does nothing when nobody listens."""

    def __init__(self, model: PipelineModel) -> None:
        dispatcher = get_dispatcher("embedstack.base")  # the one BaseEmbedding's spans report to

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


class CacheIO:
    """A job's reads and writes of its store: a failing cache never fails an embedding.

    Any error of the store (read-only file, disk full, corrupt page, a store bug) becomes one
    warning per store and operation, naming the store and the fix; reads then count as misses
    and writes are dropped, and every vector is still returned.
    """

    def __init__(self, job: EmbedJob) -> None:
        assert job.store is not None
        self.job = job
        self.store: BaseKVStore = job.store
        # The recorded vector length matters only while the model's own is unknown (not declared, not seen).
        self.record_key = job.model._dim_key() if job.expected_dim is None else None

    def _failed(self, op: str, exc: Exception) -> None:
        if _first_failure(self.store, op):
            _warn(
                f"the embedding cache {self.store!r} could not be {op} ({type(exc).__name__}: {exc}); vectors are "
                "still returned but "
                + ("cache entries count as misses" if op == "read" else "new ones are not cached")
                + f". Fix: {self.store.failure_hint}"
            )

    def read(self) -> None:
        """Fill the job from the store (its vectors and the model's recorded length)."""
        try:
            blobs = self.store.get_vector_blobs(self.job.keys, CACHE_COLLECTION)
            dim = self.store.get_vector_blobs([self.record_key], DIM_COLLECTION)[0] if self.record_key else None
        except Exception as e:
            self._failed("read", e)
            return
        self.job.accept_cached(blobs, dim)

    async def aread(self) -> None:
        """Async read()."""
        try:
            blobs = await self.store.aget_vector_blobs(self.job.keys, CACHE_COLLECTION)
            if self.record_key:
                dim = (await self.store.aget_vector_blobs([self.record_key], DIM_COLLECTION))[0]
            else:
                dim = None
        except Exception as e:
            self._failed("read", e)
            return
        self.job.accept_cached(blobs, dim)

    def write(self, write: Write | None, collection: str = CACHE_COLLECTION) -> None:
        """Store vectors (and, once, the model's vector length)."""
        for keys, mat, coll in self._writes(write, collection):
            try:
                self.store.put_vectors(keys, mat, coll)
            except Exception as e:
                self._failed("written", e)
                return

    async def awrite(self, write: Write | None, collection: str = CACHE_COLLECTION) -> None:
        """Async write()."""
        for keys, mat, coll in self._writes(write, collection):
            try:
                await self.store.aput_vectors(keys, mat, coll)
            except Exception as e:
                self._failed("written", e)
                return

    def _writes(self, write: Write | None, collection: str) -> list[tuple[list[str], Matrix, str]]:
        if not write:
            return []
        writes = [(*write, collection)]
        with self.job._lock:
            record = self.job.dim_record() if self.record_key else None
        if record:
            writes.append((*record, DIM_COLLECTION))
        return writes


_warned: weakref.WeakKeyDictionary[Any, set[str]] = weakref.WeakKeyDictionary()
_warned_lock = threading.Lock()


def _first_failure(store: Any, op: str) -> bool:
    """Whether this is the first failure of `op` on `store` (so it is warned about once)."""
    with _warned_lock:
        try:
            ops = _warned.setdefault(store, set())
        except TypeError:  # a store that cannot be weakly referenced: warn every time
            return True
        if op in ops:
            return False
        ops.add(op)
        return True


def run_sync(job: EmbedJob) -> Matrix:
    """Drive a job with blocking calls; batches run in a thread pool when the model allows it."""
    model = job.model
    cache = CacheIO(job) if job.store is not None and job.keys else None
    try:
        if cache:
            cache.read()
        failed: list[BaseException] = []

        def one(batch: Planned) -> None:
            if failed:  # a batch already failed: start nothing new
                return
            try:
                with job.observe(batch) as finish:
                    write = finish(model._embed(batch.batch))
                if cache:
                    cache.write(write)
            except Exception as e:
                failed.append(e)
                if cache:
                    cache.write(job.salvage(batch, e))

        workers = model._sync_workers()
        for _ in range(_MAX_ROUNDS):
            batches = job.batches()
            if failed or not batches:
                break
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
    model = job.model
    cache = CacheIO(job) if job.store is not None and job.keys else None
    try:
        if cache:
            await cache.aread()
        limit = model._async_workers()
        gate = asyncio.Semaphore(limit) if limit else None
        failed: list[BaseException] = []

        async def one(batch: Planned) -> None:
            async with gate or _NO_GATE:
                if failed:  # a batch already failed: start nothing new, let running ones finish
                    return
                try:
                    with job.observe(batch) as finish:
                        write = finish(await model._aembed(batch.batch))
                    if cache:
                        await cache.awrite(write)
                except Exception as e:
                    failed.append(e)
                    if cache:
                        await cache.awrite(job.salvage(batch, e))

        for _ in range(_MAX_ROUNDS):
            batches = await asyncio.to_thread(job.batches) if model.plan_in_thread else job.batches()
            if failed or not batches:
                break
            await asyncio.gather(*(one(b) for b in batches))
        if failed:
            raise failed[0]
        return job.result()
    finally:
        job.close()


def cached_rows(
    model: PipelineModel, items: Sequence[Any], role: Role, label: str = "input"
) -> tuple[Matrix | None, npt.NDArray[np.bool_]]:
    """What the model's cache already holds for `items`, without calling the model (read-only).

    The items are checked as `embed` checks them (errors name `label[i]`). Returns the (n, dim)
    vectors, zero rows where nothing was found, or None when nothing was; and which items were
    found. Entries are trusted only once the model's vector length is known (declared, returned by an
    earlier call, or recorded in the cache by the model, as `embed` trusts it), so a stale entry of
    another length is a miss here too. A server uses it so that cache hits never wait in its queue;
    a search, so that a repeated query never loads the model.
    """
    job = EmbedJob(model, items, role, label)
    found = np.zeros(job.n, dtype=bool)
    try:
        if job.store is None or not job.keys:
            return None, found
        CacheIO(job).read()
        if job.expected_dim is None and job._recorded_dim is None:  # no length to check entries against
            return None, found
        if job.out is None or not job.have.any():
            return None, found
        slot_of = np.asarray(job.slot_of, dtype=np.intp)
        found = job.have[slot_of]
        rows = job.out[slot_of]  # a fancy index: a new array, safe to change
        rows[~found] = 0.0
        return rows, found
    finally:
        job.close()


#: Rounds of batches per call: the second embeds cache hits found to have a wrong length.
_MAX_ROUNDS = 3


class _NoGate:
    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: object) -> None:
        return None


_NO_GATE = _NoGate()
