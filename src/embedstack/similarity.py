"""LlamaIndex's similarity between two vectors and mean aggregation (search over many: `embedstack.vectors`)."""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum

import numpy as np
import numpy.typing as npt

from embedstack.types import Embedding

__all__ = ["SimilarityMode", "mean_agg", "similarity"]


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
