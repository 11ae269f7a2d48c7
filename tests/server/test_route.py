"""POST /v1/embeddings is one route: a raw ASGI endpoint in the router, documented in /openapi.json, with the
gate's limits and OpenAI's error bodies (issue 22)."""

from __future__ import annotations

from collections.abc import Iterator

from fastapi.testclient import TestClient

from embedstack.server.app import create_app


def test_the_route_is_documented_and_refuses_like_the_rest() -> None:
    app = create_app({"m": "fake:8"}, warm_up=False, max_body_bytes=4096)
    with TestClient(app) as client:
        schema = client.get("/openapi.json").json()
        post = schema["paths"]["/v1/embeddings"]["post"]
        assert post["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/EmbeddingRequest")
        assert {"EmbeddingRequest", "EmbeddingResponse", "ErrorBody"} <= set(schema["components"]["schemas"])
        assert {"200", "400", "401", "413", "429", "503"} <= set(post["responses"])

        wrong = client.get("/v1/embeddings")
        assert wrong.status_code == 405 and wrong.json()["error"]["type"] == "invalid_request_error"

        ok = client.post("/v1/embeddings", json={"input": ["a", "b"], "model": "m"})
        assert ok.status_code == 200 and len(ok.json()["data"]) == 2

        def chunks() -> Iterator[bytes]:  # no content-length: the limit is counted on the way in
            yield b'{"model": "m", "input": ["'
            for _ in range(10):
                yield b"x" * 1000
            yield b'"]}'

        big = client.post("/v1/embeddings", content=chunks(), headers={"content-type": "application/json"})
        assert big.status_code == 413 and big.json()["error"]["code"] == "request_too_large"
