"""The one vocabulary of stored precisions, and the one rescoring default.

Stored precisions name how vectors are kept on disk (`float32` ... `ubinary`); a model's compute precision
(`fp32`, `fp16`, `bf16`, `int8`: how it runs) is a different thing and is named by the providers.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

import numpy as np

__all__ = [
    "BINARY",
    "DEFAULT_RESCORE",
    "FLOAT",
    "PRECISIONS",
    "RESCORE_PRECISION",
    "SCALAR",
    "STORED_DTYPES",
    "Precision",
    "check_precision",
]

Precision = Literal["float32", "float16", "int8", "uint8", "binary", "ubinary"]
#: Every stored precision, most exact first.
PRECISIONS: tuple[str, ...] = get_args(Precision)
#: Precisions stored as floats (no calibration, no rescoring).
FLOAT = frozenset({"float32", "float16"})
#: Precisions that need per-dimension calibration ranges.
SCALAR = frozenset({"int8", "uint8"})
#: Precisions stored as packed bits (one bit per dimension, eight to a byte).
BINARY = frozenset({"binary", "ubinary"})
#: How the rescoring vectors kept beside binary codes are stored (4x smaller than float32, ~99.9% of its recall).
RESCORE_PRECISION = "int8"
#: Binary search's candidates per hit, rescored with the float query (the one default: library, CLI and search).
DEFAULT_RESCORE = 10
#: The numpy dtype each precision is stored as (binary codes: one byte per eight dimensions).
STORED_DTYPES: dict[str, np.dtype[Any]] = {
    "float32": np.dtype("<f4"),
    "float16": np.dtype("<f2"),
    "int8": np.dtype("i1"),
    "uint8": np.dtype("u1"),
    "binary": np.dtype("i1"),
    "ubinary": np.dtype("u1"),
}


def check_precision(precision: str) -> str:
    """`precision` when it is a stored precision, else a ValueError that lists them."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    return precision
