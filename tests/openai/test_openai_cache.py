"""Resume after a final failure: what was obtained is in the SQLite cache; a rerun asks only for the rest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from openai_fake_server import FakeOpenAIServer
from openai_testutil import FAST, KEY, embed

from embedstack.kvstore.sqlite import SQLiteKVStore
from embedstack.providers.openai import EmbeddingAPIError, OpenAIEmbedding


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
