"""A reranker (local or remote) as a LangChain document compressor
(`ContextualCompressionRetriever(base_compressor=...)`).

`EmbedstackCrossEncoderCompressor` scores each document's `page_content` against the query and returns the
best `top_n`, best first, each with its score in `metadata["relevance_score"]` (as LangChain's rerank
compressors do); scores go through the reranker's pipeline (cache, dedupe, events). Importing this module
needs langchain-core (`pip install 'embedstack[langchain]'`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pydantic import ConfigDict, Field, field_serializer

from embedstack._optional import require
from embedstack.rerank.base import BaseReranker
from embedstack.rerank.resolve import resolve_rerank_model

if TYPE_CHECKING:
    from langchain_core.callbacks import Callbacks
    from langchain_core.documents import BaseDocumentCompressor, Document
else:
    _docs = require("langchain_core.documents", "langchain", "langchain-core")
    BaseDocumentCompressor, Document = _docs.BaseDocumentCompressor, _docs.Document
    Callbacks = Any

__all__ = ["EmbedstackCrossEncoderCompressor"]


class EmbedstackCrossEncoderCompressor(BaseDocumentCompressor):  # type: ignore[misc]
    """Keeps the `top_n` documents (None: all) a reranker scores highest for the query, best first."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    reranker: BaseReranker = Field(
        description="The reranker that scores (query, document) pairs (a BaseReranker or a spec string)."
    )
    top_n: int | None = Field(default=3, ge=0, description="Documents to keep, best first (None: all).")

    def __init__(self, reranker: Any, **kwargs: Any) -> None:
        super().__init__(reranker=resolve_rerank_model(reranker), **kwargs)

    @field_serializer("reranker")
    def _describe(self, reranker: BaseReranker) -> dict[str, Any]:
        """The reranker as its description (model, backend, precision, activation): serialisable, no weights."""
        return dict(reranker.pipeline.descriptor())

    def _keep(self, documents: Sequence[Document], scores: Any) -> list[Document]:
        order = sorted(range(len(documents)), key=lambda i: -float(scores[i]))  # stable: ties keep order
        kept = []
        for i in order[: self.top_n]:
            doc = documents[i]
            kept.append(
                Document(
                    page_content=doc.page_content,
                    metadata={**doc.metadata, "relevance_score": float(scores[i])},
                    id=doc.id,
                )
            )
        return kept

    def compress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        """The best `top_n` documents for `query`, each with metadata["relevance_score"]."""
        if not documents:
            return []
        return self._keep(documents, self.reranker.score([(query, d.page_content) for d in documents]))

    async def acompress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        """Async `compress_documents`; never blocks the event loop."""
        if not documents:
            return []
        return self._keep(documents, await self.reranker.ascore([(query, d.page_content) for d in documents]))
