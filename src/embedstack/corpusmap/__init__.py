"""A map of an embedded corpus: a 2-D projection, labelled clusters, as an offline HTML page or a PNG.

from embedstack.corpusmap import build_map, write_map
write_map(build_map("packages.parquet"), "map.html")   # or "map.png" (extra `map`)
"""

from __future__ import annotations

import os
from pathlib import Path

from embedstack._atomic import atomic_write_text
from embedstack.corpusmap._build import PALETTE, Cluster, CorpusMap, build_map
from embedstack.corpusmap._html import render_html
from embedstack.corpusmap._layout import METHODS, umap_available
from embedstack.corpusmap._png import PNG_SIZE, write_png
from embedstack.jobs._output import temp_beside

__all__ = [
    "MAP_FORMATS",
    "METHODS",
    "PALETTE",
    "PNG_SIZE",
    "Cluster",
    "CorpusMap",
    "build_map",
    "map_format",
    "render_html",
    "umap_available",
    "write_map",
    "write_png",
]

#: Map file extension → kind.
MAP_FORMATS = {".html": "html", ".htm": "html", ".png": "png"}


def map_format(path: str | os.PathLike[str]) -> str:
    """ "html" or "png", from the extension of `path`; ValueError naming the choices otherwise."""
    ext = os.path.splitext(os.fspath(path))[1].lower()
    kind = MAP_FORMATS.get(ext)
    if kind is None:
        raise ValueError(f"{os.fspath(path)}: unknown map extension {ext or '(none)'}; use .html or .png")
    return kind


def write_map(m: CorpusMap, path: str | os.PathLike[str]) -> None:
    """Write the map as a page (.html) or a picture (.png), atomically."""
    if map_format(path) == "png":
        write_png(m, path)
    else:
        atomic_write_text(path, render_html(m), tmp=temp_beside(Path(path)))
