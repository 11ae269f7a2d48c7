"""Hybrid search (`search --hybrid`) over an output with sparse vectors beside its dense ones (`embed --sparse`).

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

from embedstack.jobs._embed import DEFAULT_CACHE, CacheArg
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
from embedstack.jobs._sparse_search import sparse_model_of, sparse_query, sparse_ranked, sparse_search
from embedstack.jobs._stored import open_stored
from embedstack.vectors.formats import VectorFormat

__all__ = ["RRF_K", "hybrid_search", "sparse_model_of", "sparse_search"]

#: Reciprocal rank fusion's constant (the usual 60).
RRF_K = 60


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
    q = sparse_query(path, meta, query, timings, "model_load_s", "sparse_query_s")
    t0 = time.perf_counter()
    sparse_best = sparse_ranked(path, meta, q, n)
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
