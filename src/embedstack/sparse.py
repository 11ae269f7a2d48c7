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
import threading
from abc import abstractmethod
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, ClassVar, Dict  # noqa: UP035 (LlamaIndex's spelling of SparseEmbedding)

from pydantic import Field, PrivateAttr, field_validator, model_serializer

from embedstack._async_hooks import call_hook, gather_hook
from embedstack._component import BaseComponent
from embedstack.callbacks.manager import CallbackManager
from embedstack.instrumentation import get_dispatcher
from embedstack.kvstore.base import BaseKVStore
from embedstack.outputs import OutputKind, Sparse, SparseVector
from embedstack.pipeline import DEFAULT_BATCH_SIZE, DEFAULT_CHUNK_SIZE, Pipeline
from embedstack.progress import ProgressArg
from embedstack.provider import Capabilities, TokenCounts
from embedstack.types import Batch, Plan, Role

__all__ = [
    "BaseSparseEmbedding",
    "SparseEmbedding",
    "SparseModelProvider",
    "SparseVector",
    "mean_agg",
    "sparse_dot",
    "sparse_similarity",
]

SparseEmbedding = Dict[int, float]  # noqa: UP006
dispatcher = get_dispatcher(__name__)

_UNPICKLABLE = (type(threading.Lock()), type(threading.RLock()))
# Fields that never change a vector: left out of the cache key.
_RUNTIME_FIELDS = frozenset({"callback_manager", "embed_batch_size", "num_workers", "embeddings_cache"})


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


class BaseSparseEmbedding(BaseComponent):
    """Base class for sparse embedding models (LlamaIndex's `BaseSparseEmbedding`, same methods).

    Subclasses implement `_get_query_embedding`, `_aget_query_embedding`, `_get_text_embedding` and
    `_aget_text_embedding` (each returns {index: value}), and may override `_get_text_embeddings` /
    `_aget_text_embeddings` for real batches, or `_embed(batch)` to take every role in one hook.
    `vocab_size` (when known) bounds the indices.
    """

    model_name: str = Field(default="unknown", description="The name of the embedding model.")
    embed_batch_size: int = Field(
        default=DEFAULT_BATCH_SIZE, description="The batch size for embedding calls.", gt=0, le=2048
    )
    num_workers: int | None = Field(default=None, description="The number of workers to use for async embedding calls.")
    callback_manager: CallbackManager = Field(default_factory=lambda: CallbackManager([]), exclude=True)
    embeddings_cache: Any | None = Field(
        default=None, exclude=True, description="Cache for the embeddings: if None, the embeddings are not cached."
    )

    #: Fields of a subclass that do not change its vectors (device, ...): kept out of the cache key.
    _identity_exclude: ClassVar[frozenset[str]] = frozenset()
    #: Whether `_plan` tokenises (the async driver then runs it in a worker thread).
    plan_in_thread: ClassVar[bool] = False
    #: Private attributes rebuilt from the fields (loaded weights): never pickled, cleared when a field changes.
    _derived: ClassVar[frozenset[str]] = frozenset()

    _memo: dict[str, Any] = PrivateAttr(default_factory=dict)

    @field_validator("callback_manager", mode="before")
    @classmethod
    def _default_callback_manager(cls, v: Any) -> Any:
        return CallbackManager([]) if v is None else v

    @field_validator("embeddings_cache")
    @classmethod
    def _check_cache(cls, v: Any) -> Any:
        if v is not None and not isinstance(v, BaseKVStore):
            raise TypeError(
                f"embeddings_cache must be a BaseKVStore (SimpleKVStore, SQLiteKVStore, ...) or None, "
                f"not {type(v).__name__}"
            )
        return v

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
    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if name in type(self).model_fields:
            self._memo.clear()  # a new provider and pipeline: the old ones key with the old settings
            if name not in _RUNTIME_FIELDS and name not in self._identity_exclude:
                self._forget()

    def _forget(self) -> None:
        """Drop derived state (`_derived`), rebuilt on next use."""
        private = self.__pydantic_private__ or {}
        for name in self._derived:
            private[name] = self.__private_attributes__[name].get_default(call_default_factory=True)

    def __getstate__(self) -> dict[Any, Any]:
        """Pickle the fields without memo, locks or derived state."""
        state = super().__getstate__()
        private = state.get("__pydantic_private__") or {}
        drop = {"_memo", *self._derived}
        keep = {k: v for k, v in private.items() if k not in drop and not isinstance(v, _UNPICKLABLE)}
        return {**state, "__pydantic_private__": keep}

    def __setstate__(self, state: dict[Any, Any]) -> None:
        super().__setstate__(state)
        private = self.__pydantic_private__ if self.__pydantic_private__ is not None else {}
        for name, attr in self.__private_attributes__.items():
            if name not in private:
                private[name] = attr.get_default(call_default_factory=True)
        object.__setattr__(self, "__pydantic_private__", private)

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.to_payload().items() if k != "class_name")
        return f"{type(self).__name__}({fields})"

    __str__ = __repr__

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

    def _vocab_size(self) -> int | None:
        """The number of dimensions (indices are below it), when known before running; None by default."""
        return None

    def _plan(self, items: list[Any], role: Role) -> Plan:
        """Input order, nothing prepared."""
        return Plan()

    def _count_tokens(self, items: list[Any], role: Role) -> TokenCounts | None:
        """Token counts as the model sees them (None: cannot count)."""
        return None

    def _instruction(self, role: Role) -> str | None:
        """The instruction applied for `role` (part of the cache key); none by default."""
        return None

    def _warm_up(self) -> None:
        """Load what the first call would load; nothing by default."""

    def _identity(self) -> dict[str, Any]:
        """What makes this model's vectors what they are: class and every output-changing field."""
        data = self.model_dump(exclude=set(_RUNTIME_FIELDS | self._identity_exclude), mode="json")
        data["py_class"] = f"{type(self).__module__}.{type(self).__qualname__}"
        return data

    @property
    def provider(self) -> SparseModelProvider:
        """This model as an `embedstack.provider.Provider` with output `Sparse` (a new one after a field changes)."""
        provider = self._memo.get("provider")
        if provider is None:
            provider = self._memo["provider"] = SparseModelProvider(self)
        return provider  # type: ignore[no-any-return]

    @property
    def pipeline(self) -> Pipeline:
        """The pipeline every call goes through (provider, cache, callbacks, batch size, workers)."""
        pipe = self._memo.get("pipeline")
        if pipe is None:
            explicit = "embed_batch_size" in self.model_fields_set
            pipe = self._memo["pipeline"] = Pipeline(
                self.provider,
                self.embeddings_cache,
                callback_manager=self.callback_manager,
                batch_size=self.embed_batch_size if explicit else None,
                workers=self.num_workers,
            )
        return pipe  # type: ignore[no-any-return]

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


class SparseModelProvider:
    """A `BaseSparseEmbedding` as a `Provider` with output `Sparse(vocab_size)`, for its pipeline."""

    __slots__ = ("_memo", "capabilities", "model")

    model: BaseSparseEmbedding

    def __init__(self, model: BaseSparseEmbedding) -> None:
        self.model = model
        self._memo = model._memo
        cls = type(model)
        self.capabilities = Capabilities(
            counts_tokens=cls._count_tokens is not BaseSparseEmbedding._count_tokens,
            plan_in_thread=cls.plan_in_thread,
        )

    def __repr__(self) -> str:
        return f"SparseModelProvider({self.model!r})"

    def _current(self) -> BaseSparseEmbedding:
        if self._memo.get("provider") is not self:
            raise RuntimeError(
                f"{type(self.model).__name__} changed since this pipeline was made; use model.pipeline again "
                "to embed with its new settings"
            )
        model: BaseSparseEmbedding = self.model
        return model

    @property
    def output(self) -> OutputKind:
        """Sparse vectors over the model's vocabulary (unbounded when it declares none)."""
        return Sparse(self.model._vocab_size())

    @property
    def preferred_batch_size(self) -> int:
        """The model's batch size."""
        return self.model.embed_batch_size

    def identity(self) -> Mapping[str, Any]:
        """The model's class and every output-changing field."""
        return self.model._identity()

    def model_identity(self) -> Mapping[str, Any]:
        """The identity without the fields that change only the arithmetic (`backend`, `precision`)."""
        return {k: v for k, v in self.identity().items() if k not in ("backend", "precision")}

    def descriptor(self) -> Mapping[str, Any]:
        """The model's payload (never secrets)."""
        return self.model.to_payload()

    def instruction(self, role: Role) -> str | None:
        """The model's instruction for `role`."""
        return self.model._instruction(role)

    def check(self, items: Sequence[Any], role: Role, label: str, offset: int) -> None:
        """The model's own input checks (a pipeline kept from before a field changed is refused)."""
        self._current()._check_items(items, role, label, offset)

    def plan(self, items: list[Any], role: Role) -> Plan:
        """The model's order and prepared values."""
        return self.model._plan(items, role)

    def embed(self, batch: Batch) -> Any:
        """One batch through the model's hooks."""
        return self.model._embed(batch)

    async def aembed(self, batch: Batch) -> Any:
        """One batch through the model's async hooks."""
        return await self.model._aembed(batch)

    def count_tokens(self, items: list[Any], role: Role) -> TokenCounts | None:
        """The model's token counts."""
        return self.model._count_tokens(items, role)

    def tokenize(self, texts: list[str], add_special_tokens: bool = True) -> list[list[dict[str, Any]]] | None:
        """No tokenizer to show (the server's /tokenize serves dense models)."""
        return None

    def warm_up(self) -> None:
        """Load the model now."""
        self.model._warm_up()
