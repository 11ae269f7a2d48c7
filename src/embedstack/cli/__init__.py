"""The `embedstack` command line: embed files, search them, inspect outputs and models.

Only argparse is imported here, so `embedstack --help` stays fast; each command imports what it
needs (pyarrow, the model's provider) when it runs. The commands are thin shells over
`embedstack.jobs`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from embedstack.cli._args import on_off, positive_int

__all__ = ["build_parser", "main"]

EPILOG = """\
examples:
  embedstack embed examples/packages.jsonl -o packages.parquet
  embedstack search packages.parquet "mock HTTP requests in tests" -k 5
  embedstack info packages.parquet
  cat notes.txt | embedstack embed - -o notes.npy --model local
  embedstack serve --model minilm=local --port 8000
"""


def _version() -> str:
    from embedstack import __version__

    return __version__


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every command."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks on errors")

    cache = argparse.ArgumentParser(add_help=False)
    group = cache.add_mutually_exclusive_group()
    group.add_argument(
        "--cache",
        metavar="PATH|URL",
        help=(
            "embedding cache: a SQLite file, or redis://[:PASSWORD@]HOST[:PORT][/DB] to share it between "
            "processes and machines (default: a SQLite file in the user cache directory)"
        ),
    )
    group.add_argument("--no-cache", action="store_true", help="do not read or write the embedding cache")

    parser = argparse.ArgumentParser(
        prog="embedstack",
        description="Embed text files with local or remote models, offline and resumable.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"embedstack {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    embed = sub.add_parser(
        "embed",
        parents=[common, cache],
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
        default="local",
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

    search = sub.add_parser("search", parents=[common, cache], help="search an embedded output (cosine top-k)")
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
    search.add_argument("-q", "--quiet", action="store_true", help="no timing line on stderr")
    search.add_argument(
        "-m",
        "--model",
        default=None,
        help="model to embed the query with (default: the one recorded in OUT; another is refused)",
    )

    info = sub.add_parser("info", parents=[common], help="show an output's model, dims and count")
    info.add_argument("output", metavar="OUT")
    info.add_argument("--json", action="store_true", help="print the metadata as JSON")

    models = sub.add_parser(
        "models",
        parents=[common],
        help="list model forms, installed extras, models available offline and known models' facts",
    )
    models.add_argument(
        "--provider",
        choices=["local", "openai", "clip"],
        help="list only this provider's known models (dims, max tokens, pooling, verified backends)",
    )
    models.add_argument("--json", action="store_true", help="print as JSON")

    from embedstack.cli._serve import add_serve_parser  # argparse only: the server loads when it runs

    add_serve_parser(sub, [common, cache])
    from embedstack.cli._map import add_map_parser

    add_map_parser(sub, [common])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 error, 2 usage, 130 interrupted)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help(sys.stderr)
        return 2
    from embedstack.cli._commands import run

    return run(args)
