"""Hook lists → float32 (issue 22's per-call cost): the struct fast path is bit-identical to numpy's cast,
refuses what the careful path refuses, and handing lists back never leaves the garbage collector off."""

from __future__ import annotations

import gc
from typing import Any

import numpy as np
import pytest

from embedstack.errors import BadVectorsError
from embedstack.outputs import _packed, as_lists, as_matrix


def _rows(values: np.ndarray, dim: int) -> list[list[float]]:
    return [[float(v) for v in values[i : i + dim]] for i in range(0, len(values) - dim + 1, dim)]


def test_packed_rows_equal_numpy_cast_bit_for_bit() -> None:
    rng = np.random.default_rng(0)
    edge = [3.4028235e38, 3.4028235677973366e38, 1e-46, 1.4e-45, -0.0, 0.0, 1.0, 0.1, 1 / 3]
    values = np.concatenate([rng.standard_normal(3000), rng.standard_normal(300) * 1e-40, edge * 3])
    rows = _rows(values, 33)
    packed = _packed(rows, len(rows))
    assert packed is not None and packed.dtype == np.float32 and packed.flags.writeable
    want = np.asarray(rows, dtype=np.float64).astype(np.float32)
    np.testing.assert_array_equal(packed.view(np.uint32), want.view(np.uint32))  # same rounding, signed zeros


@pytest.mark.parametrize(
    "rows",
    [
        [[1, 2, 3], [4, 5, 6]],  # ints
        [(0.5, 0.25, 1.5), (1.0, 2.0, 3.0)],  # tuples
        [[np.float64(0.5), np.float32(0.25), np.int64(3)], [1.0, 2.0, 3.0]],  # numpy scalars
    ],
)
def test_number_types_numpy_accepts_are_packed_the_same(rows: list[Any]) -> None:
    np.testing.assert_array_equal(as_matrix(rows, 2), np.asarray(rows, dtype=np.float64).astype(np.float32))


@pytest.mark.parametrize("dim", [4, 384, 3000])  # a single short row, a single real row (byte search), a big one
@pytest.mark.parametrize("zeros", [0, 5, 100])  # exact 0.0s beside the boolean (the search's budget)
@pytest.mark.parametrize("flag", [True, False, np.bool_(True), np.bool_(False)])
# fillers: zero bytes in every value; 4 zero bytes straddling two values; a few values with zero bytes (2.0 is
# 00 00 00 40) that are neither 0.0 nor 1.0
@pytest.mark.parametrize("filler", [[0.5], [1e-41, 0.5], [0.3] * 40 + [2.0]])
def test_booleans_are_refused_wherever_they_hide(dim: int, zeros: int, flag: Any, filler: list[float]) -> None:
    rest = dim - min(zeros, dim - 1)
    row: list[Any] = [0.0] * min(zeros, dim - 1) + (filler * rest)[:rest]
    row[-1] = flag
    for rows in ([row], [[0.25] * dim, row, [0.75] * dim] * 4):
        with pytest.raises(BadVectorsError, match="bool values"):
            as_matrix(rows, len(rows))


@pytest.mark.parametrize(
    ("rows", "what"),
    [
        ([[0.5, "0.5"]], "str"),
        ([[0.5, None]], "NoneType"),
        ([[1e39, 0.0]], "non-finite"),
        ([[0.5, float("nan")]], "non-finite"),
        ([[0.5], [0.5, 0.5]], "inconsistent length"),
        ([{0.5, 0.25}], "expected a list of vectors"),  # unordered: never packed in set order
        ([[[0.5, 0.5]]], "expected a list of vectors|shape"),
    ],
)
def test_what_cannot_be_packed_gets_the_careful_paths_error(rows: list[Any], what: str) -> None:
    with pytest.raises(BadVectorsError, match=what):
        as_matrix(rows, len(rows))


@pytest.mark.parametrize("enabled", [True, False])
def test_as_lists_returns_the_values_and_restores_the_collector(enabled: bool) -> None:
    mat = np.random.default_rng(1).standard_normal((1000, 8)).astype(np.float32)
    was = gc.isenabled()
    try:
        gc.enable() if enabled else gc.disable()
        out = as_lists(mat)
        assert gc.isenabled() is enabled
    finally:
        gc.enable() if was else gc.disable()
    assert out == mat.tolist() and isinstance(out[0][0], float)
