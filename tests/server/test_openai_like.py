"""OpenAILikeEmbedding against embedstack serve: queries travel as input_type="query" (so they round-trip to
the in-process query vector); another server never receives the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request

from embedstack.providers.huggingface import HuggingFaceEmbedding
from embedstack.providers.openai import OpenAILikeEmbedding
from embedstack.providers.openai import embedding as openai_embedding
from embedstack.server import SERVER_HEADER, create_app

from .conftest import uvicorn_thread


def test_header_names_agree() -> None:
    assert openai_embedding._EMBEDSTACK_HEADER == SERVER_HEADER


async def test_query_round_trip_equals_in_process(tiny_prompts_dir: Path) -> None:
    local = HuggingFaceEmbedding(str(tiny_prompts_dir), backend="torch")
    app = create_app({"tiny": HuggingFaceEmbedding(str(tiny_prompts_dir), backend="torch")})
    with uvicorn_thread(app) as url:
        remote = OpenAILikeEmbedding(model="tiny", api_base=f"{url}/v1", max_retries=0, timeout=10)
        query = remote.get_query_embedding("the cat sat on the mat")
        text = remote.get_text_embedding("the cat sat on the mat")
        aquery = await remote.aget_query_embedding("a dog eating bread")
        remote_async = OpenAILikeEmbedding(model="tiny", api_base=f"{url}/v1", max_retries=0, timeout=10)
        aquery_fresh = await remote_async.aget_query_embedding("a dog eating bread")  # learns it on the async path
    want_q = local.get_query_embedding("the cat sat on the mat")
    want_t = local.get_text_embedding("the cat sat on the mat")
    assert np.dot(want_q, want_t) < 0.9999  # the prompts make them differ: the test can fail
    np.testing.assert_allclose(query, want_q, atol=1e-5)
    np.testing.assert_allclose(text, want_t, atol=1e-5)
    want_a = local.get_query_embedding("a dog eating bread")
    np.testing.assert_allclose(aquery, want_a, atol=1e-5)
    np.testing.assert_allclose(aquery_fresh, want_a, atol=1e-5)
    assert remote._embedstack_server is True and remote_async._embedstack_server is True


def test_other_servers_never_get_input_type() -> None:
    bodies: list[dict[str, Any]] = []
    other = FastAPI()

    @other.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @other.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": "m", "object": "model", "created": 0, "owned_by": "someone"}]}

    @other.post("/v1/embeddings")
    async def embeddings(request: Request) -> dict[str, Any]:
        body = await request.json()
        bodies.append(body)
        return {
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": [1.0, 0.0]} for i in range(len(body["input"]))],
            "model": "m",
            "usage": {"prompt_tokens": 1, "total_tokens": 1},
        }

    with uvicorn_thread(other) as url:
        remote = OpenAILikeEmbedding(
            model="m", api_base=f"{url}/v1", max_retries=0, timeout=10, encoding_format="float"
        )
        assert remote.get_query_embedding("q") == [1.0, 0.0]
        assert remote.get_text_embedding("t") == [1.0, 0.0]
        assert remote.get_query_embedding("q2") == [1.0, 0.0]
    assert bodies and all("input_type" not in b for b in bodies)
    assert remote._embedstack_server is False


def test_unreachable_probe_is_asked_again() -> None:
    from .conftest import free_port

    remote = OpenAILikeEmbedding(model="m", api_base=f"http://127.0.0.1:{free_port()}/v1", max_retries=0, timeout=2)
    assert remote._probe(remote._sync_client().get) is None  # connection refused: unknown, not "another server"
