"""TEI's POST /embed_sparse for sparse models beside dense ones: answers equal the model's vectors; the server's
key, limits, error bodies and metrics apply; requests go through the dynamic batcher, the models load at startup
and /health counts them; `embedstack serve --model NAME=bm25:<stats.json>` serves it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from embedstack.providers.bm25 import BM25Embedding
from embedstack.server import create_app
from embedstack.server.limits import MAX_INPUTS

from .conftest import parse_metric, serving, start_server, uvicorn_thread

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


async def test_sparse_requests_go_through_the_batcher() -> None:
    model = BM25Embedding().fit(CORPUS)
    other = ["pears and a fox", "red trees"]
    app = create_app({"bm25": model}, max_batch_tokens=4)
    async with serving(app) as c:
        first = c.post("/embed_sparse", json={"inputs": [*CORPUS, CORPUS[0]]})  # a repeat: computed once
        second = c.post("/embed_sparse", json={"inputs": other})
        answers = await asyncio.gather(first, second)
        assert [a.status_code for a in answers] == [200, 200], answers[0].text
        assert answers[0].json() == _tei(model.embed([*CORPUS, CORPUS[0]]))
        assert answers[1].json() == _tei(model.embed(other))
        metrics = (await c.get("/metrics")).text
    assert app.state.embedstack.sparse["bm25"].batcher.calls >= 2  # a budget of 4 tokens: several batches
    assert parse_metric(metrics, "embedstack_items_embedded_total", model="bm25") == len(CORPUS) + len(other)
    terms = [len(t) for t in model.tokenize([*CORPUS, *other])]
    assert parse_metric(metrics, "embedstack_batch_tokens_sum", model="bm25") == sum(terms)  # exact counts
    assert parse_metric(metrics, "embedstack_prompt_tokens_total", model="bm25") == sum(terms) + terms[0]


async def test_sparse_models_load_at_startup_and_count_in_health(tmp_path: Path) -> None:
    stats = BM25Embedding().fit(CORPUS).save_stats(tmp_path / "stats.json")
    loaded = BM25Embedding(stats_path=str(stats))
    app = create_app({"dense": "fake:8", "bm25": loaded, "unfitted": BM25Embedding()})
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=30) as c:
            await asyncio.wait_for(app.state.embedstack.loaded.wait(), 30)
            health = await c.get("/health")
            assert health.status_code == 503 and health.json()["status"] == "failed"
            models = health.json()["models"]
            assert models["dense"] == "ready" and models["bm25"] == "ready"
            assert models["unfitted"].startswith("failed: NotFittedError")
            stats.unlink()  # read at startup: the first request needs the file no more
            got = await c.post("/embed_sparse", json={"inputs": CORPUS[:2], "model": "bm25"})
            assert got.status_code == 200, got.text
            refused = await c.post("/embed_sparse", json={"inputs": ["fox"], "model": "unfitted"})
            assert refused.status_code == 503 and refused.json()["error"]["code"] == "model_failed"
            app.state.embedstack.draining = True
            drained = await c.post("/embed_sparse", json={"inputs": ["fox"], "model": "bm25"})
            assert drained.status_code == 503 and drained.json()["error"]["code"] == "server_shutting_down"


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


async def test_bm25_terms_are_made_once_on_arrival(monkeypatch: pytest.MonkeyPatch) -> None:
    model = BM25Embedding().fit(CORPUS)
    assert model.provider.capabilities.prepares
    want = _tei(model.embed(CORPUS))
    app = create_app({"bm25": model})
    async with serving(app) as c:
        seen: list[str] = []
        real = BM25Embedding.tokenize

        def spying(self: BM25Embedding, texts: object) -> list[list[str]]:
            texts = list(texts)  # type: ignore[call-overload]
            seen.extend(texts)
            return real(self, texts)

        monkeypatch.setattr(BM25Embedding, "tokenize", spying)
        answer = await c.post("/embed_sparse", json={"inputs": CORPUS})
    assert answer.status_code == 200, answer.text
    assert answer.json() == want
    assert sorted(seen) == sorted(CORPUS)  # each text's terms made once, on arrival; the batch reuses them
