"""An embedstack model as a LangChain `Embeddings`, for LangChain vector stores and retrievers.

Every call goes through the embedstack model's pipeline, so its cache, batching and events apply.
Importing this module needs langchain-core (`pip install 'embedstack[langchain]'`). The other direction,
a LangChain `Embeddings` as an embedstack model, is the provider `embedstack.providers.langchain`
(`LangchainEmbedding`; duck-typed, it imports without langchain-core).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from embedstack._optional import require
from embedstack.base import BaseEmbedding
from embedstack.types import Role

if TYPE_CHECKING:
    from langchain_core.embeddings import Embeddings
else:
    Embeddings = require("langchain_core.embeddings", extra="langchain", package="langchain-core").Embeddings

__all__ = ["EmbedstackEmbeddings", "to_langchain"]


class EmbedstackEmbeddings(Embeddings):
    """LangChain Embeddings over an embedstack model (documents as texts, queries as queries)."""

    def __init__(self, model: BaseEmbedding) -> None:
        if not isinstance(model, BaseEmbedding):
            raise TypeError(f"EmbedstackEmbeddings wraps an embedstack BaseEmbedding, not {type(model).__name__}")
        self.model = model

    def __repr__(self) -> str:
        return f"EmbedstackEmbeddings({self.model!r})"

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed documents in one pipeline call (cached, batched by embed_batch_size)."""
        return self.model.embed(list(texts), Role.TEXT).tolist()  # type: ignore[no-any-return]

    def embed_query(self, text: str) -> list[float]:
        """Embed a query (with the model's query instruction, if any)."""
        return self.model.get_query_embedding(text)

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        """Async embed_documents: batches run concurrently up to the model's num_workers."""
        return (await self.model.aembed(list(texts), Role.TEXT)).tolist()  # type: ignore[no-any-return]

    async def aembed_query(self, text: str) -> list[float]:
        """Async embed_query."""
        return await self.model.aget_query_embedding(text)


def to_langchain(model: BaseEmbedding) -> EmbedstackEmbeddings:
    """Wrap an embedstack model as a langchain_core Embeddings (as model.as_langchain() does)."""
    return EmbedstackEmbeddings(model)
