"""`embedstack search OUT QUERY`: the top k of an embedded output for a query (exact, or through an index)."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from typing import Any

from embedstack.cli._args import Parents, cache_arg, on_off, positive_int

__all__ = ["add_parser", "cmd_search"]


#: --candidates defaults: per side before a hybrid fusion; hits a cross-encoder rescores.
HYBRID_CANDIDATES = 100
RERANK_CANDIDATES = 50


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
    search.add_argument("-q", "--quiet", action="store_true", help="no timing line on stderr")
    search.add_argument(
        "-m",
        "--model",
        default=None,
        help="model to embed the query with (default: the one recorded in OUT; another is refused)",
    )
    search.add_argument(
        "--rerank",
        metavar="MODEL",
        default=None,
        help=(
            "rerank the best --candidates hits: a cross-encoder (rerank:<name or path>, or the name or path) or a "
            "reranking API (cohere:<model>, jina:<model>, cohere:<model>@<url>, tei:<url>)"
        ),
    )
    search.add_argument(
        "--candidates",
        type=positive_int,
        default=None,
        metavar="N",
        help=(
            f"with --hybrid: candidates taken from each side before fusing (default: {HYBRID_CANDIDATES}); with "
            f"--rerank: how many of the best hits the cross-encoder rescores (default: {RERANK_CANDIDATES})"
        ),
    )
    search.set_defaults(handler=cmd_search)
    return search


def _snippet(text: str | None, width: int) -> str:
    flat = " ".join((text or "").split())
    return flat if len(flat) <= width else flat[: max(width - 1, 0)] + "…"


def _reranked(hits: Any, args: argparse.Namespace) -> Any:
    """The hits rescored by the --rerank cross-encoder, best first, the best k kept; each keeps its cosine in
    fields["cosine"]; timings gain rerank_load_s, rerank_s and rerank_pairs."""
    import time

    from embedstack.jobs import SearchResult
    from embedstack.jobs._embed import DEFAULT_CACHE, default_cache_path, open_store
    from embedstack.rerank import resolve_rerank_model

    missing = [h.id for h in hits if h.text is None]
    if missing:
        raise ValueError(
            f"--rerank needs each hit's text, but {args.output} keeps none for {missing[:3]}; embed with the text "
            "column kept"
        )
    cache = cache_arg(args)
    store = open_store(default_cache_path() if cache is DEFAULT_CACHE else cache)
    from embedstack.rerank.resolve import RERANK_PREFIXES

    spec = args.rerank if args.rerank.startswith(RERANK_PREFIXES) else f"rerank:{args.rerank}"
    t0 = time.perf_counter()
    reranker = resolve_rerank_model(spec, cache=store).load()
    loaded = time.perf_counter()
    scores: Any = reranker.score([(args.query, h.text) for h in hits]) if len(hits) else []
    done = time.perf_counter()
    order = sorted(range(len(hits)), key=lambda i: -float(scores[i]))[: args.k]
    best = [
        h.model_copy(update={"rank": rank, "score": float(scores[i]), "fields": {**h.fields, "cosine": h.score}})
        for rank, (i, h) in enumerate(((i, hits[i]) for i in order), 1)
    ]
    timings = {**hits.timings, "rerank_load_s": loaded - t0, "rerank_s": done - loaded, "rerank_pairs": len(hits)}
    timings["total_s"] = hits.timings["total_s"] + done - t0
    return SearchResult(best, timings, f"{hits.method}; top {len(hits)} reranked by {reranker.model_name}")


def cmd_search(args: argparse.Namespace) -> int:
    """embedstack search OUT QUERY."""
    from embedstack.jobs import search

    wanted = max(args.k, args.candidates or RERANK_CANDIDATES) if args.rerank else args.k
    if args.hybrid:
        from embedstack.jobs._sparse import hybrid_search

        hits = hybrid_search(
            args.output,
            args.query,
            wanted,
            model=args.model,
            cache=cache_arg(args),
            candidates=args.candidates or HYBRID_CANDIDATES,
            fusion=args.fusion,
            alpha=args.alpha,
            index=args.index,
        )
    else:
        hits = search(
            args.output,
            args.query,
            wanted,
            model=args.model,
            cache=cache_arg(args),
            rescore=args.rescore,
            index=args.index,
        )
    line = hits.timing_line()
    if args.rerank:
        hits = _reranked(hits, args)
        t = hits.timings
        line += f"; rerank: model load {t['rerank_load_s']:.3f}s, {t['rerank_pairs']:.0f} pairs {t['rerank_s']:.3f}s"
    if not args.quiet:
        print(line, file=sys.stderr)
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
