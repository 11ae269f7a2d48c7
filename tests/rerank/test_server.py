"""Rerankers served: POST /v1/rerank (Cohere/Jina shape) and POST /rerank (TEI shape) through the batcher,
in process (httpx over ASGI) and as a real `embedstack serve` process on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from embedstack.rerank import CrossEncoderReranker
from embedstack.server import create_app

pytestmark = pytest.mark.slow

QUERY = "the man eating bread"
DOCS = [
    "a man is eating food",
    "the cat sat on the mat",
    "a woman is eating a piece of bread",
    "the quick brown fox jumps over the lazy dog",
    "a red car by the river",
]


@contextlib.asynccontextmanager
async def serving(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as client:
            for _ in range(2000):  # the rerankers load in the background
                if all(m.ready or m.error for m in app.state.embedstack_rerank.values()):
                    break
                await asyncio.sleep(0.01)
            yield client


async def test_cohere_and_tei_shapes_equal_the_library(ce_bert: Path) -> None:
    reranker = CrossEncoderReranker(str(ce_bert))
    want = reranker.rank(QUERY, DOCS)
    raw = CrossEncoderReranker(str(ce_bert), activation="identity").score([(QUERY, d) for d in DOCS])
    app = create_app({"ce": f"rerank:{ce_bert}"})
    async with serving(app) as client:
        documents: list[Any] = [DOCS[0], {"text": DOCS[1]}, *DOCS[2:]]  # Jina's and Cohere v1's objects too
        r = await client.post(
            "/v1/rerank",
            json={"model": "ce", "query": QUERY, "documents": documents, "top_n": 3, "return_documents": True},
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert set(body) >= {"id", "results", "model", "usage", "meta"} and body["model"] == "ce"
        assert [x["index"] for x in body["results"]] == [w.index for w in want[:3]]
        assert [x["relevance_score"] for x in body["results"]] == pytest.approx([w.score for w in want[:3]], abs=1e-6)
        assert [x["document"] for x in body["results"]] == [{"text": w.document} for w in want[:3]]
        tokens = sum(len(t.ids) for t in reranker.tokenize([(QUERY, d) for d in DOCS]))
        assert body["usage"] == {"total_tokens": tokens}

        r = await client.post("/rerank", json={"query": QUERY, "texts": DOCS})  # TEI: sigmoid by default
        assert r.status_code == 200, r.text
        tei = r.json()
        assert [set(x) for x in tei] == [{"index", "score", "text"}] * len(DOCS) and tei[0]["text"] is None
        assert [x["index"] for x in tei] == [w.index for w in want]
        assert [x["score"] for x in tei] == pytest.approx([w.score for w in want], abs=1e-6)
        r = await client.post("/rerank", json={"query": QUERY, "texts": DOCS, "raw_scores": True, "return_text": True})
        scores = {x["index"]: x["score"] for x in r.json()}
        np.testing.assert_allclose([scores[i] for i in range(len(DOCS))], raw, atol=1e-6)
        assert all(x["text"] == DOCS[x["index"]] for x in r.json())

        # concurrent requests share the batcher; every answer is still the library's
        answers = await asyncio.gather(
            *(client.post("/v1/rerank", json={"model": "ce", "query": QUERY, "documents": DOCS[i:]}) for i in range(5))
        )
        for i, a in enumerate(answers):
            assert [x["index"] + i for x in a.json()["results"]] == [w.index for w in want if w.index >= i]


async def test_errors_are_openai_shaped_and_name_the_field(ce_bert: Path) -> None:
    app = create_app({"ce": f"rerank:{ce_bert}"})
    async with serving(app) as client:

        async def post(path: str, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
            r = await client.post(path, json=payload)
            return r.status_code, r.json()["error"]

        status, error = await post("/v1/rerank", {"model": "nope", "query": "q", "documents": ["d"]})
        assert status == 404 and error["code"] == "model_not_found" and "'ce'" in error["message"]
        status, error = await post("/v1/rerank", {"model": "ce", "query": "q", "documents": []})
        assert status == 400 and error["param"] == "documents"
        status, error = await post("/v1/rerank", {"model": "ce", "query": "q", "documents": ["a", 5]})
        assert status == 400
        status, error = await post("/v1/rerank", {"model": "ce", "query": "q", "documents": ["d"] * 2049})
        assert status == 413 and error["code"] == "too_many_inputs"
        long = "the cat sat on the mat " * 30
        status, error = await post("/rerank", {"query": "q", "texts": ["short", long]})
        assert status == 400 and error["code"] == "input_too_long" and "texts[1]" in error["message"]
        r = await client.post("/rerank", json={"query": "q", "texts": ["short", long], "truncate": True})
        assert r.status_code == 200
        lone = b'{"model": "ce", "query": "bad \\ud800", "documents": ["d"]}'  # a lone surrogate, JSON-escaped
        r = await client.post("/v1/rerank", content=lone, headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "query", r.text


async def test_embeddings_and_a_reranker_on_one_server(ce_bert: Path) -> None:
    from embedstack import FakeEmbedding
    from embedstack.providers.bm25 import BM25Embedding

    app = create_app({"emb": FakeEmbedding(embed_dim=4), "ce": f"rerank:{ce_bert}", "bm": BM25Embedding()})
    async with serving(app) as client:
        listed = (await client.get("/v1/models")).json()["data"]  # every model, each with what it serves
        assert sorted((m["id"], m["kind"]) for m in listed) == [("bm", "sparse"), ("ce", "rerank"), ("emb", "dense")]
        assert (await client.get("/v1/models/ce")).json()["kind"] == "rerank"
        assert (await client.get("/v1/models/nope")).status_code == 404
        r = await client.post("/v1/embeddings", json={"model": "emb", "input": ["a"]})
        assert r.status_code == 200 and len(r.json()["data"][0]["embedding"]) == 4
        r = await client.post("/v1/rerank", json={"model": "ce", "query": "q", "documents": ["a", "b"]})
        assert r.status_code == 200 and len(r.json()["results"]) == 2
        r = await client.post("/v1/rerank", json={"model": "emb", "query": "q", "documents": ["a"]})
        assert r.status_code == 404


async def test_health_and_metrics_count_the_rerankers(ce_bert: Path) -> None:
    good = CrossEncoderReranker(str(ce_bert))
    bad = CrossEncoderReranker(str(ce_bert))

    def broken() -> CrossEncoderReranker:  # fault injection: this reranker's weights cannot load
        raise RuntimeError("weights unreadable")

    bad.load = broken  # type: ignore[method-assign]  # its raw-logit twin (a copy) fails too
    app = create_app({"emb": "fake:4", "ce": good, "bad": bad})
    async with serving(app) as client:
        health = await client.get("/health")
        assert health.status_code == 503 and health.json()["status"] == "failed"
        models = health.json()["models"]
        assert models["emb"] == "ready" and models["ce"] == "ready"
        assert models["bad"] == "failed: RuntimeError: weights unreadable"
        r = await client.post("/v1/rerank", json={"model": "bad", "query": "q", "documents": ["d"]})
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_failed"
        metrics = (await client.get("/metrics")).text
        assert 'embedstack_queue_depth{model="ce"} 0.0' in metrics
    app = create_app({"ce": CrossEncoderReranker(str(ce_bert))})
    async with serving(app) as client:  # a reranker alone: /health is 200 once it is loaded, not before
        assert app.state.embedstack_rerank["ce"].ready
        health = await client.get("/health")
        assert health.status_code == 200 and health.json()["models"] == {"ce": "ready"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_embedstack_serve_a_reranker_over_http(ce_bert: Path, tmp_path: Path) -> None:
    port = _free_port()
    log = tmp_path / "serve.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "XDG_CACHE_HOME": str(tmp_path / "xdg"), "EMBEDSTACK_API_KEY": "k"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "embedstack", "serve", "--port", str(port), "--model", f"ce=rerank:{ce_bert}"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(timeout=5) as client:
            for _ in range(1200):
                if proc.poll() is not None:
                    raise AssertionError(log.read_text())
                with contextlib.suppress(httpx.TransportError):
                    if client.get(f"{url}/health").status_code == 200:
                        break
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=0.1)
            payload = {"query": QUERY, "texts": DOCS}
            assert client.post(f"{url}/rerank", json=payload).status_code == 401  # the key guards /rerank too
            auth = {"Authorization": "Bearer k"}
            r = client.post(f"{url}/rerank", json=payload, headers=auth)
            assert r.status_code == 200, r.text  # /health said ok: the reranker is loaded
            want = CrossEncoderReranker(str(ce_bert)).rank(QUERY, DOCS)
            assert [x["index"] for x in r.json()] == [w.index for w in want]
            r = client.post(
                f"{url}/v1/rerank", json={"model": "ce", "query": QUERY, "documents": DOCS, "top_n": 1}, headers=auth
            )
            assert r.status_code == 200 and r.json()["results"][0]["index"] == want[0].index
            assert 'route="/v1/rerank"' in client.get(f"{url}/metrics").text
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


async def test_a_full_rerank_queue_is_a_429_with_retry_after(ce_bert: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from embedstack.server.batcher import QueueFull

    app = create_app({"ce": CrossEncoderReranker(str(ce_bert))})
    async with serving(app) as client:
        batcher = app.state.embedstack_rerank["ce"].batcher

        def full(*args: Any, **kwargs: Any) -> Any:  # fault injection: a queue that cannot take more
            raise QueueFull(7, 3)

        monkeypatch.setattr(batcher, "submit", full)
        r = await client.post("/v1/rerank", json={"model": "ce", "query": "q", "documents": ["a", "b"]})
    assert r.status_code == 429 and r.headers["retry-after"] == "3"
    error = r.json()["error"]
    assert error["code"] == "queue_full" and "'ce'" in error["message"] and "7 pairs waiting" in error["message"]


async def test_repeated_documents_tie_in_input_order_and_top_n_edges(ce_bert: Path) -> None:
    docs = [DOCS[2], DOCS[1], DOCS[2], DOCS[0], DOCS[1], DOCS[2]]  # exact ties: the same pair thrice, twice
    want = CrossEncoderReranker(str(ce_bert)).rank(QUERY, docs)
    app = create_app({"ce": f"rerank:{ce_bert}"})
    async with serving(app) as client:

        async def ranked(top_n: int | None) -> list[tuple[int, float]]:
            body: dict[str, Any] = {"model": "ce", "query": QUERY, "documents": docs}
            if top_n is not None:
                body["top_n"] = top_n
            r = await client.post("/v1/rerank", json=body)
            assert r.status_code == 200, r.text
            return [(x["index"], x["relevance_score"]) for x in r.json()["results"]]

        full = await ranked(None)
        assert [i for i, _ in full] == [w.index for w in want]  # ties keep input order, as the library's rank
        by_index = dict(full)
        assert by_index[0] == by_index[2] == by_index[5] and by_index[1] == by_index[4]
        assert await ranked(0) == []
        assert await ranked(2) == full[:2]
        assert await ranked(len(docs) + 5) == full
        tei = (await client.post("/rerank", json={"query": QUERY, "texts": docs, "raw_scores": True})).json()
        assert [x["index"] for x in tei] == [w.index for w in want]
