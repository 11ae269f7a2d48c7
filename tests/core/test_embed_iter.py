"""embed_iter / aembed_iter (streams in chunks) and the one progress reporter they share with embed()."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
import pytest

from embedstack import FakeEmbedding
from embedstack.errors import BadVectorsError
from embedstack.kvstore import SimpleKVStore
from embedstack.progress import Progress
from embedstack.types import Role

TEXTS = [f"text number {i}" for i in range(25)]


def test_chunks_equal_one_big_call_and_the_stream_is_read_lazily() -> None:
    m = FakeEmbedding(embed_batch_size=4)
    pulled: list[int] = []

    def stream() -> Iterator[str]:
        for i, t in enumerate(TEXTS):
            pulled.append(i)
            yield t

    it = m.embed_iter(stream(), chunk_size=10)
    first = next(it)
    assert first.shape == (10, 16) and len(pulled) == 10  # nothing read past the first chunk
    rest = list(it)
    assert [c.shape[0] for c in rest] == [10, 5]
    np.testing.assert_array_equal(np.vstack([first, *rest]), m.embed(TEXTS))


def test_async_chunks_equal_sync_ones() -> None:
    m = FakeEmbedding()

    async def collect() -> list[np.ndarray]:
        return [c async for c in m.aembed_iter(TEXTS, chunk_size=7, role="query")]

    chunks = asyncio.run(collect())
    assert [c.shape[0] for c in chunks] == [7, 7, 7, 4]
    np.testing.assert_array_equal(np.vstack(chunks), m.embed(TEXTS, role=Role.QUERY))


def test_errors_name_the_item_by_its_position_in_the_stream() -> None:
    bad: list[Any] = list(TEXTS)
    bad[23] = None
    with pytest.raises(TypeError, match=r"texts\[23\] is NoneType"):
        list(FakeEmbedding().embed_iter(bad, chunk_size=10))
    with pytest.raises(TypeError, match="wrap it in a list"):
        list(FakeEmbedding().embed_iter("one text"))
    with pytest.raises(ValueError, match="chunk_size must be positive"):
        list(FakeEmbedding().embed_iter(TEXTS, chunk_size=0))


class NanAt(FakeEmbedding):
    """Returns NaN for one text, to see which position the error names."""

    poison: str = ""
    _identity_exclude: ClassVar[frozenset[str]] = frozenset({"poison", "delay_s"})  # same vectors otherwise

    def _embed_batch(self, items: list[Any], role: Role) -> Any:
        out = np.asarray(super()._embed_batch(items, role), dtype=np.float32)
        out[[i for i, t in enumerate(items) if t == self.poison]] = np.nan
        return out


def test_bad_vectors_are_named_at_their_stream_position_and_earlier_chunks_stay_cached() -> None:
    store = SimpleKVStore()
    m = NanAt(poison=TEXTS[17], embeddings_cache=store)
    with pytest.raises(BadVectorsError, match=r"texts\[17\]") as info:
        list(m.embed_iter(TEXTS, chunk_size=10))
    assert 17 in info.value.positions
    m.poison = ""
    m._calls.clear()
    list(m.embed_iter(TEXTS, chunk_size=10))
    assert set(m.embedded) <= set(TEXTS[10:])  # the first chunk came from the cache


def test_one_progress_counts_done_and_computed_across_calls() -> None:
    store = SimpleKVStore()
    m = FakeEmbedding(embed_batch_size=4, embeddings_cache=store)
    m.embed(TEXTS[:6])  # cache hits for the next call
    shown: list[int] = []

    class Bar:
        def __init__(self, total: int) -> None:
            shown.append(total)
            self.n = 0
            self.closed = False

        def update(self, n: int) -> None:
            self.n += n

        def close(self) -> None:
            self.closed = True

    progress = Progress(len(TEXTS) + 2, show=Bar)
    chunks = list(m.embed_iter([*TEXTS, TEXTS[0], TEXTS[20]], chunk_size=9, show_progress=progress))
    bar = progress._bar
    assert shown == [27] and sum(c.shape[0] for c in chunks) == 27
    assert progress.done == 27 and bar.n == 27
    assert progress.computed == 19  # 25 unique texts, 6 of them cached
    assert not bar.closed  # a shared Progress is closed by its owner
    progress.close()
    assert bar.closed


def test_show_progress_true_draws_one_bar_for_the_stream(capsys: pytest.CaptureFixture[str]) -> None:
    list(FakeEmbedding().embed_iter(TEXTS, chunk_size=10, show_progress=True))
    err = capsys.readouterr().err
    assert "25/25" in err
