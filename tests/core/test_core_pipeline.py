"""The one pipeline: order, batching, cache, dedupe, events, async concurrency, bad input."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from embedstack import BaseEmbedding, FakeEmbedding
from embedstack.callbacks import BaseCallbackHandler, CallbackManager, CBEventType, EventPayload
from embedstack.kvstore import SimpleKVStore, SQLiteKVStore
from embedstack.types import Role


def expected(m: FakeEmbedding, items: list[str], role: str = "text") -> list[list[float]]:
    return [m.vector_for(t, role).tolist() for t in items]


class CountingStore(SimpleKVStore):
    """A real in-memory store that counts batched reads and writes."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[int] = []
        self.writes: list[int] = []

    def get_vector_blobs(self, keys: Any, collection: str) -> list[Any]:
        self.reads.append(len(keys))
        return super().get_vector_blobs(keys, collection)

    def put_vectors(self, keys: Any, vectors: Any, collection: str) -> None:
        self.writes.append(len(keys))
        super().put_vectors(keys, vectors, collection)


def test_empty_input() -> None:
    m = FakeEmbedding()
    assert m.get_text_embedding_batch([]) == []
    assert m.embed([]).shape[0] == 0
    assert m.calls == []


@pytest.mark.parametrize("bad", [None, 3, b"bytes", ["list"]])
def test_non_str_text_names_index(bad: Any) -> None:
    m = FakeEmbedding()
    with pytest.raises(TypeError, match=rf"texts\[2\] is {type(bad).__name__}, expected str"):
        m.get_text_embedding_batch(["a", "b", bad])
    with pytest.raises(TypeError, match=r"query\[0\] is"):
        m.get_query_embedding(bad)
    assert m.calls == []


def test_empty_string_is_embedded() -> None:
    m = FakeEmbedding()
    assert m.get_text_embedding("") == expected(m, [""])[0]


class RaggedModel(BaseEmbedding):
    def _get_query_embedding(self, query: str) -> list[float]:
        return [1.0]

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return [1.0]

    def _get_text_embedding(self, text: str) -> list[float]:
        return [1.0] * (2 if text == "odd" else 3)


def test_inconsistent_vector_lengths_raise() -> None:
    m = RaggedModel(embed_batch_size=2)
    with pytest.raises(ValueError, match="inconsistent length"):
        m.get_text_embedding_batch(["a", "odd"])  # within one batch
    with pytest.raises(ValueError, match=r"2-dim vectors for texts\[2\].* 3 dimensions"):
        m.get_text_embedding_batch(["a", "b", "odd"])  # across batches
    with pytest.raises(ValueError, match=r"2-dim vectors for texts\[0\].*earlier calls"):
        m.get_text_embedding_batch(["odd"])  # across calls


def test_batches_and_dedupe() -> None:
    m = FakeEmbedding(embed_batch_size=3)
    texts = ["a", "b", "a", "c", "d", "b", "e"]
    out = m.get_text_embedding_batch(texts)
    assert out == expected(m, texts)
    assert [len(items) for _, items in m.calls] == [3, 2]
    assert m.embedded == ["a", "b", "c", "d", "e"]


def test_roles_use_their_hooks() -> None:
    m = FakeEmbedding()
    q = m.get_query_embedding("x")
    t = m.get_text_embedding("x")
    assert q == expected(m, ["x"], "query")[0]
    assert t == expected(m, ["x"], "text")[0]
    assert q != t
    assert m.embed(["x"], role="query").tolist() == [q]


def test_numpy_fast_path() -> None:
    m = FakeEmbedding(embed_dim=8)
    arr = m.embed(["a", "b", "c"])
    assert arr.dtype == np.float32 and arr.shape == (3, 8)
    assert arr.tolist() == m.get_text_embedding_batch(["a", "b", "c"])


text_lists = st.lists(st.text(max_size=6), max_size=30)
store_kinds = st.sampled_from(["none", "simple", "sqlite"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=text_lists, batch=st.integers(1, 7), store=store_kinds, prefill=st.lists(st.text(max_size=6), max_size=10))
def test_property_same_vectors_any_batch_any_cache(
    tmp_path_factory: Any, texts: list[str], batch: int, store: str, prefill: list[str]
) -> None:
    cache: Any = None
    if store == "simple":
        cache = SimpleKVStore()
    elif store == "sqlite":
        cache = SQLiteKVStore(tmp_path_factory.mktemp("c") / "c.sqlite")
    m = FakeEmbedding(embed_batch_size=batch, embeddings_cache=cache, embed_dim=4)
    if cache is not None:
        m.get_text_embedding_batch(prefill)  # mixed hits and misses
    want = expected(m, texts)
    assert m.get_text_embedding_batch(texts) == want
    assert asyncio.run(m.aget_text_embedding_batch(texts)) == want
    if cache is not None:  # everything is now cached: nothing more reaches the model
        n = len(m.calls)
        assert m.get_text_embedding_batch(texts) == want
        assert len(m.calls) == n


def test_cache_every_entry_point() -> None:
    store = CountingStore()
    m = FakeEmbedding(embeddings_cache=store)
    m.get_query_embedding("q")
    asyncio.run(m.aget_query_embedding("q"))
    m.get_text_embedding("t")
    asyncio.run(m.aget_text_embedding("t"))
    m.get_text_embedding_batch(["t", "u"])
    asyncio.run(m.aget_text_embedding_batch(["t", "u", "v"]))
    m.get_agg_embedding_from_queries(["q"])
    assert m.embedded == ["q", "t", "u", "v"]


def test_one_batched_read_and_one_write_per_batch() -> None:
    store = CountingStore()
    m = FakeEmbedding(embeddings_cache=store, embed_batch_size=4)
    m.get_text_embedding_batch([f"t{i}" for i in range(10)])
    assert store.reads == [10]
    assert store.writes == [4, 4, 2]
    m.get_text_embedding_batch([f"t{i}" for i in range(12)])
    assert store.reads == [10, 12]
    assert store.writes == [4, 4, 2, 2]
    assert m.embedded[-2:] == ["t10", "t11"]


def test_cache_keys_separate_models_and_roles() -> None:
    store = SimpleKVStore()
    a = FakeEmbedding(embed_dim=4, embeddings_cache=store)
    b = FakeEmbedding(embed_dim=4, model_name="other", embeddings_cache=store)
    a.get_text_embedding("x")
    b.get_text_embedding("x")
    a.get_query_embedding("x")
    assert len(a.calls) == 2 and len(b.calls) == 1
    assert len(store.get_all("embeddings")) == 3
    # runtime-only fields do not change the key
    c = FakeEmbedding(embed_dim=4, embeddings_cache=store, embed_batch_size=99, num_workers=3, delay_s=0.0)
    c.get_text_embedding("x")
    assert c.calls == []


def test_subclasses_with_inherited_class_name_do_not_share_keys() -> None:
    class A(FakeEmbedding):
        pass

    class B(FakeEmbedding):
        def _embed_batch(self, items: list[Any], role: Role) -> Any:
            return -super()._embed_batch(items, role)

    store = SimpleKVStore()
    a, b = A(embeddings_cache=store), B(embeddings_cache=store)
    assert a.get_text_embedding("x") != b.get_text_embedding("x")


def test_model_copy_does_not_share_memoised_keys() -> None:
    a = FakeEmbedding(embed_dim=4)
    k = a.pipeline.key_factory(Role.TEXT)("x")
    for b in (
        a.model_copy(update={"embed_dim": 8}),
        __import__("copy").deepcopy(a.model_copy(update={"model_name": "z"})),
    ):
        assert b.pipeline.key_factory(Role.TEXT)("x") != k


def test_changing_a_field_changes_the_key() -> None:
    store = SimpleKVStore()
    m = FakeEmbedding(embed_dim=4, embeddings_cache=store)
    m.get_text_embedding("x")
    m.model_name = "renamed"
    m.get_text_embedding("x")
    assert len(m.calls) == 2


def test_instruction_is_part_of_the_key() -> None:
    class Instructed(FakeEmbedding):
        instruction: str = ""

        def _instruction(self, role: Role) -> str | None:
            return self.instruction if role is Role.QUERY else None

    store = SimpleKVStore()
    plain = Instructed(embeddings_cache=store)
    plain.get_query_embedding("x")
    # identical fields except the instruction → different key, so a second model call
    other = Instructed(embeddings_cache=store, instruction="Represent this: ")
    other.get_query_embedding("x")
    assert len(other.calls) == 1
    k1 = plain.pipeline.key_factory(Role.QUERY)("x")
    k2 = other.pipeline.key_factory(Role.QUERY)("x")
    k3 = plain.pipeline.key_factory(Role.TEXT)("x")
    assert len({k1, k2, k3}) == 3


def test_unreadable_entry_is_a_miss_and_rewritten() -> None:
    store = SimpleKVStore()
    m = FakeEmbedding(embed_dim=4, embeddings_cache=store)
    m.get_text_embedding_batch(["a", "b"])
    key = m.pipeline.key_factory(Role.TEXT)("a")
    store.put(key, {"dim": 4, "f32": "not base64!!"}, collection="embeddings")
    with pytest.warns(RuntimeWarning, match="1 unreadable or wrong-length cache entries"):
        out = m.get_text_embedding_batch(["a", "b"])
    assert out == expected(m, ["a", "b"])
    assert m.calls[-1] == ("text", ["a"])
    m.get_text_embedding("a")  # rewritten: now a hit
    assert len(m.calls) == 2


def test_unreadable_sqlite_blob_is_rewritten(tmp_path: Any) -> None:
    store = SQLiteKVStore(tmp_path / "c.sqlite")
    m = FakeEmbedding(embed_dim=4, embeddings_cache=store)
    m.get_text_embedding("a")
    store._conn().execute("UPDATE vectors SET data = x'0102'")
    store._forget("embeddings")  # drop this process's memory layer so the read goes to disk
    with pytest.warns(RuntimeWarning, match="unreadable"):
        assert m.get_text_embedding("a") == expected(m, ["a"])[0]
    m.get_text_embedding("a")
    assert len(m.calls) == 2


class FailingModel(FakeEmbedding):
    fail_on: str = "boom"

    def _embed_batch(self, items: list[Any], role: Role) -> Any:
        if self.fail_on in items:
            raise RuntimeError(f"model failed on {self.fail_on}")
        return super()._embed_batch(items, role)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_failure_keeps_only_computed_vectors(mode: str, tmp_path: Any) -> None:
    store = SQLiteKVStore(tmp_path / "c.sqlite")
    m = FailingModel(embeddings_cache=store, embed_batch_size=2, num_workers=2)
    texts = ["a", "b", "c", "boom", "e", "f"]
    with pytest.raises(RuntimeError, match="failed on boom"):
        if mode == "sync":
            m.get_text_embedding_batch(texts)
        else:
            asyncio.run(m.aget_text_embedding_batch(texts))
    cached = {
        k for k in texts if store.get_vectors([m.pipeline.key_factory(Role.TEXT)(k)], "embeddings")[0] is not None
    }
    assert "c" not in cached and "boom" not in cached
    assert {"a", "b"} <= cached
    computed = {t for role, items in m.calls for t in items}
    assert cached <= computed
    again = FailingModel(embeddings_cache=store, embed_batch_size=2)  # same identity, fresh instance
    assert again.get_text_embedding_batch(["a", "b"]) == expected(again, ["a", "b"])
    assert again.calls == []  # served from what the failed run cached


class Recorder(BaseCallbackHandler):
    def __init__(self) -> None:
        super().__init__([], [])
        self.starts: list[Any] = []
        self.ends: list[Any] = []

    def on_event_start(
        self, event_type: Any, payload: Any = None, event_id: str = "", parent_id: str = "", **kw: Any
    ) -> str:
        self.starts.append((event_type, payload))
        return event_id

    def on_event_end(self, event_type: Any, payload: Any = None, event_id: str = "", **kw: Any) -> None:
        self.ends.append((event_type, payload))

    def start_trace(self, trace_id: str | None = None) -> None:
        pass

    def end_trace(self, trace_id: str | None = None, trace_map: Any = None) -> None:
        pass


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_events_per_batch(mode: str, event_recorder: Any) -> None:
    rec = Recorder()
    m = FakeEmbedding(embed_batch_size=4, embed_dim=4, delay_s=0.01, callback_manager=CallbackManager([rec]))
    texts = [f"t{i}" for i in range(10)]
    if mode == "sync":
        out = m.get_text_embedding_batch(texts)
    else:
        out = asyncio.run(m.aget_text_embedding_batch(texts))
    starts = event_recorder.of("EmbeddingStartEvent")
    ends = event_recorder.of("EmbeddingEndEvent")
    assert len(starts) == len(ends) == 3
    assert starts[0].model_dict["class_name"] == "FakeEmbedding"
    assert sorted(c for e in ends for c in e.chunks) == sorted(texts)
    by_chunk = {c: v for e in ends for c, v in zip(e.chunks, e.embeddings)}
    assert [by_chunk[t] for t in texts] == out
    assert all(e.role == "text" and 0.01 <= e.duration_s < 60 for e in ends)  # each batch sleeps 10 ms
    assert len(rec.starts) == len(rec.ends) == 3
    assert all(t == CBEventType.EMBEDDING for t, _ in rec.ends)
    assert sum(len(p[EventPayload.CHUNKS]) for _, p in rec.ends) == 10
    assert all(len(p[EventPayload.CHUNKS]) == len(p[EventPayload.EMBEDDINGS]) for _, p in rec.ends)


def test_failure_emits_exception_callback() -> None:
    rec = Recorder()
    m = FailingModel(callback_manager=CallbackManager([rec]))
    with pytest.raises(RuntimeError):
        m.get_text_embedding("boom")
    assert [t for t, _ in rec.starts] == [CBEventType.EMBEDDING, CBEventType.EXCEPTION]
    assert len(rec.ends) == 1


def test_no_serialisation_without_listeners(monkeypatch: pytest.MonkeyPatch) -> None:
    m = FakeEmbedding()
    calls = []
    orig = FakeEmbedding.to_dict

    def counting(self: Any, **kw: Any) -> Any:
        calls.append(kw)
        return orig(self, **kw)

    monkeypatch.setattr(FakeEmbedding, "to_dict", counting)
    m.get_text_embedding_batch([f"t{i}" for i in range(50)])
    m.get_query_embedding("q")
    assert calls == []


def test_descriptor_computed_once(event_recorder: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    m = FakeEmbedding(embed_batch_size=2)
    calls = []
    orig = FakeEmbedding.to_dict
    monkeypatch.setattr(FakeEmbedding, "to_dict", lambda self, **kw: (calls.append(1), orig(self, **kw))[1])
    m.get_text_embedding_batch([f"t{i}" for i in range(20)])
    m.get_text_embedding_batch([f"u{i}" for i in range(20)])
    assert len(calls) == 1
    assert len(event_recorder.of("EmbeddingStartEvent")) == 20


def test_spans_recorded(span_recorder: Any) -> None:
    m = FakeEmbedding()
    m.get_text_embedding("a")
    asyncio.run(m.aget_query_embedding("b"))
    names = [s.id_.split("-")[0] for s in span_recorder.completed_spans]
    assert "BaseEmbedding.get_text_embedding" in names
    assert "BaseEmbedding.aget_query_embedding" in names


class ConcurrencyProbe(BaseEmbedding):
    """Native async model that records how many batches run at once."""

    active: int = 0
    peak: int = 0

    def _get_query_embedding(self, query: str) -> list[float]:
        return [1.0]

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return [1.0]

    def _get_text_embedding(self, text: str) -> list[float]:
        return [float(len(text))]

    async def _aget_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        self.active += 1
        self.peak = max(self.peak, self.active)
        await asyncio.sleep(0.01)
        self.active -= 1
        return [[float(len(t))] for t in texts]


@pytest.mark.parametrize("workers,limit", [(None, 10), (1, 10), (3, 3), (4, 4)])
async def test_async_concurrency_bounded(workers: int | None, limit: int) -> None:
    m = ConcurrencyProbe(embed_batch_size=2, num_workers=workers)
    texts = ["x" * i for i in range(20)]
    out = await m.aget_text_embedding_batch(texts)
    assert out == [[float(i)] for i in range(20)]
    assert m.peak == limit


class SlowSyncModel(BaseEmbedding):
    """A sync-only model (as a local model is): its text hook blocks until the event loop has run."""

    def _get_query_embedding(self, query: str) -> list[float]:
        return [1.0]

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return await asyncio.to_thread(self._get_query_embedding, query)

    def _get_text_embedding(self, text: str) -> list[float]:
        started = LOOP_PROBE["started"]
        started.set()
        # On the loop this would wait forever: the ticker that sets "ticked" could never run.
        if not LOOP_PROBE["ticked"].wait(timeout=20):
            raise AssertionError("the event loop was blocked by a sync model")
        return [1.0]


LOOP_PROBE = {"started": threading.Event(), "ticked": threading.Event()}


async def test_sync_model_never_blocks_the_loop() -> None:
    m = SlowSyncModel(embed_batch_size=2)
    for event in LOOP_PROBE.values():
        event.clear()

    async def ticker() -> None:
        while not LOOP_PROBE["started"].is_set():
            await asyncio.sleep(0.001)
        LOOP_PROBE["ticked"].set()

    t = asyncio.create_task(ticker())
    assert await m.aget_text_embedding_batch(["a", "b", "c", "d"]) == [[1.0]] * 4
    assert await m.aget_text_embedding("e") == [1.0]
    await t


def test_sync_thread_pool_when_allowed() -> None:
    class Parallel(FakeEmbedding):
        parallel_sync_batches = True
        seen_threads: set[int] = set()

        def _embed_batch(self, items: list[Any], role: Role) -> Any:
            self.seen_threads.add(threading.get_ident())
            time.sleep(0.02)
            return super()._embed_batch(items, role)

    m = Parallel(embed_batch_size=1, num_workers=3)
    texts = [f"t{i}" for i in range(9)]
    assert m.get_text_embedding_batch(texts) == expected(m, texts)
    assert len(m.seen_threads) > 1
    seq = Parallel(embed_batch_size=1)
    seq.seen_threads = set()
    seq.get_text_embedding_batch(texts)
    assert len(seq.seen_threads) == 1


def test_progress_bar(capsys: pytest.CaptureFixture[str]) -> None:
    m = FakeEmbedding(embed_batch_size=5)
    m.get_text_embedding_batch([f"t{i}" for i in range(20)], show_progress=True)
    err = capsys.readouterr().err
    assert "Generating embeddings" in err and "20/20" in err
    m.get_text_embedding_batch(["z"])
    assert capsys.readouterr().err == ""
