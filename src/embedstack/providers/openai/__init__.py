"""OpenAI and every OpenAI-compatible embeddings server.

Modules, one job each: `embedding` (OpenAIEmbedding, AzureOpenAIEmbedding, OpenAILikeEmbedding:
fields, and one batch's flow of requests), `shaping` (token counting, long-input windows, packing
items into requests), `client` (the SDK's HTTP call), `answers` (decoding a 200 answer). The retry loop,
secret scrubbing, credential checks and per-loop clients are shared with the other remote providers
(`embedstack.providers.remote`). `EmbeddingAPIError` lives in `embedstack.errors`.
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
