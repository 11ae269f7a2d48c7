"""Regressions for issue 13's core defects: each test failed on the code before the fix."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import warnings
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from embedstack import BaseEmbedding, BatchEmbedding, FakeEmbedding
from embedstack.errors import BadVectorsError, InvalidInputError
from embedstack.kvstore import SimpleKVStore, SQLiteKVStore
from embedstack.types import Role


class ListModel(BaseEmbedding):
    """Returns whatever `rows` maps a text to (default: a 64-dim vector); declares no dimension."""

    rows: dict[str, Any] = {}
    dim: int = 64

    def _vec(self, text: str) -> Any:
        if text in self.rows:
            return self.rows[text]
        return [float(len(text) + i) for i in range(self.dim)]

    def _get_query_embedding(self, query: str) -> Any:
        return self._vec(query)

    async def _aget_query_embedding(self, query: str) -> Any:
        return self._vec(query)

    def _get_text_embedding(self, text: str) -> Any:
        return self._vec(text)


# -- 1. batches finishing together in worker threads ------------------------------------------------


class TogetherModel(BatchEmbedding):
    """Two batches that finish at the same instant in two worker threads."""

    parallel_sync_batches: ClassVar[bool] = True

    def _embed_batch(self, items: list[Any], role: Role) -> Any:
        out = np.array([[float(ord(t[0])), float(len(t)), 1.0] for t in items], dtype=np.float32)
        BARRIER[0].wait(timeout=30)
        return out


BARRIER = [threading.Barrier(2)]


def test_batches_finishing_together_keep_every_row(monkeypatch: pytest.MonkeyPatch) -> None:
    real_empty = np.empty

    def slow_empty(*args: Any, **kwargs: Any) -> Any:
        threading.Event().wait(0.02)  # widen the window between "no matrix yet" and allocating one
        return real_empty(*args, **kwargs)

    monkeypatch.setattr(np, "empty", slow_empty)
    texts = ["alpha", "beta"]
    want = np.array([[97.0, 5.0, 1.0], [98.0, 4.0, 1.0]], dtype=np.float32)
    for _ in range(10):
        BARRIER[0] = threading.Barrier(2)
        m = TogetherModel(embed_batch_size=1, num_workers=2, embeddings_cache=SimpleKVStore())
        np.testing.assert_array_equal(m.embed(texts), want)


# -- 2. what a model returns ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "what"),
    [
        ([float("nan")] * 4, "non-finite"),
        ([1.0, float("inf"), 0.0, 0.0], "non-finite"),
        ([1e39, 0.0, 0.0, 0.0], "non-finite"),  # finite in float64, inf in float32
        ([True, False, True, True], "bool"),
        ([0.5, True, 0.5, 0.5], "bool"),
        (["0.5", "0.1", "0.2", "0.3"], "str"),
        ([0.5, None, 0.5, 0.5], "NoneType"),
    ],
)
def test_bad_values_are_an_error_naming_the_item(bad: list[Any], what: str) -> None:
    store = SimpleKVStore()
    m = ListModel(rows={"bad": bad}, dim=4, embed_batch_size=8, embeddings_cache=store)
    with pytest.raises(BadVectorsError, match=what) as err:
        m.get_text_embedding_batch(["good", "bad", "also good"])
    if what == "non-finite":
        assert "texts[1]" in str(err.value) and err.value.positions == [1]
    assert isinstance(err.value, ValueError)
    assert store.get_all("embeddings") == {}  # nothing of the failed batch was cached


def test_non_finite_array_from_a_batch_hook_names_items_after_dedupe() -> None:
    class NanModel(BatchEmbedding):
        def _embed_batch(self, items: list[Any], role: Role) -> Any:
            return np.array([[np.nan, 1.0] if t == "bad" else [1.0, 0.0] for t in items])

    with pytest.raises(BadVectorsError, match=r"texts\[2\]") as err:
        NanModel().embed(["a", "a", "bad", "bad"])
    assert err.value.positions == [2]


@pytest.mark.parametrize("dtype", [bool, object, "U3"])
def test_non_numeric_arrays_are_refused(dtype: Any) -> None:
    class ArrayModel(BatchEmbedding):
        def _embed_batch(self, items: list[Any], role: Role) -> Any:
            return np.ones((len(items), 3), dtype=dtype)

    with pytest.raises(BadVectorsError, match="expected numbers"):
        ArrayModel().embed(["a"])


def test_length_must_match_declared_and_earlier_calls() -> None:
    class Declares(FakeEmbedding):
        def _embed_batch(self, items: list[Any], role: Role) -> Any:
            return super()._embed_batch(items, role)[:, :3]

    with pytest.raises(BadVectorsError, match=r"3-dim vectors for texts\[0\].*4 dimensions \(declared"):
        Declares(embed_dim=4).embed(["x"])
    m = ListModel(dim=5)
    m.embed(["first call"])
    m.dim = 6  # an identity field changed: the length is learned anew
    assert m.embed(["x"]).shape == (1, 6)
    object.__setattr__(m, "dim", 7)  # changed behind pydantic's back: the model now contradicts itself
    with pytest.raises(BadVectorsError, match="earlier calls"):
        m.embed(["y"])


# -- 3. cache entries of the wrong length ----------------------------------------------------------------


def _truncate(path: Path, keep_bytes: int) -> None:
    with sqlite3.connect(path) as db:
        db.execute("UPDATE vectors SET data = substr(data, 1, ?) WHERE collection = 'embeddings'", (keep_bytes,))


@pytest.mark.parametrize("with_misses", [False, True])
def test_truncated_cache_entry_is_a_miss_and_rewritten(tmp_path: Path, with_misses: bool) -> None:
    path = tmp_path / "c.sqlite"
    first = ListModel(embeddings_cache=SQLiteKVStore(path))
    want = first.embed(["hello"])
    _truncate(path, 32 * 4)
    fresh = ListModel(embeddings_cache=SQLiteKVStore(path))  # a new process: knows no length yet
    texts = ["hello", "new text"] if with_misses else ["hello"]
    with pytest.warns(RuntimeWarning, match="wrong-length cache entries"):
        out = fresh.embed(texts)
    assert out.shape == (len(texts), 64)
    np.testing.assert_array_equal(out[0], want[0])
    with sqlite3.connect(path) as db:  # rewritten at full length
        assert {len(b) for (b,) in db.execute("SELECT data FROM vectors WHERE collection = 'embeddings'")} == {64 * 4}


def test_wrong_recorded_length_is_corrected_by_the_model(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    ListModel(embeddings_cache=SQLiteKVStore(path)).embed(["a", "b"])
    _truncate(path, 32 * 4)
    with sqlite3.connect(path) as db:  # a damaged record agreeing with the damaged entries
        db.execute("UPDATE vectors SET data = ? WHERE collection = 'embedding_dims'", (np.float32(32).tobytes(),))
    fresh = ListModel(embeddings_cache=SQLiteKVStore(path))
    with pytest.warns(RuntimeWarning, match="32-dim vectors but ListModel returns 64-dim"):
        out = fresh.embed(["a", "b", "c"])  # "c" is a miss: the model's answer shows the entries are wrong
    np.testing.assert_array_equal(out, ListModel().embed(["a", "b", "c"]))


@pytest.mark.parametrize("n", [1, 3])
def test_every_entry_of_a_wrong_length_with_no_recorded_length_is_never_served(tmp_path: Path, n: int) -> None:
    """Every item a hit, all of one wrong length, the length record gone: the most common length is only a
    guess, so one item is computed to check it (the entries used to be served as 32-dim vectors)."""
    path = tmp_path / "c.sqlite"
    texts = ["x" * (i + 1) for i in range(n)]  # distinct vectors
    ListModel(embeddings_cache=SQLiteKVStore(path)).embed(texts)
    _truncate(path, 32 * 4)
    with sqlite3.connect(path) as db:  # the record of the model's length is gone (evicted, expired, deleted)
        db.execute("DELETE FROM vectors WHERE collection = 'embedding_dims'")
    fresh = ListModel(embeddings_cache=SQLiteKVStore(path))  # a new process: knows no length yet
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out = fresh.embed(texts)
    np.testing.assert_array_equal(out, ListModel().embed(texts))
    with sqlite3.connect(path) as db:  # rewritten at full length
        assert {len(b) for (b,) in db.execute("SELECT data FROM vectors WHERE collection = 'embeddings'")} == {64 * 4}


# -- 4. outputs ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("store", [SimpleKVStore, "sqlite"])
def test_fully_cached_result_is_writeable(tmp_path: Path, store: Any) -> None:
    cache = SQLiteKVStore(tmp_path / "c.sqlite") if store == "sqlite" else store()
    m = FakeEmbedding(embeddings_cache=cache)
    m.embed(["a", "b"])
    out = m.embed(["a", "b"])
    assert len(m.calls) == 1  # the second call was served from the cache
    out *= 2  # in-place maths on a result
    assert out.flags.writeable
    again = m.embed(["a", "b"])
    np.testing.assert_allclose(again * 2, out)  # the cache's copy was not touched


def test_empty_call_has_the_known_dimension() -> None:
    assert FakeEmbedding(embed_dim=12).embed([]).shape == (0, 12)
    m = ListModel(dim=5)
    assert m.embed([]).shape == (0, 0)  # not known yet
    m.embed(["x"])
    assert m.embed([]).shape == (0, 5)


# -- 6. a cache that fails ----------------------------------------------------------------------------------


class FailingStore(SimpleKVStore):
    """A store whose writes (or reads) fail as a full disk or a corrupt file would."""

    def __init__(self, fail_reads: bool = False) -> None:
        super().__init__()
        self.fail_reads = fail_reads

    def put_vectors(self, keys: Any, vectors: Any, collection: str) -> None:
        raise OSError(28, "No space left on device")

    def get_vector_blobs(self, keys: Any, collection: str) -> list[Any]:
        if self.fail_reads:
            raise sqlite3.DatabaseError("database disk image is malformed")
        return super().get_vector_blobs(keys, collection)


@pytest.mark.parametrize("fail_reads", [False, True])
def test_failing_cache_never_fails_the_call(fail_reads: bool) -> None:
    m = FakeEmbedding(embeddings_cache=FailingStore(fail_reads), embed_batch_size=2)
    texts = [f"t{i}" for i in range(5)]
    with pytest.warns(RuntimeWarning, match="could not be") as record:
        out = m.embed(texts)
    np.testing.assert_array_equal(out, np.stack([m.vector_for(t) for t in texts]))
    assert any("Fix:" in str(w.message) for w in record)
    with warnings.catch_warnings():  # warned once per store and operation, not per batch or call
        warnings.simplefilter("error")
        np.testing.assert_array_equal(asyncio.run(m.aembed(texts)), out)


def test_read_only_sqlite_serves_what_it_holds(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    m = FakeEmbedding(embeddings_cache=SQLiteKVStore(path))
    m.embed(["a"])
    m.embeddings_cache.close()
    ro = SQLiteKVStore(path)
    ro.read_only = True  # as when the file cannot be opened for writing (tested for real in tests/adversarial)
    m2 = FakeEmbedding(embeddings_cache=ro)
    with pytest.warns(RuntimeWarning, match="read-only"):
        out = m2.embed(["a", "b"])
    assert [t for _, items in m2.calls for t in items] == ["b"]  # "a" came from the read-only cache
    np.testing.assert_array_equal(out[1], m2.vector_for("b"))


# -- 9. LlamaIndex's documented async pattern ---------------------------------------------------------------


class LlamaStyle(BaseEmbedding):
    """A custom model written as LlamaIndex's docs show: async hooks that call the sync ones."""

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._blocking(query)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._get_query_embedding(query)

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._blocking(text)

    async def _aget_text_embedding(self, text: str) -> list[float]:
        return self._get_text_embedding(text)

    def _blocking(self, text: str) -> list[float]:
        # Waits for a task on the event loop that runs only after this started: on the loop, it never would.
        HOOK_STARTED.set()
        if not LOOP_TICKED.wait(timeout=20):
            raise AssertionError("the event loop was blocked while the model ran")
        return [float(len(text)), 1.0]


HOOK_STARTED = threading.Event()
LOOP_TICKED = threading.Event()


@pytest.mark.parametrize("call", ["query", "text", "batch"])
async def test_sync_bodied_async_hooks_do_not_block_the_loop(call: str) -> None:
    HOOK_STARTED.clear()
    LOOP_TICKED.clear()
    m = LlamaStyle()

    async def tick() -> None:
        while not HOOK_STARTED.is_set():
            await asyncio.sleep(0.005)
        LOOP_TICKED.set()

    coro = {
        "query": lambda: m.aget_query_embedding("q"),
        "text": lambda: m.aget_text_embedding("tt"),
        "batch": lambda: m.aget_text_embedding_batch(["a", "bb"]),
    }[call]()
    ticker = asyncio.ensure_future(tick())
    assert await asyncio.wait_for(coro, 60)
    await ticker


# -- 10/11. bad input ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["\ud800", "ok \udfff end", "é\ud83d"])
def test_lone_surrogate_names_the_item(text: str) -> None:
    m = FakeEmbedding()
    with pytest.raises(InvalidInputError, match=r"texts\[1\] contains a lone surrogate") as err:
        m.get_text_embedding_batch(["fine", text])
    assert err.value.index == 1 and isinstance(err.value, ValueError)
    assert m.calls == []


@pytest.mark.parametrize("call", ["batch", "embed", "agg"])
def test_a_str_where_a_list_belongs_is_a_type_error(call: str) -> None:
    m = FakeEmbedding()
    with pytest.raises(TypeError, match="not a single str"):
        if call == "batch":
            m.get_text_embedding_batch("hello")  # type: ignore[arg-type]
        elif call == "embed":
            m.embed("hello")
        else:
            m.get_agg_embedding_from_queries("hello")  # type: ignore[arg-type]
    assert m.calls == []
