"""A single call with no cache, progress or listener skips a job's bookkeeping (`run_values`): it must return
the same rows and raise the same errors as a job does for the same item (with a cache, or with a listener)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from pydantic import PrivateAttr

from embedstack import BaseEmbedding
from embedstack.errors import BadVectorsError
from embedstack.instrumentation import get_dispatcher
from embedstack.instrumentation.handlers import BaseEventHandler
from embedstack.kvstore import SimpleKVStore
from embedstack.types import Plan, Role

VEC = [((i * 37) % 101) / 101.0 for i in range(8)]


class Hook(BaseEmbedding):
    """Returns what `answer(text)` says; the plan and checks can be made to misbehave."""

    _answer: Callable[[str], Any] = PrivateAttr()
    _plan_given: Plan | None = PrivateAttr()
    _refuse: str | None = PrivateAttr()

    def __init__(
        self,
        answer: Callable[[str], Any] = lambda text: VEC,
        plan: Plan | None = None,
        refuse: str | None = None,
        **fields: Any,
    ) -> None:
        super().__init__(**fields)
        self._answer, self._plan_given, self._refuse = answer, plan, refuse

    def _get_query_embedding(self, query: str) -> Any:
        return self._answer(query)

    _get_text_embedding = _get_query_embedding

    async def _aget_query_embedding(self, query: str) -> Any:
        return self._answer(query)

    def _plan(self, items: list[Any], role: Role) -> Plan:
        return self._plan_given if self._plan_given is not None else super()._plan(items, role)

    def _check_items(self, items: Any, role: Role, label: str, offset: int = 0) -> None:
        if self._refuse is not None and self._refuse in items:
            raise ValueError(f"{label}[{offset}] is refused")


class Silent(BaseEventHandler):
    def handle(self, event: Any, **kwargs: Any) -> None:
        pass


@pytest.fixture(params=["single call", "cached job", "listened job"])
def route(request: pytest.FixtureRequest) -> Iterator[Callable[..., Hook]]:
    """Makes a Hook whose single calls take one route: the single-call path, or a job (a cache; a listener)."""
    handler = Silent()
    if request.param == "listened job":
        get_dispatcher().add_event_handler(handler)

    def make(cls: type[Hook] = Hook, **fields: Any) -> Hook:
        if request.param == "cached job":
            fields["embeddings_cache"] = SimpleKVStore()
        return cls(**fields)

    yield make
    if request.param == "listened job":
        get_dispatcher().event_handlers.remove(handler)


def _outcome(call: Callable[[], Any]) -> tuple[str, str] | list[float]:
    try:
        return call()  # type: ignore[no-any-return]
    except Exception as e:
        return type(e).__name__, str(e)


def test_rows_are_float32_exact_and_writeable(route: Callable[..., Hook]) -> None:
    m = route()
    got = m.get_text_embedding("x")
    assert got == np.asarray(VEC, dtype=np.float32).tolist()
    rows = m.pipeline.values(["x"], Role.TEXT, "text")
    assert rows.flags.writeable and rows.dtype == np.float32 and rows.shape == (1, 8)


def test_a_numpy_answer_is_copied_when_read_only(route: Callable[..., Hook]) -> None:
    frozen = np.asarray(VEC, dtype=np.float32)
    frozen.flags.writeable = False
    m = route(answer=lambda text: frozen)
    rows = m.pipeline.values(["x"], Role.TEXT, "text")
    rows[0, 0] = 5.0  # the caller's copy, not the model's array
    assert frozen[0] == np.float32(VEC[0])


BAD = {
    "bool": lambda text: [*VEC[:-1], True],
    "str": lambda text: [*VEC[:-1], "0.5"],
    "nan": lambda text: [*VEC[:-1], float("nan")],
    "two rows for one": lambda text: [VEC, VEC],
    "empty": lambda text: [],
}


@pytest.mark.parametrize("bad", list(BAD))
def test_bad_vectors_are_refused_as_a_job_refuses_them(bad: str, route: Callable[..., Hook]) -> None:
    got = _outcome(lambda: route(answer=BAD[bad]).pipeline.values(["x"], Role.TEXT, "texts", offset=7))
    job = _outcome(
        lambda: Hook(answer=BAD[bad], embeddings_cache=SimpleKVStore()).pipeline.values(
            ["x"], Role.TEXT, "texts", offset=7
        )
    )
    assert got == job
    assert got[0] == "BadVectorsError" and "texts[7]" in got[1]


def test_a_length_other_than_the_first_is_refused_and_named(route: Callable[..., Hook]) -> None:
    lengths = iter([8, 9])
    m = route(answer=lambda text: VEC + [0.5] * (next(lengths) - 8))
    m.get_text_embedding("a")
    with pytest.raises(BadVectorsError, match=r"9-dim vectors for text\[0\], but its vectors have 8 dimensions"):
        m.get_text_embedding("b")


def test_a_declared_length_is_held_from_the_first_call(route: Callable[..., Hook]) -> None:
    class Declared(Hook):
        embed_dim: int = 4

    m = route(Declared)
    with pytest.raises(BadVectorsError, match=r"8-dim vectors for text\[0\].*4 dimensions \(declared by the model\)"):
        m.get_text_embedding("a")


@pytest.mark.parametrize(
    ("plan", "message"),
    [
        (Plan(prepared=[1, 2]), "2 prepared values for 1 items"),
        (Plan(weights=[0]), "weights that are not one positive int"),
        (Plan(order=[1]), "order that is not a permutation"),
    ],
)
def test_a_bad_plan_is_refused(plan: Plan, message: str, route: Callable[..., Hook]) -> None:
    with pytest.raises(ValueError, match=message):
        route(plan=plan).get_text_embedding("x")


def test_the_models_checks_and_prepared_values_apply(route: Callable[..., Hook]) -> None:
    seen: list[Any] = []

    class Prepares(Hook):
        def _embed(self, batch: Any) -> Any:
            seen.append((batch.items, batch.positions, batch.prepared))
            return [VEC]

    m = route(Prepares, plan=Plan(prepared=["tokens"]), refuse="no")
    with pytest.raises(ValueError, match=r"q\[3\] is refused"):
        m.pipeline.values(["no"], Role.QUERY, "q", offset=3)
    m.pipeline.values(["yes"], Role.QUERY, "q", offset=3)
    assert seen == [(["yes"], [3], ["tokens"])]


def test_a_single_call_checks_its_text_as_a_batch_does(route: Callable[..., Hook]) -> None:
    m = route()
    with pytest.raises(TypeError, match=r"text\[0\] is int, expected str"):
        m.get_text_embedding(5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lone surrogate"):
        m.get_text_embedding("a\ud800b")
