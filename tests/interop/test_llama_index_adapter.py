"""model.as_llama_index(): embedstack inside llama-index (Settings, VectorStoreIndex, ingestion)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from llama_index.core import Document, VectorStoreIndex
from llama_index.core.base.embeddings.base import BaseEmbedding as LIBaseEmbedding
from llama_index.core.embeddings.multi_modal_base import (
    MultiModalEmbedding as LIMultiModalEmbedding,
)
from llama_index.core.ingestion import IngestionPipeline
from llama_index.core.ingestion.pipeline import get_transformation_hash
from llama_index.core.instrumentation import get_dispatcher as li_get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler as LIBaseEventHandler
from llama_index.core.schema import MetadataMode as LIMetadataMode
from llama_index.core.schema import TextNode as LITextNode
from pydantic import SecretStr

from embedstack import BaseEmbedding, BatchEmbedding, FakeEmbedding, Role, resolve_embed_model
from embedstack.interop.llama_index import (
    LLAMA_INDEX_MAX_BATCH,
    EmbedstackEmbedding,
    EmbedstackMultiModalEmbedding,
    to_llama_index,
)
from embedstack.kvstore import SimpleKVStore, SQLiteKVStore

from .conftest import DOCS, QUERIES


class TextOnly(BatchEmbedding):
    """A text-only provider with a secret, to check the adapter's class choice and serialisation."""

    api_key: SecretStr = SecretStr("sk-SECRET")
    dim: int = 4

    @classmethod
    def class_name(cls) -> str:
        return "TextOnly"

    def _embed_batch(self, items: list[Any], role: Role) -> Any:
        return [[float(len(t)), float(role is Role.QUERY), 0.0, float(self.dim)] for t in items]


class LIRecorder(LIBaseEventHandler):
    """Keeps llama-index's own instrumentation events."""

    events: list[Any] = []

    def handle(self, event: Any, **kwargs: Any) -> None:
        self.events.append(event)


@pytest.fixture
def li_events() -> Iterator[LIRecorder]:
    root = li_get_dispatcher()
    handler = LIRecorder(events=[])
    root.add_event_handler(handler)
    yield handler
    root.event_handlers.remove(handler)


def _nodes() -> list[LITextNode]:
    return [
        LITextNode(
            text=doc,
            metadata={"file_name": f"doc{i}.txt", "secret_note": "hidden from the embedder"},
            excluded_embed_metadata_keys=["secret_note"],
        )
        for i, doc in enumerate(DOCS)
    ]


def test_is_a_llama_index_embedding_and_picks_the_multimodal_base(fake: FakeEmbedding) -> None:
    text_only = to_llama_index(TextOnly())
    assert isinstance(text_only, LIBaseEmbedding)
    assert type(text_only) is EmbedstackEmbedding
    assert text_only.class_name() == "EmbedstackEmbedding"
    multi = fake.as_llama_index()
    assert isinstance(multi, LIMultiModalEmbedding)
    assert isinstance(multi, EmbedstackMultiModalEmbedding)
    assert multi.model is fake
    assert multi.model_name == "fake"
    assert multi.embed_batch_size == LLAMA_INDEX_MAX_BATCH


def test_sync_hooks_delegate_by_role(fake: FakeEmbedding) -> None:
    li = fake.as_llama_index()
    np.testing.assert_allclose(li.get_query_embedding("q"), fake.vector_for("q", Role.QUERY), rtol=1e-6)
    np.testing.assert_allclose(li.get_text_embedding("t"), fake.vector_for("t", Role.TEXT), rtol=1e-6)
    agg = li.get_agg_embedding_from_queries(["q", "r"])
    want = np.mean([fake.vector_for("q", Role.QUERY), fake.vector_for("r", Role.QUERY)], axis=0)
    np.testing.assert_allclose(agg, want, rtol=1e-5)


def test_llama_index_batch_loop_does_not_defeat_embedstack_batching(fake: FakeEmbedding) -> None:
    texts = [f"chunk {i}" for i in range(25)] + ["chunk 3"]
    out = fake.as_llama_index().get_text_embedding_batch(texts)
    # one pipeline call: embedstack's embed_batch_size (4) and dedupe decide the batches
    assert [len(items) for _, items in fake.calls] == [4, 4, 4, 4, 4, 4, 1]
    assert out[3] == out[25]
    np.testing.assert_allclose(out, [fake.vector_for(t, Role.TEXT) for t in texts], rtol=1e-6)


async def test_async_hooks_match_sync(fake: FakeEmbedding) -> None:
    fake.num_workers = 3
    li = fake.as_llama_index()
    texts = [f"chunk {i}" for i in range(10)]
    got = await li.aget_text_embedding_batch(texts)
    assert sorted(len(items) for _, items in fake.calls) == [2, 4, 4]
    assert got == li.get_text_embedding_batch(texts)
    assert await li.aget_query_embedding("q") == li.get_query_embedding("q")
    assert await li.aget_text_embedding("t") == li.get_text_embedding("t")
    assert await li.aget_agg_embedding_from_queries(["q"]) == pytest.approx(li.get_query_embedding("q"))


@pytest.mark.parametrize("store_kind", ["simple", "sqlite"])
async def test_cache_still_applies_through_the_adapter(fake: FakeEmbedding, tmp_path: Any, store_kind: str) -> None:
    fake.embeddings_cache = SimpleKVStore() if store_kind == "simple" else SQLiteKVStore(tmp_path / "c.sqlite")
    li = fake.as_llama_index()
    first = li.get_text_embedding_batch(["a", "b", "c"])
    q = await li.aget_query_embedding("a")
    n = len(fake.calls)
    assert await li.aget_text_embedding_batch(["c", "a"]) == [first[2], first[0]]
    assert li.get_text_embedding("b") == first[1]
    assert li.get_query_embedding("a") == q
    assert len(fake.calls) == n


def test_embedstack_and_llama_index_events_both_fire(
    fake: FakeEmbedding, event_recorder: Any, li_events: LIRecorder
) -> None:
    fake.as_llama_index().get_text_embedding_batch(["a", "b", "c", "d", "e"])
    ends = event_recorder.of("EmbeddingEndEvent")
    assert [e.chunks for e in ends] == [["a", "b", "c", "d"], ["e"]]
    li_ends = [e for e in li_events.events if e.class_name() == "EmbeddingEndEvent"]
    assert [e.chunks for e in li_ends] == [["a", "b", "c", "d", "e"]]
    li_start = next(e for e in li_events.events if e.class_name() == "EmbeddingStartEvent")
    assert li_start.model_dict["embedstack_model"]["class_name"] == "FakeEmbedding"


def test_to_dict_identifies_the_model_without_secrets() -> None:
    li = to_llama_index(TextOnly(dim=4))
    data = li.to_dict()
    assert data["class_name"] == "EmbedstackEmbedding"
    assert data["embedstack_model"]["class_name"] == "TextOnly"
    assert "SECRET" not in json.dumps(data) and "SECRET" not in json.dumps(li.to_payload())
    # llama-index's ingestion cache hashes to_dict(): another model (dim) must give another hash
    nodes = _nodes()
    same = get_transformation_hash(nodes, to_llama_index(TextOnly(dim=4)))
    assert get_transformation_hash(nodes, li) == same
    assert get_transformation_hash(nodes, to_llama_index(TextOnly(dim=8))) != same
    # the hash follows the wrapped model when it changes after wrapping
    li.model.dim = 8
    assert get_transformation_hash(nodes, li) != same


def test_settings_embed_model_accepts_the_adapter(fake: FakeEmbedding, llama_settings: Any) -> None:
    llama_settings.embed_model = fake.as_llama_index()
    assert llama_settings.embed_model.model is fake


def test_embedstack_resolves_the_adapter_back_to_the_model(fake: FakeEmbedding) -> None:
    assert resolve_embed_model(fake.as_llama_index()) is fake


def test_embedstack_call_respects_llama_index_metadata_modes(fake: FakeEmbedding) -> None:
    nodes = _nodes()
    out = fake(nodes)
    assert out is nodes
    seen = fake.embedded
    assert seen == [n.get_content(metadata_mode=LIMetadataMode.EMBED) for n in nodes]
    assert all("file_name: doc" in s and "hidden from the embedder" not in s for s in seen)
    for node in nodes:
        np.testing.assert_allclose(
            node.embedding,
            fake.vector_for(node.get_content(metadata_mode=LIMetadataMode.EMBED)),
            rtol=1e-6,
        )


async def test_embedstack_acall_on_llama_index_documents(fake: FakeEmbedding) -> None:
    doc = Document(text="body", metadata={"title": "T", "skip": "x"}, excluded_embed_metadata_keys=["skip"])
    await fake.acall([doc])
    assert fake.embedded == ["title: T\n\nbody"]
    assert doc.embedding is not None and len(doc.embedding) == 16


@pytest.mark.parametrize("use_async", [False, True])
async def test_ingestion_pipeline_embeds_nodes_as_the_embedder_sees_them(fake: FakeEmbedding, use_async: bool) -> None:
    pipeline = IngestionPipeline(transformations=[fake.as_llama_index()])
    nodes = await pipeline.arun(nodes=_nodes()) if use_async else pipeline.run(nodes=_nodes())
    assert len(nodes) == len(DOCS)
    for node in nodes:
        content = node.get_content(metadata_mode=LIMetadataMode.EMBED)
        assert "hidden from the embedder" not in content
        np.testing.assert_allclose(node.embedding, fake.vector_for(content, Role.TEXT), rtol=1e-6)
    assert len(fake.calls) == 1  # 4 nodes, one batch of embed_batch_size=4


def test_multimodal_adapter_embeds_images(fake: FakeEmbedding, tmp_path: Any) -> None:
    paths = []
    for i in range(3):
        p = tmp_path / f"img{i}.png"
        p.write_bytes(b"\x89PNG fake image %d" % i)
        paths.append(str(p))
    li = fake.as_llama_index()
    got = li.get_image_embedding_batch(paths)
    np.testing.assert_allclose(got, [fake.vector_for(p, Role.IMAGE) for p in paths], rtol=1e-6)
    assert li.get_image_embedding(paths[0]) == got[0]


async def test_multimodal_adapter_async_images(fake: FakeEmbedding, tmp_path: Any) -> None:
    p = tmp_path / "img.png"
    p.write_bytes(b"\x89PNG another")
    li = fake.as_llama_index()
    assert await li.aget_image_embedding(str(p)) == li.get_image_embedding(str(p))
    assert await li.aget_image_embedding_batch([str(p)]) == [li.get_image_embedding(str(p))]


def test_vector_store_index_with_fake_model_uses_the_pipeline(fake: FakeEmbedding, llama_settings: Any) -> None:
    fake.embeddings_cache = SimpleKVStore()
    index = VectorStoreIndex(nodes=_nodes(), embed_model=fake.as_llama_index())
    n = len(fake.calls)
    assert [role for role, _ in fake.calls] == ["text"]
    index.as_retriever(similarity_top_k=1).retrieve("a question")
    assert fake.calls[n:] == [("query", ["a question"])]


# -- the real local default model ------------------------------------------------------------


def test_vector_store_index_retrieves_the_right_document(local_model: BaseEmbedding, llama_settings: Any) -> None:
    index = VectorStoreIndex(nodes=_nodes(), embed_model=local_model.as_llama_index())
    retriever = index.as_retriever(similarity_top_k=1)
    for query, want in QUERIES.items():
        assert retriever.retrieve(query)[0].node.get_content() == DOCS[want], query


async def test_vector_store_index_async_retrieval(local_model: BaseEmbedding, llama_settings: Any) -> None:
    index = VectorStoreIndex(nodes=_nodes(), embed_model=local_model.as_llama_index(), use_async=True)
    retriever = index.as_retriever(similarity_top_k=1)
    for query, want in QUERIES.items():
        hits = await retriever.aretrieve(query)
        assert hits[0].node.get_content() == DOCS[want], query


def test_settings_embed_model_drives_from_documents_and_query_engine(
    local_model: BaseEmbedding, llama_settings: Any
) -> None:
    """Settings.embed_model, the default splitter (bundled tokenizer), a mock LLM: all offline."""
    llama_settings.embed_model = local_model.as_llama_index()
    index = VectorStoreIndex.from_documents([Document(text=d) for d in DOCS])
    response = index.as_query_engine(similarity_top_k=1).query("Who designed the Python language?")
    assert response.source_nodes[0].node.get_content() == DOCS[2]
