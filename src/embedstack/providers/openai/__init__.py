"""OpenAI and every OpenAI-compatible embeddings server.

Modules: `embedding` (OpenAIEmbedding, AzureOpenAIEmbedding, OpenAILikeEmbedding), `shaping`
(token counting and packing items into requests), `retry` (the retry policy, failures,
`EmbeddingAPIError` and secret scrubbing).
"""

from __future__ import annotations

from embedstack.providers.openai.embedding import (
    DEFAULT_OPENAI_MODEL,
    AzureOpenAIEmbedding,
    EmbeddingAPIError,
    OpenAIEmbedding,
    OpenAILikeEmbedding,
    from_spec,
)

__all__ = [
    "DEFAULT_OPENAI_MODEL",
    "AzureOpenAIEmbedding",
    "EmbeddingAPIError",
    "OpenAIEmbedding",
    "OpenAILikeEmbedding",
    "from_spec",
]
