"""Each input is tokenised once, on arrival (`Provider.prepare`), and the batch reuses those tokens: the vectors
are bit for bit the model's own, the batcher's budget and `usage` are the exact counts, nothing is tokenised a
second time, and the tokenizer is safe to call from the arrival path while a batch encodes in the worker."""

from __future__ import annotations

import base64
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from embedstack.providers.huggingface import HuggingFaceEmbedding
from embedstack.providers.huggingface.torch_encoder import TorchTokenizer
from embedstack.server import create_app
from embedstack.types import Role

from .conftest import parse_metric, serving, texts, uvicorn_thread

LONG = " ".join(["quick brown fox"] * 40)  # over the tiny model's 16 tokens


def decode(answer: httpx.Response) -> np.ndarray:
    assert answer.status_code == 200, answer.text
    return np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in answer.json()["data"]])


@pytest.mark.parametrize("backend", ["torch", "onnx"])
async def test_server_vectors_are_bit_identical_to_the_model(tiny_prompts_dir: Path, backend: str) -> None:
    if backend == "onnx":
        pytest.importorskip("onnxruntime")
    served = HuggingFaceEmbedding(str(tiny_prompts_dir), backend=backend)
    reference = HuggingFaceEmbedding(str(tiny_prompts_dir), backend=backend)
    batch = [*texts(40), LONG, texts(40)[3], "cat"]  # several pipeline batches, a truncated text and a repeat
    assert served.provider.capabilities.prepares
    app = create_app({"tiny": served})
    async with serving(app) as c:
        docs = await c.post("/v1/embeddings", json={"input": batch, "model": "tiny", "encoding_format": "base64"})
        queries = await c.post(
            "/v1/embeddings",
            json={"input": batch, "model": "tiny", "encoding_format": "base64", "input_type": "query"},
        )
        single = await c.post("/v1/embeddings", json={"input": "cat", "model": "tiny", "encoding_format": "base64"})
    want_docs = np.asarray(reference.get_text_embedding_batch(batch), dtype=np.float32)
    want_queries = reference.pipeline.embed(batch, Role.QUERY).values
    np.testing.assert_array_equal(decode(docs), want_docs)
    np.testing.assert_array_equal(decode(queries), want_queries)
    assert not np.array_equal(want_docs, want_queries)  # the prompts differ: the roles reached the model
    np.testing.assert_array_equal(decode(single)[0], np.float32(reference.get_text_embedding("cat")))


async def test_each_input_is_tokenised_once_and_the_budget_is_exact(
    tiny_prompts_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = HuggingFaceEmbedding(str(tiny_prompts_dir), backend="torch")
    tokenizer = model._make_tokenizer()
    assert tokenizer is not None
    batch = [*texts(20, "budget"), LONG]
    exact = [len(t.ids) for t in tokenizer.tokenize(["blue house " + t for t in batch])]  # the document prompt
    app = create_app({"tiny": model})
    async with serving(app) as c:
        seen: list[str] = []
        real = TorchTokenizer.tokenize

        def counting(self: TorchTokenizer, items: list[str]) -> Any:
            seen.extend(items)
            return real(self, items)

        monkeypatch.setattr(TorchTokenizer, "tokenize", counting)  # a spy: every text any tokenizer sees
        r = await c.post("/v1/embeddings", json={"input": batch, "model": "tiny"})
        assert r.status_code == 200, r.text
        metrics = (await c.get("/metrics")).text
    assert sorted(seen) == sorted("blue house " + t for t in batch)  # once each: on arrival, never in the batch
    assert r.json()["usage"]["prompt_tokens"] == sum(exact)
    assert parse_metric(metrics, "embedstack_batch_tokens_sum", model="tiny") == sum(exact)
    assert parse_metric(metrics, "embedstack_truncated_inputs_total", model="tiny") == 1


def test_tokenizer_is_safe_across_threads(tiny_model_dir: Path) -> None:
    """Arrivals tokenise texts while the worker (a reranker: pairs, another truncation) uses the same tokenizer:
    transformers sets the Rust tokenizer's truncation per call, which fails ("Already borrowed") or mixes
    settings without the tokenizer's own lock."""
    tokenizer = TorchTokenizer(tiny_model_dir)
    singles = [LONG + f" {i}" for i in range(64)] + texts(64)
    pairs = (texts(64, "query"), singles[:64])
    want_singles = tokenizer.tokenize(singles)
    want_pairs = tokenizer.encode(*pairs, truncation="only_second")
    start = threading.Barrier(8)

    def work(i: int) -> bool:
        start.wait()
        for _ in range(15):
            if i % 2:
                got = tokenizer.encode(*pairs, truncation="only_second")
                same = all(np.array_equal(a.ids, b.ids) for a, b in zip(got, want_pairs))
            else:
                got = tokenizer.tokenize(singles)
                same = all(
                    np.array_equal(a.ids, b.ids) and a.truncated == b.truncated for a, b in zip(got, want_singles)
                )
            if not same:
                return False
        return True

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(work, range(8)))


def test_concurrent_clients_get_the_models_vectors(tiny_prompts_dir: Path) -> None:
    """Many clients at once over real HTTP: arrivals tokenise while batches encode (small budgets: a request's
    inputs spread over several batches); every answer is the model's, with its exact usage."""
    model = HuggingFaceEmbedding(str(tiny_prompts_dir), backend="torch")
    reference = HuggingFaceEmbedding(str(tiny_prompts_dir), backend="torch")
    requests = [[f"client {i} {t}" for t in texts(3 + i % 5, f"c{i}")] + [LONG] * (i % 7 == 0) for i in range(48)]
    app = create_app({"tiny": model}, max_batch_tokens=64)
    with uvicorn_thread(app) as url, httpx.Client(base_url=url, timeout=60) as client:

        def one(batch: list[str]) -> tuple[np.ndarray, int]:
            r = client.post("/v1/embeddings", json={"input": batch, "model": "tiny", "encoding_format": "base64"})
            return decode(r), int(r.json()["usage"]["prompt_tokens"])

        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(one, requests))
    tokenizer = model._make_tokenizer()
    assert tokenizer is not None
    for batch, (got, usage) in zip(requests, answers):
        np.testing.assert_allclose(got, reference.get_text_embedding_batch(batch), atol=1e-6)
        assert usage == sum(len(t.ids) for t in tokenizer.tokenize(["blue house " + t for t in batch]))


@pytest.mark.parametrize(
    ("batch", "on_loop"),
    [
        (["cat"], True),  # a short query: no thread hop
        ([LONG], False),  # one long text: ~0.7 ms of tokenising would hold every other request
        (texts(40), False),  # many short texts, past 256 characters in all
    ],
)
async def test_only_small_requests_are_tokenised_on_the_event_loop(
    tiny_prompts_dir: Path, monkeypatch: pytest.MonkeyPatch, batch: list[str], on_loop: bool
) -> None:
    model = HuggingFaceEmbedding(str(tiny_prompts_dir), backend="torch")
    app = create_app({"tiny": model})
    async with serving(app) as c:
        loop_thread = threading.get_ident()
        where: list[bool] = []
        real = TorchTokenizer.tokenize

        def spying(self: TorchTokenizer, items: list[str]) -> Any:
            where.append(threading.get_ident() == loop_thread)
            return real(self, items)

        monkeypatch.setattr(TorchTokenizer, "tokenize", spying)
        r = await c.post("/v1/embeddings", json={"input": batch, "model": "tiny"})
        assert r.status_code == 200, r.text
    assert where and where[0] is on_loop  # the arrival tokenising (the first call) ran where it should
    assert (sum(len(t) for t in batch) <= 256) is on_loop  # the cases say what they claim to
