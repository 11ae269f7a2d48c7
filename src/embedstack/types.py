"""Shared value types: vectors, image inputs, roles and what a provider hook may return."""

from __future__ import annotations

import os
from enum import Enum
from io import IOBase
from typing import Any, NamedTuple, Union

import numpy as np
import numpy.typing as npt

__all__ = ["EmbedResult", "Embedding", "ImageType", "PartialResult", "Role", "Vectors"]

#: One embedding as LlamaIndex returns it.
Embedding = list[float]

#: What a hook may return for a batch: a list of vectors or a 2-D float array.
Vectors = Union[list[list[float]], npt.NDArray[np.floating[Any]]]

#: An image: a path (str or Path), raw bytes, a binary file object, a PIL image or a data: URI.
ImageType = Union[str, "os.PathLike[str]", bytes, bytearray, IOBase, Any]


class Role(str, Enum):
    """What an item is embedded as; part of the cache key, and it picks the hook."""

    QUERY = "query"
    TEXT = "text"
    IMAGE = "image"


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
