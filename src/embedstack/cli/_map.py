"""`embedstack map OUT -o map.html|png`: a 2-D picture of an embedded corpus (issue 17; being built)."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_map_parser", "cmd_map"]


def add_map_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Register `map` on the command line's subparsers (argparse only: --help stays fast)."""
    p: argparse.ArgumentParser = sub.add_parser(
        "map", parents=parents, help="draw a 2-D map of an embedded output (.html page or .png)"
    )
    p.add_argument("output", metavar="OUT", help="a file written by `embedstack embed`")
    p.add_argument("-o", "--to", dest="map_out", required=True, metavar="MAP", help="map.html or map.png")
    return p


def cmd_map(args: argparse.Namespace) -> int:
    """embedstack map OUT -o MAP."""
    raise NotImplementedError("embedstack map is being built")
