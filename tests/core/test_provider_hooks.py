"""The two provider declarations added by the redesign: derived state (`_derived` + `_refresh`) and the
per-call plan (`_plan` → `Batch.prepared`), through real pickling, copying and pipeline calls."""

from __future__ import annotations

import asyncio
import copy
import pickle
import threading
from typing import Any, ClassVar

import numpy as np
import pytest
from pydantic import Field, PrivateAttr

from embedstack import FakeEmbedding
from embedstack.kvstore import SimpleKVStore
from embedstack.types import Batch, Plan, Role


class Loaded(FakeEmbedding):
    """A fake provider with derived state built from its fields, the way local models hold weights."""

    flavour: str = Field(default="plain")
    _derived: ClassVar[frozenset[str]] = frozenset({"_weights", "_guard"})
    _weights: object | None = PrivateAttr(default=None)
    _guard: threading.RLock = PrivateAttr(default_factory=threading.RLock)
    _refreshes: list[tuple[frozenset[str], bool]] = PrivateAttr(default_factory=list)

    def _refresh(self, changed: frozenset[str], fresh: bool) -> None:
        if self.flavour == "broken":
            raise ValueError("flavour 'broken' cannot load; use 'plain'")
        self._refreshes.append((changed, fresh))
        if fresh or "flavour" in changed:
            self._weights = object()  # a new load


def test_construction_refreshes_fresh_with_every_field() -> None:
    m = Loaded()
    assert m._refreshes == [(frozenset(type(m).model_fields), True)]
    assert m._weights is not None


def test_assignment_refreshes_and_a_failing_refresh_changes_nothing() -> None:
    m = Loaded()
    first = m._weights
    m.flavour = "spicy"
    assert m._refreshes[-1] == (frozenset({"flavour"}), False)
    assert m._weights is not first
    key_before = m.pipeline.key_factory(Role.TEXT)("x")
    with pytest.raises(ValueError, match="cannot load"):
        m.flavour = "broken"
    assert m.flavour == "spicy"  # undone
    assert m.pipeline.key_factory(Role.TEXT)("x") == key_before
    assert "flavour" in m.model_fields_set


def test_undone_assignment_of_an_unset_field_leaves_it_unset() -> None:
    m = Loaded()
    with pytest.raises(ValueError):
        m.flavour = "broken"
    assert "flavour" not in m.model_fields_set and m.flavour == "plain"


def test_pickle_and_deepcopy_drop_derived_state_and_rebuild_it() -> None:
    m = Loaded(flavour="spicy")
    m.embed(["a"])
    for other in (pickle.loads(pickle.dumps(m)), copy.deepcopy(m), m.model_copy(deep=True)):
        assert other.flavour == "spicy"
        assert other._weights is not None and other._weights is not m._weights
        assert other._guard is not m._guard
        assert other._refreshes[-1][1] is True  # rebuilt fresh
        np.testing.assert_array_equal(other.embed(["a"]), m.embed(["a"]))


def test_shallow_copy_shares_derived_state_until_an_update_changes_it() -> None:
    m = Loaded()
    same = m.model_copy()
    assert same._weights is m._weights
    changed = m.model_copy(update={"flavour": "spicy"})
    assert changed._weights is not m._weights
    assert changed._refreshes[-1] == (frozenset({"flavour"}), False)
    assert m._weights is not None and m.flavour == "plain"
    # the copy's cache identity follows its own fields
    assert changed.pipeline.key_factory(Role.TEXT)("x") != m.pipeline.key_factory(Role.TEXT)("x")


class Planner(FakeEmbedding):
    """Orders by length, longest first, and prepares each item's upper-case form (as tokens would be)."""

    seen: ClassVar[list[Batch]] = []

    def _plan(self, items: list[Any], role: Role) -> Plan:
        order = sorted(range(len(items)), key=lambda i: -len(items[i]))
        return Plan(order=order, prepared=[f"{role.value}:{str(t).upper()}" for t in items])

    def _embed(self, batch: Batch) -> Any:
        type(self).seen.append(batch)
        assert batch.prepared == [f"{batch.role.value}:{str(t).upper()}" for t in batch.items]
        return super()._embed(batch)

    async def _aembed(self, batch: Batch) -> Any:
        return await asyncio.to_thread(self._embed, batch)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_each_batch_gets_the_prepared_values_of_its_own_items(mode: str) -> None:
    Planner.seen = []
    store = SimpleKVStore()
    m = Planner(embed_batch_size=3, embeddings_cache=store)
    m.embed(["bb", "dddd"], role="query")  # two cache hits in the next call
    Planner.seen = []
    texts = ["a", "bb", "ccc", "dddd", "a", "eeeee", "ff", "ggggggg"]
    if mode == "sync":
        out = m.embed(texts, role="query")
    else:
        out = asyncio.run(m.aembed(texts, role="query"))
    embedded = [t for b in Planner.seen for t in b.items]
    assert embedded == ["ggggggg", "eeeee", "ccc", "ff", "a"]  # misses only, once each, longest first
    assert all(len(b.items) <= 3 for b in Planner.seen)
    expected = np.stack([m.vector_for(t, "query") for t in texts])
    np.testing.assert_allclose(out, expected, rtol=1e-6)


class BadPlan(FakeEmbedding):
    how: str = "short"

    def _plan(self, items: list[Any], role: Role) -> Plan:
        if self.how == "short":
            return Plan(prepared=items[:-1])
        return Plan(order=[0] * len(items))


@pytest.mark.parametrize("how, message", [("short", "prepared values"), ("dup", "not a permutation")])
def test_a_plan_that_does_not_fit_the_items_is_refused(how: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BadPlan(how=how).embed(["a", "b", "c"])
