"""An embedstack model as a llama-index BaseEmbedding (Settings, indexes, IngestionPipeline).

llama-index's own batch loop is kept out of the way: the adapter's embed_batch_size is the largest
llama-index allows, so each llama-index batch reaches the embedstack pipeline whole and is batched,
deduplicated and cached there. Importing this module needs llama-index-core
(`pip install 'embedstack[llama-index]'`).
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

from pydantic import Field, PrivateAttr

from embedstack._optional import require
from embedstack.base import BaseEmbedding, MultiModalEmbedding
from embedstack.registry import register_object_adapter
from embedstack.types import Role

if TYPE_CHECKING:
    from llama_index.core.base.embeddings.base import BaseEmbedding as LIBaseEmbedding
    from llama_index.core.embeddings.multi_modal_base import (
        MultiModalEmbedding as LIMultiModalEmbedding,
    )
else:
    _li = "llama_index.core"
    LIBaseEmbedding = require(f"{_li}.base.embeddings.base", "llama-index", "llama-index-core").BaseEmbedding
    LIMultiModalEmbedding = require(
        f"{_li}.embeddings.multi_modal_base", "llama-index", "llama-index-core"
    ).MultiModalEmbedding

__all__ = [
    "LLAMA_INDEX_MAX_BATCH",
    "EmbedstackEmbedding",
    "EmbedstackMultiModalEmbedding",
    "to_llama_index",
]

#: llama-index's upper bound on embed_batch_size; the adapter uses it so llama-index hardly splits.
LLAMA_INDEX_MAX_BATCH = 2048


def _identity_digest(model: BaseEmbedding) -> str:
    return hashlib.sha256(json.dumps(dict(model.provider.identity()), sort_keys=True, default=str).encode()).hexdigest()


class EmbedstackEmbedding(LIBaseEmbedding):
    """llama-index `BaseEmbedding` that delegates every hook to an embedstack model.

    `to_dict()` carries the wrapped model's descriptor (no secrets) and a digest of its identity,
    so llama-index's IngestionPipeline cache tells two different models apart.
    """

    embedstack_model: dict[str, Any] = Field(
        default_factory=dict,
        description="The wrapped embedstack model as events show it (no secrets).",
    )
    embedstack_identity: str = Field(
        default="",
        description="sha256 of the wrapped model's cache identity (what changes its vectors).",
    )
    _model: BaseEmbedding = PrivateAttr()

    def __init__(self, model: BaseEmbedding, **kwargs: Any) -> None:
        if not isinstance(model, BaseEmbedding):
            raise TypeError(
                f"{type(self).__name__} wraps an embedstack BaseEmbedding, "
                f"not {type(model).__name__}; "
                "for a LangChain object use embedstack.LangchainEmbedding(obj).as_llama_index()"
            )
        kwargs.setdefault("model_name", model.model_name)
        kwargs.setdefault("embed_batch_size", LLAMA_INDEX_MAX_BATCH)
        kwargs["embedstack_model"] = dict(model.provider.descriptor())
        kwargs["embedstack_identity"] = _identity_digest(model)
        super().__init__(**kwargs)
        self._model = model

    @classmethod
    def class_name(cls) -> str:
        """Name stored in to_dict()."""
        return "EmbedstackEmbedding"

    @property
    def model(self) -> BaseEmbedding:
        """The wrapped embedstack model."""
        return self._model

    def _refresh(self) -> None:
        """Re-read the wrapped model's descriptor and identity (its fields may have changed)."""
        self.embedstack_model = dict(self._model.provider.descriptor())
        self.embedstack_identity = _identity_digest(self._model)

    def to_dict(self, **kwargs: Any) -> dict[str, Any]:
        """llama-index's to_dict, with the wrapped model as it is now (what the ingestion cache hashes)."""
        self._refresh()
        return super().to_dict(**kwargs)

    def to_payload(self) -> dict[str, Any]:
        """What llama-index's events show: class, model name, batch size, embedstack descriptor."""
        self._refresh()
        return {
            "class_name": self.class_name(),
            "model_name": self.model_name,
            "embed_batch_size": self.embed_batch_size,
            "embedstack_model": self.embedstack_model,
        }

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._model.get_query_embedding(query)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return await self._model.aget_query_embedding(query)

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._model.get_text_embedding(text)

    async def _aget_text_embedding(self, text: str) -> list[float]:
        return await self._model.aget_text_embedding(text)

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return self._model.embed(list(texts), Role.TEXT).tolist()  # type: ignore[no-any-return]

    async def _aget_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return (await self._model.aembed(list(texts), Role.TEXT)).tolist()  # type: ignore[no-any-return]


class EmbedstackMultiModalEmbedding(EmbedstackEmbedding, LIMultiModalEmbedding):
    """llama-index MultiModalEmbedding over an embedstack MultiModalEmbedding (texts, images)."""

    def __init__(self, model: MultiModalEmbedding, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)

    @classmethod
    def class_name(cls) -> str:
        """Name stored in to_dict()."""
        return "EmbedstackMultiModalEmbedding"

    def _get_image_embedding(self, img_file_path: Any) -> list[float]:
        return self._model.embed([img_file_path], Role.IMAGE)[0].tolist()  # type: ignore[no-any-return]

    async def _aget_image_embedding(self, img_file_path: Any) -> list[float]:
        return (await self._model.aembed([img_file_path], Role.IMAGE))[0].tolist()  # type: ignore[no-any-return]

    def _get_image_embeddings(self, img_file_paths: list[Any]) -> list[list[float]]:
        return self._model.embed(list(img_file_paths), Role.IMAGE).tolist()  # type: ignore[no-any-return]

    async def _aget_image_embeddings(self, img_file_paths: list[Any]) -> list[list[float]]:
        return (await self._model.aembed(list(img_file_paths), Role.IMAGE)).tolist()  # type: ignore[no-any-return]


def to_llama_index(model: BaseEmbedding) -> EmbedstackEmbedding:
    """Wrap an embedstack model for llama-index (what `model.as_llama_index()` returns).

    A MultiModalEmbedding becomes a llama-index MultiModalEmbedding, so images work too.
    """
    if isinstance(model, MultiModalEmbedding):
        return EmbedstackMultiModalEmbedding(model)
    return EmbedstackEmbedding(model)


def _is_adapter(obj: Any) -> bool:
    return isinstance(obj, EmbedstackEmbedding)


def _unwrap(obj: Any) -> BaseEmbedding:
    return obj.model  # type: ignore[no-any-return]


# embedstack.resolve_embed_model(model.as_llama_index()) gives the embedstack model back.
register_object_adapter(_is_adapter, _unwrap)
