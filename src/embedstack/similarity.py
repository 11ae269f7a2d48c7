"""Similarity between vectors, aggregation, and top-k search over a matrix."""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum

import numpy as np
import numpy.typing as npt

from embedstack.types import Embedding

__all__ = ["SimilarityMode", "cosine_top_k", "mean_agg", "normalize", "similarity"]


class SimilarityMode(str, Enum):
    """How `similarity` compares two vectors; higher is always closer."""

    DEFAULT = "cosine"
    DOT_PRODUCT = "dot_product"
    EUCLIDEAN = "euclidean"


def mean_agg(embeddings: Sequence[Embedding]) -> Embedding:
    """Average several embeddings into one (used for multi-query retrieval)."""
    if len(embeddings) == 0:
        raise ValueError("No embeddings to aggregate")
    return [float(x) for x in np.asarray(embeddings, dtype=np.float64).mean(axis=0)]


def similarity(
    embedding1: Sequence[float] | npt.NDArray[np.floating],
    embedding2: Sequence[float] | npt.NDArray[np.floating],
    mode: SimilarityMode = SimilarityMode.DEFAULT,
) -> float:
    """Cosine (default), dot product, or negative Euclidean distance; a zero vector has cosine 0."""
    a = np.asarray(embedding1, dtype=np.float64)
    b = np.asarray(embedding2, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"embeddings differ in shape: {a.shape} vs {b.shape}")
    if mode == SimilarityMode.EUCLIDEAN:
        return -float(np.linalg.norm(a - b))
    if mode == SimilarityMode.DOT_PRODUCT:
        return float(np.dot(a, b))
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    if norm == 0.0:
        return 0.0
    return float(np.dot(a, b) / norm)


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
    k = min(k, len(scores))
    top = np.argpartition(-scores, k - 1)[:k]
    top = top[np.argsort(-scores[top], kind="stable")]
    return [(int(i), float(scores[i])) for i in top]
