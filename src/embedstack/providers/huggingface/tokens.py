"""Tokens: one text as a backend's tokenizer made it, shared by every encoder backend."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import numpy.typing as npt

__all__ = ["Tokens"]


class Tokens(NamedTuple):
    """One text as a backend's tokenizer made it: ids (special tokens included, truncated), whether it was
    cut, and token type ids where the tokenizer makes them."""

    ids: npt.NDArray[np.int64]
    truncated: bool
    type_ids: npt.NDArray[np.int64] | None = None
