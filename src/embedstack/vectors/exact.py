"""Exact search over a matrix: the one `normalize` and the one top-k (ties to the lower row) every search uses."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

__all__ = ["RunningTopK", "cosine_top_k", "normalize", "top_k"]


def normalize(matrix: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
    """L2-normalise rows (zero rows stay zero) as float32."""
    m = np.asarray(matrix, dtype=np.float32)
    norms = np.linalg.norm(m, axis=-1, keepdims=True)
    norms[norms == 0] = 1.0
    out: npt.NDArray[np.float32] = m / norms
    return out


def cosine_top_k(
    query: Sequence[float] | npt.NDArray[np.floating],
    matrix: npt.NDArray[np.floating],
    k: int = 10,
) -> list[tuple[int, float]]:
    """Indexes and cosine scores of the k rows of `matrix` closest to `query`, best first."""
    if k <= 0 or len(matrix) == 0:
        return []
    q = normalize(np.asarray(query, dtype=np.float32)[None, :])[0]
    scores = normalize(matrix) @ q
    return [(int(i), float(scores[i])) for i in top_k(scores, k)]


class RunningTopK:
    """The `k` rows with the lowest keys among chunks offered in row order, ties to the lower row: an exact top-k
    over a corpus read a chunk at a time (memory: one chunk)."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.rows = np.zeros(0, dtype=np.int64)
        self.keys = np.zeros(0, dtype=np.float64)

    def add(self, start: int, keys: npt.ArrayLike) -> None:
        """Offer the keys of rows `start`, `start + 1`, ... (after every earlier row)."""
        if self.k <= 0:
            return
        keys = np.asarray(keys)
        # once full, only keys below the k-th kept one can enter: a tie loses to the earlier row already kept
        if len(self.keys) == self.k:  # the bound in the keys' own type (kept keys came from such arrays: exact)
            idx = np.flatnonzero(keys < keys.dtype.type(self.keys[-1]))
        else:
            idx = np.arange(len(keys))
        if len(idx) > self.k:  # the chunk's own best k, with all its ties at the k-th key (rows decide below)
            chosen = keys[idx]
            idx = idx[chosen <= np.partition(chosen, self.k - 1)[self.k - 1]]
        if len(idx) == 0:
            return
        rows = np.concatenate([self.rows, start + idx.astype(np.int64)])
        merged = np.concatenate([self.keys, keys[idx].astype(np.float64)])
        order = np.lexsort((rows, merged))[: self.k]
        self.rows, self.keys = rows[order], merged[order]


def top_k(scores: npt.ArrayLike, k: int, largest: bool = True) -> npt.NDArray[np.int64]:
    """Rows of the `k` best scores (highest when `largest`, else lowest), best first, ties to the lower row:
    the one top-k (`RunningTopK` over one chunk), so every search orders hits the same way."""
    keys = np.asarray(scores)
    top = RunningTopK(min(int(k), len(keys)))
    top.add(0, -keys if largest else keys)
    return top.rows
