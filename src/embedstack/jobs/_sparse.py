"""Sparse search (`search` on an output of sparse vectors only) and hybrid search (`search --hybrid`) over an
output with sparse vectors beside its dense ones (`embed --sparse`).

Sparse search is an exact scan of the stored sparse vectors in blocks (Parquet list columns, a .npy output's
memory-mapped CSR .npz, a .jsonl output streamed): each row's dot product with the query's sparse vector, from
the model recorded in the output (for BM25, with the statistics kept with it).

Hybrid search fuses the dense top N (the usual search) and the sparse top N (an exact scan of the sparse
columns in chunks: the dot product with the query's sparse vector) by reciprocal rank fusion
(score = Σ 1/(60 + rank)), or by a convex combination of min-max normalised scores (`alpha`: the dense
weight).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from embedstack.jobs._embed import DEFAULT_CACHE, CacheArg, ModelMismatchError
from embedstack.jobs._output import OutputError, is_dense, read_meta
from embedstack.jobs._search import (
    DEFAULT_RESCORE,
    TIMING_KEYS,
    Hit,
    SearchResult,
    _chunk_rows,
    _exact,
    _query_vector,
    _with_index,
)
from embedstack.jobs._sparse_write import resolve_sparse
from embedstack.jobs._stored import open_stored, read_stats, sparse_batches
from embedstack.sparse import BaseSparseEmbedding
from embedstack.types import Role
from embedstack.vectors.formats import VectorFormat

__all__ = ["RRF_K", "hybrid_search", "sparse_model_of", "sparse_search"]

#: Reciprocal rank fusion's constant (the usual 60).
RRF_K = 60


def sparse_model_of(path: Path, meta: dict[str, Any]) -> BaseSparseEmbedding:
    """The sparse model an output was embedded with (a BM25 model with the output's statistics)."""
    from embedstack.providers.bm25 import BM25Embedding, BM25Stats

    entry = meta.get("sparse")
    if not entry:
        raise OutputError(f"{path}: has no sparse vectors; embed it with --sparse bm25 (or splade:<model>)")
    if not entry.get("model"):
        raise ModelMismatchError(f"{path}: its sparse vectors were made by a model object; search it in Python")
    model = resolve_sparse(entry["model"])
    if isinstance(model, BM25Embedding):
        raw = read_stats(path)
        if raw is None:
            raise OutputError(f"{path}: its BM25 statistics are missing; re-run the embed command")
        model.use_stats(BM25Stats.from_json(raw, f"{path}'s BM25 statistics"))
    if dict(model.provider.model_identity()) != entry.get("model_identity"):
        raise ModelMismatchError(
            f"{path}: its sparse vectors were made by another {entry.get('model_class')} than {entry['model']!r} "
            "gives now (other weights or settings); re-embed the output"
        )
    return model


def _sparse_scores(
    path: Path, meta: dict[str, Any], q_idx: npt.NDArray[np.int64], q_val: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """Every row's dot product with the query's sparse vector, scanning the stored sparse vectors in blocks."""
    order = np.argsort(q_idx)
    keys, weights_of = q_idx[order], q_val[order]
    parts = []
    for _, offsets, flat_i, flat_v in sparse_batches(path, meta):
        rows = len(offsets) - 1
        weights = np.zeros(len(flat_i), dtype=np.float64)
        if len(keys):
            at = np.minimum(np.searchsorted(keys, flat_i), len(keys) - 1)
            hit = keys[at] == flat_i
            weights[hit] = weights_of[at[hit]]
        row_of = np.repeat(np.arange(rows), np.diff(offsets))
        parts.append(np.bincount(row_of, weights=weights * flat_v, minlength=rows))
    return np.concatenate(parts) if parts else np.zeros(0)


def _sparse_query(
    path: Path, meta: dict[str, Any], query: str, timings: dict[str, float], model_key: str, query_key: str
) -> Any:
    """The query's sparse vector from the output's sparse model (loading timed under `model_key`, the
    query under `query_key`)."""
    t0 = time.perf_counter()
    sparse = sparse_model_of(path, meta)
    pipeline = sparse.pipeline.with_options(cache=None)
    pipeline.provider.warm_up()
    timings[model_key] = timings.get(model_key, 0.0) + time.perf_counter() - t0
    t0 = time.perf_counter()
    q = pipeline.embed([query], Role.QUERY, label="query").values[0]
    timings[query_key] = time.perf_counter() - t0
    return q


def _sparse_best(path: Path, meta: dict[str, Any], q: Any, n: int) -> list[tuple[int, float]]:
    """The best n rows (row, score) with a positive dot product with the query's sparse vector."""
    scores = _sparse_scores(path, meta, q.indices.astype(np.int64), q.values.astype(np.float64))
    return [(r, float(scores[r])) for r in _ranked(scores, n).tolist() if scores[r] > 0]


def sparse_search(out: str | os.PathLike[str], query: str, k: int = 10) -> SearchResult:
    """The top k rows of an output by the dot product of their sparse vectors with `query`'s (from the sparse
    model recorded in the output; BM25: the BM25 score under the kept statistics). Rows that share no term
    with the query score 0 and are left out. Returns the hits with `.timings` and `.method`."""
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    start = time.perf_counter()
    path = Path(out)
    meta = read_meta(path)
    timings = dict.fromkeys(TIMING_KEYS, 0.0)
    q = _sparse_query(path, meta, query, timings, "model_load_s", "query_embedding_s")
    t0 = time.perf_counter()
    best = _sparse_best(path, meta, q, k)
    timings["candidate_search_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    stored = open_stored(path, meta)
    text_field = meta.get("text_field") or "text"
    hits = [
        Hit.from_row(rank, score, row, text_field)
        for rank, ((_, score), row) in enumerate(zip(best, stored.records([r for r, _ in best])), 1)
    ]
    timings["read_hits_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - start
    entry = meta.get("sparse") or {}
    return SearchResult(hits, timings, f"sparse exact ({entry.get('model') or entry.get('model_class')} dot product)")


def _ranked(scores: npt.NDArray[np.float64], n: int) -> npt.NDArray[np.int64]:
    n = min(n, len(scores))
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    top = np.argpartition(-scores, n - 1)[:n]
    return top[np.lexsort((top, -scores[top]))]  # type: ignore[no-any-return]


def hybrid_search(
    out: str | os.PathLike[str],
    query: str,
    k: int = 10,
    *,
    model: Any = None,
    cache: CacheArg = DEFAULT_CACHE,
    candidates: int = 100,
    fusion: str = "rrf",
    alpha: float = 0.5,
    index: bool | None = None,
) -> SearchResult:
    """Dense and sparse top `candidates` of `query`, fused (reciprocal rank fusion, or `fusion="convex"`:
    alpha · dense + (1 − alpha) · sparse, each min-max normalised over its candidates); the best k.
    Hits' `score` is the fused score; `fields` hold `dense_rank` and `sparse_rank` (None: not a candidate)."""
    if fusion not in ("rrf", "convex"):
        raise ValueError(f"fusion must be 'rrf' or 'convex', not {fusion!r}")
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    start = time.perf_counter()
    path = Path(out)
    meta = read_meta(path)
    if not is_dense(meta):
        raise OutputError(f"{path}: holds sparse vectors only, nothing to fuse them with; search it without --hybrid")
    sparse_model_of(path, meta)  # refused before any work when the output has no (usable) sparse vectors
    n = max(candidates, k)
    stored = open_stored(path, meta)
    fmt = VectorFormat.from_meta(meta)
    timings = dict.fromkeys(TIMING_KEYS, 0.0)
    q_dense = _query_vector(path, meta, fmt, query, model, cache, timings)
    found = _with_index(stored, q_dense, n, DEFAULT_RESCORE, index, timings)
    if found is None:
        found = _exact(stored, q_dense, n, DEFAULT_RESCORE, _chunk_rows(stored, None), timings)
    dense_best, dense_method = found
    q = _sparse_query(path, meta, query, timings, "model_load_s", "sparse_query_s")
    t0 = time.perf_counter()
    sparse_best = _sparse_best(path, meta, q, n)
    timings["sparse_search_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    fused = _fuse([dense_best, sparse_best], fusion, alpha)
    best = sorted(fused.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
    dense_rank = {row: r for r, (row, _) in enumerate(dense_best, 1)}
    sparse_rank = {row: r for r, (row, _) in enumerate(sparse_best, 1)}
    text_field = meta.get("text_field") or "text"
    hits = []
    for rank, ((row, score), rec) in enumerate(zip(best, stored.records([r for r, _ in best])), 1):
        hits.append(
            Hit.from_row(rank, score, rec, text_field, dense_rank=dense_rank.get(row), sparse_rank=sparse_rank.get(row))
        )
    timings["fusion_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - start
    how = "RRF (k=60)" if fusion == "rrf" else f"convex (alpha={alpha})"
    method = f"hybrid {how}: dense {dense_method} top {n} + sparse exact top {len(sparse_best)}"
    return _HybridResult(hits, timings, method)


def _fuse(lists: list[list[tuple[int, float]]], fusion: str, alpha: float) -> dict[int, float]:
    """row → fused score of ranked (row, score) lists (dense first, then sparse)."""
    fused: dict[int, float] = {}
    if fusion == "rrf":
        for ranked in lists:
            for rank, (row, _) in enumerate(ranked, 1):
                fused[row] = fused.get(row, 0.0) + 1.0 / (RRF_K + rank)
        return fused
    for weight, ranked in zip((alpha, 1 - alpha), lists):
        if not ranked:
            continue
        values = np.array([s for _, s in ranked])
        lo, hi = float(values.min()), float(values.max())
        for row, s in ranked:
            fused[row] = fused.get(row, 0.0) + weight * ((s - lo) / (hi - lo) if hi > lo else 1.0)
    return fused


class _HybridResult(SearchResult):
    def timing_line(self) -> str:
        """The dense steps, then the sparse query, scan and fusion."""
        t = self.timings
        line = super().timing_line().split("; total")[0]
        extra = f"sparse query {t['sparse_query_s']:.3f}s, sparse scan {t['sparse_search_s']:.3f}s"
        return f"{line}, {extra}, fusion {t['fusion_s']:.3f}s; total {t['total_s']:.3f}s ({self.method})"
