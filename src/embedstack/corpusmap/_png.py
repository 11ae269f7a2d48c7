"""The corpus map as a static PNG picture (matplotlib, Agg): the page's points, colours and labels."""

from __future__ import annotations

import os
from pathlib import Path

from embedstack._atomic import atomic_path
from embedstack.corpusmap._build import CorpusMap
from embedstack.jobs._output import temp_beside

__all__ = ["PNG_SIZE", "write_png"]

#: The picture's size in pixels (width, height).
PNG_SIZE = (1600, 1200)
_DPI = 160


def write_png(m: CorpusMap, path: str | os.PathLike[str]) -> None:
    """Draw the map to `path` (written atomically); needs matplotlib (extra `map`)."""
    from embedstack._optional import require

    matplotlib = require("matplotlib", extra="map")
    matplotlib.use("Agg", force=True)  # no display, whatever the environment says
    from matplotlib import patheffects
    from matplotlib.figure import Figure  # a Figure, not pyplot: no global state, nothing left open

    fig = Figure(figsize=(PNG_SIZE[0] / _DPI, PNG_SIZE[1] / _DPI), dpi=_DPI)
    ax = fig.add_axes((0.01, 0.01, 0.98, 0.93))
    size = 14 if len(m) <= 2_000 else 6 if len(m) <= 20_000 else 2
    colors = [c.color for c in m.legend]
    for c in range(len(m.legend)):
        pts = m.points[m.clusters == c]
        ax.scatter(pts[:, 0], pts[:, 1], s=size, c=colors[c], alpha=0.8, linewidths=0)
    halo = [patheffects.withStroke(linewidth=3.5, foreground="white")]
    for cl in m.legend:
        label = " · ".join(cl.label)
        ax.text(cl.x, cl.y, label, ha="center", va="center", fontsize=9, weight="bold", path_effects=halo)
    ax.set_xlim(-0.03, 1.03)
    ax.set_ylim(-0.03, 1.03)
    ax.set_aspect("equal", adjustable="box")
    ax.set_axis_off()
    shown = f"{len(m):,} of {m.total:,} rows" if len(m) < m.total else f"{len(m):,} rows"
    fig.suptitle(f"{m.title}   ({shown}, {m.method.upper()}, {len(m.legend)} clusters)", fontsize=11, y=0.985)
    with atomic_path(path, tmp=temp_beside(Path(path))) as tmp:
        fig.savefig(tmp, format="png", dpi=_DPI, facecolor="white")
