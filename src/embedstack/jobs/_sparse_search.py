"""Sparse search: an output's rows scored by the dot product of their sparse vectors with a query's.

An exact scan of the stored sparse vectors in blocks (Parquet list columns, a .npy output's memory-mapped CSR
.npz, a .jsonl output streamed), with the sparse model recorded in the output (for BM25, with the statistics
kept with it). `search` on an output of sparse vectors only comes here; hybrid search (`jobs._sparse`) uses the
same scan for its sparse side.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from embedstack.errors import ModelMismatchError, OutputError
from embedstack.jobs._hits import TIMING_KEYS, Hit, SearchResult
from embedstack.jobs._output import read_meta, read_stats, sparse_batches
from embedstack.jobs._sparse_write import resolve_sparse
from embedstack.jobs._stored import open_stored
from embedstack.sparse import BaseSparseEmbedding
from embedstack.types import Role
from embedstack.vectors.exact import top_k

__all__ = ["sparse_model_of", "sparse_query", "sparse_ranked", "sparse_search"]


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


def sparse_query(
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


def sparse_ranked(path: Path, meta: dict[str, Any], q: Any, n: int) -> list[tuple[int, float]]:
    """The best n rows (row, score) with a positive dot product with the query's sparse vector, ties to the
    lower row (the one top-k, `embedstack.vectors.top_k`)."""
    scores = _sparse_scores(path, meta, q.indices.astype(np.int64), q.values.astype(np.float64))
    return [(r, float(scores[r])) for r in top_k(scores, n).tolist() if scores[r] > 0]


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
    q = sparse_query(path, meta, query, timings, "model_load_s", "query_embedding_s")
    t0 = time.perf_counter()
    best = sparse_ranked(path, meta, q, k)
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
