"""LangchainEmbedding: a LangChain Embeddings in embedstack gets batching, dedupe, cache, events."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import numpy as np
import pytest
from langchain_core.embeddings import DeterministicFakeEmbedding, Embeddings
from pydantic import BaseModel, SecretStr

from embedstack import LangchainEmbedding, Role, resolve_embed_model
from embedstack.kvstore import SimpleKVStore, SQLiteKVStore
from embedstack.providers.langchain import langchain_identity


class RecordingEmbeddings(Embeddings):
    """A LangChain Embeddings that records every call (sync and async); text-dependent vectors."""

    def __init__(self, dim: int = 6, native_async: bool = True) -> None:
        self.dim = dim
        self.native_async = native_async
        self.calls: list[tuple[str, list[str]]] = []
        self._lock = threading.Lock()

    def _vec(self, text: str, kind: str) -> list[float]:
        rng = np.random.default_rng(abs(hash((kind, text))) % 2**32)
        return rng.standard_normal(self.dim).tolist()  # type: ignore[no-any-return]

    def _record(self, name: str, texts: list[str]) -> None:
        with self._lock:
            self.calls.append((name, list(texts)))

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        self._record("embed_documents", texts)
        return [self._vec(t, "doc") for t in texts]

    def embed_query(self, text: str) -> list[float]:
        self._record("embed_query", [text])
        return self._vec(text, "query")

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        if not self.native_async:
            raise NotImplementedError
        self._record("aembed_documents", texts)
        await asyncio.sleep(0)
        return [self._vec(t, "doc") for t in texts]

    async def aembed_query(self, text: str) -> list[float]:
        if not self.native_async:
            raise NotImplementedError
        self._record("aembed_query", [text])
        await asyncio.sleep(0)
        return self._vec(text, "query")

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]


class FakeRemoteEmbeddings(BaseModel, Embeddings):
    """Shaped like a pydantic LangChain provider (OpenAIEmbeddings): model, dims, key, client."""

    model: str = "text-embedding-3-small"
    dimensions: int | None = None
    openai_api_key: SecretStr = SecretStr("sk-SECRET-do-not-leak")
    hf_token: str = "hf_SECRET_token"
    model_kwargs: dict[str, Any] = {"normalize": True, "token": "kw-SECRET", "device": "cpu"}
    openai_api_base: str = "https://user:pw-SECRET@example.invalid/v1"
    request_timeout: float = 10.0
    client: Any = None

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [[float(len(t)), float(self.dimensions or 0)] for t in texts]

    def embed_query(self, text: str) -> list[float]:
        return [float(len(text)), -1.0]


def test_resolve_embed_model_wraps_langchain_objects() -> None:
    lc = DeterministicFakeEmbedding(size=8)
    model = resolve_embed_model(lc)
    assert isinstance(model, LangchainEmbedding)
    assert model.langchain_embeddings is lc
    assert model.class_name() == "LangchainEmbedding"
    assert model.langchain_class == "langchain_core.embeddings.fake.DeterministicFakeEmbedding"
    texts = ["alpha", "beta", "gamma"]
    np.testing.assert_allclose(model.get_text_embedding_batch(texts), lc.embed_documents(texts), rtol=1e-6)
    np.testing.assert_allclose(model.get_query_embedding("alpha"), lc.embed_query("alpha"), rtol=1e-6)


def test_texts_go_to_embed_documents_in_batches_queries_to_embed_query() -> None:
    lc = RecordingEmbeddings()
    model = LangchainEmbedding(lc, embed_batch_size=2)
    out = model.get_text_embedding_batch(["a", "b", "c", "a", "d", "e"])
    # 5 unique texts, batches of 2, the duplicate "a" embedded once and copied back in place.
    assert lc.calls == [
        ("embed_documents", ["a", "b"]),
        ("embed_documents", ["c", "d"]),
        ("embed_documents", ["e"]),
    ]
    assert out[0] == out[3]
    assert out[0] != out[1]
    lc.calls.clear()
    q = model.get_query_embedding("what?")
    assert lc.calls == [("embed_query", ["what?"])]
    assert q == pytest.approx(lc._vec("what?", "query"))
    assert model.embed(["x"], Role.QUERY).shape == (1, 6)


def test_cache_means_second_call_does_not_reach_langchain() -> None:
    lc = RecordingEmbeddings()
    model = LangchainEmbedding(lc, embeddings_cache=SimpleKVStore())
    first = model.get_text_embedding_batch(["one", "two"])
    n = len(lc.calls)
    second = model.get_text_embedding_batch(["two", "one"])
    assert len(lc.calls) == n
    assert second == [first[1], first[0]]
    model.get_query_embedding("one")  # a query is another role: a miss
    assert lc.names()[-1] == "embed_query"


def test_sqlite_cache_is_shared_by_equal_configs_and_split_by_different_ones(tmp_path: Any) -> None:
    path = tmp_path / "cache.sqlite"
    a = LangchainEmbedding(DeterministicFakeEmbedding(size=8), embeddings_cache=SQLiteKVStore(path))
    va = a.get_text_embedding("hello")

    class Boom(DeterministicFakeEmbedding):
        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            raise AssertionError("must be served from the cache")

    # A fresh wrapper over an equal configuration (new process, same store) hits the cache ...
    store = SQLiteKVStore(path)
    same = LangchainEmbedding(DeterministicFakeEmbedding(size=8), embeddings_cache=store)
    assert same.get_text_embedding("hello") == pytest.approx(va)
    # ... another configuration of the same class misses it ...
    other = LangchainEmbedding(DeterministicFakeEmbedding(size=4), embeddings_cache=store)
    assert len(other.get_text_embedding("hello")) == 4
    # ... and so does another class with the same settings.
    with pytest.raises(AssertionError, match="served from the cache"):
        LangchainEmbedding(Boom(size=8), embeddings_cache=store).get_text_embedding("hello")


def test_identity_has_model_settings_and_never_secrets() -> None:
    lc = FakeRemoteEmbeddings(dimensions=256)
    model = LangchainEmbedding(lc)
    ident = langchain_identity(lc)
    assert ident["class"].endswith("FakeRemoteEmbeddings")
    assert ident["config"]["model"] == "text-embedding-3-small"
    assert ident["config"]["dimensions"] == 256
    assert ident["config"]["model_kwargs"] == {"normalize": True}
    assert ident["config"]["openai_api_base"] == "https://example.invalid/v1"
    for gone in ("openai_api_key", "hf_token", "client", "request_timeout"):
        assert gone not in ident["config"]
    assert model.model_name == "text-embedding-3-small"
    blobs = [
        json.dumps(model.provider.identity()),
        json.dumps(model.to_dict()),
        repr(model),
        model.to_json(),
    ]
    for blob in blobs:
        assert "SECRET" not in blob
    # the vectors-changing setting changes the cache key; the runtime one does not
    key = model.pipeline.key_factory(Role.TEXT)("x")
    assert LangchainEmbedding(FakeRemoteEmbeddings(dimensions=512)).pipeline.key_factory(Role.TEXT)("x") != key
    assert (
        LangchainEmbedding(FakeRemoteEmbeddings(dimensions=256, request_timeout=99)).pipeline.key_factory(Role.TEXT)(
            "x"
        )
        == key
    )


class FakeTokenSettingsEmbeddings(BaseModel, Embeddings):
    """Settings named with "token" or "key" that change vectors, beside credentials that must stay out."""

    model: str = "m"
    token_limit: int = 512
    max_token: int = 256
    pad_token: str = "[PAD]"
    key_column: str = "title"
    hf_token: str | None = "hf_SECRET_one"
    auth_token: str | None = None
    access_token: SecretStr = SecretStr("at-SECRET")
    model_kwargs: dict[str, Any] = {"token_limit": 128, "token": "kw-SECRET", "api_key": "kw-SECRET-2"}

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [[float(min(len(t), self.token_limit))] for t in texts]

    def embed_query(self, text: str) -> list[float]:
        return [float(min(len(text), self.token_limit))]


def test_token_named_settings_change_the_key_and_credentials_never_appear() -> None:
    """A setting is left out as a secret by what it holds, not because "token" or "key" is in its name: token_limit
    changes vectors, so it changes the key; hf_token and api_key (set, unset or rotated) never change it nor show."""

    def key(**kw: Any) -> str:
        return LangchainEmbedding(FakeTokenSettingsEmbeddings(**kw)).pipeline.key_factory(Role.TEXT)("x")

    config = langchain_identity(FakeTokenSettingsEmbeddings())["config"]
    assert config["token_limit"] == 512 and config["max_token"] == 256 and config["pad_token"] == "[PAD]"
    assert config["key_column"] == "title" and config["model_kwargs"] == {"token_limit": 128}
    assert not {"hf_token", "auth_token", "access_token"} & set(config)
    base = key()
    assert key(token_limit=64) != base
    assert key(max_token=8) != base
    assert key(model_kwargs={"token_limit": 64, "token": "kw-SECRET"}) != key(model_kwargs={"token_limit": 128})
    assert key(hf_token="hf_SECRET_two") == key(hf_token=None) == base
    assert key(auth_token="Bearer SECRET", access_token=SecretStr("at-SECRET-rotated")) == base
    model = LangchainEmbedding(FakeTokenSettingsEmbeddings(auth_token="Bearer SECRET"))
    for blob in (json.dumps(model.provider.identity()), json.dumps(model.provider.model_identity()), repr(model)):
        assert "SECRET" not in blob
    assert LangchainEmbedding(FakeTokenSettingsEmbeddings(token_limit=4)).embed(["abcdefgh"])[0][0] == 4.0


class FakeHeaderEmbeddings(FakeRemoteEmbeddings):
    default_headers: dict[str, str] | None = None


def test_headers_that_can_select_a_model_change_the_key_credentials_never_appear() -> None:
    def model(**headers: str) -> LangchainEmbedding:
        return LangchainEmbedding(FakeHeaderEmbeddings(default_headers=headers or None))

    base = model().pipeline.key_factory(Role.TEXT)("x")
    assert "default_headers" not in langchain_identity(FakeHeaderEmbeddings(default_headers={}))["config"]
    secret = model(Authorization="Bearer SECRET", **{"api-key": "SECRET", "User-Agent": "me"})
    assert secret.pipeline.key_factory(Role.TEXT)("x") == base  # credentials and tracing: the same key
    v1, v2 = model(**{"X-Model-Version": "1"}), model(**{"X-Model-Version": "2", "Authorization": "Bearer SECRET"})
    assert v1.pipeline.key_factory(Role.TEXT)("x") not in (base, v2.pipeline.key_factory(Role.TEXT)("x"))
    assert list(langchain_identity(v2.langchain_embeddings)["config"]["default_headers"]) == ["x-model-version"]
    assert "SECRET" not in json.dumps(v2.provider.identity()) + json.dumps(secret.provider.identity())


def test_identity_of_plain_objects_uses_public_plain_attributes_only() -> None:
    lc = RecordingEmbeddings(dim=3)
    lc.api_key = "sk-SECRET"  # type: ignore[attr-defined]
    ident = langchain_identity(lc)
    # scalars only: the `calls` list is state, and must not change the identity as it grows
    assert ident["config"] == {"dim": 3, "native_async": True}
    lc.embed_documents(["grow the state"])
    assert langchain_identity(lc) == ident
    assert "api_key" not in ident["config"]
    assert "_lock" not in ident["config"]
    assert "SECRET" not in json.dumps(ident)
    assert LangchainEmbedding(RecordingEmbeddings(dim=3)).pipeline.key_factory(Role.TEXT)("x") != LangchainEmbedding(
        RecordingEmbeddings(dim=4)
    ).pipeline.key_factory(Role.TEXT)("x")


def test_to_dict_never_stores_the_langchain_object_and_from_dict_needs_it() -> None:
    lc = DeterministicFakeEmbedding(size=8)
    model = LangchainEmbedding(lc, embed_batch_size=7)
    data = model.to_dict()
    assert data == {
        "model_name": "DeterministicFakeEmbedding",
        "embed_batch_size": 7,
        "num_workers": None,
        "langchain_class": "langchain_core.embeddings.fake.DeterministicFakeEmbedding",
        "class_name": "LangchainEmbedding",
    }
    with pytest.raises(TypeError, match="langchain_embeddings="):
        LangchainEmbedding.from_dict(data)
    back = LangchainEmbedding.from_dict(data, langchain_embeddings=lc)
    assert back.embed_batch_size == 7
    assert back.get_text_embedding("x") == model.get_text_embedding("x")


def test_rejects_objects_that_are_not_embeddings() -> None:
    with pytest.raises(TypeError, match="object lacks embed_documents, embed_query"):
        LangchainEmbedding(object())
    with pytest.raises(ValueError, match="cannot use"):
        resolve_embed_model(object())


def test_does_not_embed_images() -> None:
    with pytest.raises(TypeError, match="does not embed images"):
        LangchainEmbedding(RecordingEmbeddings()).embed([b"\x89PNG"], Role.IMAGE)


async def test_async_paths_use_native_async_methods_and_match_sync() -> None:
    lc = RecordingEmbeddings()
    model = LangchainEmbedding(lc, embed_batch_size=2, num_workers=2)
    texts = ["a", "b", "c"]
    got = await model.aget_text_embedding_batch(texts)
    assert sorted(lc.calls) == [("aembed_documents", ["a", "b"]), ("aembed_documents", ["c"])]
    q = await model.aget_query_embedding("q")
    assert lc.calls[-1] == ("aembed_query", ["q"])
    assert got == model.get_text_embedding_batch(texts)
    assert q == model.get_query_embedding("q")
    agg = await model.aget_agg_embedding_from_queries(["q1", "q2"])
    want = np.mean([lc._vec("q1", "query"), lc._vec("q2", "query")], axis=0)
    np.testing.assert_allclose(agg, want, rtol=1e-5, atol=1e-6)  # float32 vectors


async def test_async_falls_back_to_sync_when_async_is_not_implemented() -> None:
    lc = RecordingEmbeddings(native_async=False)
    model = LangchainEmbedding(lc)
    got = await model.aget_text_embedding_batch(["a", "b"])
    assert lc.names() == ["embed_documents"]
    assert got[0] == pytest.approx(lc._vec("a", "doc"))
    assert await model.aget_query_embedding("q") == pytest.approx(lc._vec("q", "query"))


async def test_async_cache_hits_skip_langchain() -> None:
    lc = RecordingEmbeddings()
    model = LangchainEmbedding(lc, embeddings_cache=SimpleKVStore())
    first = await model.aget_text_embedding_batch(["x", "y"])
    n = len(lc.calls)
    assert await model.aget_text_embedding_batch(["y", "x"]) == [first[1], first[0]]
    assert model.get_text_embedding("x") == first[0]
    assert len(lc.calls) == n


def test_events_describe_the_wrapper_without_the_object(event_recorder: Any) -> None:
    model = LangchainEmbedding(FakeRemoteEmbeddings(), embed_batch_size=2)
    model.get_text_embedding_batch(["aa", "bbb", "c"])
    starts, ends = event_recorder.of("EmbeddingStartEvent"), event_recorder.of("EmbeddingEndEvent")
    assert len(starts) == len(ends) == 2
    assert [e.chunks for e in ends] == [["aa", "bbb"], ["c"]]
    assert ends[0].embeddings == [[2.0, 0.0], [3.0, 0.0]]
    desc = starts[0].model_dict
    assert desc["class_name"] == "LangchainEmbedding"
    assert desc["langchain_class"].endswith("FakeRemoteEmbeddings")
    assert "SECRET" not in json.dumps(desc)


async def test_every_path_through_both_adapters_equals_langchains_own_vectors_by_role() -> None:
    """A LangChain object whose query and document vectors differ, wrapped as an embedstack model and that wrapped
    again for llama-index and LangChain: each path's rows equal the object's own (as float32), in order, for
    repeats, small concurrent batches, cold and warm cache, sync and async."""
    lc = RecordingEmbeddings(dim=12)
    texts = ["dup" if i % 5 == 0 else f"t{i % 7}-{i}" for i in range(23)]
    docs = np.asarray(lc.embed_documents(texts), np.float32)
    queries = np.asarray([lc.embed_query(t) for t in texts], np.float32)
    assert not np.array_equal(docs, queries)
    store = SimpleKVStore()
    for _ in range(2):  # cold, then served from the cache
        model = LangchainEmbedding(lc, embed_batch_size=3, num_workers=3, embeddings_cache=store)
        li, lcw = model.as_llama_index(), model.as_langchain()
        back = LangchainEmbedding(lcw, embed_batch_size=4)  # LangChain → embedstack → LangChain → embedstack
        as_docs = {
            "embed": model.embed(texts),
            "aembed": await model.aembed(texts),
            "get_text_embedding_batch": model.get_text_embedding_batch(texts),
            "aget_text_embedding_batch": await model.aget_text_embedding_batch(texts),
            "get_text_embedding": [model.get_text_embedding(t) for t in texts],
            "li.get_text_embedding_batch": li.get_text_embedding_batch(texts),
            "li.aget_text_embedding_batch": await li.aget_text_embedding_batch(texts),
            "li.get_text_embedding": [li.get_text_embedding(t) for t in texts],
            "li.aget_text_embedding": [await li.aget_text_embedding(t) for t in texts],
            "lc.embed_documents": lcw.embed_documents(texts),
            "lc.aembed_documents": await lcw.aembed_documents(texts),
            "back.embed": back.embed(texts),
        }
        as_queries = {
            "embed(query)": model.embed(texts, Role.QUERY),
            "aembed(query)": await model.aembed(texts, Role.QUERY),
            "get_query_embedding": [model.get_query_embedding(t) for t in texts],
            "aget_query_embedding": [await model.aget_query_embedding(t) for t in texts],
            "li.get_query_embedding": [li.get_query_embedding(t) for t in texts],
            "li.aget_query_embedding": [await li.aget_query_embedding(t) for t in texts],
            "lc.embed_query": [lcw.embed_query(t) for t in texts],
            "lc.aembed_query": [await lcw.aembed_query(t) for t in texts],
            "back.embed(query)": back.embed(texts, Role.QUERY),
        }
        for want, paths in ((docs, as_docs), (queries, as_queries)):
            wrong = [name for name, got in paths.items() if not np.array_equal(np.asarray(got, np.float32), want)]
            assert wrong == []
