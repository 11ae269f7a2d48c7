"""Argument types shared by the command line's parsers."""

from __future__ import annotations

import argparse

__all__ = ["positive_int"]


def positive_int(value: str) -> int:
    """An argparse type: a positive integer, else a message naming the bad value."""
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}") from None
    if n <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {n}")
    return n
