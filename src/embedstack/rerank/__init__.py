"""Rerankers: cross-encoders that score (query, document) pairs, through the same pipeline as embeddings.

`CrossEncoderReranker` runs a Hugging Face sequence-classification checkpoint (torch or ONNX Runtime);
`resolve_rerank_model("rerank:<name or path>")` makes one. The LlamaIndex node postprocessor lives in
`embedstack.rerank.llama_index`, the LangChain document compressor in `embedstack.rerank.langchain`.
"""

from __future__ import annotations

from embedstack.rerank.cross_encoder import (
    DEFAULT_TOKEN_BUDGET,
    CrossEncoderReranker,
    RerankResult,
    resolve_rerank_model,
)

__all__ = ["DEFAULT_TOKEN_BUDGET", "CrossEncoderReranker", "RerankResult", "resolve_rerank_model"]
