"""Attack on the answer path of POST /v1/embeddings: many requests of different sizes interleaved in the dynamic
batcher (queries and documents of the same texts, repeats within and across requests, cache hits beside misses,
non-ASCII and over-long texts, float and base64 answers, `dimensions`), each answer checked row by row against
sentence-transformers on the same weights: the right vector at the right `index`, decoded as the openai SDK
decodes base64."""

from __future__ import annotations

import asyncio
import base64
import random
from pathlib import Path
from typing import Any

import numpy as np

from embedstack.kvstore.simple import SimpleKVStore
from embedstack.providers.huggingface import HuggingFaceEmbedding
from embedstack.server import create_app

from .conftest import WORDS, serving

POOL = [
    "the cat sat on the mat",
    "a man is eating food",
    "the quick brown fox jumps over the lazy dog",
    "café crème brûlée 東京 ünïcödé",
    " ".join(WORDS * 3),  # far over the tiny model's 16 tokens: truncated alike on both sides
    "red",
    "  leading and trailing spaces  ",
    "dog",
    "house car tree river city music book",
]


def _openai_sdk_decode(data: str) -> list[float]:
    """What openai-python does with a base64 embedding (openai.resources.embeddings)."""
    return np.frombuffer(base64.b64decode(data), dtype="float32").tolist()  # type: ignore[no-any-return]


async def test_interleaved_requests_each_get_their_own_vectors(tiny_prompts_dir: Path) -> None:
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(tiny_prompts_dir), device="cpu")
    want = {
        (role, t): v
        for role, prompt in (("query", "query"), ("document", "document"))
        for t, v in zip(POOL, st.encode(POOL, prompt_name=prompt, convert_to_numpy=True))
    }
    assert np.abs(want[("query", POOL[0])] - want[("document", POOL[0])]).max() > 1e-3  # the roles differ

    model = HuggingFaceEmbedding(str(tiny_prompts_dir), backend="torch")
    model.embeddings_cache = SimpleKVStore()  # hits answered at once beside misses through the batcher
    app = create_app({"tiny": model}, max_batch_tokens=48, max_wait_ms=5)  # small batches: requests split and mix
    rng = random.Random(7)
    requests: list[dict[str, Any]] = []
    for _ in range(60):
        n = rng.choice([1, 1, 2, 3, 5, 8, 13])
        body: dict[str, Any] = {
            "model": "tiny",
            "input": [rng.choice(POOL) for _ in range(n)] if n > 1 or rng.random() < 0.5 else rng.choice(POOL),
            "input_type": rng.choice(["query", "document"]),
            "encoding_format": rng.choice(["float", "base64"]),
        }
        if rng.random() < 0.3:
            body["dimensions"] = rng.choice([1, 7, 16, 32])
        requests.append(body)
    async with serving(app) as c:
        answers = await asyncio.gather(*(c.post("/v1/embeddings", json=b) for b in requests))
    assert app.state.embedstack.models["tiny"].batcher.calls > 1
    for body, answer in zip(requests, answers):
        assert answer.status_code == 200, answer.text
        texts = [body["input"]] if isinstance(body["input"], str) else body["input"]
        data = answer.json()["data"]
        assert [d["index"] for d in data] == list(range(len(texts)))
        for text, d in zip(texts, data):
            got = np.float32(
                _openai_sdk_decode(d["embedding"]) if body["encoding_format"] == "base64" else d["embedding"]
            )
            ref = want[(body["input_type"], text)]
            if "dimensions" in body:  # OpenAI's and sentence-transformers' Matryoshka: cut, then unit length
                ref = ref[: body["dimensions"]] / np.linalg.norm(ref[: body["dimensions"]])
            assert got.shape == ref.shape, (body, text)
            np.testing.assert_allclose(got, ref, atol=2e-6, err_msg=f"{body['input_type']} {text!r} in {body}")


async def test_dimensions_equal_sentence_transformers_truncate_dim(tiny_model_dir: Path) -> None:
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(tiny_model_dir), device="cpu")
    app = create_app({"tiny": HuggingFaceEmbedding(str(tiny_model_dir), backend="torch")})
    async with serving(app) as c:
        for dims in (1, 5, 31, 32):
            want = st.encode(POOL, truncate_dim=dims, normalize_embeddings=True, convert_to_numpy=True)
            r = await c.post(
                "/v1/embeddings", json={"model": "tiny", "input": POOL, "dimensions": dims, "encoding_format": "base64"}
            )
            got = np.float32([_openai_sdk_decode(d["embedding"]) for d in r.json()["data"]])
            np.testing.assert_allclose(got, want, atol=2e-6)
            np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)
            if dims == 1:
                assert set(np.abs(got[:, 0]).tolist()) == {1.0}  # one dimension: its sign, as ±1
