"""BaseSparseEmbedding: LlamaIndex's sparse embedding API (`base_sparse`) as thin calls into one pipeline.

`SparseEmbedding` is `Dict[int, float]` as in LlamaIndex; `sparse_similarity` and `mean_agg` behave as
LlamaIndex's. A subclass implements LlamaIndex's private hooks (`_get_query_embedding`,
`_aget_query_embedding`, `_get_text_embedding`, `_aget_text_embedding`, optionally the batch hooks);
every public method goes through an `embedstack.pipeline.Pipeline` whose provider's output is
`Sparse`: the model-aware cache, dedupe, batches, async that never blocks the loop, errors that name
`texts[i]`, and sparse start/end events.
"""

from __future__ import annotations

import asyncio
import math
from abc import abstractmethod
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from typing import Any, ClassVar, Dict  # noqa: UP035 (LlamaIndex's spelling of SparseEmbedding)

from pydantic import model_serializer

from embedstack._async_hooks import call_hook, gather_hook
from embedstack.base import _RUNTIME_FIELDS, EmbeddingModel
from embedstack.instrumentation import get_dispatcher
from embedstack.outputs import OutputKind, Sparse, SparseVector
from embedstack.pipeline import DEFAULT_CHUNK_SIZE
from embedstack.progress import ProgressArg
from embedstack.provider import BatchOutput
from embedstack.types import Batch, Plan, Role

__all__ = [
    "BaseSparseEmbedding",
    "BatchSparseEmbedding",
    "SparseEmbedding",
    "SparseVector",
    "mean_agg",
    "sparse_dot",
    "sparse_similarity",
]

SparseEmbedding = Dict[int, float]  # noqa: UP006
dispatcher = get_dispatcher(__name__)


def sparse_similarity(embedding1: SparseEmbedding, embedding2: SparseEmbedding) -> float:
    """Cosine similarity of two sparse embeddings (0.0 when either is empty or all zeros), as LlamaIndex's."""
    if not embedding1 or not embedding2:
        return 0.0
    if len(embedding1) > len(embedding2):
        embedding1, embedding2 = embedding2, embedding1
    dot = sum(v * embedding2[i] for i, v in embedding1.items() if i in embedding2)
    norm1 = sum(v * v for v in embedding1.values())
    norm2 = sum(v * v for v in embedding2.values())
    if norm1 == 0.0 or norm2 == 0.0:
        return 0.0
    return dot / (math.sqrt(norm1) * math.sqrt(norm2))


def sparse_dot(embedding1: SparseEmbedding, embedding2: SparseEmbedding) -> float:
    """The dot product of two sparse embeddings (what SPLADE and BM25 rank by)."""
    if len(embedding1) > len(embedding2):
        embedding1, embedding2 = embedding2, embedding1
    return float(sum(v * embedding2[i] for i, v in embedding1.items() if i in embedding2))


def mean_agg(embeddings: list[SparseEmbedding]) -> SparseEmbedding:
    """The mean of several sparse embeddings ({} for none), as LlamaIndex's."""
    if not embeddings:
        return {}
    total: dict[int, float] = defaultdict(float)
    for embedding in embeddings:
        for idx, value in embedding.items():
            total[idx] += value
    return {idx: value / len(embeddings) for idx, value in total.items()}


class BaseSparseEmbedding(EmbeddingModel):
    """Base class for sparse embedding models (LlamaIndex's `BaseSparseEmbedding`, same methods).

    Subclasses implement `_get_query_embedding`, `_aget_query_embedding`, `_get_text_embedding` and
    `_aget_text_embedding` (each returns {index: value}), and may override `_get_text_embeddings` /
    `_aget_text_embeddings` for real batches, or `_embed(batch)` to take every role in one hook.
    `vocab_size` (when known) bounds the indices.
    """

    #: Private attributes rebuilt from the fields (loaded weights): never pickled, reset when a field that changes
    #: the vectors changes (`_refresh`).
    _derived: ClassVar[frozenset[str]] = frozenset()
    #: Outputs of another backend or precision stay searchable and extendable (`Provider.model_identity`).
    _arithmetic_fields: ClassVar[frozenset[str]] = EmbeddingModel._arithmetic_fields | {"backend"}

    @model_serializer(mode="wrap")
    def _dump_with_class_name(self, handler: Any) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        data["class_name"] = self.class_name()
        data.pop("api_key", None)
        return data

    @classmethod
    def class_name(cls) -> str:
        """Name stored in to_dict()."""
        return "BaseSparseEmbedding"

    # -- state ---------------------------------------------------------------------------------
    def _refresh(self, changed: frozenset[str], fresh: bool) -> None:
        """Drop derived state (`_derived`) when a field that changes the vectors changed; rebuilt on next use."""
        if fresh or not (changed - _RUNTIME_FIELDS - self._identity_exclude):
            return
        private = self.__pydantic_private__ or {}
        for name in self._derived:
            private[name] = self.__private_attributes__[name].get_default(call_default_factory=True)

    def _descriptor(self) -> dict[str, Any]:
        """What events and repr show: `to_payload()` (never credentials)."""
        return self.to_payload()

    def to_payload(self) -> dict[str, Any]:
        """Non-sensitive representation of this model for events (never credentials)."""
        return {
            "class_name": self.class_name(),
            "model_name": self.model_name,
            "embed_batch_size": self.embed_batch_size,
        }

    # -- LlamaIndex hooks ----------------------------------------------------------------------
    @abstractmethod
    def _get_query_embedding(self, query: str) -> SparseEmbedding:
        """Embed the input query synchronously."""

    @abstractmethod
    async def _aget_query_embedding(self, query: str) -> SparseEmbedding:
        """Embed the input query asynchronously."""

    @abstractmethod
    def _get_text_embedding(self, text: str) -> SparseEmbedding:
        """Embed the input text synchronously."""

    async def _aget_text_embedding(self, text: str) -> SparseEmbedding:
        """Embed the input text asynchronously (by default the sync hook in a worker thread)."""
        return await asyncio.to_thread(self._get_text_embedding, text)

    def _get_text_embeddings(self, texts: list[str]) -> list[SparseEmbedding]:
        """Embed a batch of texts; by default one `_get_text_embedding` per text."""
        return [self._get_text_embedding(text) for text in texts]

    async def _aget_text_embeddings(self, texts: list[str]) -> list[SparseEmbedding]:
        """Embed a batch asynchronously: the async hook per text if it has one, else the sync batch in a thread."""
        if type(self)._aget_text_embedding is not BaseSparseEmbedding._aget_text_embedding:
            return await gather_hook(self._aget_text_embedding, texts)
        return await asyncio.to_thread(self._get_text_embeddings, texts)

    def _get_query_embeddings(self, queries: list[str]) -> list[SparseEmbedding]:
        """Embed a batch of queries; by default one `_get_query_embedding` per query."""
        return [self._get_query_embedding(q) for q in queries]

    async def _aget_query_embeddings(self, queries: list[str]) -> list[SparseEmbedding]:
        """Embed a batch of queries asynchronously (a sync-bodied async hook runs in a worker thread)."""
        return await gather_hook(self._aget_query_embedding, queries)

    # -- what the pipeline asks of a model -----------------------------------------------------
    def _embed(self, batch: Batch) -> Any:
        """One batch (queries or texts) through the sync hooks."""
        if batch.role is Role.QUERY:
            return self._get_query_embeddings(list(batch.items))
        if batch.role is Role.TEXT:
            return self._get_text_embeddings(list(batch.items))
        raise TypeError(f"{type(self).__name__} embeds texts and queries, not {batch.role.value} items")

    async def _aembed(self, batch: Batch) -> Any:
        """One batch through the async hooks."""
        if batch.role is Role.QUERY:
            return await call_hook(self._aget_query_embeddings, list(batch.items))
        if batch.role is Role.TEXT:
            return await call_hook(self._aget_text_embeddings, list(batch.items))
        raise TypeError(f"{type(self).__name__} embeds texts and queries, not {batch.role.value} items")

    def _check_items(self, items: Sequence[Any], role: Role, label: str, offset: int = 0) -> None:
        """Refuse a call before any work; nothing by default."""
        if role not in (Role.QUERY, Role.TEXT):
            raise TypeError(f"{type(self).__name__} embeds texts and queries, not {role.value} items")

    def _output_kind(self) -> OutputKind:
        """Sparse vectors over the vocabulary (indices below `_vocab_size()`, when known)."""
        return Sparse(self._vocab_size())

    def _vocab_size(self) -> int | None:
        """The number of dimensions (indices are below it), when known before running; None by default."""
        return None

    def _plan(self, items: list[Any], role: Role) -> Plan:
        """Input order, nothing prepared."""
        return Plan()

    # -- public API (LlamaIndex's) -------------------------------------------------------------
    def _rows(self, items: Sequence[Any], role: Role, label: str, show: ProgressArg = False) -> list[SparseVector]:
        return list(self.pipeline.values(items, role, label, show))

    async def _arows(
        self, items: Sequence[Any], role: Role, label: str, show: ProgressArg = False
    ) -> list[SparseVector]:
        return list(await self.pipeline.avalues(items, role, label, show))

    @dispatcher.span
    def get_query_embedding(self, query: str) -> SparseEmbedding:
        """Embed the input query."""
        return self._rows([query], Role.QUERY, "query")[0].to_dict()

    @dispatcher.span
    async def aget_query_embedding(self, query: str) -> SparseEmbedding:
        """Embed the input query asynchronously."""
        return (await self._arows([query], Role.QUERY, "query"))[0].to_dict()

    def get_agg_embedding_from_queries(
        self, queries: list[str], agg_fn: Callable[..., SparseEmbedding] | None = None
    ) -> SparseEmbedding:
        """Embed several queries and aggregate them (mean by default)."""
        embeddings = [r.to_dict() for r in self._rows(queries, Role.QUERY, "queries")]
        return (agg_fn or mean_agg)(embeddings)

    async def aget_agg_embedding_from_queries(
        self, queries: list[str], agg_fn: Callable[..., SparseEmbedding] | None = None
    ) -> SparseEmbedding:
        """Async `get_agg_embedding_from_queries`."""
        embeddings = [r.to_dict() for r in await self._arows(queries, Role.QUERY, "queries")]
        return (agg_fn or mean_agg)(embeddings)

    @dispatcher.span
    def get_text_embedding(self, text: str) -> SparseEmbedding:
        """Embed the input text."""
        return self._rows([text], Role.TEXT, "text")[0].to_dict()

    @dispatcher.span
    async def aget_text_embedding(self, text: str) -> SparseEmbedding:
        """Embed the input text asynchronously."""
        return (await self._arows([text], Role.TEXT, "text"))[0].to_dict()

    @dispatcher.span
    def get_text_embedding_batch(
        self, texts: list[str], show_progress: bool = False, **kwargs: Any
    ) -> list[SparseEmbedding]:
        """Embed many texts in batches of embed_batch_size; results in input order."""
        return [r.to_dict() for r in self._rows(texts, Role.TEXT, "texts", show_progress)]

    @dispatcher.span
    async def aget_text_embedding_batch(self, texts: list[str], show_progress: bool = False) -> list[SparseEmbedding]:
        """Embed many texts, batches running concurrently (at most num_workers at once)."""
        return [r.to_dict() for r in await self._arows(texts, Role.TEXT, "texts", show_progress)]

    def similarity(self, embedding1: SparseEmbedding, embedding2: SparseEmbedding) -> float:
        """Cosine similarity of two sparse embeddings."""
        return sparse_similarity(embedding1, embedding2)

    # -- embedstack's bulk API -------------------------------------------------------------------
    def embed(
        self, items: Sequence[str], role: Role | str = Role.TEXT, show_progress: ProgressArg = False
    ) -> list[SparseVector]:
        """Bulk path: one `SparseVector` (int32 indices, float32 values) per item, through the same pipeline."""
        role = Role(role)
        return self._rows(items, role, "texts", show_progress)

    async def aembed(
        self, items: Sequence[str], role: Role | str = Role.TEXT, show_progress: ProgressArg = False
    ) -> list[SparseVector]:
        """Async `embed`."""
        role = Role(role)
        return await self._arows(items, role, "texts", show_progress)

    def embed_iter(
        self,
        items: Iterable[str],
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        role: Role | str = Role.TEXT,
        show_progress: ProgressArg = False,
        total: int | None = None,
    ) -> Iterator[list[SparseVector]]:
        """Embed a stream, one list of `SparseVector`s per `chunk_size` items read lazily."""
        for out in self.pipeline.iterate(items, chunk_size, role, show_progress=show_progress, total=total):
            yield list(out.values)

    async def aembed_iter(
        self,
        items: Iterable[str],
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        role: Role | str = Role.TEXT,
        show_progress: ProgressArg = False,
        total: int | None = None,
    ) -> AsyncIterator[list[SparseVector]]:
        """Async `embed_iter`."""
        async for out in self.pipeline.aiterate(items, chunk_size, role, show_progress=show_progress, total=total):
            yield list(out.values)

    def sparse_fns(
        self,
    ) -> tuple[
        Callable[[list[str]], tuple[list[list[int]], list[list[float]]]],
        Callable[[list[str]], tuple[list[list[int]], list[list[float]]]],
    ]:
        """(sparse_doc_fn, sparse_query_fn) as LlamaIndex's hybrid vector stores (Qdrant) take them:
        texts → (indices per text, values per text)."""

        def split(rows: list[SparseVector]) -> tuple[list[list[int]], list[list[float]]]:
            return [r.indices.tolist() for r in rows], [r.values.tolist() for r in rows]

        def doc_fn(texts: list[str]) -> tuple[list[list[int]], list[list[float]]]:
            return split(self.embed(texts, Role.TEXT))

        def query_fn(texts: list[str]) -> tuple[list[list[int]], list[list[float]]]:
            return split(self.embed(texts, Role.QUERY))

        return doc_fn, query_fn


class BatchSparseEmbedding(BaseSparseEmbedding):
    """Base for sparse providers with one native batched hook, `_vectors(texts, role)` (queries and texts), from
    which LlamaIndex's single-item hooks are derived; the async hooks run it in a worker thread."""

    def _vectors(self, texts: list[str], role: Role, prepared: list[Any] | None = None) -> Any:
        """Sparse rows (or a `BatchOutput` of them) for a batch of `role` texts; `prepared`: their tokens as the
        model's `_plan` or `_prepare` made them (None: the model tokenises them itself)."""
        raise NotImplementedError(f"{type(self).__name__} must implement _vectors(texts, role, prepared=None)")

    def _embed(self, batch: Batch) -> Any:
        if batch.role not in (Role.QUERY, Role.TEXT):
            raise TypeError(f"{type(self).__name__} embeds texts and queries, not {batch.role.value} items")
        return self._vectors(list(batch.items), batch.role, batch.prepared)

    async def _aembed(self, batch: Batch) -> Any:
        return await asyncio.to_thread(self._embed, batch)

    def _one(self, text: str, role: Role) -> SparseEmbedding:
        return Sparse().check([_values(self._vectors([text], role))[0]], 1)[0].to_dict()  # type: ignore[no-any-return]

    def _get_query_embedding(self, query: str) -> SparseEmbedding:
        return self._one(query, Role.QUERY)

    async def _aget_query_embedding(self, query: str) -> SparseEmbedding:
        return await asyncio.to_thread(self._one, query, Role.QUERY)

    def _get_text_embedding(self, text: str) -> SparseEmbedding:
        return self._one(text, Role.TEXT)

    async def _aget_text_embedding(self, text: str) -> SparseEmbedding:
        return await asyncio.to_thread(self._one, text, Role.TEXT)


def _values(raw: Any) -> Any:
    return raw.values if isinstance(raw, BatchOutput) else raw
