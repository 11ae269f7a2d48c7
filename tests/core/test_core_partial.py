"""A batch that fails part-way: what the provider did obtain (`exc.partial`) is cached, sync and async."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from embedstack.kvstore.sqlite import SQLiteKVStore
from embedstack.providers.mock import FakeEmbedding
from embedstack.types import PartialResult, Role


class HalfFails(FakeEmbedding):
    """Gets vectors for the first half of a batch, then fails; `bad` makes the partial result malformed."""

    bad: bool = False
    fail: bool = True
    _identity_exclude: ClassVar[frozenset[str]] = frozenset({"delay_s", "bad", "fail"})  # same cache keys

    def _embed_batch(self, items: list[Any], role: Role) -> np.ndarray:
        vectors = super()._embed_batch(items, role)
        if not self.fail:
            return vectors
        half = len(items) // 2
        error = RuntimeError(f"server gave up after {half} of {len(items)}")
        rows = vectors[: half + 1] if self.bad else vectors[:half]  # bad: one row too many
        error.partial = PartialResult(list(range(half)), rows)  # type: ignore[attr-defined]
        raise error


def run(model: Any, texts: list[str], mode: str) -> Any:
    return model.embed(texts) if mode == "sync" else asyncio.run(model.aembed(texts))


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_partial_vectors_of_a_failed_batch_are_cached(tmp_path: Path, mode: str) -> None:
    texts = [f"t{i}" for i in range(8)]
    store = SQLiteKVStore(tmp_path / "c.sqlite")
    with pytest.raises(RuntimeError, match="4 of 8"):
        run(HalfFails(embed_batch_size=8, embeddings_cache=store), texts, mode)
    fresh = HalfFails(embed_batch_size=8, embeddings_cache=SQLiteKVStore(tmp_path / "c.sqlite"), fail=False)
    out = run(fresh, texts, mode)
    assert sorted(fresh.embedded) == texts[4:]  # t0..t3 came from the cache
    np.testing.assert_allclose(out, np.stack([fresh.vector_for(t) for t in texts]), rtol=1e-6)


def test_malformed_partial_is_ignored_and_the_real_error_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = SQLiteKVStore(tmp_path / "c.sqlite")
    with caplog.at_level(logging.WARNING, logger="embedstack"), pytest.raises(RuntimeError, match="4 of 8"):
        HalfFails(embed_batch_size=8, embeddings_cache=store, bad=True).embed([f"t{i}" for i in range(8)])
    assert "malformed partial result" in caplog.text
    fresh = HalfFails(embed_batch_size=8, embeddings_cache=store, fail=False)
    fresh.embed([f"t{i}" for i in range(8)])
    assert len(fresh.embedded) == 8  # nothing was cached from the malformed result
