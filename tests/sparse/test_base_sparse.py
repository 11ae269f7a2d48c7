"""BaseSparseEmbedding: LlamaIndex's sparse API over the one pipeline.

A custom model written against LlamaIndex's private hooks gives the same vectors through both
libraries; the public methods, aggregation, similarity and events behave as LlamaIndex's; behind
them the pipeline's cache, dedupe, batches, async and errors that name `texts[i]`.
"""

from __future__ import annotations

import asyncio
import hashlib
import pickle
import threading
from typing import Any

import pytest

from embedstack import BaseSparseEmbedding, resolve_embed_model, sparse_similarity
from embedstack.errors import BadVectorsError
from embedstack.kvstore import SimpleKVStore
from embedstack.registry import resolve_dense_model
from embedstack.sparse import mean_agg, sparse_dot

TEXTS = ["alpha beta", "gamma", "alpha beta", "delta epsilon zeta", "gamma", "eta"]


def _vector(text: str, weight: float) -> dict[int, float]:
    out: dict[int, float] = {}
    for word in text.split():
        index = int(hashlib.sha256(word.encode()).hexdigest(), 16) % 1000
        out[index] = out.get(index, 0.0) + weight * len(word)
    return out


class _Hooks:
    """LlamaIndex's private hooks, as a LlamaIndex user writes them (the same body in both libraries)."""

    def _get_query_embedding(self, query: str) -> dict[int, float]:
        return _vector(query, 0.5)

    async def _aget_query_embedding(self, query: str) -> dict[int, float]:
        return self._get_query_embedding(query)

    def _get_text_embedding(self, text: str) -> dict[int, float]:
        calls = getattr(self, "calls", None)
        if calls is not None:
            calls.append(text)
        if text == "bad":
            return {-3: 1.0}
        if text == "nan":
            return {1: float("nan")}
        return _vector(text, 0.25)

    async def _aget_text_embedding(self, text: str) -> dict[int, float]:
        return self._get_text_embedding(text)


class Ours(_Hooks, BaseSparseEmbedding):
    calls: list[str] = []


def test_a_llama_index_custom_sparse_model_gives_the_same_vectors_through_both_libraries() -> None:
    base_sparse = pytest.importorskip("llama_index.core.base.embeddings.base_sparse")

    class Theirs(_Hooks, base_sparse.BaseSparseEmbedding):  # type: ignore[misc,name-defined]
        pass

    ours, theirs = Ours(calls=[]), Theirs()
    assert ours.get_query_embedding("red fox") == theirs.get_query_embedding("red fox")
    assert ours.get_text_embedding("red fox") == theirs.get_text_embedding("red fox")
    assert ours.get_text_embedding_batch(TEXTS) == theirs.get_text_embedding_batch(TEXTS)
    assert asyncio.run(ours.aget_text_embedding_batch(TEXTS)) == asyncio.run(theirs.aget_text_embedding_batch(TEXTS))
    assert asyncio.run(ours.aget_query_embedding("q w")) == asyncio.run(theirs.aget_query_embedding("q w"))
    queries = ["alpha", "alpha beta", "gamma"]
    assert ours.get_agg_embedding_from_queries(queries) == pytest.approx(theirs.get_agg_embedding_from_queries(queries))
    a, b = ours.get_text_embedding("alpha beta"), ours.get_text_embedding("beta gamma")
    assert ours.similarity(a, b) == pytest.approx(theirs.similarity(a, b))
    assert sparse_similarity(a, b) == pytest.approx(base_sparse.sparse_similarity(a, b))
    assert mean_agg([a, b]) == pytest.approx(base_sparse.mean_agg([a, b]))
    assert mean_agg([]) == {} and sparse_similarity({}, a) == 0.0
    assert ours.model_dump()["class_name"] == theirs.model_dump()["class_name"] == "BaseSparseEmbedding"


def test_the_pipeline_caches_dedupes_and_batches_sparse_rows() -> None:
    model = Ours(calls=[], embeddings_cache=SimpleKVStore(), embed_batch_size=2)
    first = model.get_text_embedding_batch(TEXTS)
    assert first == [{k: float(v) for k, v in sorted(_vector(t, 0.25).items())} for t in TEXTS]
    assert sorted(model.calls) == sorted(set(TEXTS))  # each unique text once
    model.calls.clear()
    assert model.get_text_embedding_batch(TEXTS) == first and model.calls == []  # from the cache's bytes
    vectors = model.embed(["alpha beta"])
    assert vectors[0].indices.dtype.name == "int32" and vectors[0].values.dtype.name == "float32"
    # queries and texts are keyed apart
    assert model.get_query_embedding("alpha beta") != first[0]


def test_async_never_blocks_the_loop_and_keeps_order() -> None:
    model = Ours(calls=[], embed_batch_size=1, num_workers=4)
    main = threading.get_ident()
    seen: list[int] = []

    class Spy(Ours):
        def _get_text_embedding(self, text: str) -> dict[int, float]:
            seen.append(threading.get_ident())
            return super()._get_text_embedding(text)

    out = asyncio.run(Spy(calls=[], embed_batch_size=1).aget_text_embedding_batch(TEXTS))
    assert out == model.get_text_embedding_batch(TEXTS)
    assert seen and main not in seen  # the sync-bodied async hook ran in worker threads


@pytest.mark.parametrize("bad", ["bad", "nan"])
def test_bad_rows_are_refused_by_name_and_nothing_is_cached(bad: str) -> None:
    cache = SimpleKVStore()
    model = Ours(calls=[], embeddings_cache=cache)
    with pytest.raises(BadVectorsError, match=r"texts\[2\].*nothing was cached") as info:
        model.get_text_embedding_batch(["alpha", "beta", bad])
    assert info.value.positions == [2]
    assert not model.pipeline.cached(["alpha", "beta", bad]).found.any()


def test_bad_input_is_refused_before_any_work() -> None:
    model = Ours(calls=[])
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        model.get_text_embedding_batch(["ok", 3])  # type: ignore[list-item]
    assert model.calls == []


def test_sparse_events_and_legacy_callbacks(event_recorder: Any) -> None:
    model = Ours(calls=[], embed_batch_size=2)
    model.get_text_embedding_batch(["a b", "c", "d"])
    starts, ends = event_recorder.of("SparseEmbeddingStartEvent"), event_recorder.of("SparseEmbeddingEndEvent")
    assert len(starts) == len(ends) == 2
    assert ends[0].chunks == ["a b", "c"] and ends[0].embeddings == model.get_text_embedding_batch(["a b", "c"])
    assert starts[0].model_dict == model.to_payload()
    assert not event_recorder.of("EmbeddingEndEvent")


def test_sparse_fns_for_llama_index_hybrid_stores() -> None:
    doc_fn, query_fn = Ours(calls=[]).sparse_fns()
    indices, values = doc_fn(["alpha beta", "gamma"])
    want = sorted(_vector("alpha beta", 0.25).items())
    assert indices[0] == [i for i, _ in want] and values[0] == pytest.approx([v for _, v in want])
    q_idx, q_val = query_fn(["gamma"])
    assert dict(zip(q_idx[0], q_val[0])) == pytest.approx(_vector("gamma", 0.5))


def test_a_changed_field_makes_a_new_pipeline_and_pickling_keeps_the_fields() -> None:
    model = Ours(calls=[], model_name="one")
    kept = model.pipeline
    model.model_name = "two"
    with pytest.raises(RuntimeError, match="changed since this pipeline was made"):
        kept.embed(["a"])
    assert model.pipeline is not kept
    copy = pickle.loads(pickle.dumps(model))
    assert copy.model_name == "two" and copy.get_text_embedding("a b") == model.get_text_embedding("a b")


def test_sparse_dot() -> None:
    assert sparse_dot({1: 2.0, 3: 1.0}, {3: 4.0, 5: 1.0}) == 4.0


def test_dense_only_places_refuse_a_sparse_model_by_name() -> None:
    model = Ours(calls=[])
    assert resolve_embed_model(model) is model
    with pytest.raises(TypeError, match="sparse model"):
        resolve_dense_model(model)


def test_bulk_embed_and_streams_return_sparse_vectors() -> None:
    model = Ours(calls=[], embed_batch_size=2)
    whole = [r.to_dict() for r in model.embed(TEXTS)]
    chunks = list(model.embed_iter(iter(TEXTS), chunk_size=4))
    assert [len(c) for c in chunks] == [4, 2]
    assert [r.to_dict() for c in chunks for r in c] == whole

    async def collect() -> list[dict[int, float]]:
        return [r.to_dict() for c in [c async for c in model.aembed_iter(TEXTS, chunk_size=5)] for r in c]

    assert asyncio.run(collect()) == whole
    assert [r.to_dict() for r in asyncio.run(model.aembed(TEXTS, "query"))] == [
        model.get_query_embedding(t) for t in TEXTS
    ]
