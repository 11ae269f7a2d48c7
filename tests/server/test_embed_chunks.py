"""Long inputs over HTTP: POST /embed_chunks (late chunking) answers what `embed_chunks` computes, with the
server's key, errors and metrics; a model served with long_inputs="chunk" embeds long texts whole on
/v1/embeddings (usage counts every token; "truncate": false is not refused); `embedstack serve --long-inputs
chunk` sets it. The tiny BERT's limit is 16 tokens."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

from embedstack.providers.huggingface import HuggingFaceEmbedding
from embedstack.server import create_app

from .conftest import WORDS, parse_metric, serving, start_server, uvicorn_thread

DOCUMENT = " ".join(WORDS[i % len(WORDS)] for i in range(0, 120, 3))  # 40 words: past the limit
SPANS = [(0, 20), (20, 90), (90, len(DOCUMENT))]


@pytest.fixture(scope="module")
def chunking(tiny_prompts_dir: Path) -> HuggingFaceEmbedding:
    return HuggingFaceEmbedding(str(tiny_prompts_dir), backend="torch", long_inputs="chunk").load()


def test_embed_chunks_over_real_http(chunking: HuggingFaceEmbedding) -> None:
    app = create_app({"tiny": chunking, "fake": "fake:8"}, api_key="sekret", warm_up=False)
    auth = {"authorization": "Bearer sekret"}
    with uvicorn_thread(app) as url, httpx.Client(base_url=url, timeout=60, headers=auth) as client:
        got = client.post("/embed_chunks", json={"model": "tiny", "input": DOCUMENT, "spans": SPANS})
        assert got.status_code == 200, got.text
        body = got.json()
        want = chunking.embed_chunks(DOCUMENT, SPANS)
        assert [d["index"] for d in body["data"]] == [0, 1, 2]
        assert [tuple(d["span"]) for d in body["data"]] == SPANS
        np.testing.assert_allclose([d["embedding"] for d in body["data"]], want, atol=1e-6)
        whole = chunking.provider.count_tokens([DOCUMENT], "text")  # type: ignore[arg-type]
        assert whole is not None and body["usage"]["prompt_tokens"] == whole[0][0] > 16

        bad = client.post("/embed_chunks", json={"model": "tiny", "input": DOCUMENT, "spans": [[0, 5], [3, 999]]})
        assert bad.status_code == 400
        assert bad.json()["error"]["param"] == "spans[1]" and "is not a span" in bad.json()["error"]["message"]
        fake = client.post("/embed_chunks", json={"model": "fake", "input": DOCUMENT, "spans": SPANS})
        assert fake.status_code == 400 and "does not do late chunking" in fake.json()["error"]["message"]
        unknown = client.post("/embed_chunks", json={"model": "nope", "input": DOCUMENT, "spans": SPANS})
        assert unknown.status_code == 404 and "'tiny'" in unknown.json()["error"]["message"]
        nameless = client.post("/embed_chunks", json={"input": DOCUMENT, "spans": SPANS})
        assert nameless.status_code == 400 and "name one in 'model'" in nameless.json()["error"]["message"]
        assert httpx.post(f"{url}/embed_chunks", json={"input": DOCUMENT, "spans": SPANS}).status_code == 401
        metrics = client.get("/metrics").text
        assert parse_metric(metrics, "embedstack_requests_total", route="/embed_chunks", status="200") == 1


async def test_a_chunking_model_embeds_long_texts_whole(chunking: HuggingFaceEmbedding) -> None:
    short = "the cat sat on the mat"
    async with serving(create_app({"tiny": chunking})) as client:
        got = await client.post("/v1/embeddings", json={"model": "tiny", "input": [DOCUMENT, short], "truncate": False})
        assert got.status_code == 200, got.text
        rows = np.asarray([d["embedding"] for d in got.json()["data"]], dtype=np.float32)
    np.testing.assert_allclose(rows, chunking.embed([DOCUMENT, short]), atol=1e-6)
    counts, cut = chunking.provider.count_tokens([DOCUMENT, short], "text")  # type: ignore[arg-type,misc]
    assert got.json()["usage"]["prompt_tokens"] == sum(counts) and not any(cut)


@pytest.mark.slow
def test_embedstack_serve_long_inputs_chunk(tmp_path: Path, tiny_prompts_dir: Path) -> None:
    server = start_server(
        tmp_path, "--model", f"tiny=torch:{tiny_prompts_dir}", "--long-inputs", "chunk", "--chunk-overlap", "2"
    )
    try:
        got = httpx.post(f"{server.url}/v1/embeddings", json={"model": "tiny", "input": [DOCUMENT]}, timeout=60)
        assert got.status_code == 200, got.text
        model = HuggingFaceEmbedding(str(tiny_prompts_dir), backend="torch", long_inputs="chunk", chunk_overlap=2)
        np.testing.assert_allclose(got.json()["data"][0]["embedding"], model.embed([DOCUMENT])[0], atol=1e-6)
        late = httpx.post(f"{server.url}/embed_chunks", json={"input": DOCUMENT, "spans": SPANS}, timeout=60)
        np.testing.assert_allclose([d["embedding"] for d in late.json()["data"]], model.embed_chunks(DOCUMENT, SPANS))
    finally:
        assert server.stop() == 0
    with pytest.raises(RuntimeError, match="--long-inputs applies to local models"):
        start_server(tmp_path, "--model", "fake:8", "--long-inputs", "chunk", "--no-cache")
