"""RemoteReranker against real HTTP servers on 127.0.0.1: our own `embedstack serve` app (/v1/rerank and /rerank
serving a tiny cross-encoder: the scores must be the local CrossEncoderReranker's), and a small starlette server
that injects faults (429 with Retry-After, 5xx, 401, malformed bodies, servers that never answer or trickle)."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from embedstack.errors import EmbeddingAPIError
from embedstack.kvstore import SimpleKVStore
from embedstack.rerank import CrossEncoderReranker, RemoteReranker, resolve_rerank_model
from embedstack.rerank.resolve import COHERE_URL, JINA_URL

from .conftest import PAIRS

pytestmark = pytest.mark.slow

KEY = "sk-remote-SECRET-0123456789"
QUERY = "the man eating bread"
DOCS = [
    "a man is eating food",
    "the cat sat on the mat",
    "a woman is eating a piece of bread",
    "the quick brown fox jumps over the lazy dog",
    "a red car by the river",
]
FAST = {"retry_backoff": 0.0, "retry_max_backoff": 0.0, "timeout": 5.0}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Served:
    """An ASGI app run by uvicorn in a thread on a free 127.0.0.1 port."""

    def __init__(self, app: Any) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Served:
        self.thread.start()
        for _ in range(2000):
            if self.server.started:
                return self
            time.sleep(0.01)
        raise RuntimeError("the test server did not start")

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


# -- our own server, serving the tiny cross-encoder ----------------------------------------------------------
@pytest.fixture(scope="module")
def embedstack_server(ce_bert: Path) -> Iterator[str]:
    from embedstack.server import create_app

    app = create_app({"ce": f"rerank:{ce_bert}"})
    with Served(app) as served:
        for _ in range(3000):  # the reranker loads in the background
            if all(m.ready or m.error for m in app.state.embedstack_rerank.values()):
                break
            time.sleep(0.01)
        yield served.url


@pytest.fixture(scope="module")
def local(ce_bert: Path) -> CrossEncoderReranker:
    return CrossEncoderReranker(str(ce_bert))


def test_both_shapes_score_as_the_local_cross_encoder(
    embedstack_server: str, local: CrossEncoderReranker, ce_bert: Path
) -> None:
    cohere = resolve_rerank_model(f"cohere:ce@{embedstack_server}", **FAST)
    tei = resolve_rerank_model(f"tei:{embedstack_server}", **FAST)
    assert isinstance(cohere, RemoteReranker) and cohere.url == f"{embedstack_server}/v1/rerank"
    assert isinstance(tei, RemoteReranker) and tei.url == f"{embedstack_server}/rerank"
    want = local.rank(QUERY, DOCS)
    for remote in (cohere, tei):
        got = remote.rank(QUERY, DOCS)
        assert [r.index for r in got] == [w.index for w in want]
        np.testing.assert_allclose([r.score for r in got], [w.score for w in want], rtol=0, atol=1e-6)
        assert [r.document for r in got] == [w.document for w in want]
        assert [r.index for r in remote.rank(QUERY, DOCS, top_n=2)] == [w.index for w in want[:2]]
        # several queries in one call (grouped per query), long pairs cut as the local model cuts them, repeats
        np.testing.assert_allclose(remote.score(PAIRS), local.score(PAIRS), rtol=0, atol=1e-6)
        got_async = asyncio.run(remote.arank(QUERY, DOCS))
        assert [r.index for r in got_async] == [w.index for w in want]
    raw = CrossEncoderReranker(str(ce_bert), activation="identity").score(PAIRS)
    np.testing.assert_allclose(tei.with_activation("identity").score(PAIRS), raw, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="not logits"):
        cohere.with_activation("identity")


def test_a_remote_reranker_served_again_and_in_the_adapters(
    embedstack_server: str, local: CrossEncoderReranker
) -> None:
    """`embedstack serve` proxying a remote reranker; the LlamaIndex postprocessor and LangChain compressor."""
    import httpx

    from embedstack.server import create_app

    app = create_app({"tei": f"tei:{embedstack_server}", "co": f"cohere:ce@{embedstack_server}"})
    want = local.rank(QUERY, DOCS)
    with Served(app) as proxy:
        for _ in range(3000):
            if all(m.ready or m.error for m in app.state.embedstack_rerank.values()):
                break
            time.sleep(0.01)
        for name in ("tei", "co"):
            r = httpx.post(
                f"{proxy.url}/v1/rerank", json={"model": name, "query": QUERY, "documents": DOCS}, timeout=30
            )
            assert r.status_code == 200, r.text
            results = r.json()["results"]
            assert [x["index"] for x in results] == [w.index for w in want]
            np.testing.assert_allclose([x["relevance_score"] for x in results], [w.score for w in want], atol=1e-6)
        r = httpx.post(f"{proxy.url}/rerank", json={"model": "tei", "query": QUERY, "texts": DOCS}, timeout=30)
        assert r.status_code == 200 and [x["index"] for x in r.json()] == [w.index for w in want]
        r = httpx.post(f"{proxy.url}/rerank", json={"model": "co", "query": QUERY, "texts": DOCS}, timeout=30)
        assert r.status_code == 400 and "/v1/rerank" in r.json()["error"]["message"]

    pytest.importorskip("llama_index.core")
    from llama_index.core.schema import NodeWithScore, TextNode

    from embedstack.rerank.llama_index import EmbedstackRerank

    post = EmbedstackRerank(f"tei:{embedstack_server}", top_n=3)
    nodes = post.postprocess_nodes([NodeWithScore(node=TextNode(text=d), score=0.0) for d in DOCS], query_str=QUERY)
    assert [n.node.get_content() for n in nodes] == [w.document for w in want[:3]]
    assert json.loads(post.to_json())["reranker"]["class_name"] == "RemoteReranker"

    pytest.importorskip("langchain_core")
    from langchain_core.documents import Document

    from embedstack.rerank.langchain import EmbedstackCrossEncoderCompressor

    compressor = EmbedstackCrossEncoderCompressor(f"cohere:ce@{embedstack_server}", top_n=2)
    kept = asyncio.run(compressor.acompress_documents([Document(page_content=d) for d in DOCS], QUERY))
    assert [d.page_content for d in kept] == [w.document for w in want[:2]]
    assert kept[0].metadata["relevance_score"] == pytest.approx(want[0].score, abs=1e-6)


def test_search_reranks_with_a_remote_reranker(  # type: ignore[no-untyped-def]
    cli, sample_jsonl: Path, embedstack_server: str, local: CrossEncoderReranker
) -> None:
    assert cli("embed", "docs.jsonl", "-o", "a.parquet", "-m", "fake:16", "--no-cache").returncode == 0
    query = "library for stubbing HTTP requests"
    plain = json.loads(cli("search", "a.parquet", query, "-k", "6", "--json", "--no-cache").stdout)
    r = cli(
        "search", "a.parquet", query, "-k", "3", "--json", "--no-cache", "--rerank", f"tei:{embedstack_server}",
        "--candidates", "6",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    want = local.rank(query, [h["text"] for h in plain], top_n=3)
    hits = json.loads(r.stdout)
    assert [h["id"] for h in hits] == [plain[w.index]["id"] for w in want]
    assert [h["score"] for h in hits] == pytest.approx([w.score for w in want], abs=1e-6)


# -- a server that injects faults ----------------------------------------------------------------------------
class Faults:
    """Scripted answers, first come first served (then the good answer); every request recorded."""

    def __init__(self) -> None:
        self.script: list[Callable[[dict[str, Any]], Any]] = []
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def reset(self, *script: Callable[[dict[str, Any]], Any]) -> None:
        with self.lock:
            self.script = list(script)
            self.requests = []


def good(body: dict[str, Any], shape: str) -> Any:
    """Score = the document's length (a different number per document), best first."""
    docs = body["documents"] if shape == "cohere" else body["texts"]
    order = sorted(range(len(docs)), key=lambda i: -len(docs[i]))
    if shape == "cohere":
        return JSONResponse(
            {
                "results": [{"index": i, "relevance_score": float(len(docs[i]))} for i in order],
                "usage": {"total_tokens": 7},
            }
        )
    return JSONResponse([{"index": i, "score": float(len(docs[i]))} for i in order])


def _fault_app(faults: Faults) -> Starlette:
    async def handle(request: Request, shape: str) -> Any:
        body = await request.json()
        with faults.lock:
            faults.requests.append({"body": body, "headers": dict(request.headers)})
            action = faults.script.pop(0) if faults.script else None
        if action is None:
            return good(body, shape)
        result = action(body)
        if asyncio.iscoroutine(result):
            result = await result
        return result

    async def cohere(request: Request) -> Any:
        return await handle(request, "cohere")

    async def tei(request: Request) -> Any:
        return await handle(request, "tei")

    return Starlette(routes=[Route("/v1/rerank", cohere, methods=["POST"]), Route("/rerank", tei, methods=["POST"])])


@pytest.fixture(scope="module")
def fault_server() -> Iterator[tuple[str, Faults]]:
    faults = Faults()
    with Served(_fault_app(faults)) as served:
        yield served.url, faults


@pytest.fixture
def faulty(fault_server: tuple[str, Faults]) -> tuple[str, Faults]:
    url, faults = fault_server
    faults.reset()
    return url, faults


def _status(code: int, body: Any = None, headers: dict[str, str] | None = None) -> Callable[[dict[str, Any]], Any]:
    return lambda _: JSONResponse(body if body is not None else {"error": f"status {code}"}, code, headers=headers)


def _raw(content: bytes | str) -> Callable[[dict[str, Any]], Any]:
    return lambda _: Response(content, 200, media_type="application/json")


def _remote(url: str, shape: str = "cohere", **kw: Any) -> RemoteReranker:
    options = {**FAST, "api_key": KEY, **kw}
    if shape == "cohere":
        return RemoteReranker(f"{url}/v1/rerank", protocol="cohere", model="m", **options)
    return RemoteReranker(f"{url}/rerank", protocol="tei", activation="identity", **options)


def _lengths(docs: list[str]) -> list[float]:
    return [float(len(d)) for d in docs]


@pytest.mark.parametrize("shape", ["cohere", "tei"])
def test_requests_carry_the_shape_and_the_key(faulty: tuple[str, Faults], shape: str) -> None:
    url, faults = faulty
    remote = _remote(url, shape)
    np.testing.assert_array_equal(remote.score([(QUERY, d) for d in DOCS]), _lengths(DOCS))
    (sent,) = faults.requests
    assert sent["headers"]["authorization"] == f"Bearer {KEY}"
    if shape == "cohere":
        assert sent["body"] == {"model": "m", "query": QUERY, "documents": DOCS, "top_n": 5, "return_documents": False}
    else:
        assert sent["body"] == {"query": QUERY, "texts": DOCS, "raw_scores": True, "truncate": True}


def test_429_with_retry_after_is_waited_out(faulty: tuple[str, Faults]) -> None:
    url, faults = faulty
    faults.reset(_status(429, {"message": "slow down"}, {"Retry-After": "0.3"}))
    t0 = time.monotonic()
    scores = _remote(url).score([(QUERY, d) for d in DOCS])
    assert time.monotonic() - t0 >= 0.3  # the server's Retry-After was honoured
    np.testing.assert_array_equal(scores, _lengths(DOCS))
    assert len(faults.requests) == 2


def test_5xx_then_success_and_async(faulty: tuple[str, Faults]) -> None:
    url, faults = faulty
    faults.reset(_status(500), _status(503), _status(502))
    np.testing.assert_array_equal(_remote(url, "tei").score([(QUERY, d) for d in DOCS]), _lengths(DOCS))
    assert len(faults.requests) == 4
    faults.reset(_status(500), _status(503))
    got = asyncio.run(_remote(url).arank(QUERY, DOCS))
    assert [r.index for r in got] == sorted(range(5), key=lambda i: -len(DOCS[i]))
    assert len(faults.requests) == 3


def test_401_fails_at_once_naming_the_pairs_and_never_the_key(
    faulty: tuple[str, Faults], caplog: pytest.LogCaptureFixture
) -> None:
    url, faults = faulty
    faults.reset(_status(401, {"message": f"invalid api key {KEY}"}))
    remote = _remote(url)
    with caplog.at_level(logging.DEBUG), pytest.raises(EmbeddingAPIError) as info:
        remote.rank(QUERY, DOCS)
    error = info.value
    assert error.status_code == 401 and error.attempts == 1 and len(faults.requests) == 1
    message = str(error)
    assert "reranking pairs[0:5]" in message and "HTTP 401" in message and "check the API key" in message
    assert "***" in message
    seen = [message, repr(remote), json.dumps(remote.identity()), json.dumps(remote.descriptor()), caplog.text]
    pytest.importorskip("llama_index.core")
    from embedstack.rerank.llama_index import EmbedstackRerank

    seen.append(EmbedstackRerank(remote).to_json())  # the adapter's to_dict: the reranker's description
    assert not any(KEY in s for s in seen)


def test_a_key_http_cannot_carry_is_refused_without_quoting_it() -> None:
    with pytest.raises(ValueError, match="newline") as info:
        RemoteReranker("http://127.0.0.1:9/rerank", protocol="tei", api_key=KEY + "\n")
    assert KEY not in str(info.value)
    with pytest.raises(ValueError, match="needs model"):
        RemoteReranker("http://127.0.0.1:9/v1/rerank")
    with pytest.raises(ValueError, match="activation"):
        RemoteReranker("http://127.0.0.1:9/v1/rerank", model="m", activation="sigmoid")
    with pytest.raises(ValueError, match="http"):
        RemoteReranker("ftp://127.0.0.1/rerank", protocol="tei")


MALFORMED = {
    "not JSON": (b"<html>oops</html>", "not JSON"),
    "no results": (b'{"data": []}', "no 'results' list"),
    "a missing score": (json.dumps({"results": [{"index": i, "relevance_score": 1.0} for i in range(4)]}), "no score"),
    "an index twice": (
        json.dumps({"results": [{"index": min(i, 3), "relevance_score": 1.0} for i in range(5)]}),
        "the same index",
    ),
    "an index out of range": (
        json.dumps({"results": [{"index": i + 1, "relevance_score": 1.0} for i in range(5)]}),
        "index 5",
    ),
    "a string score": (
        json.dumps({"results": [{"index": i, "relevance_score": "0.5"} for i in range(5)]}),
        "not a number",
    ),
    "a boolean score": (
        json.dumps({"results": [{"index": i, "relevance_score": True} for i in range(5)]}),
        "not a number",
    ),
    "NaN": (
        b'{"results": [' + b",".join(b'{"index": %d, "relevance_score": NaN}' % i for i in range(5)) + b"]}",
        "NaN",
    ),
    "beyond float32": (json.dumps({"results": [{"index": i, "relevance_score": 1e39} for i in range(5)]}), "infinite"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_answers_are_retried_then_refused_by_name(faulty: tuple[str, Faults], case: str) -> None:
    url, faults = faulty
    body, why = MALFORMED[case]
    faults.reset(_raw(body), _raw(body))
    remote = _remote(url, max_retries=1)
    with pytest.raises(EmbeddingAPIError, match=why) as info:
        remote.score([(QUERY, d) for d in DOCS])
    assert "malformed response body" in str(info.value) and info.value.attempts == 2 and "pairs[" in str(info.value)
    faults.reset(_raw(body))  # once only: the retry gets a good answer
    np.testing.assert_array_equal(remote.score([(QUERY, d) for d in DOCS]), _lengths(DOCS))


def test_tei_answers_of_the_wrong_shape_are_refused(faulty: tuple[str, Faults]) -> None:
    url, faults = faulty
    faults.reset(_raw(b'{"results": []}'), _raw(b'{"results": []}'))
    with pytest.raises(EmbeddingAPIError, match="not a list of ranks"):
        _remote(url, "tei", max_retries=1).score([(QUERY, d) for d in DOCS])


def test_timeouts_never_hang(faulty: tuple[str, Faults]) -> None:
    url, faults = faulty

    async def silent(_: dict[str, Any]) -> Any:
        await asyncio.sleep(30)
        return JSONResponse({})

    def trickle(_: dict[str, Any]) -> Any:
        async def body() -> Any:
            for _ in range(300):  # a byte every 0.1 s: each read is quick, the whole answer is not
                yield b" "
                await asyncio.sleep(0.1)

        return StreamingResponse(body(), media_type="application/json")

    for fault in (silent, trickle):
        faults.reset(fault, fault)
        remote = _remote(url, timeout=0.5, max_retries=1)
        t0 = time.monotonic()
        with pytest.raises(EmbeddingAPIError, match="timeout") as info:
            remote.score([(QUERY, d) for d in DOCS])
        assert time.monotonic() - t0 < 15 and info.value.attempts == 2
        assert "raise timeout=" in str(info.value)
        faults.reset(fault, fault)
        with pytest.raises(EmbeddingAPIError, match="timeout"):
            asyncio.run(remote.ascore([(QUERY, d) for d in DOCS]))
        assert time.monotonic() - t0 < 30


def test_a_batch_cap_in_a_413_is_learned(faulty: tuple[str, Faults]) -> None:
    url, faults = faulty
    faults.reset(_status(413, {"error": "batch size 5 > maximum allowed batch size 2"}))
    remote = _remote(url, "tei")
    np.testing.assert_array_equal(remote.score([(QUERY, d) for d in DOCS]), _lengths(DOCS))
    assert [len(r["body"]["texts"]) for r in faults.requests] == [5, 2, 2, 1]
    faults.reset()
    remote.score([("another query", d) for d in DOCS])
    assert [len(r["body"]["texts"]) for r in faults.requests] == [2, 2, 1]


def test_cache_and_partial_failures(faulty: tuple[str, Faults]) -> None:
    """Scores are cached by (model identity, pair); a failing query's pairs are named, the others kept."""
    url, faults = faulty
    cache = SimpleKVStore()
    remote = _remote(url, cache=cache)
    pairs = [("good", d) for d in DOCS] + [("bad", d) for d in DOCS]
    faults.reset(lambda b: good(b, "cohere"), _status(400, {"message": "no"}))
    with pytest.raises(EmbeddingAPIError, match=r"pairs\[5:10\]"):
        remote.score(pairs)
    faults.reset()
    np.testing.assert_array_equal(remote.score(pairs), _lengths(DOCS) * 2)
    assert [r["body"]["query"] for r in faults.requests] == ["bad"]  # the good query's scores came from the cache
    faults.reset()
    remote.score(pairs)
    assert faults.requests == []
    other = RemoteReranker(f"{url}/v1/rerank", model="another", cache=cache, **FAST)
    other.score(pairs[:1])
    assert len(faults.requests) == 1  # another model: another cache key


def test_resolve_specs(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("COHERE_API_KEY", "CO_API_KEY", "JINA_API_KEY", "EMBEDSTACK_RERANK_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ValueError, match="COHERE_API_KEY"):
        resolve_rerank_model("cohere:rerank-v3.5")
    monkeypatch.setenv("COHERE_API_KEY", KEY)
    hosted = resolve_rerank_model("cohere:rerank-v3.5")
    assert isinstance(hosted, RemoteReranker) and hosted.url == COHERE_URL and hosted.model == "rerank-v3.5"
    assert hosted.api_key is not None and hosted.api_key.get_secret_value() == KEY
    own = resolve_rerank_model("cohere:m@http://10.0.0.1:8000/v1")
    assert isinstance(own, RemoteReranker) and own.url == "http://10.0.0.1:8000/v1/rerank" and own.api_key is None
    monkeypatch.setenv("JINA_API_KEY", "jina-key")
    jina = resolve_rerank_model("jina:jina-reranker-v2-base-multilingual")
    assert isinstance(jina, RemoteReranker) and jina.url == JINA_URL and jina.protocol == "cohere"
    monkeypatch.setenv("EMBEDSTACK_RERANK_API_KEY", "own-key")
    tei = resolve_rerank_model("tei:https://user:pw@tei.example/base/")
    assert isinstance(tei, RemoteReranker) and tei.url.endswith("/base/rerank") and tei.activation == "sigmoid"
    assert "pw" not in repr(tei) and "own-key" not in json.dumps(tei.descriptor())
    for bad in ("cohere:", "tei:not-a-url", "nope:x", "cohere:@http://h"):
        with pytest.raises(ValueError):
            resolve_rerank_model(bad)
    assert math.isfinite(hosted.timeout)
