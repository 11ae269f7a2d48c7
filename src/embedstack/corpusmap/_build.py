"""A corpus map's content: which rows, where they sit in 2-D, their clusters and the clusters' labels."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from embedstack.corpusmap._labels import cluster_labels
from embedstack.corpusmap._layout import auto_clusters, kmeans, project, sample_rows
from embedstack.vectors.exact import normalize

__all__ = ["PALETTE", "Cluster", "CorpusMap", "build_map", "cluster_color"]

#: Cluster colours, page and picture alike (Tableau's 10, then their lighter 10); more clusters reuse them.
PALETTE = (
    "#1f77b4 #ff7f0e #2ca02c #d62728 #9467bd #8c564b #e377c2 #7f7f7f #bcbd22 #17becf "
    "#aec7e8 #ffbb78 #98df8a #ff9896 #c5b0d5 #c49c94 #f7b6d2 #c7c7c7 #dbdb8d #9edae5"
).split()
#: Characters of each text kept in the map (hover and search); the rest is cut.
TEXT_CHARS = 500


def cluster_color(c: int) -> str:
    """The colour of cluster `c`."""
    return PALETTE[c % len(PALETTE)]


@dataclass
class Cluster:
    """One cluster: its words, colour, size and centre (the median of its points, so it sits among them)."""

    label: list[str]
    color: str
    size: int
    x: float
    y: float


@dataclass
class CorpusMap:
    """The rows drawn (ids, texts cut to TEXT_CHARS), their 2-D points in [0, 1] and their clusters."""

    ids: list[str]
    texts: list[str]
    points: npt.NDArray[np.float32]
    clusters: npt.NDArray[np.int64]
    legend: list[Cluster]
    method: str
    total: int
    title: str
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)


def _unit_square(points: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Scale points into [0, 1]^2, keeping the aspect ratio (centred on the shorter side)."""
    if len(points) == 0:
        return points
    lo, hi = points.min(axis=0), points.max(axis=0)
    span = float((hi - lo).max()) or 1.0
    out = (points - lo) / span + (1.0 - (hi - lo) / span) / 2
    return np.asarray(out, dtype=np.float32)


def build_map(
    path: str | os.PathLike[str],
    *,
    method: str = "auto",
    clusters: int | None = None,
    sample: int | None = 30_000,
    seed: int = 0,
    title: str | None = None,
) -> CorpusMap:
    """Read an embedded output and lay it out: project, cluster (in the embedding space) and label.

    `sample` rows at most are drawn (chosen by `seed`; None or 0: all); `clusters` defaults to about sqrt(n)/2.
    Clusters are found on UMAP's layout (it keeps neighbourhoods), or on the unit vectors with PCA.
    """
    from embedstack.jobs import load_embeddings

    data = load_embeddings(path)
    meta: dict[str, Any] = data.meta
    if data.vectors.shape[1] == 0:
        raise ValueError(f"{path}: holds sparse vectors only; a map is drawn from dense vectors: embed with a model")
    notes = []
    rows = sample_rows(len(data), sample, seed)
    if len(rows) < len(data):
        notes.append(f"drawing {len(rows):,} of {len(data):,} rows (a sample chosen by --seed {seed}; --sample 0: all)")
    text_field = meta.get("text_field") or "text"
    column = data.columns.get(text_field)
    if column is None:
        notes.append(f"the output keeps no {text_field!r} column: clusters are labelled by the words of their ids")
    ids = [data.ids[i] for i in rows]
    texts = [str(column[i] or "")[:TEXT_CHARS] if column is not None else "" for i in rows]
    x = normalize(np.asarray(data.vectors)[rows])
    points, used = project(x, method, seed)
    # UMAP keeps neighbourhoods: clusters of its 2-D layout are both coherent on the picture and meaningful.
    # PCA's two axes keep too little: there, clusters come from the unit vectors themselves.
    k = clusters if clusters else auto_clusters(len(x))
    labels = kmeans(points, k, seed, spherical=False) if used == "umap" else kmeans(x, k, seed)
    words = cluster_labels(texts if column is not None else [i.replace("-", " ") for i in ids], labels.tolist())
    points = _unit_square(points)
    legend = []
    for c, w in enumerate(words):
        members = points[labels == c]
        cx, cy = np.median(members, axis=0) if len(members) else (0.5, 0.5)
        legend.append(Cluster(w or [f"cluster {c + 1}"], cluster_color(c), len(members), float(cx), float(cy)))
    name = title or f"{Path(path).name}: {meta.get('model', 'embeddings')}"
    return CorpusMap(ids, texts, points, labels, legend, used, len(data), name, notes)
