"""What the command line's parsers share: the option groups, argument types, and the --cache option's value."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Parents", "cache_arg", "non_negative_int", "on_off", "positive_int"]


@dataclass(frozen=True)
class Parents:
    """The option groups commands take as argparse parents: `common` (--debug, every command) and `cache`
    (--cache / --no-cache, the commands that embed)."""

    common: argparse.ArgumentParser
    cache: argparse.ArgumentParser

    @classmethod
    def build(cls) -> Parents:
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
        return cls(common, cache)


def positive_int(value: str) -> int:
    """An argparse type: a positive integer, else a message naming the bad value."""
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}") from None
    if n <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {n}")
    return n


def non_negative_int(value: str) -> int:
    """An argparse type: an integer >= 0, else a message naming the bad value."""
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {n}")
    return n


def on_off(parser: argparse.ArgumentParser, name: str, on_help: str, off_help: str) -> None:
    """`--NAME` / `--no-NAME`, mutually exclusive, into `args.NAME` (None when neither is given)."""
    group = parser.add_mutually_exclusive_group()
    dest = name.replace("-", "_")
    group.add_argument(f"--{name}", dest=dest, action="store_true", default=None, help=on_help)
    group.add_argument(f"--no-{name}", dest=dest, action="store_false", help=off_help)


def cache_arg(args: argparse.Namespace) -> Any:
    """The cache that --cache / --no-cache name: None, a Redis URL, a SQLite path, or jobs' DEFAULT_CACHE."""
    from embedstack.jobs import DEFAULT_CACHE

    if args.no_cache:
        return None
    if args.cache and args.cache.startswith(("redis://", "rediss://", "unix://")):
        return args.cache
    return Path(args.cache) if args.cache else DEFAULT_CACHE
