"""Providers written against the protocol alone, with other output kinds, through the one pipeline.

A sparse provider (rows are sparse vectors) and a pair scorer (a reranker's shape: (query, document)
pairs in, one score out) run through the cache (in memory and SQLite), dedupe, batching, order,
async and events exactly as dense models do; bad rows are refused by name and never cached.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from embedstack.errors import BadVectorsError
from embedstack.kvstore import SimpleKVStore, SQLiteKVStore
from embedstack.outputs import OutputKind, Scores, Sparse, SparseVector
from embedstack.pipeline import Pipeline
from embedstack.provider import BatchOutput, Capabilities, Provider, ProviderBase
from embedstack.types import Batch, Plan, Role


def _sparse_for(text: str) -> dict[int, float]:
    """A deterministic, input-dependent sparse vector: the hashes of its words, weighted by length."""
    out: dict[int, float] = {}
    for word in text.split():
        index = int(hashlib.sha256(word.encode()).hexdigest(), 16) % 1000
        out[index] = out.get(index, 0.0) + len(word) / 10
    return out


class BagOfWords(ProviderBase):
    """A sparse provider: no BaseEmbedding, only the protocol."""

    capabilities = Capabilities(plan_in_thread=False)

    def __init__(self, bad: frozenset[str] = frozenset()) -> None:
        self.calls: list[list[str]] = []
        self.bad = bad
        self.lock = threading.Lock()

    @property
    def output(self) -> OutputKind:
        return Sparse(1000)

    def identity(self) -> Mapping[str, Any]:
        return {"py_class": "tests.BagOfWords", "vocab": 1000}

    def plan(self, items: list[Any], role: Role) -> Plan:
        return Plan(order=sorted(range(len(items)), key=lambda i: -len(items[i])))  # longest first

    def embed(self, batch: Batch) -> Any:
        with self.lock:
            self.calls.append(list(batch.items))
        rows: list[Any] = []
        for text in batch.items:
            if text in self.bad:
                rows.append({-1: 1.0})  # an index outside the vocabulary
            else:
                rows.append(_sparse_for(text))
        return BatchOutput(rows, [len(t.split()) for t in batch.items], [False] * len(batch.items))


class PairScorer(ProviderBase):
    """A reranker's shape: one score per (query, document) pair."""

    def __init__(self) -> None:
        self.calls: list[list[tuple[str, str]]] = []

    @property
    def output(self) -> OutputKind:
        return Scores()

    def identity(self) -> Mapping[str, Any]:
        return {"py_class": "tests.PairScorer"}

    def embed(self, batch: Batch) -> Any:
        self.calls.append(list(batch.items))
        return np.array([[len(set(q.split()) & set(d.split())) / 3] for q, d in batch.items], dtype=np.float32)


TEXTS = ["alpha beta", "gamma", "alpha beta", "delta epsilon zeta", "gamma", "eta"]


def _want(texts: list[str]) -> list[dict[int, float]]:
    return [SparseVector(*Sparse(1000).check_row(_sparse_for(t))).to_dict() for t in texts]


def test_a_protocol_only_provider_is_a_provider() -> None:
    assert isinstance(BagOfWords(), Provider)
    assert isinstance(PairScorer(), Provider)


@pytest.mark.parametrize("store", ["memory", "sqlite", None])
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_sparse_rows_through_cache_dedupe_batches_and_order(tmp_path: Path, store: str | None, mode: str) -> None:
    cache = {"memory": SimpleKVStore(), "sqlite": SQLiteKVStore(tmp_path / "c.sqlite"), None: None}[store]
    provider = BagOfWords()
    pipe = Pipeline(provider, cache, batch_size=2)

    def run(texts: list[str]) -> Any:
        return pipe.embed(texts) if mode == "sync" else asyncio.run(pipe.aembed(texts))

    out = run(TEXTS)
    assert Sparse(1000).to_python(out.values) == _want(TEXTS)  # input order, repeats filled in
    computed = [t for call in provider.calls for t in call]
    assert sorted(computed) == sorted(set(TEXTS))  # each unique text once
    assert all(len(call) <= 2 for call in provider.calls)  # batches of batch_size
    assert computed[0] == "delta epsilon zeta"  # the provider's plan (longest first) was followed
    assert out.usage.computed == 4 and out.usage.cached == 0
    assert out.usage.tokens == sum(len(t.split()) for t in set(TEXTS))
    assert out.token_counts is not None and out.token_counts.tolist() == [len(t.split()) for t in TEXTS]

    provider.calls.clear()
    again = run([*TEXTS, "theta iota"])
    assert Sparse(1000).to_python(again.values) == _want([*TEXTS, "theta iota"])
    if cache is None:
        assert len([t for c in provider.calls for t in c]) == 5
    else:  # only the new text computed; the sparse rows came back from the cache's bytes
        assert provider.calls == [["theta iota"]]
        assert again.usage.cached == 4 and again.usage.computed == 1
        hits = pipe.cached(["eta", "unseen"])
        assert hits.found.tolist() == [True, False]
        assert hits.values is not None and hits.values[0].to_dict() == _want(["eta"])[0] and hits.values[1] is None


def test_a_fresh_pipeline_reads_sparse_rows_from_a_sqlite_file(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    Pipeline(BagOfWords(), SQLiteKVStore(path)).embed(TEXTS)
    provider = BagOfWords()
    out = Pipeline(provider, SQLiteKVStore(path)).embed(TEXTS)
    assert provider.calls == [] and Sparse(1000).to_python(out.values) == _want(TEXTS)


def test_bad_sparse_rows_are_refused_by_name_and_never_cached() -> None:
    cache = SimpleKVStore()
    provider = BagOfWords(bad=frozenset({"gamma"}))
    pipe = Pipeline(provider, cache, batch_size=10)
    with pytest.raises(BadVectorsError, match=r"texts\[1\].*nothing was cached") as info:
        pipe.embed(TEXTS)
    assert info.value.positions == [1]
    assert not pipe.cached(TEXTS).found.any()  # nothing of the failed batch was cached


def test_sparse_rows_are_canonical() -> None:
    kind = Sparse(10)
    row = kind.check_row({7: 0.5, 2: 1.0, 4: 0.0})
    assert row.indices.tolist() == [2, 7] and row.values.tolist() == [1.0, 0.5]  # sorted, zeros dropped
    assert kind.decode_row(kind.encode_row(row)).to_dict() == {2: 1.0, 7: 0.5}
    for bad in [{1: float("nan")}, {10: 1.0}, ([1, 1], [1.0, 2.0]), ([1.5], [1.0]), "x"]:
        with pytest.raises(ValueError):
            kind.check_row(bad)
    with pytest.raises(ValueError):
        kind.decode_row(b"\x05\x00\x00\x00")


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_pairs_and_scores_travel_the_same_pipeline(mode: str) -> None:
    scorer = PairScorer()
    pipe = Pipeline(scorer, SimpleKVStore(), batch_size=3)
    pairs = [("red apple", "a red apple pie"), ("red apple", "green pear"), ("red apple", "a red apple pie")]

    def run(items: list[tuple[str, str]]) -> Any:
        out = pipe.embed(items, Role.PAIR) if mode == "sync" else asyncio.run(pipe.aembed(items, Role.PAIR))
        return out.values

    scores = run(pairs)
    assert scores.shape == (3, 1) and scores[:, 0].tolist() == pytest.approx([2 / 3, 0.0, 2 / 3])
    assert scorer.calls == [[pairs[0], pairs[1]]]  # the repeated pair scored once
    run([("red apple", "green pear"), ("apple", "red apple pie")])
    assert scorer.calls[1:] == [[("apple", "red apple pie")]]  # the cached pair was not scored again
    assert pipe.key_factory(Role.PAIR)(("ab", "c")) != pipe.key_factory(Role.PAIR)(("a", "bc"))
    with pytest.raises(TypeError, match=r"pairs\[1\] \(document\) is int"):
        pipe.embed([("q", "d"), ("q", 3)], Role.PAIR, label="pairs")


def test_with_options_is_a_copy_and_the_model_is_untouched() -> None:
    from embedstack import FakeEmbedding

    model = FakeEmbedding(embed_dim=4)
    store = SimpleKVStore()
    variant = model.pipeline.with_options(cache=store, batch_size=1)
    variant.embed(["a", "b"])
    assert model.embeddings_cache is None and model.embed_batch_size == 10 and model.pipeline.cache is None
    assert [len(items) for _, items in model.calls] == [1, 1]
    assert variant.cached(["a", "b"]).found.all()


def test_a_pipeline_kept_from_before_a_field_changed_is_refused() -> None:
    from embedstack import FakeEmbedding

    model = FakeEmbedding(embed_dim=4)
    kept = model.pipeline
    model.embed_dim = 6  # another identity: the old pipeline's keys and length would be wrong
    with pytest.raises(RuntimeError, match="changed since this pipeline was made"):
        kept.embed(["a"])
    assert model.pipeline.embed(["a"]).values.shape == (1, 6)
