"""Compact vectors: Matryoshka truncation, float16/int8/uint8 scalar quantisation and binary codes.

int8 keeps ~99% of float32 retrieval quality at 4x less memory and binary codes ~96% at 32x when the
top candidates are rescored with the float query (the embedding-quantisation recipe). Scalar ranges
are computed once (`calibration_ranges`) and kept: a corpus embedded in chunks, or appended to later,
must be quantised with one set of ranges, never per batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Union

import numpy as np
import numpy.typing as npt

from embedstack.vectors.exact import RunningTopK, top_k
from embedstack.vectors.exact import normalize as unit_rows
from embedstack.vectors.precision import DEFAULT_RESCORE, Precision, check_precision

__all__ = [
    "binary_top_k",
    "calibration_ranges",
    "dequantize",
    "hamming_distances",
    "quantize",
    "rescore",
    "scalar_cosines",
    "truncate_dimensions",
]

Matrix = npt.NDArray[np.floating]
Codes = npt.NDArray[Union[np.int8, np.uint8, np.float16, np.float32]]

_LEVELS = 255  # int8 / uint8 steps between a dimension's calibrated minimum and maximum


def _matrix(vectors: npt.ArrayLike, what: str = "vectors") -> npt.NDArray[np.float32]:
    mat = np.asarray(vectors, dtype=np.float32)
    if mat.ndim != 2:
        raise ValueError(f"{what} must be a 2-D (n, dim) matrix, got shape {mat.shape}")
    if not np.isfinite(mat).all():
        row = int(np.flatnonzero(~np.isfinite(mat).all(axis=1))[0])
        raise ValueError(f"{what}[{row}] has NaN or infinite values; quantise finite vectors only")
    return mat


def truncate_dimensions(vectors: npt.ArrayLike, dimensions: int, normalize: bool = True) -> npt.NDArray[np.float32]:
    """The first `dimensions` values of each vector, re-normalised to unit length (Matryoshka truncation)."""
    mat = _matrix(vectors)
    if not 0 < dimensions <= mat.shape[1]:
        raise ValueError(f"dimensions must be between 1 and the vectors' {mat.shape[1]}, got {dimensions}")
    out = np.ascontiguousarray(mat[:, :dimensions])
    return unit_rows(out) if normalize else out.astype(np.float32, copy=False)


def calibration_ranges(vectors: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """Per-dimension (minimum, maximum) of calibration vectors: a (2, dim) float32 array to keep with a corpus.

    Compute it once from a representative sample (a few thousand of the corpus's own vectors) and pass it
    to every `quantize` call of that corpus, so all of its chunks share one scale.
    """
    mat = _matrix(vectors, "calibration vectors")
    if len(mat) < 2:
        raise ValueError("calibration needs at least 2 vectors (a few thousand give stable ranges)")
    return np.stack([mat.min(axis=0), mat.max(axis=0)]).astype(np.float32)


def _check_ranges(ranges: npt.ArrayLike, dim: int) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    r = np.asarray(ranges, dtype=np.float32)
    if r.shape != (2, dim):
        raise ValueError(f"ranges must have shape (2, {dim}) (minimum and maximum per dimension), got {r.shape}")
    if not np.isfinite(r).all() or (r[1] < r[0]).any():
        raise ValueError("ranges must be finite with maximum >= minimum in every dimension; use calibration_ranges()")
    low = r[0]
    step = np.maximum((r[1] - r[0]) / _LEVELS, np.float32(1e-12))
    return low, step


def quantize(vectors: npt.ArrayLike, precision: Precision | str, ranges: npt.ArrayLike | None = None) -> Codes:
    """`vectors` as `precision` codes.

    float16: halves. int8 / uint8: each dimension's calibrated [min, max] in 256 steps (values outside
    are clipped); `ranges` from `calibration_ranges` (None: computed from `vectors` themselves, right
    only when they are the whole corpus). binary / ubinary: one bit per dimension (value > 0), packed
    eight to a byte (int8 codes are the uint8 ones shifted by -128, as sentence-transformers stores them).
    """
    check_precision(precision)
    mat = _matrix(vectors)
    if precision == "float32":
        return mat
    if precision == "float16":
        return mat.astype(np.float16)
    if precision in ("binary", "ubinary"):
        packed = np.packbits(mat > 0, axis=1)
        return (packed.astype(np.int16) - 128).astype(np.int8) if precision == "binary" else packed
    low, step = _check_ranges(calibration_ranges(mat) if ranges is None else ranges, mat.shape[1])
    levels: npt.NDArray[np.float32] = np.clip(np.rint((mat - low) / step), 0, _LEVELS).astype(np.float32)
    if precision == "uint8":
        return levels.astype(np.uint8)
    return (levels - 128).astype(np.int8)


def dequantize(
    codes: npt.ArrayLike, precision: Precision | str, ranges: npt.ArrayLike | None = None
) -> npt.NDArray[np.float32]:
    """Approximate float32 vectors back from int8/uint8/float16 codes (for rescoring); binary has no inverse."""
    arr = np.asarray(codes)
    if precision in ("float32", "float16"):
        return arr.astype(np.float32)
    if precision in ("int8", "uint8"):
        if ranges is None:
            raise ValueError(f"dequantising {precision} codes needs the ranges they were made with")
        low, step = _check_ranges(ranges, arr.shape[1])
        levels = arr.astype(np.float32) + (128 if precision == "int8" else 0)
        return (levels * step + low).astype(np.float32)
    raise ValueError(f"{precision!r} codes cannot be turned back into vectors; keep int8 or float vectors to rescore")


#: Floats converted at a time by `scalar_cosines` (1024 rows of 384: 1.5 MiB, about a core's L2 here). Measured on
#: this 2-core machine at 1M x 384: 512 to 1024 rows best; 2048 and up several times slower (OpenBLAS's threads
#: start on such products and fight over the two cores).
_SCALAR_BLOCK_VALUES = 1024 * 384


def scalar_cosines(
    codes: npt.ArrayLike, query: npt.ArrayLike, precision: Precision | str, ranges: npt.ArrayLike
) -> npt.NDArray[np.float32]:
    """The cosine of `query` with each row of int8/uint8 `codes` as `dequantize` gives it, without
    dequantising: the ranges are folded into the query.

    A row dequantises to v = a + s * c (c its codes, s the per-dimension step, a = minimum + offset * s), so
    q.v = q.a + (q * s).c and |v|^2 = |a|^2 + 2 (a * s).c + |s * c|^2: per block of rows, one int8 to float32
    conversion into a cache-sized buffer, one scaling, one (rows, dim) x (dim, 2) product and one row sum of
    squares, instead of the dequantised copies. Zero rows score 0, as with dequantised vectors.
    """
    if precision not in ("int8", "uint8"):
        raise ValueError(f"scalar_cosines takes int8 or uint8 codes, not {precision!r}")
    arr = codes if isinstance(codes, np.ndarray) else np.asarray(codes)
    if arr.ndim != 2:
        raise ValueError(f"codes must be a 2-D (n, dim) matrix, got shape {arr.shape}")
    low, step = _check_ranges(ranges, arr.shape[1])
    q = np.asarray(query, dtype=np.float32).reshape(-1)
    if q.shape[0] != arr.shape[1]:
        raise ValueError(f"the query has {q.shape[0]} dims, the codes {arr.shape[1]}")
    offset = np.float32(128 if precision == "int8" else 0)
    base = (low + offset * step).astype(np.float32)  # the vector a code of 0 stands for
    weights = np.ascontiguousarray(np.stack([q, base], axis=1), dtype=np.float32)  # (dim, 2), applied to s * c
    q_base, base_sq = np.float32(q @ base), np.float32(base @ base)
    out = np.empty(len(arr), dtype=np.float32)
    rows = max(64, min(1024, _SCALAR_BLOCK_VALUES // max(arr.shape[1], 1)))
    buf = np.empty((min(rows, len(arr)), arr.shape[1]), dtype=np.float32)
    for start in range(0, len(arr), rows):
        block = arr[start : start + rows]
        scaled = buf[: len(block)]
        np.copyto(scaled, block, casting="unsafe")  # int8/uint8 -> float32, in place
        np.multiply(scaled, step, out=scaled)  # s * c
        dots = scaled @ weights  # (q.(s*c), a.(s*c)) per row
        squares = np.einsum("ij,ij->i", scaled, scaled)
        norms = np.sqrt(np.maximum(base_sq + 2 * dots[:, 1] + squares, np.float32(0)))
        out[start : start + len(block)] = (q_base + dots[:, 0]) / np.maximum(norms, np.float32(1e-12))
    return out


def _as_bits(codes: npt.ArrayLike) -> tuple[npt.NDArray[np.uint8], bool]:
    """The codes' bytes without a copy, and whether they are int8 ('binary': each byte is ubinary's ^ 0x80)."""
    arr = np.asarray(codes)
    if arr.dtype not in (np.int8, np.uint8):
        raise ValueError(f"binary codes are int8 ('binary') or uint8 ('ubinary'), got {arr.dtype}")
    return np.ascontiguousarray(arr).view(np.uint8), arr.dtype == np.int8


_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)
#: Rows per chunk of the Hamming kernels: 64k codes of 48 bytes stay in cache and bound the extra memory.
_CHUNK_ROWS = 65_536
_faiss_module: Any = None


def _faiss() -> Any:
    """faiss when installed (its Hamming loop is ~3x numpy's on 384-bit codes), else None; imported once."""
    global _faiss_module
    if _faiss_module is None:
        try:
            import faiss

            _faiss_module = faiss if hasattr(faiss, "hammings") and hasattr(faiss, "swig_ptr") else False
        except ImportError:
            _faiss_module = False
    return _faiss_module or None


def _chunk_distances(q: npt.NDArray[np.uint8], codes: npt.NDArray[np.uint8], out: npt.NDArray[np.int32]) -> None:
    """Hamming distances of the contiguous query bytes to each contiguous code row, into `out`."""
    faiss = _faiss()
    if faiss is not None:
        faiss.hammings(faiss.swig_ptr(q), faiss.swig_ptr(codes), 1, len(codes), q.shape[0], faiss.swig_ptr(out))
        return
    popcount = getattr(np, "bitwise_count", None)
    if popcount is None:  # numpy < 2
        out[:] = _POPCOUNT[np.bitwise_xor(codes, q)].sum(axis=1, dtype=np.int32)
        return
    if q.shape[0] % 8 == 0:  # 8 bytes at a time
        counts = popcount(np.bitwise_xor(codes.view(np.uint64), q.view(np.uint64)))
    else:
        counts = popcount(np.bitwise_xor(codes, q))
    if counts.shape[1] == 1:
        out[:] = counts[:, 0]
        return
    # column by column: numpy's row sum over a few columns is ~3x slower than adding whole columns
    columns = counts.T
    total = np.add(columns[0], columns[1], dtype=np.uint16)
    for column in columns[2:]:
        np.add(total, column, out=total)
    out[:] = total


def _query_bytes(query_codes: npt.ArrayLike, corpus_signed: bool) -> npt.NDArray[np.uint8]:
    q, q_signed = _as_bits(query_codes)
    q = np.ascontiguousarray(q.reshape(-1))
    if q_signed != corpus_signed:  # the 0x80 offset of int8 codes cancels in a XOR only when both sides have it
        q = q ^ np.uint8(0x80)
    return q


def _corpus_bytes(corpus_codes: npt.ArrayLike, width: int | None = None) -> tuple[Any, bool]:
    """The corpus codes as an (n, bytes) array (a memmap stays one: rows are read chunk by chunk), and signedness."""
    arr = corpus_codes if isinstance(corpus_codes, np.ndarray) else np.asarray(corpus_codes)
    if arr.dtype not in (np.int8, np.uint8):
        raise ValueError(f"binary codes are int8 ('binary') or uint8 ('ubinary'), got {arr.dtype}")
    if arr.ndim != 2 or (width is not None and arr.shape[1] != width):
        raise ValueError(f"corpus codes must be (n, {width if width is not None else 'bytes'}) bytes, got {arr.shape}")
    return arr, arr.dtype == np.int8


def _chunks(codes: Any, n: int) -> Iterator[tuple[int, npt.NDArray[np.uint8]]]:
    """(first row, contiguous uint8 rows) of each chunk: only one chunk is ever copied or paged in at a time."""
    for start in range(0, n, _CHUNK_ROWS):
        block = np.ascontiguousarray(codes[start : start + _CHUNK_ROWS])
        yield start, block.view(np.uint8)


def hamming_distances(query_codes: npt.ArrayLike, corpus_codes: npt.ArrayLike) -> npt.NDArray[np.int32]:
    """Bits that differ between one packed query code (bytes,) and each corpus code (n, bytes).

    Reads the corpus in chunks (a read-only np.memmap is fine): with faiss installed a million 384-bit codes
    take ~7 ms, with numpy alone (XOR and popcount over 64-bit words) ~20 ms.
    """
    arr, signed = _corpus_bytes(corpus_codes)
    q = _query_bytes(query_codes, signed)
    if arr.shape[1] != q.shape[0]:
        raise ValueError(f"corpus codes must be (n, {q.shape[0]}) bytes, got {arr.shape}")
    out = np.empty(len(arr), dtype=np.int32)
    for start, block in _chunks(arr, len(arr)):
        _chunk_distances(q, block, out[start : start + len(block)])
    return out


def _hamming_top_k(q: npt.NDArray[np.uint8], codes: Any, k: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int32]]:
    """Rows and distances of the exact `k` nearest codes, by distance then lowest row, in one pass of chunks."""
    top = RunningTopK(min(k, len(codes)))
    buf = np.empty(min(_CHUNK_ROWS, len(codes)), dtype=np.int32)
    for start, block in _chunks(codes, len(codes)):
        d = buf[: len(block)]
        _chunk_distances(q, block, d)
        top.add(start, d)
    return top.rows, top.keys.astype(np.int32)


def rescore(query: npt.ArrayLike, candidates: npt.ArrayLike, vectors: npt.ArrayLike, k: int) -> list[tuple[int, float]]:
    """The best `k` of `candidates` (row numbers) by the float query's dot product with their `vectors` rows
    (ties to the lower row, as every top-k here)."""
    q = np.asarray(query, dtype=np.float32).reshape(-1)
    idx = np.sort(np.asarray(candidates, dtype=np.intp))  # row order: top_k's ties then go to the lower row
    matrix = vectors if isinstance(vectors, np.ndarray) else np.asarray(vectors)
    scores = np.asarray(matrix[idx], dtype=np.float32) @ q  # gathers the candidates' rows only (memmap-friendly)
    best = top_k(scores, k)
    return [(int(idx[i]), float(scores[i])) for i in best]


def binary_top_k(
    query: npt.ArrayLike,
    corpus_codes: npt.ArrayLike,
    k: int = 10,
    rescore_vectors: npt.ArrayLike | None = None,
    rescore_multiplier: int = DEFAULT_RESCORE,
) -> list[tuple[int, float]]:
    """Search binary codes: the `k × rescore_multiplier` nearest by Hamming distance, rescored with the float
    query against `rescore_vectors` (float, or int8 codes dequantised by the caller) when given.

    Without rescoring the score is 1 - hamming / bits, a similarity in [0, 1]. The Hamming step is exact
    (ties go to the lowest row) and reads the codes in chunks, so a read-only np.memmap larger than RAM works.
    """
    q = np.asarray(query, dtype=np.float32).reshape(1, -1)
    codes, signed = _corpus_bytes(corpus_codes, (q.shape[1] + 7) // 8)
    q_codes = _query_bytes(np.packbits(q > 0, axis=1)[0], signed)
    bits = q.shape[1]
    if rescore_vectors is None:
        rows, distances = _hamming_top_k(q_codes, codes, k)
        return [(int(i), 1.0 - float(d) / bits) for i, d in zip(rows, distances)]
    candidates, _ = _hamming_top_k(q_codes, codes, k * max(1, rescore_multiplier))
    return rescore(q[0], candidates, rescore_vectors, k)
