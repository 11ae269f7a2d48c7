"""TEI's POST /embed_sparse for sparse models beside dense ones: answers equal the model's vectors; the server's
key, limits, error bodies and metrics apply; `embedstack serve --model NAME=bm25:<stats.json>` serves it."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from embedstack.providers.bm25 import BM25Embedding
from embedstack.server import create_app
from embedstack.server.limits import MAX_INPUTS

from .conftest import parse_metric, start_server, uvicorn_thread

pytest.importorskip("Stemmer")

CORPUS = ["a red apple pie", "green pears and apples", "the quick brown fox", "apple trees in the orchard"]


def _tei(rows: list[object]) -> list[list[dict[str, float]]]:
    return [[{"index": int(i), "value": float(v)} for i, v in zip(r.indices, r.values)] for r in rows]  # type: ignore[attr-defined]


def test_embed_sparse_over_real_http() -> None:
    model = BM25Embedding().fit(CORPUS)
    app = create_app({"dense": "fake:8", "bm25": model}, api_key="sekret", warm_up=False)
    with uvicorn_thread(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        auth = {"authorization": "Bearer sekret"}
        got = client.post("/embed_sparse", json={"inputs": CORPUS}, headers=auth)
        assert got.status_code == 200, got.text
        assert got.json() == _tei(model.embed(CORPUS))
        one = client.post("/embed_sparse", json={"inputs": "apple apple", "input_type": "query"}, headers=auth)
        assert one.json() == [[{"index": i, "value": v} for i, v in model.get_query_embedding("apple apple").items()]]
        named = client.post("/embed_sparse", json={"inputs": ["fox"], "model": "bm25"}, headers=auth)
        assert named.status_code == 200
        dense = client.post("/v1/embeddings", json={"input": ["fox"], "model": "dense"}, headers=auth)
        assert dense.status_code == 200 and len(dense.json()["data"][0]["embedding"]) == 8

        assert client.post("/embed_sparse", json={"inputs": ["fox"]}).status_code == 401
        empty = client.post("/embed_sparse", json={"inputs": ["fox", ""]}, headers=auth)
        assert empty.status_code == 400 and "inputs[1]" in empty.json()["error"]["message"]
        unknown = client.post("/embed_sparse", json={"inputs": ["fox"], "model": "nope"}, headers=auth)
        assert unknown.status_code == 404 and "'bm25'" in unknown.json()["error"]["message"]
        many = client.post("/embed_sparse", json={"inputs": ["x"] * (MAX_INPUTS + 1)}, headers=auth)
        assert many.status_code == 413
        metrics = client.get("/metrics").text
        assert parse_metric(metrics, "embedstack_requests_total", route="/embed_sparse", status="200") == 3


def test_embed_sparse_refuses_an_unfitted_bm25_by_name() -> None:
    app = create_app({"bm25": BM25Embedding()}, warm_up=False)
    with uvicorn_thread(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        answer = client.post("/embed_sparse", json={"inputs": ["fox"]})
        assert answer.status_code == 500 and "fit" in answer.json()["error"]["message"]


@pytest.mark.slow
def test_embedstack_serve_serves_a_sparse_model_from_its_statistics(tmp_path: Path) -> None:
    model = BM25Embedding().fit(CORPUS)
    stats = model.save_stats(tmp_path / "stats.json")
    server = start_server(tmp_path, "--model", "f=fake:8", "--model", f"s=bm25:{stats}", "--no-cache")
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            got = client.post("/embed_sparse", json={"inputs": CORPUS[:2]})
            assert got.status_code == 200, got.text
            assert got.json() == _tei(model.embed(CORPUS[:2]))
    finally:
        assert server.stop() == 0
