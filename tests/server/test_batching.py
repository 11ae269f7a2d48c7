"""Dynamic batching: merged model calls, dedupe across requests, cache hits never queued, clients that went
away dropped before the model, and one big request never starving small ones."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np

from embedstack.kvstore.simple import SimpleKVStore
from embedstack.server import create_app

from .conftest import GatedEmbedding, parse_metric, serving, texts, until, uvicorn_thread


def body(inputs: Any, model: str = "g", **kw: Any) -> dict[str, Any]:
    return {"input": inputs, "model": model, **kw}


async def test_concurrent_requests_share_model_calls_and_identical_texts(gated: GatedEmbedding) -> None:
    gated._gate.clear()
    app = create_app({"g": gated}, warm_up=False, max_wait_ms=0)
    async with serving(app) as c:
        head = asyncio.ensure_future(c.post("/v1/embeddings", json=body("first")))
        await until(gated._entered.is_set)  # the model is busy: everything else waits in the queue
        requests = [["a", "b"], ["b", "c"], ["c", "a", "a"], ["first"]]  # "first" is running: joined, not queued
        tasks = [asyncio.ensure_future(c.post("/v1/embeddings", json=body(r))) for r in requests]
        batcher = app.state.embedstack.models["g"].batcher
        await until(lambda: batcher.depth == 3)
        gated._gate.set()
        answers = [await t for t in [head, *tasks]]
        assert all(a.status_code == 200 for a in answers)
        seen = [t for batch in gated._seen for t in batch]
        assert sorted(seen) == ["a", "b", "c", "first"]  # each text computed once
        assert [sorted(b) for b in gated._seen[1:]] == [["a", "b", "c"]]  # one call for the three queued requests
        vec = {t: d["embedding"] for r, a in zip(requests, answers[1:]) for t, d in zip(r, a.json()["data"])}
        for r, a in zip(requests, answers[1:]):
            assert [d["embedding"] for d in a.json()["data"]] == [vec[t] for t in r]  # order kept, repeats too
        metrics = (await c.get("/metrics")).text
        assert parse_metric(metrics, "embedstack_deduplicated_total") == 4  # b, c, a queued and "first" running
        assert parse_metric(metrics, "embedstack_model_calls_total") == 2


async def test_cache_hits_never_reach_the_queue(gated: GatedEmbedding) -> None:
    gated.embeddings_cache = SimpleKVStore()
    app = create_app({"g": gated})
    async with serving(app) as c:
        first = (await c.post("/v1/embeddings", json=body(["x", "y"]))).json()
        calls = len(gated._seen)
        gated._gate.clear()  # the model would hang now: hits must not need it
        again = await asyncio.wait_for(c.post("/v1/embeddings", json=body(["y", "x"])), 10)
        assert len(gated._seen) == calls
        assert [d["embedding"] for d in again.json()["data"]] == [d["embedding"] for d in first["data"]][::-1]
        metrics = (await c.get("/metrics")).text
        assert parse_metric(metrics, "embedstack_cache_hits_total") == 2
        mixed = asyncio.ensure_future(c.post("/v1/embeddings", json=body(["x", "new"])))
        await until(lambda: len(gated._seen) == calls + 1)
        assert gated._seen[-1] == ["new"]  # only the miss is queued
        gated._gate.set()
        assert (await mixed).status_code == 200


def _send_and_hang_up(url: str, payload: bytes) -> None:
    """Send a request over a raw socket and close it without reading the answer (a client that went away)."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=5) as s:
        s.sendall(
            b"POST /v1/embeddings HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            + f"content-length: {len(payload)}\r\n\r\n".encode()
            + payload
        )


def test_requests_of_clients_gone_are_dropped_before_the_model(gated: GatedEmbedding) -> None:
    import json

    gated._gate.clear()
    app = create_app({"g": gated}, warm_up=False, max_wait_ms=0)
    batcher = app.state.embedstack.models["g"].batcher
    with uvicorn_thread(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        with __import__("concurrent.futures").futures.ThreadPoolExecutor(2) as pool:
            held = pool.submit(client.post, "/v1/embeddings", json=body("running"))
            assert gated._entered.wait(10)
            _send_and_hang_up(url, json.dumps(body(["abandoned 1", "abandoned 2", "shared"])).encode())
            kept = pool.submit(client.post, "/v1/embeddings", json=body(["shared", "kept"]))
            deadline = time.monotonic() + 10
            while parse_metric(client.get("/metrics").text, "embedstack_dropped_total") < 2:
                assert time.monotonic() < deadline, "the abandoned inputs were not dropped"
                held.result(timeout=0.01) if held.done() else gated._entered.wait(0.01)
            gated._gate.set()
            assert held.result(10).status_code == 200
            answer = kept.result(10)
    assert answer.status_code == 200 and len(answer.json()["data"]) == 2
    seen = [t for batch in gated._seen for t in batch]
    assert "abandoned 1" not in seen and "abandoned 2" not in seen
    assert seen.count("shared") == 1 and "kept" in seen  # still wanted by a live request: computed
    assert batcher.depth == 0


async def test_a_big_request_does_not_starve_small_ones(tiny_model: Any) -> None:
    app = create_app({"tiny": tiny_model}, max_batch_tokens=128)
    async with serving(app) as c:
        big_texts = texts(2048, "big")
        big = asyncio.ensure_future(c.post("/v1/embeddings", json=body(big_texts, "tiny")))
        batcher = app.state.embedstack.models["tiny"].batcher
        await until(lambda: batcher.calls >= 2)  # the big one is being computed

        async def small(i: int) -> tuple[float, int]:
            r = await c.post("/v1/embeddings", json=body(f"small {i}", "tiny"))
            assert r.status_code == 200
            return time.perf_counter(), batcher.calls

        calls_before = batcher.calls
        smalls = await asyncio.gather(*(small(i) for i in range(50)))
        r = await big
        big_done = time.perf_counter()
        calls_after = batcher.calls
    assert r.status_code == 200 and len(r.json()["data"]) == 2048
    assert max(done for done, _ in smalls) < big_done  # every small one finished while the big one ran
    # ... and early in it, counted in model calls rather than seconds (a busy machine slows both alike): the
    # smalls waited for a few of the big one's batches, not for the rest of them
    waited = max(calls for _, calls in smalls) - calls_before
    assert waited <= (calls_after - calls_before) / 2, (waited, calls_after - calls_before)
    vectors = np.float32([d["embedding"] for d in r.json()["data"]])
    np.testing.assert_allclose(vectors[:5], tiny_model.embed(big_texts[:5]), atol=1e-5)


async def test_many_single_text_requests_few_model_calls(tiny_model: Any) -> None:
    app = create_app({"tiny": tiny_model})
    async with serving(app) as c:
        before = app.state.embedstack.models["tiny"].batcher.calls
        answers = await asyncio.gather(*(c.post("/v1/embeddings", json=body(f"text {i}", "tiny")) for i in range(64)))
        calls = app.state.embedstack.models["tiny"].batcher.calls - before
    assert all(a.status_code == 200 for a in answers)
    assert calls <= 8, calls
    for i, a in enumerate(answers):
        np.testing.assert_allclose(a.json()["data"][0]["embedding"], tiny_model.embed([f"text {i}"])[0], atol=1e-5)


async def test_a_lone_request_never_waits_for_company(gated: GatedEmbedding) -> None:
    app = create_app({"g": gated}, max_wait_ms=60_000, warm_up=False)  # a wait would be seen at once
    async with serving(app) as c:
        t0 = time.perf_counter()
        r = await c.post("/v1/embeddings", json=body("alone"))
        assert r.status_code == 200
        assert time.perf_counter() - t0 < 10
