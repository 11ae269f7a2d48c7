"""`embedstack map OUT -o map.html|png`: a 2-D picture of an embedded corpus (offline page or PNG)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from embedstack.cli._args import Parents, positive_int

__all__ = ["add_parser", "cmd_map"]


def _sample(value: str) -> int:
    """--sample: a positive row count, or 0 for all rows."""
    if value.strip() == "0":
        return 0
    return positive_int(value)


def add_parser(sub: Any, parents: Parents) -> argparse.ArgumentParser:
    """Register `map` on the command line's subparsers (argparse only: --help stays fast)."""
    p: argparse.ArgumentParser = sub.add_parser(
        "map", parents=[parents.common], help="draw a 2-D map of an embedded output (.html page or .png)"
    )
    p.add_argument("output", metavar="OUT", help="a file written by `embedstack embed`")
    p.add_argument(
        "-o",
        "--to",
        dest="map_out",
        required=True,
        metavar="MAP",
        help="map.html (an interactive page that works offline) or map.png (a picture; extra 'map')",
    )
    p.add_argument(
        "--method",
        choices=["auto", "umap", "pca"],
        default="auto",
        help="2-D projection: umap (extra 'umap'), pca, or auto: UMAP when umap-learn is installed, else PCA",
    )
    p.add_argument(
        "--clusters", type=positive_int, metavar="N", help="number of k-means clusters (default: about sqrt(rows)/2)"
    )
    p.add_argument(
        "--sample",
        type=_sample,
        default=30_000,
        metavar="N",
        help="draw at most N rows, chosen by --seed (default: 30000; 0: all)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the sample, the projection and k-means (default: 0)")
    p.add_argument("--title", help="the map's title (default: OUT and its model)")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    p.set_defaults(handler=cmd_map)
    return p


def cmd_map(args: argparse.Namespace) -> int:
    """embedstack map OUT -o MAP: project, cluster, label, then write the page or the picture."""
    from embedstack._optional import require
    from embedstack.corpusmap import build_map, map_format, umap_available, write_map

    kind = map_format(args.map_out)  # a bad extension fails before any work
    if kind == "png":
        require("matplotlib", extra="map")
    if args.method == "umap":
        require("umap", extra="umap", package="umap-learn")
    m = build_map(
        args.output,
        method=args.method,
        clusters=args.clusters,
        sample=args.sample,
        seed=args.seed,
        title=args.title,
    )
    write_map(m, args.map_out)
    if not args.quiet:
        for note in m.notes:
            print(f"embedstack: note: {note}", file=sys.stderr)
        how = m.method.upper()
        if args.method == "auto" and m.method == "pca" and not umap_available():
            how += " (for UMAP: pip install 'embedstack[umap]')"
        print(f"mapped {len(m):,} rows ({how}, {len(m.legend)} clusters) → {args.map_out}")
    return 0
