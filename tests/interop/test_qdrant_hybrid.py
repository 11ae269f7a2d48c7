"""A sparse model's `sparse_fns()` in a real LlamaIndex hybrid store: QdrantVectorStore on an in-memory
Qdrant, with embedstack's dense model beside it; sparse scores are embedstack's BM25 dot products."""

from __future__ import annotations

import pytest

from embedstack import FakeEmbedding
from embedstack.providers.bm25 import BM25Embedding
from embedstack.sparse import sparse_dot

pytestmark = pytest.mark.slow  # imports LlamaIndex's vector stores and an in-memory Qdrant

pytest.importorskip("Stemmer")
qdrant_client = pytest.importorskip("qdrant_client")
qdrant_store = pytest.importorskip("llama_index.vector_stores.qdrant")

CORPUS = [
    "a red apple pie with cinnamon",
    "green pears and a basket of apples",
    "the quick brown fox jumps over the lazy dog",
    "apple trees in the orchard bloom in spring",
    "a recipe for pear and apple crumble",
]


def test_bm25_sparse_fns_in_a_llama_index_qdrant_hybrid_store() -> None:
    from llama_index.core import StorageContext, VectorStoreIndex
    from llama_index.core.schema import TextNode

    bm25 = BM25Embedding().fit(CORPUS)
    doc_fn, query_fn = bm25.sparse_fns()
    store = qdrant_store.QdrantVectorStore(
        client=qdrant_client.QdrantClient(":memory:"),
        collection_name="docs",
        enable_hybrid=True,
        sparse_doc_fn=doc_fn,
        sparse_query_fn=query_fn,
    )
    nodes = [TextNode(text=t, id_=f"00000000-0000-0000-0000-00000000000{i}") for i, t in enumerate(CORPUS)]
    index = VectorStoreIndex(
        nodes,
        storage_context=StorageContext.from_defaults(vector_store=store),
        embed_model=FakeEmbedding(embed_dim=8).as_llama_index(),
    )
    query = "apple pie"
    q = bm25.get_query_embedding(query)
    want = sorted(((sparse_dot(q, d), t) for d, t in zip(bm25.get_text_embedding_batch(CORPUS), CORPUS)), reverse=True)
    sparse_hits = index.as_retriever(vector_store_query_mode="sparse", sparse_top_k=3).retrieve(query)
    ours = {t: s for s, t in want}
    assert [h.score for h in sparse_hits] == pytest.approx([s for s, _ in want[:3]], rel=1e-5)  # the best 3 scores
    assert all(h.score == pytest.approx(ours[h.node.get_content()], rel=1e-5) for h in sparse_hits)  # each its own
    hybrid = index.as_retriever(vector_store_query_mode="hybrid", similarity_top_k=2, sparse_top_k=3).retrieve(query)
    assert hybrid and want[0][1] in [h.node.get_content() for h in hybrid]
