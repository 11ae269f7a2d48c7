"""embedstack: text and image embeddings with LlamaIndex's API, one pipeline, a model-aware cache."""

from __future__ import annotations

import importlib
from typing import Any

from embedstack.base import BaseEmbedding, BatchEmbedding, MultiModalEmbedding
from embedstack.errors import EmbeddingAPIError
from embedstack.pooling import Pooling
from embedstack.providers.mock import FakeEmbedding, MockEmbedding, MockMultiModalEmbedding
from embedstack.registry import resolve_embed_model
from embedstack.settings import Settings
from embedstack.similarity import SimilarityMode, mean_agg, similarity
from embedstack.sparse import BaseSparseEmbedding, SparseEmbedding, sparse_similarity
from embedstack.types import Embedding, ImageType, Role

__version__ = "0.1.0"

# Providers with heavy dependencies, imported on first attribute access (PEP 562).
_LAZY = {
    "HuggingFaceEmbedding": "embedstack.providers.huggingface",
    "OpenAIEmbedding": "embedstack.providers.openai",
    "AzureOpenAIEmbedding": "embedstack.providers.openai",
    "OpenAILikeEmbedding": "embedstack.providers.openai",
    "ClipEmbedding": "embedstack.providers.clip",
    "LangchainEmbedding": "embedstack.providers.langchain",
    "SpladeEmbedding": "embedstack.providers.splade",
    "BM25Embedding": "embedstack.providers.bm25",
}

__all__ = [
    "AzureOpenAIEmbedding",
    "BM25Embedding",
    "BaseEmbedding",
    "BaseSparseEmbedding",
    "BatchEmbedding",
    "ClipEmbedding",
    "Embedding",
    "EmbeddingAPIError",
    "FakeEmbedding",
    "HuggingFaceEmbedding",
    "ImageType",
    "LangchainEmbedding",
    "MockEmbedding",
    "MockMultiModalEmbedding",
    "MultiModalEmbedding",
    "OpenAIEmbedding",
    "OpenAILikeEmbedding",
    "Pooling",
    "Role",
    "Settings",
    "SimilarityMode",
    "SparseEmbedding",
    "SpladeEmbedding",
    "mean_agg",
    "resolve_embed_model",
    "similarity",
    "sparse_similarity",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'embedstack' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
