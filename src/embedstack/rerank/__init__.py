"""Rerankers: score (query, document) pairs through the same pipeline as embeddings.

`CrossEncoderReranker` runs a Hugging Face sequence-classification checkpoint (torch, ONNX Runtime or
OpenVINO); `RemoteReranker` calls a reranking API (Cohere's and Jina's shape, or TEI's); both are
`BaseReranker`s. `resolve_rerank_model(spec)` makes either from a string ("rerank:<name or path>",
"cohere:<model>", "jina:<model>", "cohere:<model>@<url>", "tei:<url>"). The LlamaIndex node postprocessor
lives in `embedstack.rerank.llama_index`, the LangChain document compressor in `embedstack.rerank.langchain`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from embedstack.rerank._model import activate
from embedstack.rerank.base import BaseReranker, RerankResult
from embedstack.rerank.cross_encoder import DEFAULT_TOKEN_BUDGET, CrossEncoderReranker
from embedstack.rerank.resolve import is_rerank_spec, resolve_rerank_model

if TYPE_CHECKING:
    from embedstack.rerank.remote import RemoteReranker

__all__ = [
    "DEFAULT_TOKEN_BUDGET",
    "BaseReranker",
    "CrossEncoderReranker",
    "RemoteReranker",
    "RerankResult",
    "activate",
    "is_rerank_spec",
    "resolve_rerank_model",
]


def __getattr__(name: str) -> Any:
    if name == "RemoteReranker":  # imported when first asked for
        from embedstack.rerank.remote import RemoteReranker

        return RemoteReranker
    raise AttributeError(f"module 'embedstack.rerank' has no attribute {name!r}")
