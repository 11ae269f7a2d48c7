"""BaseEmbedding and MultiModalEmbedding: LlamaIndex's public API as thin calls into one pipeline."""

from __future__ import annotations

import asyncio
import copy
import difflib
import sys
import threading
import warnings
from abc import abstractmethod
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
from pydantic import Field, PrivateAttr, field_validator, model_validator
from typing_extensions import Self

from embedstack._async_hooks import call_hook, gather_hook
from embedstack._component import BaseComponent
from embedstack.callbacks.manager import CallbackManager
from embedstack.instrumentation import get_dispatcher
from embedstack.kvstore.base import BaseKVStore
from embedstack.outputs import Dense, OutputKind, as_lists, as_matrix
from embedstack.pipeline import DEFAULT_BATCH_SIZE, DEFAULT_CHUNK_SIZE, Pipeline
from embedstack.progress import ProgressArg
from embedstack.provider import ARITHMETIC_FIELDS, BatchOutput, Capabilities, Prepared, TokenCounts
from embedstack.schema import BaseNode, MetadataMode, TransformComponent
from embedstack.similarity import SimilarityMode, mean_agg
from embedstack.similarity import similarity as _similarity
from embedstack.types import Batch, Embedding, ImageType, Plan, Role, Vectors

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_EMBED_BATCH_SIZE",
    "BaseEmbedding",
    "BatchEmbedding",
    "EmbeddingModel",
    "ModelProvider",
    "MultiModalEmbedding",
]

DEFAULT_EMBED_BATCH_SIZE = DEFAULT_BATCH_SIZE
dispatcher = get_dispatcher(__name__)
#: The plan of a model that keeps input order and prepares nothing (a frozen Plan, shared).
_INPUT_ORDER = Plan()

_UNPICKLABLE = (type(threading.Lock()), type(threading.RLock()))

# Fields that never change a vector: left out of the cache key.
_RUNTIME_FIELDS = frozenset({"callback_manager", "embed_batch_size", "num_workers", "embeddings_cache"})


def _caller_level() -> int:
    """The warnings stacklevel of the first frame outside embedstack and pydantic (the caller's line)."""
    frame, level = sys._getframe(2), 2  # 1: the validator that warns
    while frame.f_back is not None and str(frame.f_globals.get("__name__", "")).startswith(("embedstack", "pydantic")):
        frame, level = frame.f_back, level + 1
    return level


#: Other libraries' names of a setting (the OpenAI SDK's and LangChain's base_url is our api_base).
_SETTING_HINTS = {"base_url": "api_base", "openai_api_base": "api_base", "normalize_embeddings": "normalize"}


class EmbeddingModel(BaseComponent):
    """What every model class shares (dense `BaseEmbedding`, `BaseSparseEmbedding`): LlamaIndex's common fields,
    the derived-state lifecycle, pickling, identity and descriptor, and the model as a provider (`provider`) behind
    its pipeline (`pipeline`). A subclass declares its output kind (`_output_kind`) and implements `_embed(batch)`.
    """

    @model_validator(mode="before")
    @classmethod
    def _warn_unknown_settings(cls, data: Any) -> Any:
        """Warn about settings the class does not have: ignored (as LlamaIndex does), they would change nothing, so
        a misspelt `normalise=False` or `dimension=256` silently gave the default's vectors."""
        if isinstance(data, dict):
            fields = cls.model_fields
            known = set(fields) | {f.alias for f in fields.values() if f.alias} | {"class_name"}
            unknown = sorted(k for k in data if isinstance(k, str) and k not in known)
            if unknown:
                hints = []
                for name in unknown:
                    matches = difflib.get_close_matches(name, fields, 1, 0.8)
                    hint = _SETTING_HINTS.get(name)
                    close = hint if hint in fields else (matches[0] if matches else None)
                    hints.append(f"{name!r} (did you mean {close!r}?)" if close else repr(name))
                warnings.warn(
                    f"{cls.__name__} has no setting {', '.join(hints)}: ignored, it changes nothing; "
                    "remove it or use the setting's name (see the class's fields)",
                    UserWarning,
                    stacklevel=_caller_level(),
                )
        return data

    model_name: str = Field(default="unknown", description="The name of the embedding model.")
    embed_batch_size: int = Field(
        default=DEFAULT_EMBED_BATCH_SIZE, description="The batch size for embedding calls.", gt=0, le=2048
    )
    callback_manager: CallbackManager = Field(default_factory=lambda: CallbackManager([]), exclude=True)
    num_workers: int | None = Field(default=None, description="The number of workers to use for async embedding calls.")
    embeddings_cache: Any | None = Field(
        default=None, exclude=True, description="Cache for the embeddings: if None, the embeddings are not cached."
    )

    #: Fields of a subclass that do not change its vectors (device, timeouts, ...): kept out of the cache key.
    _identity_exclude: ClassVar[frozenset[str]] = frozenset()
    #: How many batches of one call may run at once, whatever num_workers says (None: no cap).
    max_concurrency: ClassVar[int | None] = None
    #: Whether the sync path may run batches in threads when num_workers > 1 (remote APIs: yes).
    parallel_sync_batches: ClassVar[bool] = False
    #: Whether `_plan` does real work (loading a tokenizer, tokenising): the async driver then runs it in a
    #: worker thread, so the event loop is never blocked by it.
    plan_in_thread: ClassVar[bool] = False
    #: Whether the model calls a service over the network (`Capabilities.remote`).
    is_remote: ClassVar[bool] = False
    #: Batches in flight on the async path when num_workers is unset (`Capabilities.default_async_workers`).
    default_async_workers: ClassVar[int | None] = None
    #: The provider's name in `embedstack.providers.catalog`, where this model's facts are (`Capabilities.catalog`).
    catalog_name: ClassVar[str | None] = None
    #: Fields that change only the arithmetic, left out of `model_identity()` (see `ARITHMETIC_FIELDS`).
    _arithmetic_fields: ClassVar[frozenset[str]] = ARITHMETIC_FIELDS

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

    # -- derived state: one hook ------------------------------------------------------------------
    #: Private attributes rebuilt from the fields (loaded weights, clients, located files): never pickled;
    #: unpickling and deep copies re-create them from their defaults, then `_refresh` rebuilds them.
    _derived: ClassVar[frozenset[str]] = frozenset()

    def _refresh(self, changed: frozenset[str], fresh: bool) -> None:
        """Rebuild derived state after the fields in `changed` changed; `fresh`: none exists yet
        (construction, unpickling, deep copy). Raising undoes an assignment. Nothing by default."""

    def model_post_init(self, context: Any, /) -> None:
        """Build the derived state of a new model (`_refresh` with every field)."""
        super().model_post_init(context)
        self._refresh(frozenset(type(self).model_fields), True)

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in type(self).model_fields:
            super().__setattr__(name, value)
            return
        missing = object()
        old, was_set = self.__dict__.get(name, missing), name in self.__pydantic_fields_set__
        super().__setattr__(name, value)
        self._memo.clear()
        try:
            self._refresh(frozenset((name,)), False)
        except BaseException:
            if old is not missing:  # a value the model cannot use changes nothing
                self.__dict__[name] = old
            if not was_set:
                self.__pydantic_fields_set__.discard(name)
            self._memo.clear()
            raise

    def __copy__(self) -> Self:
        new = super().__copy__()
        new._memo = {}  # model_copy(update=...) may change identity fields: never share memoised keys
        return new

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """A copy; a shallow one shares derived state (loaded weights) until `_refresh` rebuilds what changed."""
        copy_ = super().model_copy(update=update, deep=deep)
        copy_._memo = {}
        if update:
            copy_._refresh(frozenset(update) & frozenset(type(self).model_fields), False)
        return copy_

    def __deepcopy__(self, memo: dict[int, Any] | None = None) -> Self:
        new = type(self).__new__(type(self))
        new.__setstate__(copy.deepcopy(self.__getstate__(), memo))  # fresh locks and memo, like unpickling
        return new

    def __getstate__(self) -> dict[Any, Any]:
        """Pickle the fields without memo, locks or derived state; __setstate__ rebuilds them."""
        state = super().__getstate__()
        private = state.get("__pydantic_private__") or {}
        drop = self._derived
        keep = {k: v for k, v in private.items() if k != "_memo" and k not in drop and not isinstance(v, _UNPICKLABLE)}
        return {**state, "__pydantic_private__": keep}

    def __setstate__(self, state: dict[Any, Any]) -> None:
        super().__setstate__(state)
        private = self.__pydantic_private__ if self.__pydantic_private__ is not None else {}
        for name, attr in self.__private_attributes__.items():
            if name not in private:
                factory = attr.default_factory
                private[name] = factory() if factory is not None else attr.default  # type: ignore[call-arg]
        object.__setattr__(self, "__pydantic_private__", private)
        self._refresh(frozenset(type(self).model_fields), True)

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self._descriptor().items() if k != "class_name")
        return f"{type(self).__name__}({fields})"

    __str__ = __repr__

    # -- what the pipeline asks of a model (the whole contract: embedstack.contract) -----------------
    def _check_items(self, items: Sequence[Any], role: Role, label: str, offset: int = 0) -> None:
        """Refuse a call before any work (cache, model): e.g. empty strings an API rejects; name item i as
        `label[offset + i]` (offset: where items[0] stands in a stream). Nothing by default."""

    def _instruction(self, role: Role) -> str | None:
        """The instruction this model applies for `role` (part of the cache key); none by default."""
        return None

    def _batch_order(self, items: list[Any]) -> list[int] | None:
        """The order to embed `items` in (e.g. by length); None keeps input order."""
        return None

    def _plan(self, items: list[Any], role: Role) -> Plan:
        """The order of one round's missing items and per-item work done for them (`Plan`); `_batch_order`."""
        order = self._batch_order(items)
        return _INPUT_ORDER if order is None else Plan(order=order)

    def _identity(self) -> dict[str, Any]:
        """What makes this model's vectors what they are: class and every output-changing field."""
        skip = _RUNTIME_FIELDS | self._identity_exclude
        data = self.to_dict(exclude=skip, mode="json")
        data["py_class"] = f"{type(self).__module__}.{type(self).__qualname__}"  # class_name() may be inherited
        return data

    def _key_factory(self, role: Role) -> Callable[[Any], str]:
        """item → cache key for `role` (the pipeline's; a convenience for tests and tools)."""
        return self.pipeline.key_factory(role)

    def _count_tokens(self, items: list[Any], role: Role) -> TokenCounts | None:
        """Each item's tokens as the model sees them and whether it is truncated; None when it cannot count."""
        return None

    def _prepare(self, items: list[Any], role: Role) -> Prepared | None:
        """Each item's encoded form for `_embed` (`Batch.prepared`) and exact token count, made ahead of a call and
        safe to call while a batch runs in another thread (`Provider.prepare`); None (nothing prepared) by default."""
        return None

    def _warm_up(self) -> None:
        """Load what the first call would load (weights, tokenizer, client); nothing by default."""

    def _tokenize(self, texts: list[str], add_special_tokens: bool) -> list[list[dict[str, Any]]] | None:
        """Each text's tokens, untruncated, for display (TEI's /tokenize shape); None: no tokenizer to show."""
        return None

    def _preferred_batch_size(self) -> int:
        """Items per call when `embed_batch_size` was not set (a provider on an accelerator may want more)."""
        return self.embed_batch_size

    # -- the provider and its pipeline ------------------------------------------------------------
    @property
    def provider(self) -> ModelProvider:
        """This model as an `embedstack.provider.Provider` (the narrow protocol the pipeline, the server,
        jobs and Ray use); a new one after any field changes."""
        provider = self._memo.get("provider")
        if provider is None:
            provider = self._memo["provider"] = ModelProvider(self)
        return provider  # type: ignore[no-any-return]

    @property
    def pipeline(self) -> Pipeline:
        """The pipeline every call of this model goes through (provider, cache, callbacks, batch size, workers).

        Per-call variants are copies (`model.pipeline.with_options(batch_size=..., cache=...)`): the model
        itself never changes.
        """
        pipe = self.__pydantic_private__["_memo"].get("pipeline")  # type: ignore[index]  # the hot path: no __getattr__
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

    def _descriptor(self) -> dict[str, Any]:
        """The model as events and repr show it: serialisable fields, never secrets; computed once."""
        desc = self._memo.get("descriptor")
        if desc is None:
            desc = self._memo["descriptor"] = self.to_dict(mode="json")
        return desc  # type: ignore[no-any-return]

    def _output_kind(self) -> OutputKind:
        """What one item becomes (declared before loading)."""
        raise NotImplementedError(f"{type(self).__name__} must declare its output kind")

    def _embed(self, batch: Batch) -> Any:
        """Embed one batch (its items, role and the caller's positions)."""
        raise NotImplementedError(f"{type(self).__name__} must implement _embed(batch)")

    async def _aembed(self, batch: Batch) -> Any:
        """Async _embed; by default the sync one in a worker thread."""
        return await asyncio.to_thread(self._embed, batch)


class BaseEmbedding(EmbeddingModel, TransformComponent):
    """Base class for embedding models (LlamaIndex-compatible).

    Subclasses implement `_get_query_embedding`, `_aget_query_embedding` and `_get_text_embedding`
    (and may override the batch hooks); every public method below goes through the model's pipeline
    (`embedstack.pipeline`), which owns caching, batching, ordering, events and progress.
    """

    @classmethod
    def class_name(cls) -> str:
        """Name stored in to_dict()."""
        return "BaseEmbedding"

    # -- LlamaIndex hooks --------------------------------------------------------------------
    @abstractmethod
    def _get_query_embedding(self, query: str) -> Embedding:
        """Embed one query (a model may prepend a query instruction)."""

    @abstractmethod
    async def _aget_query_embedding(self, query: str) -> Embedding:
        """Embed one query asynchronously."""

    @abstractmethod
    def _get_text_embedding(self, text: str) -> Embedding:
        """Embed one text."""

    async def _aget_text_embedding(self, text: str) -> Embedding:
        """Embed one text asynchronously; by default the sync hook in a worker thread."""
        return await asyncio.to_thread(self._get_text_embedding, text)

    def _get_text_embeddings(self, texts: list[str]) -> Vectors:
        """Embed a batch of texts; by default one _get_text_embedding per text."""
        return list(map(self._get_text_embedding, texts))

    async def _aget_text_embeddings(self, texts: list[str]) -> Vectors:
        """Embed a batch asynchronously: the native async hook if there is one, else the sync batch in a thread."""
        if type(self)._aget_text_embedding is not BaseEmbedding._aget_text_embedding:
            return await gather_hook(self._aget_text_embedding, texts)
        return await asyncio.to_thread(self._get_text_embeddings, texts)

    def _get_query_embeddings(self, queries: list[str]) -> Vectors:
        """Embed a batch of queries; by default one _get_query_embedding per query."""
        return list(map(self._get_query_embedding, queries))

    async def _aget_query_embeddings(self, queries: list[str]) -> Vectors:
        """Embed a batch of queries asynchronously (a sync-bodied async hook runs in a worker thread)."""
        return await gather_hook(self._aget_query_embedding, queries)

    # -- what the pipeline asks of a dense model ----------------------------------------------------
    def _embed(self, batch: Batch) -> Any:
        """Embed one batch (its items, role and the caller's positions); by default the role's sync hook."""
        items, role = batch.items, batch.role
        if role is Role.TEXT:
            return self._get_text_embeddings(items)
        if role is Role.QUERY:
            return self._get_query_embeddings(items)
        return self._image_batch_sync(items)

    async def _aembed(self, batch: Batch) -> Any:
        """Async _embed; by default the role's async hook."""
        return await self._embed_batch_async(batch.items, batch.role)

    async def _embed_batch_async(self, items: list[Any], role: Role) -> Any:
        if role is Role.QUERY:
            return await call_hook(self._aget_query_embeddings, items)
        if role is Role.TEXT:
            return await call_hook(self._aget_text_embeddings, items)
        return await self._image_batch_async(items)

    def _image_batch_sync(self, items: list[Any]) -> Any:
        raise TypeError(f"{type(self).__name__} does not embed images; use a MultiModalEmbedding such as ClipEmbedding")

    async def _image_batch_async(self, items: list[Any]) -> Any:
        return self._image_batch_sync(items)

    def _declared_dim(self) -> int | None:
        """The vector length this model promises without running (a `dimensions` or `embed_dim` field)."""
        fields = type(self).__pydantic_fields__
        for name in ("dimensions", "embed_dim"):
            value = getattr(self, name) if name in fields else None
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
        return None

    def _output_kind(self) -> OutputKind:
        """Dense vectors of the declared length (None: learned from the first answer)."""
        return Dense(self._declared_dim())

    # -- public API --------------------------------------------------------------------------
    def _run(
        self, items: Sequence[Any], role: Role, label: str, show_progress: ProgressArg = False, offset: int = 0
    ) -> npt.NDArray[np.float32]:
        return self.pipeline.values(items, role, label, show_progress, offset)

    async def _arun(
        self, items: Sequence[Any], role: Role, label: str, show_progress: ProgressArg = False, offset: int = 0
    ) -> npt.NDArray[np.float32]:
        return await self.pipeline.avalues(items, role, label, show_progress, offset)

    @dispatcher.span
    def get_query_embedding(self, query: str) -> Embedding:
        """Embed a query (with the model's query instruction, if it has one)."""
        return self._run([query], Role.QUERY, "query")[0].tolist()  # type: ignore[no-any-return]

    @dispatcher.span
    async def aget_query_embedding(self, query: str) -> Embedding:
        """Embed a query asynchronously."""
        return (await self._arun([query], Role.QUERY, "query"))[0].tolist()  # type: ignore[no-any-return]

    @dispatcher.span
    def get_text_embedding(self, text: str) -> Embedding:
        """Embed a text (a document chunk)."""
        return self._run([text], Role.TEXT, "text")[0].tolist()  # type: ignore[no-any-return]

    @dispatcher.span
    async def aget_text_embedding(self, text: str) -> Embedding:
        """Embed a text asynchronously."""
        return (await self._arun([text], Role.TEXT, "text"))[0].tolist()  # type: ignore[no-any-return]

    @dispatcher.span
    def get_text_embedding_batch(self, texts: list[str], show_progress: bool = False, **kwargs: Any) -> list[Embedding]:
        """Embed many texts in batches of embed_batch_size; results in input order."""
        return as_lists(self._run(texts, Role.TEXT, "texts", show_progress))

    @dispatcher.span
    async def aget_text_embedding_batch(
        self, texts: list[str], show_progress: bool = False, **kwargs: Any
    ) -> list[Embedding]:
        """Embed many texts, batches running concurrently (at most num_workers at once)."""
        return as_lists(await self._arun(texts, Role.TEXT, "texts", show_progress))

    def get_agg_embedding_from_queries(
        self, queries: list[str], agg_fn: Callable[..., Embedding] | None = None
    ) -> Embedding:
        """Embed several queries and aggregate them (mean by default)."""
        return (agg_fn or mean_agg)(self._run(queries, Role.QUERY, "queries").tolist())

    async def aget_agg_embedding_from_queries(
        self, queries: list[str], agg_fn: Callable[..., Embedding] | None = None
    ) -> Embedding:
        """Async get_agg_embedding_from_queries."""
        return (agg_fn or mean_agg)((await self._arun(queries, Role.QUERY, "queries")).tolist())

    def embed(
        self, items: Sequence[Any], role: Role | str = Role.TEXT, show_progress: ProgressArg = False
    ) -> npt.NDArray[np.float32]:
        """Bulk fast path: an (n, dim) float32 array, through the same pipeline (cache, events, batching).

        `show_progress`: True for a bar, or an `embedstack.progress.Progress` shared with other calls.
        """
        role = Role(role)
        return self._run(items, role, _label(role), show_progress)

    async def aembed(
        self, items: Sequence[Any], role: Role | str = Role.TEXT, show_progress: ProgressArg = False
    ) -> npt.NDArray[np.float32]:
        """Async embed()."""
        role = Role(role)
        return await self._arun(items, role, _label(role), show_progress)

    def embed_iter(
        self,
        items: Iterable[Any],
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        role: Role | str = Role.TEXT,
        show_progress: ProgressArg = False,
        total: int | None = None,
    ) -> Iterator[npt.NDArray[np.float32]]:
        """Embed a stream: one (len(chunk), dim) matrix per `chunk_size` items, read lazily.

        Memory stays bounded by the chunk; each chunk goes through the cached pipeline as a whole, so
        an interrupted run keeps what it computed and a rerun embeds only the rest. Errors name items by
        their position in the stream (`texts[12345]`). `total` sizes the progress bar when known.
        """
        for out in self.pipeline.iterate(items, chunk_size, role, show_progress=show_progress, total=total):
            yield out.values

    async def aembed_iter(
        self,
        items: Iterable[Any],
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        role: Role | str = Role.TEXT,
        show_progress: ProgressArg = False,
        total: int | None = None,
    ) -> AsyncIterator[npt.NDArray[np.float32]]:
        """Async embed_iter (the items are read on the loop: pass a list or a cheap iterator)."""
        async for out in self.pipeline.aiterate(items, chunk_size, role, show_progress=show_progress, total=total):
            yield out.values

    def as_langchain(self) -> Any:
        """This model as a langchain_core Embeddings (sync and async), for LangChain vector stores."""
        from embedstack.interop.langchain import to_langchain

        return to_langchain(self)

    def as_llama_index(self) -> Any:
        """This model as a llama_index.core BaseEmbedding, for VectorStoreIndex and Settings.embed_model."""
        from embedstack.interop.llama_index import to_llama_index

        return to_llama_index(self)

    def similarity(
        self, embedding1: Embedding, embedding2: Embedding, mode: SimilarityMode = SimilarityMode.DEFAULT
    ) -> float:
        """Similarity of two embeddings (cosine by default)."""
        return _similarity(embedding1=embedding1, embedding2=embedding2, mode=mode)

    def __call__(self, nodes: Sequence[BaseNode], **kwargs: Any) -> Sequence[BaseNode]:
        """Embed each node's content as the embedder sees it (MetadataMode.EMBED) and set node.embedding."""
        texts = [node.get_content(metadata_mode=MetadataMode.EMBED) for node in nodes]
        for node, vec in zip(nodes, self.get_text_embedding_batch(texts, **kwargs)):
            node.embedding = vec
        return nodes

    async def acall(self, nodes: Sequence[BaseNode], **kwargs: Any) -> Sequence[BaseNode]:
        """Async __call__."""
        texts = [node.get_content(metadata_mode=MetadataMode.EMBED) for node in nodes]
        for node, vec in zip(nodes, await self.aget_text_embedding_batch(texts, **kwargs)):
            node.embedding = vec
        return nodes


def _label(role: Role) -> str:
    return "images" if role is Role.IMAGE else "texts"


class MultiModalEmbedding(BaseEmbedding):
    """An embedding model that also embeds images into the same space as text."""

    @classmethod
    def class_name(cls) -> str:
        """Name stored in to_dict()."""
        return "MultiModalEmbedding"

    @abstractmethod
    def _get_image_embedding(self, img_file_path: ImageType) -> Embedding:
        """Embed one image."""

    @abstractmethod
    async def _aget_image_embedding(self, img_file_path: ImageType) -> Embedding:
        """Embed one image asynchronously."""

    def _get_image_embeddings(self, img_file_paths: list[ImageType]) -> Vectors:
        """Embed a batch of images; by default one at a time."""
        return [self._get_image_embedding(p) for p in img_file_paths]

    async def _aget_image_embeddings(self, img_file_paths: list[ImageType]) -> Vectors:
        """Embed a batch of images asynchronously (a sync-bodied async hook runs in a worker thread)."""
        return await gather_hook(self._aget_image_embedding, img_file_paths)

    def _image_batch_sync(self, items: list[Any]) -> Any:
        return self._get_image_embeddings(items)

    async def _image_batch_async(self, items: list[Any]) -> Any:
        return await call_hook(self._aget_image_embeddings, items)

    @dispatcher.span
    def get_image_embedding(self, img_file_path: ImageType) -> Embedding:
        """Embed an image."""
        return self._run([img_file_path], Role.IMAGE, "img_file_path")[0].tolist()  # type: ignore[no-any-return]

    @dispatcher.span
    async def aget_image_embedding(self, img_file_path: ImageType) -> Embedding:
        """Embed an image asynchronously."""
        return (await self._arun([img_file_path], Role.IMAGE, "img_file_path"))[0].tolist()  # type: ignore[no-any-return]

    @dispatcher.span
    def get_image_embedding_batch(
        self, img_file_paths: list[ImageType], show_progress: bool = False
    ) -> list[Embedding]:
        """Embed many images in batches; results in input order."""
        return as_lists(self._run(img_file_paths, Role.IMAGE, "img_file_paths", show_progress))

    @dispatcher.span
    async def aget_image_embedding_batch(
        self, img_file_paths: list[ImageType], show_progress: bool = False
    ) -> list[Embedding]:
        """Embed many images asynchronously."""
        return as_lists(await self._arun(img_file_paths, Role.IMAGE, "img_file_paths", show_progress))


class BatchEmbedding(BaseEmbedding):
    """Base for providers with one native batched hook, `_embed_batch(items, role)`, for every role.

    The LlamaIndex single-item hooks are derived from it, and the async hook defaults to the
    sync one in a worker thread, so an event loop is never blocked by a local model.
    """

    def _embed_batch(self, items: list[Any], role: Role) -> Any:
        """Embed a batch of `role` items; returns vectors (list or 2-D array) or an EmbedResult."""
        raise NotImplementedError(f"{type(self).__name__} must implement _embed_batch(items, role)")

    async def _aembed_batch(self, items: list[Any], role: Role) -> Any:
        """Async _embed_batch; by default the sync one in a worker thread."""
        return await asyncio.to_thread(self._embed_batch, items, role)

    def _embed(self, batch: Batch) -> Any:
        """One batch through the native batched hook, whatever its role."""
        return self._embed_batch(batch.items, batch.role)

    async def _embed_batch_async(self, items: list[Any], role: Role) -> Any:
        return await call_hook(self._aembed_batch, items, role)

    def _one(self, item: Any, role: Role) -> Embedding:
        raw = self._embed_batch([item], role)
        values = raw.values if isinstance(raw, BatchOutput) else getattr(raw, "vectors", raw)
        return as_matrix(values, 1)[0].tolist()  # type: ignore[no-any-return]

    def _get_query_embedding(self, query: str) -> Embedding:
        return self._one(query, Role.QUERY)

    async def _aget_query_embedding(self, query: str) -> Embedding:
        return await asyncio.to_thread(self._one, query, Role.QUERY)

    def _get_text_embedding(self, text: str) -> Embedding:
        return self._one(text, Role.TEXT)

    def _get_image_embedding(self, img_file_path: ImageType) -> Embedding:
        return self._one(img_file_path, Role.IMAGE)

    async def _aget_image_embedding(self, img_file_path: ImageType) -> Embedding:
        return await asyncio.to_thread(self._one, img_file_path, Role.IMAGE)


class ModelProvider:
    """A model (`BaseEmbedding`, `BaseSparseEmbedding`) as a `Provider`: its hooks behind the protocol.

    Made by `model.provider` for one configuration of the model: once a field of the model changes,
    the model makes a new one, and a call through this one is refused (a pipeline kept from before
    would otherwise key and check with the old settings); a call already running finishes as it began.
    """

    __slots__ = ("_checks", "_memo", "capabilities", "model")

    def __init__(self, model: EmbeddingModel) -> None:
        self.model = model
        self._memo = model._memo  # cleared (not replaced) when a field of the model changes
        cls = type(model)
        self._checks = cls._check_items is not EmbeddingModel._check_items  # the default checks nothing
        self.capabilities = Capabilities(
            remote=cls.is_remote,
            counts_tokens=cls._count_tokens is not EmbeddingModel._count_tokens,
            max_concurrency=cls.max_concurrency,
            parallel_sync_batches=cls.parallel_sync_batches,
            plan_in_thread=cls.plan_in_thread,
            default_async_workers=cls.default_async_workers,
            catalog=cls.catalog_name,
            prepares=cls._prepare is not EmbeddingModel._prepare,
        )

    def __repr__(self) -> str:
        return f"ModelProvider({self.model!r})"

    def _current(self) -> EmbeddingModel:
        model = self.model
        if self._memo.get("provider") is not self:
            raise RuntimeError(
                f"{type(model).__name__} changed since this pipeline was made; use model.pipeline again "
                "(or model.pipeline.with_options(...)) to embed with its new settings"
            )
        return model

    @property
    def output(self) -> OutputKind:
        """The model's output kind (dense vectors of its declared length; sparse vectors over its vocabulary)."""
        return self.model._output_kind()

    @property
    def preferred_batch_size(self) -> int:
        """The model's batch size (`embed_batch_size`, or what its device prefers)."""
        return self.model._preferred_batch_size()

    def identity(self) -> dict[str, Any]:
        """The model's class and every output-changing field."""
        return self.model._identity()

    def model_identity(self) -> dict[str, Any]:
        """The identity without the fields that change only the arithmetic (backend, precision)."""
        skip = self.model._arithmetic_fields
        return {k: v for k, v in self.identity().items() if k not in skip}

    def descriptor(self) -> dict[str, Any]:
        """The model's serialisable fields, never secrets."""
        return self.model._descriptor()

    def instruction(self, role: Role) -> str | None:
        """The model's instruction for `role`."""
        return self.model._instruction(role)

    def check(self, items: Sequence[Any], role: Role, label: str, offset: int) -> None:
        """The model's own input checks (every call starts with them: a pipeline kept from before a field
        changed is refused here, not after it keyed a cache with the old settings)."""
        model = self._current()
        if self._checks:
            model._check_items(items, role, label, offset)

    def plan(self, items: list[Any], role: Role) -> Plan:
        """The model's order and prepared values for a round's items."""
        return self.model._plan(items, role)

    def embed(self, batch: Batch) -> Any:
        """One batch through the model's hook."""
        return self.model._embed(batch)

    async def aembed(self, batch: Batch) -> Any:
        """One batch through the model's async hook."""
        return await self.model._aembed(batch)

    def count_tokens(self, items: list[Any], role: Role) -> TokenCounts | None:
        """The model's token counts (None when it cannot count)."""
        return self.model._count_tokens(items, role)

    def prepare(self, items: list[Any], role: Role) -> Prepared | None:
        """The model's encoded items and exact token counts, ahead of a call (None: it prepares nothing)."""
        return self.model._prepare(items, role)

    def tokenize(self, texts: list[str], add_special_tokens: bool = True) -> list[list[dict[str, Any]]] | None:
        """The model's tokens for display (None: it has no tokenizer to show)."""
        return self.model._tokenize(texts, add_special_tokens)

    def warm_up(self) -> None:
        """Load the model's weights, tokenizer or client now."""
        self.model._warm_up()
