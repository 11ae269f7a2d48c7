"""What spec sheets check (issue 26): CORS (`--cors-allow-origin`, off by default) over real HTTP, TEI's
`POST /tokenize` against the model's own tokenizer, and `"truncate": false` refusing an over-long input before
it is queued (the model never runs for it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from embedstack.server import create_app

from .conftest import parse_metric, serving, start_server, uvicorn_thread

ORIGIN = "https://app.example.com"
PREFLIGHT = {
    "origin": ORIGIN,
    "access-control-request-method": "POST",
    "access-control-request-headers": "authorization, content-type",
}
LONG = " ".join(["quick brown fox"] * 40)  # far over the tiny model's 16 tokens


def test_cors_from_the_command_line_over_real_http(tmp_path: Path) -> None:
    server = start_server(
        tmp_path,
        "--model",
        "f=fake:8",
        "--no-cache",
        "--api-key",
        "k",
        "--cors-allow-origin",
        ORIGIN,
        "--cors-allow-origin",
        "http://localhost:3000",
    )
    try:
        url = server.url
        pre = httpx.options(f"{url}/v1/embeddings", headers=PREFLIGHT)  # browsers send no key on a preflight
        assert pre.status_code == 200, pre.text
        assert pre.headers["access-control-allow-origin"] == ORIGIN
        assert "POST" in pre.headers["access-control-allow-methods"]
        assert "authorization" in pre.headers["access-control-allow-headers"].lower()
        other = httpx.options(f"{url}/v1/embeddings", headers={**PREFLIGHT, "origin": "http://localhost:3000"})
        assert other.headers["access-control-allow-origin"] == "http://localhost:3000"

        body = {"input": "x", "model": "f"}
        r = httpx.post(f"{url}/v1/embeddings", json=body, headers={"origin": ORIGIN, "authorization": "Bearer k"})
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == ORIGIN
        assert "x-embedstack-server" in r.headers["access-control-expose-headers"].lower()
        denied = httpx.post(f"{url}/v1/embeddings", json=body, headers={"origin": ORIGIN})
        assert denied.status_code == 401 and denied.headers["access-control-allow-origin"] == ORIGIN  # readable

        stranger = {**PREFLIGHT, "origin": "https://evil.example"}
        refused = httpx.options(f"{url}/v1/embeddings", headers=stranger)
        assert refused.status_code == 400 and "access-control-allow-origin" not in refused.headers
        r = httpx.post(
            f"{url}/v1/embeddings", json=body, headers={"origin": "https://evil.example", "authorization": "Bearer k"}
        )
        assert r.status_code == 200 and "access-control-allow-origin" not in r.headers  # the browser hides it
    finally:
        assert server.stop() == 0


def test_cors_is_off_by_default_over_real_http() -> None:
    with uvicorn_thread(create_app({"f": "fake:8"})) as url:
        pre = httpx.options(f"{url}/v1/embeddings", headers=PREFLIGHT)
        assert pre.status_code != 200 and "access-control-allow-origin" not in pre.headers
        r = httpx.post(f"{url}/v1/embeddings", json={"input": "x", "model": "f"}, headers={"origin": ORIGIN})
        assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


@pytest.mark.parametrize("origin", ["app.example.com", "https://app.example.com/", "ftp://x", "https://a/b"])
def test_bad_cors_origins_are_refused(origin: str) -> None:
    with pytest.raises(ValueError, match="scheme://host"):
        create_app({"f": "fake:8"}, cors_allow_origins=[origin])


async def test_tokenize_is_the_models_tokenizer_in_teis_shape(tiny_model: Any, tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    reference = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    texts = ["The quick brown fox", LONG]
    async with serving(create_app({"tiny": tiny_model})) as c:
        r = await c.post("/tokenize", json={"inputs": texts})
        assert r.status_code == 200, r.text
        got = r.json()
        assert len(got) == 2
        for text, tokens in zip(texts, got):
            assert [t["id"] for t in tokens] == reference(text)["input_ids"]  # untruncated: all of LONG
            assert tokens[0] == {
                "id": reference.cls_token_id,
                "text": "[CLS]",
                "special": True,
                "start": None,
                "stop": None,
            }
            assert tokens[-1]["special"] and tokens[-1]["text"] == "[SEP]"
            for t in tokens[1:-1]:
                assert not t["special"] and text[t["start"] : t["stop"]] == t["text"]
                assert t["text"].lower() == reference.convert_ids_to_tokens(t["id"]).removeprefix("##")
        assert len(got[1]) > 16  # the model would truncate it to 16

        one = (await c.post("/tokenize", json={"inputs": "The quick brown fox", "add_special_tokens": False})).json()
        assert [t["id"] for t in one[0]] == reference("The quick brown fox", add_special_tokens=False)["input_ids"]
        assert not any(t["special"] for t in one[0])

        usage = (await c.post("/v1/embeddings", json={"input": "The quick brown fox", "model": "tiny"})).json()
        assert usage["usage"]["prompt_tokens"] == len(got[0])  # what a client budgets is what it is billed

        missing = await c.post("/tokenize", json={"inputs": "x", "model": "nope"})
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
        empty = await c.post("/tokenize", json={"inputs": []})
        assert empty.status_code == 400 and empty.json()["error"]["param"] == "inputs"
        bad = await c.post("/tokenize", json={"texts": "x"})
        assert bad.status_code == 400


async def test_tokenize_names_the_model_and_needs_the_key(tiny_model: Any) -> None:
    app = create_app({"tiny": tiny_model, "fake": "fake:8"}, api_key="k")
    key = {"authorization": "Bearer k"}
    async with serving(app) as c:
        assert (await c.post("/tokenize", json={"inputs": "cat", "model": "tiny"})).status_code == 401
        r = await c.post("/tokenize", json={"inputs": "cat"}, headers=key)
        assert r.status_code == 400 and "name one" in r.json()["error"]["message"]
        r = await c.post("/tokenize", json={"inputs": "cat", "model": "tiny"}, headers=key)
        assert r.status_code == 200 and [t["text"] for t in r.json()[0]] == ["[CLS]", "cat", "[SEP]"]
        r = await c.post("/tokenize", json={"inputs": "cat", "model": "fake"}, headers=key)
        assert r.status_code == 400 and r.json()["error"]["code"] == "tokenizer_unavailable"
        metrics = (await c.get("/metrics")).text
    assert parse_metric(metrics, "embedstack_requests_total", route="/tokenize") == 4


async def test_truncate_false_refuses_before_the_model_runs(tiny_model: Any) -> None:
    """An over-long input with "truncate": false is refused on arrival: no model call, nothing embedded, not even
    the request's short inputs (before, the whole request was embedded and then refused)."""
    app = create_app({"tiny": tiny_model})
    async with serving(app) as c:
        r = await c.post("/v1/embeddings", json={"input": ["cat", LONG, "dog"], "model": "tiny", "truncate": False})
        assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
        assert r.json()["error"]["param"] == "input[1]"
        metrics = (await c.get("/metrics")).text
        assert parse_metric(metrics, "embedstack_model_calls_total", model="tiny") == 0
        assert parse_metric(metrics, "embedstack_items_embedded_total", model="tiny") == 0
        assert app.state.embedstack.models["tiny"].batcher.calls == 0

        ok = await c.post("/v1/embeddings", json={"input": ["cat", "dog"], "model": "tiny", "truncate": False})
        assert ok.status_code == 200 and ok.json()["usage"]["prompt_tokens"] == 6  # [CLS] x [SEP], counted once each
        metrics = (await c.get("/metrics")).text
        assert parse_metric(metrics, "embedstack_model_calls_total", model="tiny") == 1
