"""Resume after a final failure: what was obtained is in the SQLite cache; a rerun asks only for the rest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from openai_fake_server import FakeOpenAIServer
from openai_testutil import FAST, KEY, embed

from embedstack.kvstore.sqlite import SQLiteKVStore
from embedstack.providers.openai import EmbeddingAPIError, OpenAIEmbedding
from embedstack.types import Role


@pytest.mark.parametrize("workers", [None, 4])
def test_rerun_after_a_final_failure_requests_only_the_missing(
    server: FakeOpenAIServer, tmp_path: Path, mode: str, workers: int | None
) -> None:
    texts = [f"chunk {i}" for i in range(100)]
    server.faults.poison = {"chunk 57"}
    server.delay_s = 0.005

    def model() -> OpenAIEmbedding:
        store = SQLiteKVStore(tmp_path / "cache.sqlite")
        return OpenAIEmbedding(
            api_key=KEY,
            api_base=server.url,
            embed_batch_size=10,
            num_workers=workers,
            embeddings_cache=store,
            **{**FAST, "max_retries": 1},
        )

    with pytest.raises(EmbeddingAPIError, match=r"texts\[50:60\]"):
        embed(model(), texts, mode)
    obtained = set(server.embedded_inputs())
    assert {f"chunk {i}" for i in range(50)} <= obtained  # every batch before the failure landed
    assert not obtained & {f"chunk {i}" for i in range(50, 60)}

    server.records.clear()
    server.faults.poison = set()
    out = embed(model(), texts, mode)  # a new model and store object: only the file is shared
    np.testing.assert_array_equal(out, server.vectors(texts))
    assert sorted(server.embedded_inputs()) == sorted(set(texts) - obtained)

    server.records.clear()
    np.testing.assert_array_equal(embed(model(), texts, mode), server.vectors(texts))
    assert server.records == []  # all cached now


def test_a_batch_split_into_requests_keeps_the_requests_that_succeeded(
    server: FakeOpenAIServer, tmp_path: Path, mode: str
) -> None:
    """One pipeline batch goes out as requests of 3 inputs; the second fails for good. The item whose
    every request landed is cached; the long item whose windows straddle the failure is not."""
    long_text = "long " * 40  # ~40 tokens: three windows of at most 16
    texts = ["part a", long_text, "part b", "part c"]  # units: a, w0, w1 | w2, b, c
    server.faults.poison = {"part b"}

    def model() -> OpenAIEmbedding:
        return OpenAIEmbedding(
            api_key=KEY,
            api_base=server.url,
            embed_batch_size=len(texts),
            max_inputs_per_request=3,
            max_input_tokens=16,
            embeddings_cache=SQLiteKVStore(tmp_path / "cache.sqlite"),
            **{**FAST, "max_retries": 0},
        )

    with pytest.raises(EmbeddingAPIError, match=r"texts\[1:4\]"):  # the long item, b and c
        embed(model(), texts, mode)
    first = server.embedded_inputs()
    assert "part a" in first and len(first) == 3  # one request landed: "part a" and two windows

    server.records.clear()
    server.faults.poison = set()
    out = embed(model(), texts, mode)
    again = server.embedded_inputs()
    assert "part a" not in again  # salvaged from the failed batch, served from the cache
    assert {"part b", "part c"} <= set(again) and len(again) == 5  # the long item's three windows again
    np.testing.assert_array_equal(out[0], server.vectors(["part a"])[0])
    full = embed(model(), texts, mode)  # all cached now, same vectors
    np.testing.assert_array_equal(full, out)


@pytest.mark.parametrize("cls", ["OpenAIEmbedding", "OpenAILikeEmbedding"])
def test_base_url_is_the_api_base(server: FakeOpenAIServer, tmp_path: Path, cls: str) -> None:
    """base_url (the OpenAI SDK's name) was silently ignored: requests went to api.openai.com, and the cache key
    named that host. Now it is api_base: the fake server answers, and the key names it."""
    from embedstack.providers import openai as openai_module

    model = getattr(openai_module, cls)(
        model="text-embedding-3-small", api_key=KEY, base_url=server.url, embeddings_cache=SQLiteKVStore(tmp_path / "c")
    )
    assert model.api_base == server.url and model.provider.identity()["api_base"] == server.url
    assert model.embed(["hello"]).shape == (1, 16)


def test_a_header_that_can_select_the_model_is_part_of_the_cache_key(server: FakeOpenAIServer, tmp_path: Path) -> None:
    """default_headers can pick a model version or deployment on compatible servers: vectors cached under one
    header value are never served for another (each other value asks the server); tracing headers and
    credentials do not split the cache, and models without extra headers keep their keys."""

    def model(**headers: str) -> OpenAIEmbedding:
        return OpenAIEmbedding(
            api_key=KEY,
            api_base=server.url,
            default_headers=headers or None,
            embeddings_cache=SQLiteKVStore(tmp_path / "cache.sqlite"),
            **FAST,
        )

    texts = ["a cat", "a dog"]
    model(**{"X-Model-Version": "2024-01"}).embed(texts)
    assert len(server.ok_records) == 1
    model(**{"X-Model-Version": "2024-01", "User-Agent": "me/1"}).embed(texts)  # a hit: only tracing differs
    assert len(server.ok_records) == 1
    model(**{"X-Model-Version": "2025-06"}).embed(texts)  # another version: a miss, asked again
    assert len(server.ok_records) == 2
    assert server.ok_records[-1].headers["x-model-version"] == "2025-06"

    plain = model().pipeline.key_factory(Role.TEXT)("a cat")
    assert "default_headers" not in model().provider.identity()
    assert model(**{"Authorization": "Bearer other-credential"}).pipeline.key_factory(Role.TEXT)("a cat") == plain
