"""The public pipeline: a provider, a cache and events, with embed / aembed / iterate / cached / validate.

Every embedding call in embedstack goes through a `Pipeline`: the LlamaIndex classes
(`BaseEmbedding.pipeline`), the command line, the server, Ray jobs and the corpus map. It owns what
is the same for every model and output kind: the pipeline's input checks, cache keys (over the
provider's identity, the role and the instruction), one batched cache read, dedupe, batches in the
provider's order, one batched cache write per batch, input order restored, events and usage.

A pipeline's settings are fixed; `with_options` gives a copy with others (a per-call batch size or
cache never changes a model someone else is using).
"""

from __future__ import annotations

import copy
import itertools
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence, Sized
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import numpy.typing as npt

from embedstack._pipeline import EmbedJob, cached_rows, check_items, check_texts, run_async, run_sync, run_values
from embedstack.cache_key import dim_key, identity_prefix, make_key_factory
from embedstack.outputs import OutputKind, Rows
from embedstack.progress import Progress, ProgressArg
from embedstack.provider import Prepared, Provider
from embedstack.types import Role

if TYPE_CHECKING:
    from embedstack.callbacks.manager import CallbackManager
    from embedstack.kvstore.base import BaseKVStore

__all__ = ["DEFAULT_BATCH_SIZE", "DEFAULT_CHUNK_SIZE", "CachedRows", "EmbedOutput", "Pipeline", "Usage", "check_texts"]

#: Items per provider call when neither the caller nor the provider says otherwise (LlamaIndex's default).
DEFAULT_BATCH_SIZE = 10
#: Items per `iterate` chunk: large enough to batch well, small enough to keep memory flat.
DEFAULT_CHUNK_SIZE = 2048


@dataclass(frozen=True)
class Usage:
    """What one call cost: items computed by the provider and found in the cache, and the tokens the
    provider reported for what it computed (None when it reported none), of which `truncated` items
    were cut to the model's limit."""

    computed: int
    cached: int
    tokens: int | None
    truncated: int


@dataclass(frozen=True)
class EmbedOutput:
    """One call's rows in input order (an (n, dim) float32 matrix for dense outputs), its usage, and per
    input the token count and truncation the provider reported (-1 / False for cache hits and for
    providers that report none; None when nothing was reported at all)."""

    values: Rows
    usage: Usage
    token_counts: npt.NDArray[np.int64] | None = None
    truncated: npt.NDArray[np.bool_] | None = None


class CachedRows(NamedTuple):
    """What a cache holds for some items: rows (blank where nothing was found), or None when nothing was;
    and which items were found."""

    values: Rows | None
    found: npt.NDArray[np.bool_]


def _label(role: Role) -> str:
    return "images" if role is Role.IMAGE else "texts"


class Pipeline:
    """A provider behind the one pipeline: cache, dedupe, batching, order, events, usage; sync and async.

    `cache`: a `BaseKVStore` or None. `callback_manager`: LlamaIndex's legacy callbacks (events go to
    `embedstack.instrumentation` handlers in any case). `batch_size`: items per provider call (None:
    the provider's preference, else 10). `workers`: batches of one call that may run at once (capped by
    the provider's `capabilities.max_concurrency`).
    """

    def __init__(
        self,
        provider: Provider,
        cache: BaseKVStore | None = None,
        *,
        callback_manager: CallbackManager | None = None,
        batch_size: int | None = None,
        workers: int | None = None,
    ) -> None:
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size <= 0):
            raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}")
        self.provider = provider
        self.cache = cache
        self.callback_manager = callback_manager
        self._batch_size = batch_size
        self.workers = workers
        #: What the pipeline derived from its provider (keys, descriptor, the row length it returned):
        #: shared with `with_options` copies, which have the same provider.
        self._memo: dict[str, Any] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Pipeline({self.provider_name}, cache={self.cache!r}, batch_size={self.batch_size})"

    def with_options(self, **changes: Any) -> Pipeline:
        """A copy with other settings (`cache`, `callback_manager`, `batch_size`, `workers`); the provider,
        its keys and what the pipeline learned of it are shared."""
        unknown = set(changes) - {"cache", "callback_manager", "batch_size", "workers"}
        if unknown:
            raise TypeError(f"with_options() got unknown settings {sorted(unknown)}")
        new = copy.copy(self)  # shares _memo and _lock: same provider, same keys and learned length
        if "batch_size" in changes:
            size = changes.pop("batch_size")
            if size is not None and (not isinstance(size, int) or size <= 0):
                raise ValueError(f"batch_size must be a positive int or None, got {size!r}")
            new._batch_size = size
        for name, value in changes.items():
            setattr(new, name, value)
        return new

    # -- what jobs read ------------------------------------------------------------------------
    @property
    def output(self) -> OutputKind:
        """The provider's output kind (read once)."""
        kind = self._memo.get("output")
        if kind is None:
            kind = self._memo["output"] = self.provider.output
        return kind  # type: ignore[no-any-return]

    @property
    def provider_name(self) -> str:
        """How errors and warnings name the provider."""
        name = self._memo.get("name")
        if name is None:
            name = self._memo["name"] = type(getattr(self.provider, "model", self.provider)).__name__
        return name  # type: ignore[no-any-return]

    @property
    def batch_size(self) -> int:
        """Items per provider call."""
        if self._batch_size is not None:
            return self._batch_size
        preferred = getattr(self.provider, "preferred_batch_size", None)
        return int(preferred) if isinstance(preferred, int) and preferred > 0 else DEFAULT_BATCH_SIZE

    def sync_workers(self) -> int:
        """Batches of one sync call that may run at once."""
        if not self.workers or self.workers < 2:
            return 1
        caps = self.provider.capabilities
        if caps.parallel_sync_batches:
            return min(self.workers, caps.max_concurrency or self.workers)
        return 1

    def async_workers(self) -> int | None:
        """Batches of one async call that may run at once (None: no limit)."""
        caps = self.provider.capabilities
        cap = caps.max_concurrency
        if self.workers and self.workers > 1:
            limit: int | None = self.workers
        elif self.workers == 1 and caps.default_async_workers:
            limit = 1
        else:
            limit = caps.default_async_workers
        if cap is not None:
            limit = min(limit or cap, cap)
        return limit

    def descriptor(self) -> dict[str, Any]:
        """The provider as events show it (computed once)."""
        desc = self._memo.get("descriptor")
        if desc is None:
            desc = self._memo["descriptor"] = dict(self.provider.descriptor())
        return desc  # type: ignore[no-any-return]

    def _prefix(self) -> bytes:
        prefix = self._memo.get("prefix")
        if prefix is None:
            prefix = self._memo["prefix"] = identity_prefix(self.provider.identity())
        return prefix  # type: ignore[no-any-return]

    def key_factory(self, role: Role | str) -> Callable[[Any], str]:
        """item → cache key for `role`: sha256 over the provider's identity, the role, its instruction and the item."""
        role = Role(role)
        memo_key = f"key:{role.value}"
        factory = self._memo.get(memo_key)
        if factory is None:
            factory = self._memo[memo_key] = make_key_factory(self._prefix(), role, self.provider.instruction(role))
        return factory  # type: ignore[no-any-return]

    def dim_key(self) -> str:
        """The cache key under which the provider's row length is recorded."""
        key = self._memo.get("dim_key")
        if key is None:
            key = self._memo["dim_key"] = dim_key(self._prefix())
        return key  # type: ignore[no-any-return]

    def known_size(self) -> tuple[int | None, str]:
        """The row length every result must have, and where it comes from (for error messages)."""
        learned = self._memo.get("size")
        if learned is not None:
            return learned, "returned by its earlier calls"
        declared = self.output.size
        return declared, ("declared by the model" if declared is not None else "")

    def learn_size(self, size: int) -> None:
        """Remember the row length the provider returned (the first one wins)."""
        with self._lock:
            self._memo.setdefault("size", size)

    # -- the calls -----------------------------------------------------------------------------
    def validate(self, items: Sequence[Any], role: Role | str = Role.TEXT, label: str | None = None) -> None:
        """The checks every call makes before any work (the pipeline's, then the provider's); raises
        TypeError / InvalidInputError naming `label[i]`."""
        role = Role(role)
        label = label or _label(role)
        items = check_items(items, role, label)
        self.provider.check(items, role, label, 0)

    def embed(
        self,
        items: Sequence[Any],
        role: Role | str = Role.TEXT,
        *,
        show_progress: ProgressArg = False,
        label: str | None = None,
        offset: int = 0,
        prepared: Prepared | None = None,
    ) -> EmbedOutput:
        """Every item's row in input order, with usage; cached rows are reused, new ones cached.

        `prepared`: the items as `provider.prepare(items, role)` made them (one per item): their batches
        get those values and nothing is planned or tokenised again (a server tokenises on arrival)."""
        role = Role(role)
        job = EmbedJob(self, items, role, label or _label(role), show_progress, offset, prepared)
        return _output(job, run_sync(job))

    async def aembed(
        self,
        items: Sequence[Any],
        role: Role | str = Role.TEXT,
        *,
        show_progress: ProgressArg = False,
        label: str | None = None,
        offset: int = 0,
        prepared: Prepared | None = None,
    ) -> EmbedOutput:
        """Async `embed`; the event loop is never blocked by the provider or the cache."""
        role = Role(role)
        job = EmbedJob(self, items, role, label or _label(role), show_progress, offset, prepared)
        return _output(job, await run_async(job))

    def values(
        self, items: Sequence[Any], role: Role, label: str, show_progress: ProgressArg = False, offset: int = 0
    ) -> Rows:
        """`embed(...).values`, without building the usage (the LlamaIndex methods' path)."""
        return run_values(self, items, role, label, show_progress, offset)

    async def avalues(
        self, items: Sequence[Any], role: Role, label: str, show_progress: ProgressArg = False, offset: int = 0
    ) -> Rows:
        """Async `values`."""
        return await run_async(EmbedJob(self, items, role, label, show_progress, offset))

    def iterate(
        self,
        items: Iterable[Any],
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        role: Role | str = Role.TEXT,
        *,
        show_progress: ProgressArg = False,
        total: int | None = None,
    ) -> Iterator[EmbedOutput]:
        """Embed a stream, one `EmbedOutput` per `chunk_size` items read lazily; memory stays bounded by the
        chunk, an interrupted run keeps what it cached, errors name stream positions (`texts[12345]`)."""
        role = Role(role)
        with _streaming(items, chunk_size, show_progress, total) as (chunks, progress):
            for chunk, offset in chunks:
                yield self.embed(chunk, role, show_progress=progress, offset=offset)

    async def aiterate(
        self,
        items: Iterable[Any],
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        role: Role | str = Role.TEXT,
        *,
        show_progress: ProgressArg = False,
        total: int | None = None,
    ) -> AsyncIterator[EmbedOutput]:
        """Async `iterate` (the items are read on the loop: pass a list or a cheap iterator)."""
        role = Role(role)
        with _streaming(items, chunk_size, show_progress, total) as (chunks, progress):
            for chunk, offset in chunks:
                yield await self.aembed(chunk, role, show_progress=progress, offset=offset)

    def cached(self, items: Sequence[Any], role: Role | str = Role.TEXT, label: str = "input") -> CachedRows:
        """What the cache already holds for `items`, without calling the provider (read-only): a server answers
        hits without queueing them, a search skips loading the model for a repeated query."""
        rows, found = cached_rows(self, items, Role(role), label)
        return CachedRows(rows, found)


def _output(job: EmbedJob, values: Rows) -> EmbedOutput:
    tokens = job.per_input(job.tokens)
    cut = job.per_input(job.cut)
    reported = (int(job.tokens[job.tokens >= 0].sum()) if job.tokens is not None else 0) + job.batch_tokens
    any_reported = job.tokens is not None or job.batch_tokens > 0
    truncated = (int(job.cut.sum()) if job.cut is not None else 0) + job.batch_truncated
    usage = Usage(job.computed, len(job.have) - job.computed, reported if any_reported else None, truncated)
    return EmbedOutput(values, usage, tokens, cut)


def _chunks(items: Iterable[Any], size: int) -> Iterator[tuple[list[Any], int]]:
    """(chunk, position of its first item) for each `size` items of a stream."""
    if isinstance(items, (str, bytes, bytearray)):
        raise TypeError(f"embed_iter takes an iterable of items, not one {type(items).__name__}; wrap it in a list")
    it, offset = iter(items), 0
    while chunk := list(itertools.islice(it, size)):
        yield chunk, offset
        offset += len(chunk)


@contextmanager
def _streaming(
    items: Iterable[Any], chunk_size: int, show: ProgressArg, total: int | None
) -> Iterator[tuple[Iterator[tuple[list[Any], int]], ProgressArg]]:
    """A stream's chunks and its progress reporter (a bar of its own is closed at the end)."""
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    progress, owned = _stream_progress(items, show, total)
    try:
        yield _chunks(items, chunk_size), progress or False
    finally:
        if owned and progress is not None:
            progress.close()


def _stream_progress(items: Iterable[Any], show: ProgressArg, total: int | None) -> tuple[Progress | None, bool]:
    """A stream's progress: a shared Progress as given, or one for the whole stream (sized when it can be)."""
    if isinstance(show, Progress):
        return show, False
    if not show:
        return None, False
    if total is None and isinstance(items, Sized):
        total = len(items)
    return Progress(total), True
