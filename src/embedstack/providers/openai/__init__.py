"""OpenAI and every OpenAI-compatible embeddings server.

Modules, one job each: `embedding` (OpenAIEmbedding, AzureOpenAIEmbedding, OpenAILikeEmbedding:
fields, and one batch's flow of requests), `shaping` (token counting, long-input windows, packing
items into requests), `retry` (classifying a failed attempt, the policy, the one retry loop and its
sync and async drivers), `client` (credential checks, the SDK clients, the HTTP call), `answers`
(decoding a 200 answer), `redact` (secrets out of errors and logs). `EmbeddingAPIError` lives in
`embedstack.errors`.
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
