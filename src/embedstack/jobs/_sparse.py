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
import numpy.typing as npt

from embedstack.jobs._embed import DEFAULT_CACHE, CacheArg, ModelMismatchError
from embedstack.jobs._output import SPARSE_COLUMNS, OutputError, _pq, read_meta
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
from embedstack.jobs._sparse_write import STATS_KEY, resolve_sparse
from embedstack.jobs._stored import open_stored
from embedstack.sparse import BaseSparseEmbedding
from embedstack.types import Role
from embedstack.vectors.formats import VectorFormat

__all__ = ["RRF_K", "hybrid_search", "sparse_model_of"]

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
        raw = (_pq().read_schema(path).metadata or {}).get(STATS_KEY)
        if raw is None:
            raise OutputError(f"{path}: its BM25 statistics are missing; re-run the embed command")
        model.use_stats(BM25Stats.from_json(raw.decode(), f"{path}'s BM25 statistics"))
    if dict(model.provider.model_identity()) != entry.get("model_identity"):
        raise ModelMismatchError(
            f"{path}: its sparse vectors were made by another {entry.get('model_class')} than {entry['model']!r} "
            "gives now (other weights or settings); re-embed the output"
        )
    return model


def _sparse_scores(path: Path, q_idx: npt.NDArray[np.int64], q_val: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Every row's dot product with the query's sparse vector, scanning the sparse columns in batches."""
    pq = _pq()
    lookup = dict(zip(q_idx.tolist(), q_val.tolist()))
    parts = []
    for batch in pq.ParquetFile(path).iter_batches(batch_size=65536, columns=list(SPARSE_COLUMNS)):
        idx_col, val_col = batch.column(0), batch.column(1)
        offsets = np.asarray(idx_col.offsets)
        flat_i = np.asarray(idx_col.values)
        flat_v = np.asarray(val_col.values, dtype=np.float64)
        weights = np.zeros(len(flat_i), dtype=np.float64)
        hit = np.isin(flat_i, q_idx)
        if hit.any():
            weights[hit] = [lookup[i] for i in flat_i[hit].tolist()]
        row_of = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
        parts.append(np.bincount(row_of, weights=weights * flat_v, minlength=len(offsets) - 1))
    return np.concatenate(parts) if parts else np.zeros(0)


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
    sparse = sparse_model_of(path, meta)
    n = max(candidates, k)
    stored = open_stored(path, meta)
    fmt = VectorFormat.from_meta(meta)
    timings = dict.fromkeys(TIMING_KEYS, 0.0)
    q_dense = _query_vector(path, meta, fmt, query, model, cache, timings)
    found = _with_index(stored, q_dense, n, DEFAULT_RESCORE, index, timings)
    if found is None:
        found = _exact(stored, q_dense, n, DEFAULT_RESCORE, _chunk_rows(stored, None), timings)
    dense_best, dense_method = found
    t0 = time.perf_counter()
    q = sparse.pipeline.with_options(cache=None).embed([query], Role.QUERY, label="query").values[0]
    timings["sparse_query_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    scores = _sparse_scores(path, q.indices.astype(np.int64), q.values.astype(np.float64))
    sparse_best = [(r, float(scores[r])) for r in _ranked(scores, n).tolist() if scores[r] > 0]
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
