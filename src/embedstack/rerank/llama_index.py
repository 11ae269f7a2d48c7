"""A reranker (local or remote) as a LlamaIndex node postprocessor (`index.as_query_engine(node_postprocessors=[...])`).

`EmbedstackRerank` scores each node's text (as LlamaIndex embeds it, metadata included) against the
query, sets `node.score` to the reranker's score and keeps the best `top_n`, as LlamaIndex's
`SentenceTransformerRerank` does; scores go through the reranker's pipeline (cache, dedupe, events), and
the async path never blocks the loop. Importing this module needs llama-index-core
(`pip install 'embedstack[llama-index]'`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import ConfigDict, Field, field_serializer

from embedstack._optional import require
from embedstack.rerank.base import BaseReranker
from embedstack.rerank.resolve import resolve_rerank_model

if TYPE_CHECKING:
    from llama_index.core.postprocessor.types import BaseNodePostprocessor
    from llama_index.core.schema import NodeWithScore, QueryBundle
else:
    BaseNodePostprocessor = require(
        "llama_index.core.postprocessor.types", "llama-index", "llama-index-core"
    ).BaseNodePostprocessor
    _schema = require("llama_index.core.schema", "llama-index", "llama-index-core")
    NodeWithScore, QueryBundle = _schema.NodeWithScore, _schema.QueryBundle

__all__ = ["EmbedstackRerank"]


class EmbedstackRerank(BaseNodePostprocessor):  # type: ignore[misc]
    """Reorders retrieved nodes by a reranker's score and keeps the best `top_n` (None: all)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    reranker: BaseReranker = Field(
        description="The reranker that scores (query, node text) pairs (a BaseReranker or a spec string)."
    )
    top_n: int | None = Field(default=2, ge=0, description="Nodes to keep, best first (None: all).")
    keep_retrieval_score: bool = Field(
        default=False, description="Keep each node's retrieval score in its metadata as 'retrieval_score'."
    )

    def __init__(self, reranker: Any, **kwargs: Any) -> None:
        super().__init__(reranker=resolve_rerank_model(reranker), **kwargs)

    @field_serializer("reranker")
    def _describe(self, reranker: BaseReranker) -> dict[str, Any]:
        """The reranker as its description (model, backend, precision, activation): serialisable, no weights."""
        return dict(reranker.pipeline.descriptor())

    @classmethod
    def class_name(cls) -> str:
        """Name stored in to_dict()."""
        return "EmbedstackRerank"

    def _pairs(self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None) -> list[tuple[str, str]]:
        from llama_index.core.schema import MetadataMode

        if query_bundle is None:
            raise ValueError("EmbedstackRerank needs the query: pass query_bundle= or query_str=")
        return [(query_bundle.query_str, n.node.get_content(metadata_mode=MetadataMode.EMBED)) for n in nodes]

    def _apply(self, nodes: list[NodeWithScore], scores: Any) -> list[NodeWithScore]:
        for node, score in zip(nodes, scores.tolist()):
            if self.keep_retrieval_score:
                node.node.metadata["retrieval_score"] = node.score
            node.score = float(score)
        order = sorted(range(len(nodes)), key=lambda i: -float(nodes[i].score or 0.0))  # stable: ties keep order
        return [nodes[i] for i in order][: self.top_n]

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        if not nodes:
            return []
        return self._apply(nodes, self.reranker.score(self._pairs(nodes, query_bundle)))

    async def _apostprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        if not nodes:
            return []
        return self._apply(nodes, await self.reranker.ascore(self._pairs(nodes, query_bundle)))
