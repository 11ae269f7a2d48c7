"""`embedstack search OUT QUERY`: the top k of an embedded output for a query (exact, or through an index)."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from typing import Any

from embedstack.cli._args import Parents, cache_arg, on_off, positive_int

__all__ = ["add_parser", "cmd_search"]


def add_parser(sub: Any, parents: Parents) -> argparse.ArgumentParser:
    """Register `search` on the command line's subparsers."""
    search: argparse.ArgumentParser = sub.add_parser(
        "search", parents=[parents.common, parents.cache], help="search an embedded output (cosine top-k)"
    )
    search.add_argument("output", metavar="OUT", help="a file written by `embedstack embed`")
    search.add_argument("query", help="the query text")
    search.add_argument("-k", type=positive_int, default=10, help="how many results (default: 10)")
    search.add_argument("--json", action="store_true", help="print the results as a JSON list")
    search.add_argument(
        "--timings",
        action="store_true",
        help='with --json: print {"hits": [...], "timings": {...}, "method": ...} instead of the bare list',
    )
    search.add_argument(
        "--rescore",
        type=positive_int,
        default=10,
        metavar="N",
        help="binary outputs and --index: rescore the best k*N candidates with the float query (default: 10)",
    )
    on_off(
        search,
        "index",
        "build (extra 'index') and use an HNSW index stored beside OUT (default: use one when present)",
        "search exactly, ignoring any index",
    )
    search.add_argument(
        "--hybrid",
        action="store_true",
        help="fuse the dense results with the sparse ones (an output embedded with --sparse)",
    )
    search.add_argument(
        "--fusion",
        choices=["rrf", "convex"],
        default="rrf",
        help="with --hybrid: reciprocal rank fusion (default) or a convex combination of normalised scores",
    )
    search.add_argument(
        "--alpha", type=float, default=0.5, help="with --fusion convex: the dense weight in [0, 1] (default: 0.5)"
    )
    search.add_argument(
        "--candidates",
        type=positive_int,
        default=100,
        metavar="N",
        help="with --hybrid: candidates taken from each side before fusing (default: 100)",
    )
    search.add_argument("-q", "--quiet", action="store_true", help="no timing line on stderr")
    search.add_argument(
        "-m",
        "--model",
        default=None,
        help="model to embed the query with (default: the one recorded in OUT; another is refused)",
    )
    search.set_defaults(handler=cmd_search)
    return search


def _snippet(text: str | None, width: int) -> str:
    flat = " ".join((text or "").split())
    return flat if len(flat) <= width else flat[: max(width - 1, 0)] + "…"


def cmd_search(args: argparse.Namespace) -> int:
    """embedstack search OUT QUERY."""
    from embedstack.jobs import search

    if args.hybrid:
        from embedstack.jobs._sparse import hybrid_search

        hits = hybrid_search(
            args.output,
            args.query,
            args.k,
            model=args.model,
            cache=cache_arg(args),
            candidates=args.candidates,
            fusion=args.fusion,
            alpha=args.alpha,
            index=args.index,
        )
    else:
        hits = search(
            args.output,
            args.query,
            args.k,
            model=args.model,
            cache=cache_arg(args),
            rescore=args.rescore,
            index=args.index,
        )
    if not args.quiet:
        print(hits.timing_line(), file=sys.stderr)
    if args.json:
        listed = [h.model_dump() for h in hits]
        doc: Any = {"hits": listed, "timings": hits.timings, "method": hits.method} if args.timings else listed
        print(json.dumps(doc, ensure_ascii=False, indent=1, default=str))
        return 0
    id_width = min(max((len(h.id) for h in hits), default=2), 40)
    columns = shutil.get_terminal_size((120, 24)).columns if sys.stdout.isatty() else 120
    room = max(columns - id_width - 16, 20)
    for h in hits:
        print(f"{h.rank:>3}  {h.score:.4f}  {h.id:<{id_width}}  {_snippet(h.text, room)}")
    return 0
