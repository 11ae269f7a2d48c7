"""embedstack's exceptions: each also derives from the builtin it refines, so `except ValueError` keeps working."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["BadVectorsError", "EmbedstackError", "InvalidInputError"]


class EmbedstackError(Exception):
    """Base of every error embedstack raises on purpose."""


class InvalidInputError(EmbedstackError, ValueError):
    """An input item cannot be embedded (e.g. a lone surrogate); `label[index]` names it."""

    def __init__(self, message: str, label: str = "", index: int | None = None) -> None:
        super().__init__(message)
        self.label = label
        self.index = index


class BadVectorsError(EmbedstackError, ValueError):
    """A model returned something that is not a valid vector (NaN/inf, booleans, strings, wrong length).

    `positions` are the input positions (within the call) of the affected items, when known.
    """

    def __init__(self, message: str, positions: Sequence[int] = ()) -> None:
        super().__init__(message)
        self.positions = list(positions)
