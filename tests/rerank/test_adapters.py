"""The reranker where users meet it: a LlamaIndex query engine's node postprocessor and a LangChain compressor."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from embedstack.rerank import CrossEncoderReranker

pytestmark = pytest.mark.slow

TEXTS = [
    "a man is eating food",
    "the cat sat on the mat",
    "a woman is eating a piece of bread",
    "the quick brown fox jumps over the lazy dog",
    "a red car by the river",
    "music in the city",
]
QUERY = "the man eating bread"


@pytest.fixture
def reranker(ce_bert: Path) -> CrossEncoderReranker:
    return CrossEncoderReranker(str(ce_bert))


def test_llama_index_query_engine_reranks_its_nodes(reranker: CrossEncoderReranker) -> None:
    pytest.importorskip("llama_index.core")
    from llama_index.core import Document, VectorStoreIndex
    from llama_index.core.embeddings import MockEmbedding
    from llama_index.core.llms import MockLLM

    from embedstack.rerank.llama_index import EmbedstackRerank

    index = VectorStoreIndex.from_documents([Document(text=t) for t in TEXTS], embed_model=MockEmbedding(embed_dim=8))
    post = EmbedstackRerank(reranker, top_n=3, keep_retrieval_score=True)
    engine = index.as_query_engine(llm=MockLLM(), similarity_top_k=len(TEXTS), node_postprocessors=[post])
    response = engine.query(QUERY)
    want = reranker.rank(QUERY, TEXTS, top_n=3)
    assert [n.node.get_content() for n in response.source_nodes] == [r.document for r in want]
    assert [n.score for n in response.source_nodes] == pytest.approx([r.score for r in want], abs=1e-6)
    assert all("retrieval_score" in n.node.metadata for n in response.source_nodes)

    nodes = index.as_retriever(similarity_top_k=len(TEXTS)).retrieve(QUERY)
    again = asyncio.run(
        EmbedstackRerank(f"rerank:{reranker.source.path}", top_n=None).apostprocess_nodes(nodes, query_str=QUERY)
    )
    assert [n.node.get_content() for n in again] == [r.document for r in reranker.rank(QUERY, TEXTS)]
    with pytest.raises(ValueError, match="needs the query"):
        post.postprocess_nodes(nodes)
    assert post.postprocess_nodes([], query_str=QUERY) == []
    described = json.loads(post.to_json())["reranker"]  # serialisable: the reranker as its description
    assert described["class_name"] == "CrossEncoderReranker" and described["activation"] == "sigmoid"


def test_langchain_compressor_keeps_the_best_documents(reranker: CrossEncoderReranker) -> None:
    pytest.importorskip("langchain_core")
    from langchain_core.documents import BaseDocumentCompressor, Document

    from embedstack.rerank.langchain import EmbedstackCrossEncoderCompressor

    compressor = EmbedstackCrossEncoderCompressor(reranker, top_n=2)
    assert isinstance(compressor, BaseDocumentCompressor)
    docs = [Document(page_content=t, metadata={"i": i}) for i, t in enumerate(TEXTS)]
    kept = compressor.compress_documents(docs, QUERY)
    want = reranker.rank(QUERY, TEXTS, top_n=2)
    assert [d.metadata["i"] for d in kept] == [r.index for r in want]
    assert [d.metadata["relevance_score"] for d in kept] == pytest.approx([r.score for r in want], abs=1e-6)
    assert "relevance_score" not in docs[0].metadata  # the inputs are untouched
    assert asyncio.run(compressor.acompress_documents(docs, QUERY)) == kept
    assert compressor.compress_documents([], QUERY) == []
    assert json.loads(compressor.model_dump_json())["reranker"]["model_name"] == reranker.model_name


def test_langchain_contextual_compression_retriever(reranker: CrossEncoderReranker) -> None:
    try:  # langchain 1.x moved it to langchain-classic
        from langchain_classic.retrievers import ContextualCompressionRetriever
    except ImportError:
        retrievers = pytest.importorskip("langchain.retrievers", reason="langchain-classic or langchain")
        ContextualCompressionRetriever = retrievers.ContextualCompressionRetriever
    from langchain_core.documents import Document
    from langchain_core.retrievers import BaseRetriever

    from embedstack.rerank.langchain import EmbedstackCrossEncoderCompressor

    class _All(BaseRetriever):
        def _get_relevant_documents(self, query: str, *, run_manager: object) -> list[Document]:
            return [Document(page_content=t) for t in TEXTS]

    retriever = ContextualCompressionRetriever(
        base_compressor=EmbedstackCrossEncoderCompressor(reranker, top_n=2), base_retriever=_All()
    )
    got = retriever.invoke(QUERY)
    assert [d.page_content for d in got] == [r.document for r in reranker.rank(QUERY, TEXTS, top_n=2)]
