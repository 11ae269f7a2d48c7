"""The `embedstack` command line: embed files, search them, inspect outputs and models.

Only argparse is imported here, so `embedstack --help` stays fast. Each command is one small module
(`_embed`, `_search`, `_info`, `_models`, `_serve`, `_map`) whose `add_parser` registers it and names its
handler; the handler imports what it needs (pyarrow, the model's provider, the server) when it runs.
The commands are thin shells over `embedstack.jobs`, `embedstack.server` and `embedstack.corpusmap`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from embedstack.cli._args import Parents

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
    """The argument parser: the top level, then each command as its module registers it (in this order)."""
    from embedstack.cli import _embed, _info, _map, _models, _search, _serve  # argparse only: nothing heavy loads

    parents = Parents.build()
    parser = argparse.ArgumentParser(
        prog="embedstack",
        description="Embed text files with local or remote models, offline and resumable.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[parents.common],
    )
    parser.add_argument("--version", action="version", version=f"embedstack {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in (_embed, _search, _info, _models, _serve, _map):
        command.add_parser(sub, parents)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 error, 2 usage, 130 interrupted)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help(sys.stderr)
        return 2
    from embedstack.cli._run import run

    return run(args)
