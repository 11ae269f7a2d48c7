"""`embedstack embed INPUT... -o OUT`: embed files into a .parquet, .npy or .jsonl output (or a Ray dataset)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from embedstack.cli._args import Parents, cache_arg, non_negative_int, on_off, positive_int

__all__ = ["add_parser", "cmd_embed"]


def add_parser(sub: Any, parents: Parents) -> argparse.ArgumentParser:
    """Register `embed` on the command line's subparsers (argparse only: --help stays fast)."""
    embed: argparse.ArgumentParser = sub.add_parser(
        "embed",
        parents=[parents.common, parents.cache],
        help="embed files into a .parquet, .npy or .jsonl output",
        description=(
            "Embed texts from .txt (a text per line), .jsonl, .json, .csv, .tsv or .parquet files "
            "(optionally .gz), "
            "folders of them, or - (stdin). Computed vectors are cached, so an interrupted run "
            "resumes where it "
            "stopped; OUT is written atomically."
        ),
    )
    embed.add_argument("inputs", nargs="+", metavar="INPUT", help="files, folders, or - for stdin")
    embed.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="OUT",
        help="output file: .parquet, .npy (+ .rows.jsonl) or .jsonl",
    )
    embed.add_argument(
        "-m",
        "--model",
        default=None,
        help="local (default), local:<name or path>, openai:<model>, default, fake:<dim>",
    )
    embed.add_argument("--field", default="text", help="field or column holding the text (default: text)")
    embed.add_argument(
        "--id-field",
        default=None,
        help="field or column holding the id (default: id if present, else FILE:LINE)",
    )
    embed.add_argument(
        "--keep",
        default="all",
        help="input fields to keep in the output: all, none, or a comma list (default: all)",
    )
    embed.add_argument(
        "--format",
        dest="input_format",
        choices=["txt", "jsonl", "json", "csv", "tsv", "parquet"],
        help=(
            "input format (default: from the extension; for stdin sniffed: Parquet, JSON Lines, JSON, "
            "CSV/TSV with a header line naming --field, else a text per line)"
        ),
    )
    embed.add_argument(
        "--batch-size",
        type=positive_int,
        metavar="N",
        help="texts per model call (default: the model's)",
    )
    embed.add_argument(
        "--chunk-size",
        type=positive_int,
        default=2048,
        metavar="N",
        help="texts read, embedded and written per step (default: 2048)",
    )
    embed.add_argument(
        "--dimensions",
        type=positive_int,
        metavar="N",
        help="keep each vector's first N values, re-normalised (Matryoshka truncation; default: all)",
    )
    embed.add_argument(
        "--precision",
        choices=["float32", "float16", "int8", "uint8", "binary", "ubinary"],
        help=(
            "how vectors are stored (default: float32); int8/uint8 ranges come from the first 2048 vectors; "
            "binary/ubinary keep int8 rescoring vectors beside the bits"
        ),
    )
    embed.add_argument(
        "--no-rescore-vectors",
        dest="rescore_vectors",
        action="store_false",
        default=None,
        help="with --precision binary/ubinary: keep only the bits (smallest output, lower recall)",
    )
    embed.add_argument(
        "--sparse",
        metavar="SPEC",
        help=(
            "also write each text's sparse vector (Parquet/.jsonl: sparse_indices, sparse_values; .npy: "
            "OUT.sparse.npz): bm25 (fitted on the input, statistics kept with OUT and updated by --append), "
            "bm25:<stats.json> or splade:<model>"
        ),
    )
    embed.add_argument(
        "--no-dense",
        dest="dense",
        action="store_false",
        help="with --sparse: write the sparse vectors only, no dense model (.parquet or .jsonl OUT)",
    )
    embed.add_argument(
        "--long-inputs",
        choices=["truncate", "chunk"],
        help=(
            "texts past a local model's token limit: truncate (the default: cut, counted) or chunk (split into "
            "overlapping pieces that fit, averaged by token count into one vector)"
        ),
    )
    embed.add_argument(
        "--chunk-overlap",
        type=non_negative_int,
        metavar="N",
        help="tokens neighbouring pieces share (default: an eighth of a piece, at most 32)",
    )
    embed.add_argument(
        "--late-chunks",
        type=positive_int,
        metavar="TOKENS",
        help=(
            "late chunking: cut each text into chunks of TOKENS tokens and embed each from the whole document "
            "(one row per chunk: id DOC#K, columns doc_id, chunk_index, chunk_start, chunk_end)"
        ),
    )
    embed.add_argument(
        "--append", action="store_true", help="add rows to an existing OUT (same model, dimensions and precision)"
    )
    embed.add_argument(
        "--skip-bad",
        action="store_true",
        help="skip bad records (reported on stderr) instead of stopping",
    )
    on_off(embed, "progress", "always show the progress bar", "never show the bar (default: only on a terminal)")
    embed.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    embed.add_argument(
        "--ray",
        nargs="?",
        const="auto",
        default=None,
        metavar="ADDRESS",
        help=(
            "embed on Ray Data (extra 'ray'): auto (default: RAY_ADDRESS or a running cluster, else a local one), "
            "local, or a cluster ADDRESS; OUT is then a Parquet dataset directory"
        ),
    )
    embed.add_argument(
        "--concurrency",
        type=positive_int,
        default=2,
        metavar="N",
        help="with --ray: model actors (default: 2)",
    )
    embed.set_defaults(handler=cmd_embed)
    return embed


def _model_arg(args: argparse.Namespace) -> Any:
    """--model (default: local), or None with --no-dense; contradictions refused by name."""
    if args.dense:
        return args.model or "local"
    if not args.sparse:
        raise ValueError("--no-dense needs --sparse SPEC (bm25, splade:<model>): otherwise there is nothing to embed")
    if args.model is not None:
        raise ValueError(f"--no-dense writes no dense vectors, so --model {args.model} has nothing to do; drop one")
    return None


def _job_args(args: argparse.Namespace, keep: Any) -> dict[str, Any]:
    """The embed job's arguments that a file run and a Ray run share."""
    return {
        "inputs": args.inputs,
        "out": args.output,
        "model": _model_arg(args),
        "field": args.field,
        "id_field": args.id_field,
        "keep": keep,
        "input_format": args.input_format,
        "batch_size": args.batch_size,
        "skip_bad": args.skip_bad,
    }


def cmd_embed(args: argparse.Namespace) -> int:
    """embedstack embed INPUT... -o OUT."""
    from embedstack.jobs import embed_files

    keep: Any = args.keep if args.keep in ("all", "none") else [k for k in args.keep.split(",") if k.strip()]
    show = args.progress if args.progress is not None else (sys.stderr.isatty() and not args.quiet)
    if getattr(args, "ray", None) is not None:
        return _embed_on_ray(args, keep, bool(show))
    report = embed_files(
        **_job_args(args, keep),
        cache=cache_arg(args),
        append=args.append,
        chunk_size=args.chunk_size,
        progress=bool(show),
        dimensions=args.dimensions,
        precision=args.precision,
        rescore=args.rescore_vectors,
        sparse=args.sparse,
        long_inputs=args.long_inputs,
        chunk_overlap=args.chunk_overlap,
        late_chunks=args.late_chunks,
    )
    if not args.quiet:
        for msg in report.skipped[:5]:
            print(f"embedstack: skipped {msg}", file=sys.stderr)
        if len(report.skipped) > 5:
            print(f"embedstack: skipped {len(report.skipped) - 5} more bad records", file=sys.stderr)
        if report.duplicate_ids:
            print(
                f"embedstack: warning: {report.duplicate_ids} duplicate ids (first: {report.first_duplicate})",
                file=sys.stderr,
            )
        print(report.summary(), file=sys.stderr)
    return 0


def _embed_on_ray(args: argparse.Namespace, keep: Any, show: bool) -> int:
    """embedstack embed --ray: the same job on Ray Data, into a Parquet dataset directory."""
    from embedstack.jobs import DEFAULT_CACHE, default_cache_path
    from embedstack.jobs._ray import embed_files_ray

    if args.append:
        raise ValueError("--append cannot be used with --ray; embed into a new OUT directory")
    long = [
        f"--{n.replace('_', '-')}" for n in ("long_inputs", "chunk_overlap", "late_chunks") if getattr(args, n, None)
    ]
    if long:
        raise ValueError(f"{' and '.join(long)} cannot be used with --ray yet; embed without --ray")
    compact = [f"--{name}" for name in ("dimensions", "precision") if getattr(args, name, None) is not None]
    if compact or getattr(args, "rescore_vectors", None) is not None:
        raise ValueError(
            f"{' and '.join(compact) or '--no-rescore-vectors'} cannot be used with --ray yet; embed without --ray "
            "for compact vectors (int8 ranges are calibrated once, in one process)"
        )
    cache = cache_arg(args)
    report = embed_files_ray(
        **_job_args(args, keep),
        cache=str(default_cache_path()) if cache is DEFAULT_CACHE else cache,
        address=args.ray,
        concurrency=args.concurrency,
        progress=show,
        sparse=args.sparse,
    )
    if not args.quiet:
        for msg in report.skipped:
            print(f"embedstack: skipped {msg}", file=sys.stderr)
        what = report.model if report.dense else f"{report.sparse} (sparse only)"
        if report.dense and report.sparse:
            what += f" + sparse {report.sparse}"
        print(
            f"embedded {report.count} texts on Ray ({args.concurrency} actors) with {what} → {report.out}",
            file=sys.stderr,
        )
    return 0
