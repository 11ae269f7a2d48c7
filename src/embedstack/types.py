"""Shared value types: vectors, image inputs, roles and what a provider hook may return."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from enum import Enum
from io import IOBase
from typing import Any, NamedTuple, Union

import numpy as np
import numpy.typing as npt

__all__ = ["Batch", "EmbedResult", "Embedding", "ImageType", "PartialResult", "Plan", "Role", "Vectors"]

#: One embedding as LlamaIndex returns it.
Embedding = list[float]

#: What a hook may return for a batch: a list of vectors or a 2-D float array.
Vectors = Union[list[list[float]], npt.NDArray[np.floating[Any]]]

#: An image: a path (str or Path), raw bytes, a binary file object, a PIL image or a data: URI.
ImageType = Union[str, "os.PathLike[str]", bytes, bytearray, IOBase, Any]


class Role(str, Enum):
    """What an item is embedded as; part of the cache key, and it picks the hook.

    PAIR items are (query, document) pairs of strings, scored together (a reranker's input).
    """

    QUERY = "query"
    TEXT = "text"
    IMAGE = "image"
    PAIR = "pair"


class EmbedResult(NamedTuple):
    """A hook's batch result with the extras that end events report."""

    vectors: Vectors
    token_count: int | None = None
    truncated: int = 0


class PartialResult(NamedTuple):
    """What a failed batch did obtain: its positions in the batch and their vectors.

    A provider that sends one batch as several requests sets it as `exc.partial` on the error it
    raises, so the pipeline caches those vectors and a rerun asks only for the rest.
    """

    positions: list[int]
    vectors: Vectors


@dataclass(frozen=True)
class Plan:
    """A model's plan for one call's missing items: the order to embed them in, and per-item work done already.

    `prepared[i]` belongs to `items[i]` (e.g. its tokens, made while ordering by token count); the
    pipeline hands each batch the prepared values of its own items (`Batch.prepared`), so a provider
    never recomputes them and needs no side channel. `weights[i]` is what `items[i]` costs of a batch's
    size (e.g. the pieces a long text is embedded as; None: one each): a batch holds items until their
    weights fill the batch size, and an item heavier than that gets a batch of its own.
    """

    order: list[int] | None = None
    prepared: list[Any] | None = None
    weights: list[int] | None = None


@dataclass(frozen=True, init=False)
class Batch:
    """One hook call's work: unique items of one role, and where each stands in the caller's input.

    `positions[i]` is the caller's index of `items[i]` (its first occurrence), so a provider can
    name an item in an error as `label[position]` without knowing the rest of the call.
    """

    items: list[Any]
    role: Role
    label: str
    positions: list[int]
    #: Later positions of items the caller passed more than once (batch index → positions).
    repeats: dict[int, list[int]] = field(default_factory=dict)
    #: The model's prepared value for each item (`Plan.prepared`), or None.
    prepared: list[Any] | None = None

    def __init__(
        self,
        items: list[Any],
        role: Role,
        label: str,
        positions: list[int],
        repeats: dict[int, list[int]] | None = None,
        prepared: list[Any] | None = None,
    ) -> None:
        # The fields go straight into the instance dict: a frozen dataclass's own __init__ sets each one through
        # object.__setattr__, twice the cost (1.2 µs), and every pipeline call makes a Batch.
        fields = self.__dict__
        fields["items"], fields["role"], fields["label"], fields["positions"] = items, role, label, positions
        fields["repeats"] = {} if repeats is None else repeats
        fields["prepared"] = prepared

    def name(self, i: int) -> str:
        """How the caller knows batch item `i`: e.g. `texts[12]`."""
        return f"{self.label}[{self.positions[i]}]"

    def where(self, i: int) -> list[int]:
        """Every position of batch item `i` in the caller's input."""
        return [self.positions[i], *self.repeats.get(i, ())]
