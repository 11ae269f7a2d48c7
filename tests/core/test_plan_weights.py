"""`Plan.weights`: what each item costs of a batch (a long text's pieces). Batches hold items until their weights
fill the batch size, an item heavier than that gets a batch of its own, and weights follow the plan's order;
weights that are not one positive int per item are refused by name."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

from embedstack.outputs import Dense, OutputKind
from embedstack.pipeline import Pipeline
from embedstack.provider import ProviderBase
from embedstack.types import Batch, Plan, Role


class Weighted(ProviderBase):
    """Dense vectors; an item "xN" weighs N; the plan keeps input order (or reverses it)."""

    def __init__(self, reverse: bool = False, weights: list[int] | None = None) -> None:
        self.calls: list[list[str]] = []
        self.reverse = reverse
        self.fixed = weights

    @property
    def output(self) -> OutputKind:
        return Dense(2)

    def identity(self) -> Mapping[str, Any]:
        return {"py_class": "tests.Weighted"}

    def plan(self, items: list[Any], role: Role) -> Plan:
        weights = self.fixed if self.fixed is not None else [int(t.split("x")[1]) for t in items]
        order = list(range(len(items)))[::-1] if self.reverse else None
        return Plan(order=order, weights=weights)

    def embed(self, batch: Batch) -> Any:
        self.calls.append(list(batch.items))
        return np.asarray([[float(t.split("x")[1]), 1.0] for t in batch.items], dtype=np.float32)


ITEMS = ["ax1", "bx3", "cx1", "dx9", "ex2", "fx2", "gx1"]


def test_batches_fill_by_weight() -> None:
    provider = Weighted()
    out = Pipeline(provider, batch_size=4).embed(ITEMS)
    assert provider.calls == [["ax1", "bx3"], ["cx1"], ["dx9"], ["ex2", "fx2"], ["gx1"]]
    assert out.values[:, 0].tolist() == [1, 3, 1, 9, 2, 2, 1]  # input order restored


def test_weights_follow_the_plans_order() -> None:
    provider = Weighted(reverse=True)
    asyncio.run(Pipeline(provider, batch_size=4).aembed(ITEMS))
    assert provider.calls == [["gx1", "fx2"], ["ex2"], ["dx9"], ["cx1", "bx3"], ["ax1"]]


@pytest.mark.parametrize("weights", [[1, 2], [1, 0, 1, 1, 1, 1, 1]])
def test_bad_weights_are_refused(weights: list[int]) -> None:
    with pytest.raises(ValueError, match="weights that are not one positive int per item"):
        Pipeline(Weighted(weights=weights), batch_size=4).embed(ITEMS)
