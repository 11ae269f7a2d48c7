"""Vector ⇄ stored value: float32 bytes, wrapped in a JSON-safe dict for dict-valued stores."""

from __future__ import annotations

import base64
import binascii
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["UNREADABLE", "decode_blob", "dict_to_blob", "encode_dict"]


class _Unreadable:
    """Marks a stored entry that exists but cannot be decoded (a miss that must be rewritten)."""

    def __repr__(self) -> str:
        return "UNREADABLE"


UNREADABLE: Any = _Unreadable()


def decode_blob(dim: Any, blob: Any) -> npt.NDArray[np.float32] | Any:
    """float32 bytes of `dim` values → vector, or UNREADABLE when they do not fit."""
    if not isinstance(dim, int) or dim <= 0 or not isinstance(blob, (bytes, bytearray, memoryview)):
        return UNREADABLE
    if len(blob) != 4 * dim:
        return UNREADABLE
    vec = np.frombuffer(blob, dtype="<f4")
    if not np.isfinite(vec).all():
        return UNREADABLE
    return vec


def encode_dict(vector: npt.NDArray[np.float32]) -> dict[str, Any]:
    """A vector as a JSON-safe dict: its dimension and its float32 bytes in base64."""
    data = np.ascontiguousarray(vector, dtype="<f4").tobytes()
    return {"dim": int(vector.shape[0]), "f32": base64.b64encode(data).decode("ascii")}


def dict_to_blob(value: Any) -> bytes | Any:
    """encode_dict's output → its float32 bytes, or UNREADABLE for anything else."""
    if not isinstance(value, dict) or not isinstance(value.get("f32"), str):
        return UNREADABLE
    try:
        blob = base64.b64decode(value["f32"], validate=True)
    except (binascii.Error, ValueError):
        return UNREADABLE
    dim = value.get("dim")
    return blob if isinstance(dim, int) and len(blob) == 4 * dim > 0 else UNREADABLE
