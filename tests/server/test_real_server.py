"""`embedstack serve` as a real process with the real default model (bundled all-MiniLM-L6-v2): the official
openai SDK (sync and async), OpenAILikeEmbedding, batching read from /metrics, and SIGTERM under load.

One server per module (started once, stopped by pid); the SIGTERM test runs last and ends it.
"""

from __future__ import annotations

import base64
import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np
import pytest

from .conftest import ServerProcess, start_server

pytestmark = pytest.mark.slow  # `embedstack serve` with the bundled model in a subprocess

openai = pytest.importorskip("openai")

NAME = "minilm"
TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "A man is eating food.",
    "embedstack serves embeddings over HTTP",
    "The quick brown fox jumps over the lazy dog.",  # a repeat keeps its place
    "Ein Mann isst Essen.",
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = start_server(
        tmp_path_factory.mktemp("serve"), "--model", f"{NAME}=local", "--no-cache", "--log-level", "warning"
    )
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def local() -> Any:
    from embedstack.registry import resolve_embed_model

    return resolve_embed_model("local")


def cos(a: Any, b: Any) -> np.ndarray:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)  # type: ignore[no-any-return]


def test_openai_sdk_sync_matches_in_process(server: ServerProcess, local: Any) -> None:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    want = local.embed(TEXTS)
    default = client.embeddings.create(input=TEXTS, model=NAME)  # the SDK asks for base64 and decodes it
    floats = client.embeddings.create(input=TEXTS, model=NAME, encoding_format="float")
    b64 = client.embeddings.create(input=TEXTS, model=NAME, encoding_format="base64")
    assert [d.index for d in floats.data] == list(range(len(TEXTS)))
    got = np.float32([d.embedding for d in floats.data])
    assert cos(got, want).min() >= 0.9999
    decoded = np.stack([np.frombuffer(base64.b64decode(d.embedding), dtype="<f4") for d in b64.data])
    np.testing.assert_array_equal(decoded, got)  # float and base64: the same float32 values
    np.testing.assert_array_equal(np.float32([d.embedding for d in default.data]), got)
    np.testing.assert_array_equal(got[0], got[3])
    tokens = sum(len(t.ids) for t in local._text_tokenizer().tokenize(TEXTS))
    assert floats.usage.prompt_tokens == floats.usage.total_tokens == tokens
    assert floats.model == NAME
    single = client.embeddings.create(input=TEXTS[1], model=NAME, encoding_format="float")
    assert cos(single.data[0].embedding, want[1]) >= 0.9999
    assert [m.id for m in client.models.list().data] == [NAME]


async def test_openai_sdk_async_matches_in_process(server: ServerProcess, local: Any) -> None:
    client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    want = local.embed(TEXTS[::-1])
    answer = await client.embeddings.create(input=TEXTS[::-1], model=NAME)
    got = np.float32([d.embedding for d in answer.data])
    assert cos(got, want).min() >= 0.9999
    with pytest.raises(openai.NotFoundError):
        await client.embeddings.create(input="x", model="text-embedding-3-small")
    with pytest.raises(openai.BadRequestError):
        await client.embeddings.create(input=[], model=NAME)
    await client.close()


def test_openai_like_query_round_trip(server: ServerProcess, local: Any) -> None:
    from embedstack.providers.openai import OpenAILikeEmbedding

    remote = OpenAILikeEmbedding(
        model=NAME, api_base=f"{server.url}/v1", max_retries=0, timeout=30, send_input_type=True
    )
    q = "how do I mock HTTP requests in tests?"
    assert cos(remote.get_query_embedding(q), local.get_query_embedding(q)) >= 0.9999


def test_concurrent_single_text_requests_share_model_calls(server: ServerProcess) -> None:
    before = server.metric("embedstack_model_calls_total", model=NAME)
    with httpx.Client(base_url=server.url, timeout=60, limits=httpx.Limits(max_connections=64)) as client:
        barrier = threading.Barrier(64)

        def one(i: int) -> int:
            barrier.wait()
            r = client.post("/v1/embeddings", json={"input": f"concurrent text number {i}", "model": NAME})
            return r.status_code

        with ThreadPoolExecutor(64) as pool:
            statuses = list(pool.map(one, range(64)))
    assert statuses == [200] * 64
    calls = server.metric("embedstack_model_calls_total", model=NAME) - before
    assert calls <= 16, f"64 single-text requests took {calls} model calls"
    assert server.metric("embedstack_batch_size_count", model=NAME) >= calls


def test_sigterm_under_load_drains_and_exits_0(server: ServerProcess) -> None:
    """Runs last: every request gets its full 200 or a clean 503 (or no connection); none is cut half-way."""
    outcomes: list[tuple[str, float]] = []
    stop = threading.Event()
    signalled: list[float] = []
    body = {"input": [f"text {i} under load" for i in range(8)], "model": NAME}

    def worker(w: int) -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                with httpx.Client(timeout=60) as client:  # a new connection per request
                    with client.stream("POST", f"{server.url}/v1/embeddings", json=body) as r:
                        status = r.status_code
                        try:
                            data = r.read()
                        except httpx.HTTPError as e:  # headers came, the body did not: cut half-way
                            outcomes.append((f"cut {status}: {e!r}", started))
                            continue
            except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError) as e:
                # no answer at all (refused, or closed before any byte): the server had stopped accepting
                outcomes.append((f"refused {type(e).__name__}", started))
                if signalled:
                    return
                continue
            if status == 200:
                answer = __import__("json").loads(data)
                ok = len(answer["data"]) == 8 and all(len(d["embedding"]) == 384 for d in answer["data"])
                outcomes.append(("200" if ok else "bad 200", started))
            elif status == 503:
                err = __import__("json").loads(data)["error"]
                outcomes.append(("503" if err["message"] else "bad 503", started))
            else:
                outcomes.append((f"status {status}", started))

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(6)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while sum(o == "200" for o, _ in outcomes) < 6:  # the server is under load
        assert time.monotonic() < deadline, outcomes
        threads[0].join(0.02)
    signalled.append(time.monotonic())
    os.kill(server.proc.pid, signal.SIGTERM)
    code = server.proc.wait(timeout=60)
    stop.set()
    for t in threads:
        t.join(30)
    kinds = {o for o, _ in outcomes}
    assert code == 0, server.log.read_text()
    assert kinds <= {"200", "503", "refused ConnectError", "refused RemoteProtocolError", "refused ReadError"}, kinds
    in_flight = [o for o, started in outcomes if started < signalled[0]]
    assert "200" in in_flight and all(o != "503" for o in in_flight[:6])
