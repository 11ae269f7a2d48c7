"""Output kinds: what a provider's rows are, and how the pipeline checks, caches and returns them.

The pipeline moves rows it does not understand; everything kind-specific (checking a provider's
raw output, the bytes a cache stores, the Python value a caller gets back) is asked of the kind.
`Dense(dim)` is a float32 matrix, one row per item; `RowKind` is the base of every other kind
(sparse vectors, token vectors, scores): one Python object per item, cached as bytes.
"""

from __future__ import annotations

import gc
import math
import struct
from abc import ABC, abstractmethod
from collections.abc import Sequence
from operator import getitem
from typing import Any, ClassVar, NamedTuple, NoReturn

import numpy as np
import numpy.typing as npt

from embedstack.errors import BadVectorsError

__all__ = ["Dense", "OutputKind", "RowKind", "Rows", "Scores", "Sparse", "SparseVector", "as_lists", "as_matrix"]

Matrix = npt.NDArray[np.float32]
#: A kind's rows for several items: an (n, dim) float32 matrix (Dense) or a 1-D object array (RowKind).
Rows = npt.NDArray[Any]


class OutputKind(ABC):
    """What a provider returns per item, declared before any model is loaded.

    `size` is the fixed length of a row when the kind has one (a dense vector's dimensions), or None
    when unknown until the model runs; the pipeline then holds the model to the first length it sees.
    """

    name: ClassVar[str]
    #: Whether every row has one length (`size`), held across calls and recorded in the cache.
    fixed_size: ClassVar[bool] = False

    def __init__(self, size: int | None = None) -> None:
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size <= 0):
            raise ValueError(f"an output size must be a positive int or None, got {size!r}")
        self.size = size

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.size!r})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.size == self.size  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self), self.size))

    @abstractmethod
    def check(self, raw: Any, n: int) -> Rows:
        """A provider's raw output for `n` items as rows; BadVectorsError (with positions where known) if not."""

    @abstractmethod
    def empty(self, n: int, like: Rows) -> Rows:
        """Room for `n` rows shaped like `like`."""

    @abstractmethod
    def row_size(self, rows: Rows) -> int | None:
        """The length every row must share (checked across calls), or None when rows have no fixed length."""

    @abstractmethod
    def to_blobs(self, rows: Rows) -> list[bytes]:
        """Each row as the bytes a cache stores (a multiple of 4 long)."""

    @abstractmethod
    def from_blobs(self, blobs: Sequence[bytes], size: int | None) -> tuple[Rows, list[bool]]:
        """Cached bytes back to rows, and which blobs were readable (a row of another `size` is not)."""

    @abstractmethod
    def to_python(self, rows: Rows) -> list[Any]:
        """The rows as plain Python values (what LlamaIndex-style methods and events return)."""

    def blank(self, rows: Rows, mask: npt.NDArray[np.bool_]) -> None:
        """Clear the rows under `mask` (rows nothing was found for)."""
        rows[mask] = None


_NOT_NUMBERS = (bool, np.bool_, str, bytes, type(None))
#: float32 bits outside those of 1.0 (0x3F800000): a value with none of them set is 0.0, 1.0, or a power of two
#: made of 1.0's exponent bits, so the few values that could have been booleans are found with one AND.
_BEYOND_ONE = np.uint32(0xC07FFFFF)
#: Past this share of exact 0s and 1s, every value's type is checked in one pass instead of one by one.
_FEW = 8


def _non_numeric(rows: Sequence[Any], arr: npt.NDArray[Any] | None = None, plain: bool = False) -> str | None:
    """The name of a non-numeric value type among `rows` (booleans, strings, None), if any.

    With `arr`, the rows read as numbers (by numpy or packed as float32), only the values read as
    exactly 0 or 1 can have been booleans (strings and None never read as numbers), so only those are
    looked at: one vectorised comparison for rows of real embeddings, not a Python visit of every value.
    `plain`: every row is a list or tuple.
    """
    kinds: set[type] = set()
    try:
        if arr is None or arr.ndim != 2:
            for row in rows:
                if isinstance(row, np.ndarray):
                    if row.dtype.kind not in "fiu":
                        return str(row.dtype)
                    continue
                kinds.update(map(type, row))
        else:
            if arr.dtype == np.float32:  # two passes: bits outside 1.0's exponent are all 0 (0.0, 1.0, rare others)
                suspects = (arr.view(np.uint32) & _BEYOND_ONE) == 0
            else:
                suspects = (arr == 0) | (arr == 1)
            if not suspects.any():
                return None
            flat = np.flatnonzero(suspects)  # (np.nonzero on two axes costs several times more)
            where_r = flat // arr.shape[1]
            where_c = flat - where_r * arr.shape[1]
            if len(where_r) * _FEW > arr.size:
                for r in np.unique(where_r).tolist():
                    row = rows[r]
                    if isinstance(row, np.ndarray):
                        if row.dtype.kind == "b":
                            return "bool"
                        continue
                    kinds.update(map(type, row))
            elif plain:  # lists or tuples: fetch the suspects in C-level loops
                kinds.update(map(type, map(getitem, map(rows.__getitem__, where_r.tolist()), where_c.tolist())))
            else:
                kinds.update(
                    type(rows[r][c]) if not isinstance(rows[r], np.ndarray) else rows[r].dtype.type
                    for r, c in zip(where_r.tolist(), where_c.tolist())
                )
    except TypeError:
        return None  # not a list of rows: the shape check reports it
    return ", ".join(sorted(_type_name(t) for t in kinds if issubclass(t, _NOT_NUMBERS))) or None


def _type_name(t: type) -> str:
    return "bool" if t is np.bool_ else t.__name__


_FLOAT32 = np.dtype(np.float32)  # native order, as struct's native mode writes
#: struct packers by row length: `pack_into(buffer, offset, *row)` writes a row of Python numbers as float32.
#: Native mode ("384f", not "<384f") is C's cast, the one numpy's astype makes: the same rounding, and values
#: past float32's range become infinities, which the finiteness check then refuses; ~20% faster than the
#: standard mode's careful packing.
_PACKERS: dict[int, Any] = {}


def _packed(rows: Sequence[Any], n: int) -> Matrix | None:
    """Lists (or tuples) of numbers packed straight into an (n, dim) float32 matrix; None when they are not.

    struct converts each Python float once, with the same rounding as numpy's cast, about 3x faster than
    numpy's element-wise reading of nested lists. Anything unusual (other row types, unequal lengths,
    strings, None) returns None: the careful path then explains it.
    Booleans (which struct packs as 0.0 and 1.0) raise BadVectorsError.
    """
    if n == 0 or len(rows) != n:
        return None
    first = rows[0]
    if type(first) is not list and type(first) is not tuple:
        return None
    dim = len(first)
    if dim == 0:
        return None
    pack_into = _PACKERS.get(dim)
    if pack_into is None:
        pack_into = _PACKERS.setdefault(dim, struct.Struct(f"{dim}f").pack_into)
    step = 4 * dim
    buf = bytearray(step * n)
    try:
        offset = 0
        for row in rows:
            if type(row) is not list and type(row) is not tuple:
                return None
            pack_into(buf, offset, *row)
            offset += step
    except (struct.error, TypeError, OverflowError, ValueError):
        return None
    mat: Matrix = np.ndarray((n, dim), _FLOAT32, buf)  # a view of buf (one call, not frombuffer + reshape)
    bad_type = _packed_non_numeric(rows, buf, step, mat)
    if bad_type:
        raise BadVectorsError(f"the model returned {bad_type} values in its vectors, expected numbers")
    return mat


#: float32 0.0 and 1.0 as stored (where booleans, False and True, would have been packed): both hold zero bytes.
_SUSPECT_WORDS = (struct.pack("=f", 0.0), struct.pack("=f", 1.0))
#: Up to this many packed bytes (a few rows), a byte search beats numpy's fixed costs.
_SEARCH_BYTES = 4096
#: ... and while at most this many values hold a zero byte.
_SEARCH_VALUES = 32


def _packed_non_numeric(rows: Sequence[Any], buf: bytearray, step: int, mat: Matrix) -> str | None:
    """`_non_numeric` for rows just packed into `buf`: only values packed as 0.0 or 1.0 can be booleans.

    A few rows (single calls) are searched byte-wise, which skips numpy's fixed costs: both suspect values
    hold a zero byte, which one memchr-speed scan finds, so only the few values holding a zero byte are
    looked at. A batch, or rows with many zero bytes, go to the vectorised search.
    """
    if len(buf) > _SEARCH_BYTES:
        return _non_numeric(rows, mat, plain=True)
    find, holds = buf.find, buf.startswith
    row = rows[0] if len(rows) == 1 else None  # a single call's row: its values are indexed directly
    dim = step >> 2
    bad: set[type] | None = None
    budget = _SEARCH_VALUES
    pos = find(0)
    while pos >= 0:
        start = pos & -4  # the value this zero byte belongs to
        if holds(_SUSPECT_WORDS, start):
            at = start >> 2
            kind = type(row[at] if row is not None else rows[at // dim][at % dim])
            if kind is not float and issubclass(kind, _NOT_NUMBERS):
                bad = bad or set()
                bad.add(kind)
        budget -= 1
        if not budget:
            return _non_numeric(rows, mat, plain=True)
        pos = find(0, start + 4)
    return ", ".join(sorted(_type_name(t) for t in bad)) if bad else None


def _dtype_name(arr: npt.NDArray[Any]) -> str:
    return {"b": "bool", "U": "str", "S": "bytes"}.get(arr.dtype.kind, str(arr.dtype))


def _all_finite(mat: Matrix) -> bool:
    """Whether every value is finite. The sum of squares (one BLAS call) is finite exactly when they all are,
    unless it overflows (values past ~1e19), which falls back to the element-wise test."""
    flat = mat.reshape(-1)
    return math.isfinite(flat.dot(flat)) or bool(np.isfinite(mat).all())


def as_matrix(raw: Any, n: int) -> Matrix:
    """A hook's output as an (n, dim) float32 matrix of finite numbers; BadVectorsError if it is not one.

    Booleans, strings and None are refused even where numpy would convert them (True → 1.0, "0.5" → 0.5).
    Non-finite rows are reported by their row numbers in `BadVectorsError.positions`.
    """
    if isinstance(raw, np.ndarray):
        if raw.dtype.kind not in "fiu":
            raise BadVectorsError(f"the model returned an array of dtype {raw.dtype}, expected numbers")
        arr = raw
    elif (packed := _packed(raw, n) if isinstance(raw, (list, tuple)) else None) is not None:
        # (n, dim > 0) float32 by construction, booleans refused inside: only finiteness is left to check
        return packed if _all_finite(packed) else _refuse_non_finite(packed, n)
    else:
        rows = raw if isinstance(raw, (list, tuple)) else list(raw) if hasattr(raw, "__iter__") else raw
        found: npt.NDArray[Any] | None
        try:
            found = np.asarray(rows)  # numpy's dtype discovery: strings, bytes and None give non-number dtypes
        except (ValueError, TypeError):
            found = None
        if found is None or found.dtype.kind not in "fiu":
            bad_type = _non_numeric(rows) if found is None or found.dtype.kind == "O" else _dtype_name(found)
            if bad_type:
                raise BadVectorsError(f"the model returned {bad_type} values in its vectors, expected numbers")
            lengths = sorted({len(r) for r in rows if hasattr(r, "__len__")}) if hasattr(rows, "__iter__") else []
            if len(lengths) > 1:
                raise BadVectorsError(f"the model returned vectors of inconsistent length {lengths} in one batch")
            raise BadVectorsError(f"the model returned {type(raw).__name__}, expected a list of vectors or a 2-D array")
        arr = found
        bad_type = _non_numeric(rows, arr)
        if bad_type:
            raise BadVectorsError(f"the model returned {bad_type} values in its vectors, expected numbers")
    if arr.dtype == np.float32:
        mat = arr
    else:
        with np.errstate(over="ignore"):
            mat = arr.astype(np.float32)
    if mat.ndim != 2 or mat.shape[0] != n:
        raise BadVectorsError(f"the model returned an array of shape {mat.shape} for {n} items, expected ({n}, dim)")
    if mat.shape[1] == 0:
        raise BadVectorsError(f"the model returned empty vectors for {n} items")
    return mat if _all_finite(mat) else _refuse_non_finite(mat, n)


def _refuse_non_finite(mat: Matrix, n: int) -> NoReturn:
    """BadVectorsError naming the rows of `mat` with NaN or infinity (`positions`: their row numbers)."""
    bad_rows = np.flatnonzero(~np.isfinite(mat).all(axis=1)).tolist()
    raise BadVectorsError(
        f"the model returned non-finite values (NaN or infinity, or beyond float32's range) for {len(bad_rows)} "
        f"of {n} items",
        bad_rows,
    )


#: Below this many rows, making lists costs too little for the garbage collector to matter.
_GC_ROWS = 256


def as_lists(mat: Matrix) -> list[list[float]]:
    """A matrix's rows as lists of Python floats (what LlamaIndex-style methods return).

    The cyclic garbage collector is paused for the one C call that builds them: lists of floats hold no
    cycles, and left on it would traverse the heap again and again while thousands of lists appear
    (measured: a third of the cost of a 20,000-row batch). No Python code runs during that call.
    """
    if len(mat) < _GC_ROWS or not gc.isenabled():
        return mat.tolist()  # type: ignore[no-any-return]
    gc.disable()
    try:
        return mat.tolist()  # type: ignore[no-any-return]
    finally:
        gc.enable()


class Dense(OutputKind):
    """One float32 vector of `size` values per item (None: learned from the model's first answer)."""

    name = "dense"
    fixed_size = True

    def check(self, raw: Any, n: int) -> Rows:
        """Raw vectors as an (n, dim) float32 matrix of finite numbers."""
        return as_matrix(raw, n)

    def empty(self, n: int, like: Rows) -> Rows:
        """An uninitialised (n, dim) float32 matrix."""
        return np.empty((n, like.shape[1]), dtype=np.float32)

    def row_size(self, rows: Rows) -> int | None:
        """The vectors' length."""
        return rows.shape[1]  # type: ignore[no-any-return]

    def to_blobs(self, rows: Rows) -> list[bytes]:
        """Each vector's little-endian float32 bytes."""
        mat = np.ascontiguousarray(rows, dtype="<f4")
        return [mat[i].tobytes() for i in range(len(mat))]

    def from_blobs(self, blobs: Sequence[bytes], size: int | None) -> tuple[Rows, list[bool]]:
        """Blobs of `size` finite float32 values as a matrix (others marked unreadable)."""
        if size is None:
            raise ValueError("a dense row size is needed to read cached vectors")
        width = 4 * size
        ok = [len(b) == width for b in blobs]
        good = [b for b, fits in zip(blobs, ok) if fits]
        mat = np.frombuffer(bytearray().join(good), dtype="<f4").reshape(len(good), size)  # writable: no copy later
        finite = np.isfinite(mat).all(axis=1)
        if not finite.all():
            it = iter(finite.tolist())
            ok = [fits and next(it) for fits in ok]
            mat = mat[finite]
        return mat, ok

    def to_python(self, rows: Rows) -> list[Any]:
        """Lists of floats."""
        return as_lists(rows)

    def blank(self, rows: Rows, mask: npt.NDArray[np.bool_]) -> None:
        """Zero the rows under `mask`."""
        rows[mask] = 0.0


class RowKind(OutputKind):
    """A kind with one Python object per item (sparse vectors, token vectors, scores).

    Subclasses implement `check_row` (raise ValueError naming what is wrong), `encode_row` and
    `decode_row`; rows travel as 1-D object arrays.
    """

    @abstractmethod
    def check_row(self, row: Any) -> Any:
        """One raw row as this kind's value; ValueError saying what is wrong with it."""

    @abstractmethod
    def encode_row(self, row: Any) -> bytes:
        """One row's cache bytes (a multiple of 4 long)."""

    @abstractmethod
    def decode_row(self, blob: bytes) -> Any:
        """One row from its cache bytes; ValueError if they are not one."""

    def check(self, raw: Any, n: int) -> Rows:
        """Each raw row checked; BadVectorsError naming the rows that are not this kind's."""
        try:
            items = list(raw)
        except TypeError:
            raise BadVectorsError(f"the model returned {type(raw).__name__}, expected a list of {n} rows") from None
        if len(items) != n:
            raise BadVectorsError(f"the model returned {len(items)} rows for {n} items")
        out = np.empty(n, dtype=object)
        bad: list[int] = []
        why = ""
        for i, row in enumerate(items):
            try:
                out[i] = self.check_row(row)
            except (ValueError, TypeError) as e:
                bad.append(i)
                why = why or str(e)
        if bad:
            raise BadVectorsError(
                f"the model returned invalid {self.name} rows for {len(bad)} of {n} items ({why})", bad
            )
        return out

    def empty(self, n: int, like: Rows) -> Rows:
        """An object array of `n` Nones."""
        return np.empty(n, dtype=object)

    def row_size(self, rows: Rows) -> int | None:
        """No fixed row length."""
        return None

    def to_blobs(self, rows: Rows) -> list[bytes]:
        """Each row's bytes."""
        return [self.encode_row(r) for r in rows]

    def from_blobs(self, blobs: Sequence[bytes], size: int | None) -> tuple[Rows, list[bool]]:
        """Each blob decoded; an undecodable one is marked unreadable."""
        rows: list[Any] = []
        ok: list[bool] = []
        for b in blobs:
            try:
                rows.append(self.decode_row(b))
                ok.append(True)
            except (ValueError, TypeError):
                ok.append(False)
        out = np.empty(len(rows), dtype=object)
        out[:] = rows if rows else []
        return out, ok

    def to_python(self, rows: Rows) -> list[Any]:
        """The rows as they are."""
        return list(rows)


class Scores(Dense):
    """One float per item (a reranker's relevance score): an (n, 1) float32 matrix; Python values are floats."""

    name = "scores"

    def __init__(self, size: int | None = 1) -> None:
        if size not in (None, 1):
            raise ValueError(f"scores have one value per item, not {size}")
        super().__init__(1)

    def to_python(self, rows: Rows) -> list[Any]:
        """One float per item."""
        return rows[:, 0].tolist()  # type: ignore[no-any-return]


class SparseVector(NamedTuple):
    """A sparse vector: strictly increasing int32 `indices` and their float32 `values` (finite, non-zero)."""

    indices: npt.NDArray[np.int32]
    values: npt.NDArray[np.float32]

    def to_dict(self) -> dict[int, float]:
        """As LlamaIndex's `SparseEmbedding`: {index: value}."""
        return dict(zip(self.indices.tolist(), self.values.tolist()))


class Sparse(RowKind):
    """One sparse vector per item over `size` dimensions (a vocabulary; None: unbounded).

    A provider may return `SparseVector`s, {index: value} dicts or (indices, values) pairs; rows are
    checked (integer indices in range, finite values), zeros dropped and indices sorted, so equal
    vectors are equal rows and cache bytes.
    """

    name = "sparse"

    def check_row(self, row: Any) -> SparseVector:
        """A raw sparse row as a canonical `SparseVector`; ValueError saying what is wrong."""
        if isinstance(row, dict):
            idx_raw, val_raw = list(row.keys()), list(row.values())
        elif isinstance(row, (tuple, list)) and len(row) == 2:
            idx_raw, val_raw = row[0], row[1]
        else:
            raise ValueError(
                f"a sparse row must be a SparseVector, {{index: value}} or (indices, values), not {type(row).__name__}"
            )
        indices = np.asarray(idx_raw)
        values = np.asarray(val_raw)
        if indices.ndim != 1 or values.ndim != 1 or len(indices) != len(values):
            raise ValueError(f"{len(indices)} indices for {len(values)} values")
        if len(indices) and indices.dtype.kind not in "iu":
            raise ValueError(f"indices of dtype {indices.dtype}, expected integers")
        if len(values) and values.dtype.kind not in "fiu":
            raise ValueError(f"values of dtype {values.dtype}, expected numbers")
        if len(indices) and (indices.min() < 0 or (self.size is not None and indices.max() >= self.size)):
            raise ValueError(f"an index outside [0, {self.size if self.size is not None else 'inf'})")
        with np.errstate(over="ignore"):
            vals = values.astype(np.float32)
        if not np.isfinite(vals).all():
            raise ValueError("non-finite values (NaN or infinity, or beyond float32's range)")
        order = np.argsort(indices, kind="stable")
        idx = indices[order].astype(np.int64)
        if len(idx) > 1 and (np.diff(idx) == 0).any():
            raise ValueError("a repeated index")
        keep = vals[order] != 0
        return SparseVector(idx[keep].astype(np.int32), vals[order][keep])

    def encode_row(self, row: SparseVector) -> bytes:
        """The count (int32), the indices (int32 each), then the values (float32 each), little-endian."""
        head = np.array([len(row.indices)], dtype="<i4")
        return head.tobytes() + row.indices.astype("<i4").tobytes() + row.values.astype("<f4").tobytes()

    def decode_row(self, blob: bytes) -> SparseVector:
        """A row from `encode_row`'s bytes; ValueError when they are not one."""
        if len(blob) < 4:
            raise ValueError("too short")
        n = int(np.frombuffer(blob[:4], dtype="<i4")[0])
        if n < 0 or len(blob) != 4 + 8 * n:
            raise ValueError("wrong length")
        indices = np.frombuffer(blob[4 : 4 + 4 * n], dtype="<i4").astype(np.int32)
        values = np.frombuffer(blob[4 + 4 * n :], dtype="<f4").astype(np.float32)
        if not np.isfinite(values).all() or (n and (indices.min() < 0 or (np.diff(indices) <= 0).any())):
            raise ValueError("not a canonical sparse row")
        if self.size is not None and n and indices.max() >= self.size:
            raise ValueError("an index outside the vocabulary")
        return SparseVector(indices, values)

    def to_python(self, rows: Rows) -> list[Any]:
        """{index: value} dicts (LlamaIndex's SparseEmbedding)."""
        return [r.to_dict() for r in rows]
