"""The geometry of a corpus map: a deterministic sample, a 2-D projection (PCA or UMAP), k-means clusters."""

from __future__ import annotations

import math
import warnings

import numpy as np
import numpy.typing as npt

__all__ = ["METHODS", "auto_clusters", "kmeans", "pca_2d", "project", "sample_rows", "umap_available"]

#: --method choices: auto is UMAP when umap-learn is installed (and there are enough rows), else PCA.
METHODS = ("auto", "umap", "pca")
#: Fewer rows than this and UMAP's neighbour graph means little: auto picks PCA.
UMAP_MIN_ROWS = 16

F32 = npt.NDArray[np.float32]


def sample_rows(n: int, size: int | None, seed: int) -> npt.NDArray[np.int64]:
    """Row numbers to draw: all of them, or `size` of them chosen by `seed` (same seed, same rows), in order."""
    if size is None or size <= 0 or size >= n:
        return np.arange(n, dtype=np.int64)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=size, replace=False)).astype(np.int64)


def pca_2d(x: F32) -> F32:
    """The first two principal components (numpy only: eigenvectors of the d x d covariance, signs fixed)."""
    n, d = x.shape
    if n == 0:
        return np.zeros((0, 2), np.float32)
    centred = x.astype(np.float64) - x.mean(axis=0, dtype=np.float64)
    cov = centred.T @ centred
    _, vecs = np.linalg.eigh(cov)  # ascending eigenvalues
    axes = vecs[:, ::-1][:, :2]
    if axes.shape[1] < 2:  # a 1-dim output: the second axis is zero
        axes = np.hstack([axes, np.zeros((d, 2 - axes.shape[1]))])
    # eigenvectors are defined up to sign: make each one's largest entry positive, so runs agree
    signs = np.sign(axes[np.abs(axes).argmax(axis=0), np.arange(2)])
    signs[signs == 0] = 1
    return np.asarray(centred @ (axes * signs), dtype=np.float32)


def umap_available() -> bool:
    """Whether umap-learn can be imported (it is optional: it brings numba and scikit-learn)."""
    import importlib.util

    return importlib.util.find_spec("umap") is not None


def _umap_2d(x: F32, seed: int) -> F32:
    from embedstack._optional import require

    umap = require("umap", extra="umap", package="umap-learn")
    with warnings.catch_warnings():  # "n_jobs overridden by random_state", numba's deprecations: noise here
        warnings.simplefilter("ignore")
        reducer = umap.UMAP(
            n_components=2,
            n_neighbors=min(15, len(x) - 1),
            metric="cosine",
            random_state=seed,
            init="spectral" if len(x) > 32 else "random",
        )
        return np.asarray(reducer.fit_transform(x), dtype=np.float32)


def project(x: F32, method: str, seed: int) -> tuple[F32, str]:
    """Project unit rows to 2-D; returns (points, the method used: "umap" or "pca")."""
    if method not in METHODS:
        raise ValueError(f"unknown projection method {method!r}; use one of: {', '.join(METHODS)}")
    if method == "auto":
        method = "umap" if umap_available() and len(x) >= UMAP_MIN_ROWS else "pca"
    if method == "umap":
        if len(x) < UMAP_MIN_ROWS:
            raise ValueError(f"UMAP needs at least {UMAP_MIN_ROWS} rows, the map has {len(x)}; use --method pca")
        return _umap_2d(x, seed), "umap"
    return pca_2d(x), "pca"


def auto_clusters(n: int) -> int:
    """A default cluster count: about sqrt(n)/2, between 2 and 20 (1 for fewer than 4 rows)."""
    if n < 4:
        return 1
    return max(2, min(20, round(math.sqrt(n) / 2)))


def _distances(x: F32, centres: F32, spherical: bool) -> npt.NDArray[np.float32]:
    """(n, k) distances: 1 - cosine for unit rows, else squared Euclidean."""
    if spherical:
        return np.asarray(1.0 - x @ centres.T, dtype=np.float32)
    sq = (x * x).sum(axis=1)[:, None] - 2 * (x @ centres.T) + (centres * centres).sum(axis=1)[None, :]
    return np.asarray(np.clip(sq, 0, None), dtype=np.float32)


def kmeans(x: F32, k: int, seed: int, *, spherical: bool = True, iterations: int = 50) -> npt.NDArray[np.int64]:
    """Cluster rows into `k` groups (k-means++ start, then Lloyd; numpy only, deterministic for a seed).

    spherical: unit rows by cosine (centres re-normalised), else points by Euclidean distance. Returns each row's
    cluster, numbered by size (0 is the largest); clusters left empty are dropped.
    """
    n = len(x)
    if n == 0:
        return np.zeros(0, np.int64)
    x = np.asarray(x, dtype=np.float32)
    k = max(1, min(k, n))
    rng = np.random.default_rng(seed)
    centres = np.empty((k, x.shape[1]), np.float32)
    centres[0] = x[rng.integers(n)]
    closest = _distances(x, centres[:1], spherical)[:, 0]
    for j in range(1, k):  # k-means++: far rows are likelier next centres
        weights = np.clip(closest, 0, None).astype(np.float64)
        if spherical:
            weights **= 2
        total = weights.sum()
        pick = rng.choice(n, p=weights / total) if total > 0 else int(rng.integers(n))
        centres[j] = x[pick]
        closest = np.minimum(closest, _distances(x, centres[j : j + 1], spherical)[:, 0])
    labels = np.full(n, -1, np.int64)
    for _ in range(iterations):
        new = np.argmin(_distances(x, centres, spherical), axis=1)
        if np.array_equal(new, labels):
            break
        labels = new
        for j in range(k):
            members = x[labels == j]
            if len(members):
                mean = members.mean(axis=0)
                norm = float(np.linalg.norm(mean)) if spherical else 1.0
                centres[j] = mean / norm if norm > 0 else mean
    sizes = np.bincount(labels, minlength=k)
    order = sorted((j for j in range(k) if sizes[j] > 0), key=lambda j: (-sizes[j], j))
    renumber = np.full(k, -1, np.int64)
    renumber[order] = np.arange(len(order))
    return renumber[labels]
