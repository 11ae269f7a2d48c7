"""`Provider.prepare` and `Pipeline.embed(..., prepared=...)`: items prepared ahead of a call reach `embed` as
`Batch.prepared` (most tokens first), the provider's plan is not asked again, cache hits and repeats still work,
and a provider that prepares nothing keeps the default (remote providers)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from embedstack.kvstore.simple import SimpleKVStore
from embedstack.outputs import Dense
from embedstack.pipeline import Pipeline
from embedstack.provider import BatchOutput, Capabilities, Prepared, ProviderBase
from embedstack.types import Batch, Plan, Role


class Tokenising(ProviderBase):
    """Words as tokens: `prepare` splits, `embed` uses what it is handed and records it."""

    capabilities = Capabilities(counts_tokens=True, prepares=True)

    def __init__(self) -> None:
        self.plans = 0
        self.batches: list[Batch] = []

    @property
    def output(self) -> Dense:
        return Dense(2)

    def identity(self) -> dict[str, Any]:
        return {"py_class": "tests.Tokenising"}

    def plan(self, items: list[Any], role: Role) -> Plan:
        self.plans += 1
        return Plan(prepared=[t.split() for t in items])

    def prepare(self, items: list[Any], role: Role) -> Prepared:
        words = [t.split() for t in items]
        return Prepared(words, [len(w) for w in words], [False] * len(words))

    def embed(self, batch: Batch) -> BatchOutput:
        self.batches.append(batch)
        assert batch.prepared is not None
        rows = np.array([[len(w), float(sum(map(len, w)))] for w in batch.prepared], dtype=np.float32)
        return BatchOutput(rows, [len(w) for w in batch.prepared], [False] * len(rows))


def test_prepared_items_reach_embed_without_a_plan() -> None:
    provider = Tokenising()
    pipe = Pipeline(provider, SimpleKVStore(), batch_size=2)
    items = ["a", "a b c", "a b", "a b c", "x y z w"]
    ready = provider.prepare(items, Role.TEXT)
    out = pipe.embed(items, prepared=ready)
    assert provider.plans == 0
    assert [b.items for b in provider.batches] == [["x y z w", "a b c"], ["a b", "a"]]  # most tokens first, deduped
    assert provider.batches[0].prepared == [["x", "y", "z", "w"], ["a", "b", "c"]]
    np.testing.assert_array_equal(out.values, pipe.with_options(cache=None).embed(items).values)
    assert provider.plans == 1  # the call without prepared values planned
    assert out.usage.tokens == 1 + 3 + 2 + 4  # what the provider computed (the repeat once)
    provider.batches.clear()
    again = pipe.embed(items, prepared=ready)  # every item a cache hit: nothing reaches the provider
    assert provider.batches == [] and again.usage.cached == 4  # distinct items
    np.testing.assert_array_equal(again.values, out.values)


def test_prepared_values_must_match_the_items() -> None:
    provider = Tokenising()
    with pytest.raises(ValueError, match="2 prepared values for 3 texts"):
        Pipeline(provider).embed(["a", "b", "c"], prepared=provider.prepare(["a", "b"], Role.TEXT))
    with pytest.raises(ValueError, match="one value, count and flag per item"):
        Prepared([1, 2], [1], [False, False])


def test_default_provider_prepares_nothing() -> None:
    class Remote(ProviderBase):
        capabilities = Capabilities(remote=True)

    assert Remote().prepare(["a"], Role.TEXT) is None
    assert not Remote.capabilities.prepares
