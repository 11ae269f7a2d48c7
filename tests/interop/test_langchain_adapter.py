"""model.as_langchain(): embedstack as a LangChain Embeddings; cache, batching, events kept."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import InMemoryVectorStore

from embedstack import BaseEmbedding, FakeEmbedding, LangchainEmbedding, Role, resolve_embed_model
from embedstack.interop.langchain import EmbedstackEmbeddings, to_langchain
from embedstack.kvstore import SimpleKVStore, SQLiteKVStore

from .conftest import DOCS, QUERIES


def test_is_a_langchain_embeddings_backed_by_the_model(fake: FakeEmbedding) -> None:
    lc = fake.as_langchain()
    assert isinstance(lc, Embeddings)
    assert isinstance(lc, EmbedstackEmbeddings)
    assert lc.model is fake
    assert "FakeEmbedding" in repr(lc)
    docs = lc.embed_documents(["a", "b"])
    np.testing.assert_allclose(docs, [fake.vector_for("a", Role.TEXT), fake.vector_for("b", Role.TEXT)], rtol=1e-6)
    # a query is embedded as a query (FakeEmbedding's vectors depend on the role)
    np.testing.assert_allclose(lc.embed_query("a"), fake.vector_for("a", Role.QUERY), rtol=1e-6)
    assert fake.calls == [("text", ["a", "b"]), ("query", ["a"])]


def test_embed_documents_is_one_pipeline_call_batched_by_the_model(fake: FakeEmbedding) -> None:
    texts = [f"doc {i}" for i in range(10)] + ["doc 0"]
    out = to_langchain(fake).embed_documents(texts)
    assert [len(items) for _, items in fake.calls] == [
        4,
        4,
        2,
    ]  # embed_batch_size=4, duplicate embedded once
    assert out[0] == out[10]
    assert all(isinstance(x, float) for x in out[0])


@pytest.mark.parametrize("store_kind", ["simple", "sqlite"])
def test_cache_still_applies_through_the_adapter(fake: FakeEmbedding, tmp_path: Any, store_kind: str) -> None:
    fake.embeddings_cache = SimpleKVStore() if store_kind == "simple" else SQLiteKVStore(tmp_path / "c.sqlite")
    lc = fake.as_langchain()
    first = lc.embed_documents(["x", "y", "z"])
    q = lc.embed_query("x")
    n = len(fake.calls)
    assert lc.embed_documents(["z", "x"]) == [first[2], first[0]]
    assert lc.embed_query("x") == q
    assert len(fake.calls) == n


async def test_async_methods_match_sync_and_hit_the_same_cache(fake: FakeEmbedding) -> None:
    fake.embeddings_cache = SimpleKVStore()
    fake.num_workers = 2
    lc = fake.as_langchain()
    texts = [f"t{i}" for i in range(9)]
    got = await lc.aembed_documents(texts)
    assert sorted(len(items) for _, items in fake.calls) == [1, 4, 4]
    q = await lc.aembed_query("t0")
    n = len(fake.calls)
    assert lc.embed_documents(texts) == got
    assert lc.embed_query("t0") == q
    assert await lc.aembed_documents(texts[::-1]) == got[::-1]
    assert len(fake.calls) == n
    np.testing.assert_allclose(q, fake.vector_for("t0", Role.QUERY), rtol=1e-6)


def test_events_fire_through_the_adapter(fake: FakeEmbedding, event_recorder: Any) -> None:
    lc = fake.as_langchain()
    lc.embed_documents(["a", "b", "c", "d", "e"])
    lc.embed_query("q")
    ends = event_recorder.of("EmbeddingEndEvent")
    assert [(e.role, e.chunks) for e in ends] == [
        ("text", ["a", "b", "c", "d"]),
        ("text", ["e"]),
        ("query", ["q"]),
    ]
    assert event_recorder.of("EmbeddingStartEvent")[0].model_dict["class_name"] == "FakeEmbedding"


def test_in_memory_vector_store_uses_the_pipeline(fake: FakeEmbedding) -> None:
    store = InMemoryVectorStore(embedding=fake.as_langchain())
    ids = store.add_texts(DOCS)
    stored = store.get_by_ids(ids)
    assert [d.page_content for d in stored] == DOCS
    # the store holds exactly the model's text vectors
    for doc in DOCS:
        hit = store.similarity_search_by_vector(fake.vector_for(doc, Role.TEXT).tolist(), k=1)
        assert hit[0].page_content == doc
    store.similarity_search("anything", k=2)
    assert fake.calls[-1] == ("query", ["anything"])
    assert [role for role, _ in fake.calls] == [
        "text",
        "query",
    ]  # 4 docs: one batch of embed_batch_size=4


def test_round_trip_back_into_embedstack(fake: FakeEmbedding) -> None:
    assert resolve_embed_model(fake.as_langchain()) is fake  # our own adapter is unwrapped
    wrapped = LangchainEmbedding(fake.as_langchain())  # wrapping it explicitly still works
    assert isinstance(wrapped, LangchainEmbedding)
    assert wrapped.langchain_class == "embedstack.interop.langchain.EmbedstackEmbeddings"
    np.testing.assert_allclose(wrapped.get_text_embedding("a"), fake.vector_for("a", Role.TEXT), rtol=1e-6)
    np.testing.assert_allclose(wrapped.get_query_embedding("a"), fake.vector_for("a", Role.QUERY), rtol=1e-6)


def test_rewrapped_models_keep_distinct_cache_keys() -> None:
    """LangchainEmbedding(a.as_langchain()) never shares cache entries with another model."""
    a = LangchainEmbedding(FakeEmbedding(embed_dim=8).as_langchain(), embeddings_cache=SimpleKVStore())
    b = LangchainEmbedding(FakeEmbedding(embed_dim=16).as_langchain(), embeddings_cache=a.embeddings_cache)
    assert a.pipeline.key_factory(Role.TEXT)("x") != b.pipeline.key_factory(Role.TEXT)("x")
    assert len(a.get_text_embedding("x")) == 8
    assert len(b.get_text_embedding("x")) == 16


def test_rejects_non_embedstack_models() -> None:
    with pytest.raises(TypeError, match="wraps an embedstack BaseEmbedding, not str"):
        to_langchain("local")  # type: ignore[arg-type]


# -- the real local default model ------------------------------------------------------------


def test_in_memory_vector_store_retrieves_the_right_document(local_model: BaseEmbedding) -> None:
    store = InMemoryVectorStore.from_texts(DOCS, embedding=local_model.as_langchain())
    for query, want in QUERIES.items():
        assert store.similarity_search(query, k=1)[0].page_content == DOCS[want], query


async def test_in_memory_vector_store_async_retrieves_the_right_document(
    local_model: BaseEmbedding,
) -> None:
    store = InMemoryVectorStore(embedding=local_model.as_langchain())
    await store.aadd_texts(DOCS)
    for query, want in QUERIES.items():
        hits = await store.asimilarity_search(query, k=1)
        assert hits[0].page_content == DOCS[want], query


def test_real_model_cache_and_events_through_both_adapters(
    local_model: BaseEmbedding, tmp_path: Any, event_recorder: Any
) -> None:
    """A warm SQLite cache serves LangChain and llama-index alike: nothing is embedded twice."""
    model = local_model
    saved = model.embeddings_cache
    model.embeddings_cache = SQLiteKVStore(tmp_path / "real.sqlite")
    try:
        lc, li = model.as_langchain(), model.as_llama_index()
        docs = lc.embed_documents(DOCS)
        query = lc.embed_query("Who designed the Python language?")
        ends = len(event_recorder.of("EmbeddingEndEvent"))
        embedded = [c for e in event_recorder.of("EmbeddingEndEvent") for c in e.chunks]
        assert sorted(embedded) == sorted([*DOCS, "Who designed the Python language?"])
        assert li.get_text_embedding_batch(DOCS) == docs
        assert li.get_query_embedding("Who designed the Python language?") == query
        assert lc.embed_documents(DOCS[::-1]) == docs[::-1]
        assert len(event_recorder.of("EmbeddingEndEvent")) == ends  # every later call was a cache hit
        assert int(np.argmax(np.asarray(docs) @ np.asarray(query))) == 2
    finally:
        model.embeddings_cache = saved
