"""Search an output in bounded memory: exact top-k over chunks, Hamming + rescoring, or an HNSW index.

Float and int8 outputs are scored chunk by chunk (cosine with the float query) with a running top-k; binary
outputs by Hamming distance, their best `k × rescore` rows then rescored with the float query against the
int8 rescoring vectors kept beside them. With an index (`index=True`, or one found beside the output) the
index proposes the candidates and the stored vectors score them exactly. Each step is timed.
"""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from embedstack.jobs._embed import (
    DEFAULT_CACHE,
    CacheArg,
    ModelMismatchError,
    _resolve,
    check_model,
    pipeline_for,
    with_model_options,
)
from embedstack.jobs._hits import TIMING_KEYS, Hit, SearchResult
from embedstack.jobs._output import OutputError, is_dense, read_meta
from embedstack.jobs._stored import StoredRows, open_stored
from embedstack.types import Role
from embedstack.vectors.compact import hamming_distances, scalar_cosines
from embedstack.vectors.exact import RunningTopK
from embedstack.vectors.formats import VectorFormat, unsigned_bits
from embedstack.vectors.precision import DEFAULT_RESCORE

__all__ = ["DEFAULT_RESCORE", "TIMING_KEYS", "Hit", "SearchResult", "search"]

_CHUNK_BYTES = 32 << 20  # stored bytes scored per step (float work arrays are at most 4x that for int8)


def _cosines(vectors: npt.NDArray[np.float32], q: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Cosine of each row with the unit query (zero rows score 0)."""
    norms = np.sqrt(np.einsum("ij,ij->i", vectors, vectors))
    scores: npt.NDArray[np.float32] = (vectors @ q) / np.maximum(norms, np.float32(1e-12))
    return scores


def _best(rows: npt.NDArray[np.int64], scores: npt.NDArray[Any], k: int) -> list[tuple[int, float]]:
    order = np.lexsort((rows, -np.asarray(scores, dtype=np.float64)))[:k]
    return [(int(rows[i]), float(scores[i])) for i in order]


def _chunk_rows(stored: StoredRows, chunk_size: int | None) -> int:
    if chunk_size is not None:
        return chunk_size
    per_row = max(stored.fmt.width * stored.fmt.dtype.itemsize, 1)
    return max(1024, _CHUNK_BYTES // per_row)


def _exact(
    stored: StoredRows, q: npt.NDArray[np.float32], k: int, rescore: int, rows: int, timings: dict[str, float]
) -> tuple[list[tuple[int, float]], str]:
    """Exact search over the stored rows in chunks."""
    fmt = stored.fmt
    t0 = time.perf_counter()
    if not fmt.binary:
        top = RunningTopK(k)
        ranges = fmt.ranges if fmt.precision in ("int8", "uint8") else None
        for start, codes in stored.batches("vector", rows):
            if ranges is not None:  # the ranges folded into the query: no dequantised copy of the chunk
                top.add(start, -scalar_cosines(codes, q, fmt.precision, ranges))
            else:
                top.add(start, -_cosines(fmt.decode(codes), q))
        timings["candidate_search_s"] = time.perf_counter() - t0
        return [(int(r), -float(s)) for r, s in zip(top.rows, top.keys)], f"exact {fmt.precision}"
    q_bits = np.packbits(q > 0)
    wanted = k * rescore if fmt.rescore else k
    top = RunningTopK(wanted)
    for start, codes in stored.batches("vector", rows):
        top.add(start, hamming_distances(q_bits, codes))
    timings["candidate_search_s"] = time.perf_counter() - t0
    if not fmt.rescore:
        return [(int(r), 1.0 - float(d) / fmt.dim) for r, d in zip(top.rows, top.keys)], "exact hamming"
    return _rescore(stored, q, top.rows, k, timings), f"hamming top {wanted} + {fmt.rescore} rescoring"


def _rescore(
    stored: StoredRows, q: npt.NDArray[np.float32], rows: npt.NDArray[np.int64], k: int, timings: dict[str, float]
) -> list[tuple[int, float]]:
    """The best k of `rows` by exact cosine with the float query: the rescoring vectors of binary outputs,
    the stored vectors of others."""
    t0 = time.perf_counter()
    fmt = stored.fmt
    if len(rows) == 0:
        return []
    if fmt.binary:
        vectors = fmt.decode_rescore(stored.take(rows, "rescore"))
    else:
        vectors = fmt.decode(stored.take(rows, "vector"))
    best = _best(rows, _cosines(vectors, q), k)
    timings["rescoring_s"] = time.perf_counter() - t0
    return best


def _with_index(
    stored: StoredRows,
    q: npt.NDArray[np.float32],
    k: int,
    rescore: int,
    index: bool | None,
    timings: dict[str, float],
) -> tuple[list[tuple[int, float]], str] | None:
    """Search through the HNSW index beside the output (built or rebuilt as needed); None: search exactly."""
    if index is False:
        return None
    fmt = stored.fmt
    try:
        from embedstack.vectors.index import VectorIndex, index_path
    except ImportError:
        if index:
            raise
        return None
    where = index_path(stored.path)
    fingerprint = stored.fingerprint()
    found = VectorIndex.stored_fingerprint(where)
    if found is None and not index:
        return None  # no index and none asked for
    metric = "hamming" if fmt.binary else "cos"
    vi = None
    if found == fingerprint:
        t0 = time.perf_counter()
        try:
            vi = VectorIndex.load(where)
        except OutputError as e:
            warnings.warn(f"{e}; rebuilding it", UserWarning, stacklevel=3)
        timings["index_load_s"] = time.perf_counter() - t0
        if vi is not None and vi.metric != metric:
            vi = None
    if vi is None:
        t0 = time.perf_counter()
        vectors = _index_vectors(stored, metric)
        vi = VectorIndex.build(vectors, metric=metric, fingerprint=fingerprint)
        try:
            vi.save(where)
        except OSError as e:
            warnings.warn(
                f"{where}: could not save the index ({e}); it was used for this search only", UserWarning, stacklevel=3
            )
        timings["index_build_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    wanted = k * rescore
    probe = np.packbits(q > 0) if metric == "hamming" else q
    rows, _ = vi.search(probe, min(wanted, stored.count))
    timings["candidate_search_s"] = time.perf_counter() - t0
    rows = np.asarray(rows, dtype=np.int64)
    if fmt.binary and not fmt.rescore:
        bits = unsigned_bits(stored.take(rows, "vector"))
        dist = hamming_distances(np.packbits(q > 0), bits).astype(np.float64)
        order = np.lexsort((rows, dist))[:k]
        return [(int(rows[i]), 1.0 - dist[i] / fmt.dim) for i in order], "index (hamming)"
    how = f"{fmt.rescore} rescoring" if fmt.binary else "exact rescoring"
    return _rescore(stored, q, rows, k, timings), f"index ({metric}) top {wanted} + {how}"


def _index_vectors(stored: StoredRows, metric: str) -> np.ndarray:
    """What the index is built from: packed bits for "hamming", float vectors for "cos" (memory-mapped
    when they are stored as float32 in .npy)."""
    fmt = stored.fmt
    array = getattr(stored, "array", None)
    if array is not None and (metric == "hamming" or fmt.precision == "float32"):
        return np.asarray(array("vector")) if metric == "cos" else array("vector")
    parts = [
        codes if metric == "hamming" else fmt.decode(codes)
        for _, codes in stored.batches("vector", _chunk_rows(stored, None))
    ]
    return np.concatenate(parts) if parts else np.zeros((0, fmt.width), fmt.dtype)


def search(
    out: str | os.PathLike[str],
    query: str,
    k: int = 10,
    *,
    model: Any = None,
    cache: CacheArg = DEFAULT_CACHE,
    rescore: int = DEFAULT_RESCORE,
    index: bool | None = None,
    chunk_size: int | None = None,
) -> SearchResult:
    """Cosine top-k of `query` over an output, with the model recorded in it (or an identical one); over an
    output of sparse vectors only, the top k by their dot product with the query's (`jobs._sparse.sparse_search`).

    The output is read memory-mapped (.npy) or in chunks (Parquet, .jsonl) of `chunk_size` rows, so it
    may be larger than memory. Binary outputs: the `k × rescore` nearest by Hamming distance, rescored
    against the kept int8 vectors (score: their exact cosine). `index`: True builds (or rebuilds) the HNSW
    index beside the output and uses it, None uses one when present (rebuilt if the output changed), False
    searches exactly. Returns the hits with `.timings` (seconds per step) and `.method`.
    """
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    if rescore <= 0:
        raise ValueError(f"rescore must be positive, got {rescore}")
    if chunk_size is not None and chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    start = time.perf_counter()
    timings = dict.fromkeys(TIMING_KEYS, 0.0)
    path = Path(out)
    meta = read_meta(path)
    if not is_dense(meta):  # sparse vectors only: search them (the model recorded in the output)
        if index:
            raise ValueError(
                f"{path} holds sparse vectors only; an index is built over dense vectors, leave out --index"
            )
        if model is not None:
            raise ModelMismatchError(
                f"{path} holds sparse vectors only, searched with the sparse model recorded in it; leave out --model"
            )
        from embedstack.jobs._sparse_search import sparse_search

        return sparse_search(path, query, k)
    stored = open_stored(path, meta)
    fmt = VectorFormat.from_meta(meta)
    q = _query_vector(path, meta, fmt, query, model, cache, timings)
    found = _with_index(stored, q, k, rescore, index, timings)
    if found is None:
        found = _exact(stored, q, k, rescore, _chunk_rows(stored, chunk_size), timings)
    best, method = found
    t0 = time.perf_counter()
    text_field = meta.get("text_field") or "text"
    hits = []
    for rank, ((_, score), row) in enumerate(zip(best, stored.records([i for i, _ in best])), 1):
        hits.append(Hit.from_row(rank, score, row, text_field))
    timings["read_hits_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - start
    return SearchResult(hits, timings, method)


def _query_vector(
    path: Path,
    meta: dict[str, Any],
    fmt: VectorFormat,
    query: str,
    model: Any,
    cache: CacheArg,
    timings: dict[str, float],
) -> npt.NDArray[np.float32]:
    """The query embedded with the output's model, truncated like the corpus and unit length (timed)."""
    t0 = time.perf_counter()
    if model is None:
        if not meta.get("model"):
            raise ModelMismatchError(
                f"{path} was embedded with a model object ({meta.get('model_class')}); pass the same model to search it"
            )
        model = meta["model"]
    emb, spec = _resolve(model)
    if spec is not None:  # a spec names the model; the output records the settings it was embedded with
        emb = with_model_options(emb, meta.get("model_options"))
    check_model(emb, meta, path, "search it")
    pipeline = pipeline_for(emb, cache)  # a copy: a caller's model object is left as it was
    _, found = pipeline.cached([query], Role.QUERY, "query")
    if not found[0]:  # weights loaded (and timed) only when the query must be computed
        pipeline.provider.warm_up()
    timings["model_load_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    raw = np.asarray(pipeline.embed([query], Role.QUERY, label="query").values[0], dtype=np.float32)
    if raw.shape[0] != fmt.source_dim:
        raise ModelMismatchError(f"the query vector has {raw.shape[0]} dims, {path} holds {fmt.source_dim}-dim vectors")
    q = fmt.encode_query(raw)
    timings["query_embedding_s"] = time.perf_counter() - t0
    return q
