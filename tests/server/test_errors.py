"""Every error answer: OpenAI's body and status, never a 5xx on bad input (in-process app, no network)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import numpy as np
import pytest

from embedstack.kvstore.simple import SimpleKVStore
from embedstack.server import create_app
from embedstack.server.limits import SERVER_HEADER

from .conftest import GatedEmbedding, serving, until


def fake() -> Any:
    from embedstack.registry import resolve_embed_model

    return resolve_embed_model("fake:8")


def assert_error(r: Any, status: int, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    if code is not None:
        assert err["code"] == code
    if param is not None:
        assert err["param"] == param
    return err  # type: ignore[no-any-return]


BAD_BODIES = [
    ({"input": [], "model": "m"}, "input"),
    ({"input": "", "model": "m"}, "input[0]"),
    ({"input": ["ok", ""], "model": "m"}, "input[1]"),
    ({"input": ["ok", 3], "model": "m"}, None),
    ({"input": [1, 2, 3], "model": "m"}, "input"),
    ({"input": [[1, 2], [3]], "model": "m"}, "input"),
    ({"input": None, "model": "m"}, None),
    ({"input": {"a": 1}, "model": "m"}, None),
    ({"model": "m"}, None),
    ({"input": "x"}, None),
    ({"input": "x", "model": "m", "encoding_format": "hex"}, "encoding_format"),
    ({"input": "x", "model": "m", "dimensions": 0}, "dimensions"),
    ({"input": "x", "model": "m", "dimensions": 9}, "dimensions"),
    ({"input": "x", "model": "m", "dimensions": "many"}, "dimensions"),
    ({"input": "x", "model": "m", "input_type": "passage"}, "input_type"),
    ({"input": "x", "model": "m", "input_type": "image"}, None),
    ({"input": "\ud800 lone surrogate", "model": "m"}, None),
    ([1, 2], None),
    ("just a string", None),
]


async def test_bad_requests_are_openai_400s() -> None:
    async with serving(create_app({"m": fake()})) as c:
        for body, param in BAD_BODIES:
            raw = json.dumps(body).encode()
            r = await c.post("/v1/embeddings", content=raw, headers={"content-type": "application/json"})
            err = assert_error(r, 400)
            assert err["type"] == "invalid_request_error"
            if param is not None:
                assert err["param"] == param, (body, err)
        for raw in (b"{not json", b"", b'{"input": "x", "model": "m"'):
            r = await c.post("/v1/embeddings", content=raw, headers={"content-type": "application/json"})
            assert_error(r, 400)
        r = await c.post("/v1/embeddings", json={"input": [1, 2], "model": "m"})
        assert "token-id arrays" in r.json()["error"]["message"]


async def test_unknown_model_and_route_404() -> None:
    async with serving(create_app({"m": fake()})) as c:
        err = assert_error(await c.post("/v1/embeddings", json={"input": "x", "model": "gpt"}), 404, "model_not_found")
        assert "'m'" in err["message"] and err["param"] == "model"
        assert_error(await c.get("/v1/models/gpt"), 404)
        assert_error(await c.get("/nowhere"), 404)
        assert_error(await c.get("/v1/embeddings"), 405)
        models = (await c.get("/v1/models")).json()
        assert models["object"] == "list"
        assert [(m["id"], m["owned_by"]) for m in models["data"]] == [("m", "embedstack")]
        assert (await c.get("/v1/models/m")).json()["id"] == "m"


async def test_too_many_inputs_and_too_large_bodies_413() -> None:
    async with serving(create_app({"m": fake()}, max_body_bytes=4096)) as c:
        big = {"input": ["word " * 1000], "model": "m"}
        assert_error(await c.post("/v1/embeddings", json=big), 413, "request_too_large")

        async def chunks() -> Any:  # no content-length: counted as it arrives
            data = json.dumps(big).encode()
            for i in range(0, len(data), 1000):
                yield data[i : i + 1000]

        r = await c.post("/v1/embeddings", content=chunks(), headers={"content-type": "application/json"})
        assert_error(r, 413, "request_too_large")
    async with serving(create_app({"m": fake()})) as c:
        assert_error(await c.post("/v1/embeddings", json={"input": ["x"] * 2049, "model": "m"}), 413, "too_many_inputs")
        r = await c.post("/v1/embeddings", json={"input": ["x"] * 2048, "model": "m"})
        assert r.status_code == 200 and len(r.json()["data"]) == 2048


async def test_api_key_401_and_constant_time() -> None:
    async with serving(create_app({"m": fake()}, api_key="s3cret")) as c:
        body = {"input": "x", "model": "m"}
        err = assert_error(await c.post("/v1/embeddings", json=body), 401, "invalid_api_key")
        assert "s3cret" not in err["message"]
        assert_error(await c.post("/v1/embeddings", json=body, headers={"authorization": "Bearer nope"}), 401)
        assert_error(await c.post("/v1/embeddings", json=body, headers={"authorization": "Basic s3cret"}), 401)
        assert_error(await c.get("/v1/models"), 401)
        ok = await c.post("/v1/embeddings", json=body, headers={"authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        assert (await c.get("/health")).status_code == 200  # probes need no key
        assert (await c.get("/metrics")).status_code == 200


async def test_queue_full_429_with_retry_after(gated: GatedEmbedding) -> None:
    gated._gate.clear()
    app = create_app({"g": gated}, max_queue=2, max_wait_ms=0, warm_up=False)
    async with serving(app) as c:
        first = asyncio.ensure_future(c.post("/v1/embeddings", json={"input": "held in the model", "model": "g"}))
        await until(lambda: gated._entered.is_set())
        second = asyncio.ensure_future(c.post("/v1/embeddings", json={"input": ["q1", "q2"], "model": "g"}))
        batcher = app.state.embedstack.models["g"].batcher
        await until(lambda: batcher.depth == 2)
        r = await c.post("/v1/embeddings", json={"input": "one more", "model": "g"})
        assert_error(r, 429, "queue_full")
        assert int(r.headers["retry-after"]) >= 1
        dup = asyncio.ensure_future(
            c.post("/v1/embeddings", json={"input": ["q2"], "model": "g"})
        )  # joins: no room needed
        await until(lambda: "q2" in {i.value for i in batcher._pending.values()} and dup.done() is False)
        gated._gate.set()
        assert (await first).status_code == 200
        assert (await second).status_code == 200
        assert (await dup).status_code == 200
        metrics = (await c.get("/metrics")).text
        assert 'embedstack_queue_full_total{model="g"} 1.0' in metrics


async def test_loading_and_draining_503(gated: GatedEmbedding) -> None:
    gated._gate.clear()  # the warm-up run waits: the model is "loading"
    app = create_app({"g": gated})
    async with app.router.lifespan_context(app):
        import httpx

        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            r = await c.get("/health")
            assert r.status_code == 503 and r.json()["status"] == "loading"
            err = assert_error(await c.post("/v1/embeddings", json={"input": "x", "model": "g"}), 503, "model_loading")
            assert "loading" in err["message"]
            gated._gate.set()
            await asyncio.wait_for(app.state.embedstack.loaded.wait(), 10)
            assert (await c.get("/health")).status_code == 200
            assert (await c.post("/v1/embeddings", json={"input": "x", "model": "g"})).status_code == 200
            app.state.embedstack.draining = True
            r = await c.get("/health")
            assert r.status_code == 503 and r.json()["status"] == "draining"
            assert_error(await c.post("/v1/embeddings", json={"input": "x", "model": "g"}), 503, "server_shutting_down")


async def test_every_answer_has_the_server_header() -> None:
    async with serving(create_app({"m": fake()}, api_key="k")) as c:
        for r in (
            await c.get("/health"),
            await c.get("/nowhere"),
            await c.post("/v1/embeddings", json={"input": "x", "model": "m"}),
            await c.post("/v1/embeddings", json={"input": "x", "model": "m"}, headers={"authorization": "Bearer k"}),
        ):
            assert r.headers[SERVER_HEADER]


async def test_dimensions_truncate_and_renormalise() -> None:
    async with serving(create_app({"m": fake()})) as c:
        full = (await c.post("/v1/embeddings", json={"input": ["a b", "c"], "model": "m"})).json()
        short = (await c.post("/v1/embeddings", json={"input": ["a b", "c"], "model": "m", "dimensions": 3})).json()
        for f, s in zip(full["data"], short["data"]):
            want = np.float32(f["embedding"][:3])
            want /= np.linalg.norm(want)
            np.testing.assert_allclose(np.float32(s["embedding"]), want, rtol=1e-6, atol=1e-7)
            assert len(s["embedding"]) == 3


async def test_dimensions_on_a_model_not_known_to_be_matryoshka_trained_is_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The answer is OpenAI's `dimensions` (cut, renormalise); the log says once, as the embed job warns, that this
    model's first dimensions may retrieve worse."""
    async with serving(create_app({"m": fake()})) as c:
        with caplog.at_level("WARNING", logger="embedstack.server"):
            await c.post("/v1/embeddings", json={"input": "a", "model": "m"})
            assert not caplog.records
            for _ in range(2):
                assert (await c.post("/v1/embeddings", json={"input": "a", "model": "m", "dimensions": 3})).is_success
    notes = [r.getMessage() for r in caplog.records if "Matryoshka" in r.getMessage()]
    assert len(notes) == 1 and "model 'm'" in notes[0] and "first 3 of" in notes[0]


async def test_truncation_counted_or_refused(tiny_model: Any) -> None:
    long_text = " ".join(["quick brown fox"] * 40)  # far over the tiny model's 16 tokens
    async with serving(create_app({"tiny": tiny_model})) as c:
        r = await c.post("/v1/embeddings", json={"input": [long_text, "cat"], "model": "tiny"})
        assert r.status_code == 200
        assert r.json()["usage"]["prompt_tokens"] == 16 + 3  # [CLS] cat [SEP]
        err = assert_error(
            await c.post("/v1/embeddings", json={"input": ["cat", long_text], "model": "tiny", "truncate": False}),
            400,
            "context_length_exceeded",
            "input[1]",
        )
        assert "truncate" in err["message"]
        metrics = (await c.get("/metrics")).text
        assert 'embedstack_truncated_inputs_total{model="tiny"} 1.0' in metrics


async def test_cache_on_a_model_changes_nothing_in_the_answer() -> None:
    model = fake()
    model.embeddings_cache = SimpleKVStore()
    async with serving(create_app({"m": model})) as c:
        a = (await c.post("/v1/embeddings", json={"input": ["x", "y", "x"], "model": "m"})).json()
        b = (await c.post("/v1/embeddings", json={"input": ["y", "z", "x"], "model": "m"})).json()
    assert a["data"][0]["embedding"] == a["data"][2]["embedding"] == b["data"][2]["embedding"]
    assert a["data"][1]["embedding"] == b["data"][0]["embedding"]
    assert [d["index"] for d in b["data"]] == [0, 1, 2]


@pytest.mark.parametrize("kw", [{"max_batch_tokens": 0}, {"max_queue": 0}, {"max_wait_ms": -1}])
def test_bad_settings_refused(kw: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        create_app({"m": fake()}, **kw)
