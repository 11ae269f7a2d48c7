"""OpenAILikeEmbedding against embedstack serve: with `send_input_type=True` queries travel as input_type="query"
(so they round-trip to the in-process query vector) and documents as "document"; without it no request carries
the field; and the client never probes the server (no GET /models) to decide."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request

from embedstack.providers.huggingface import HuggingFaceEmbedding
from embedstack.providers.openai import OpenAILikeEmbedding
from embedstack.server import create_app

from .conftest import uvicorn_thread


async def test_query_round_trip_equals_in_process(tiny_prompts_dir: Path) -> None:
    local = HuggingFaceEmbedding(str(tiny_prompts_dir), backend="torch")
    app = create_app({"tiny": HuggingFaceEmbedding(str(tiny_prompts_dir), backend="torch")})
    with uvicorn_thread(app) as url:
        remote = OpenAILikeEmbedding(
            model="tiny", api_base=f"{url}/v1", max_retries=0, timeout=10, send_input_type=True
        )
        query = remote.get_query_embedding("the cat sat on the mat")
        text = remote.get_text_embedding("the cat sat on the mat")
        aquery = await remote.aget_query_embedding("a dog eating bread")
        plain = OpenAILikeEmbedding(model="tiny", api_base=f"{url}/v1", max_retries=0, timeout=10)
        plain_query = plain.get_query_embedding("the cat sat on the mat")  # no input_type: embedded as a document
    want_q = local.get_query_embedding("the cat sat on the mat")
    want_t = local.get_text_embedding("the cat sat on the mat")
    assert np.dot(want_q, want_t) < 0.9999  # the prompts make them differ: the test can fail
    np.testing.assert_allclose(query, want_q, atol=1e-5)
    np.testing.assert_allclose(text, want_t, atol=1e-5)
    np.testing.assert_allclose(aquery, local.get_query_embedding("a dog eating bread"), atol=1e-5)
    np.testing.assert_allclose(plain_query, want_t, atol=1e-5)


def _recording_server(bodies: list[dict[str, Any]], gets: list[str]) -> FastAPI:
    other = FastAPI()

    @other.middleware("http")
    async def record(request: Request, call_next: Any) -> Any:
        if request.method == "GET" and request.url.path != "/health":
            gets.append(request.url.path)
        return await call_next(request)

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

    return other


async def test_input_type_is_sent_only_when_asked_and_nothing_is_probed() -> None:
    bodies: list[dict[str, Any]] = []
    gets: list[str] = []
    with uvicorn_thread(_recording_server(bodies, gets)) as url:
        kw: dict[str, Any] = {"model": "m", "api_base": f"{url}/v1", "max_retries": 0, "timeout": 10}
        remote = OpenAILikeEmbedding(**kw, encoding_format="float")
        assert remote.get_query_embedding("q") == [1.0, 0.0]
        assert remote.get_text_embedding("t") == [1.0, 0.0]
        assert await remote.aget_query_embedding("q2") == [1.0, 0.0]
        assert all("input_type" not in b for b in bodies) and len(bodies) == 3
        bodies.clear()
        asking = OpenAILikeEmbedding(**kw, encoding_format="float", send_input_type=True)
        assert asking.get_query_embedding("q") == [1.0, 0.0]
        assert asking.get_text_embedding("t") == [1.0, 0.0]
        assert await asking.aget_query_embedding("q2") == [1.0, 0.0]
        assert await asking.aget_text_embedding("t2") == [1.0, 0.0]
    assert [(b["input"], b["input_type"]) for b in bodies] == [
        (["q"], "query"),
        (["t"], "document"),
        (["q2"], "query"),
        (["t2"], "document"),
    ]
    assert gets == []  # no GET /models (or anything else) to find out what the server is


def test_send_input_type_is_part_of_the_identity() -> None:
    kw: dict[str, Any] = {"model": "m", "api_base": "http://127.0.0.1:9/v1"}
    plain, asking = OpenAILikeEmbedding(**kw), OpenAILikeEmbedding(**kw, send_input_type=True)
    assert plain.provider.identity() != asking.provider.identity()  # query vectors differ: so do cache keys
