"""Argument types shared by the command line's parsers."""

from __future__ import annotations

import argparse

__all__ = ["on_off", "positive_int"]


def positive_int(value: str) -> int:
    """An argparse type: a positive integer, else a message naming the bad value."""
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}") from None
    if n <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {n}")
    return n


def on_off(parser: argparse.ArgumentParser, name: str, on_help: str, off_help: str) -> None:
    """`--NAME` / `--no-NAME`, mutually exclusive, into `args.NAME` (None when neither is given)."""
    group = parser.add_mutually_exclusive_group()
    dest = name.replace("-", "_")
    group.add_argument(f"--{name}", dest=dest, action="store_true", default=None, help=on_help)
    group.add_argument(f"--no-{name}", dest=dest, action="store_false", help=off_help)
