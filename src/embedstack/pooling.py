"""Pooling token vectors into one sentence vector (CLS or mean), for numpy arrays and torch tensors."""

from __future__ import annotations

from enum import Enum
from typing import Any

__all__ = ["Pooling"]


class Pooling(str, Enum):
    """Pooling strategy; call it on a (tokens, dim) or (batch, tokens, dim) array or tensor."""

    CLS = "cls"
    MEAN = "mean"

    def __call__(self, array: Any) -> Any:
        """Pool `array` with this strategy."""
        if self == Pooling.CLS:
            return self.cls_pooling(array)
        return self.mean_pooling(array)

    @classmethod
    def cls_pooling(cls, array: Any) -> Any:
        """The first token's vector."""
        ndim = len(array.shape)
        if ndim == 3:
            return array[:, 0]
        if ndim == 2:
            return array[0]
        raise NotImplementedError(f"Unhandled shape {tuple(array.shape)}: expected 2 or 3 dimensions.")

    @classmethod
    def mean_pooling(cls, array: Any) -> Any:
        """The mean over tokens."""
        ndim = len(array.shape)
        if ndim == 3:
            return array.mean(axis=1)
        if ndim == 2:
            return array.mean(axis=0)
        raise NotImplementedError(f"Unhandled shape {tuple(array.shape)}: expected 2 or 3 dimensions.")

    @staticmethod
    def masked_mean(token_vectors: Any, attention_mask: Any) -> Any:
        """Mean over the tokens the mask keeps (padding excluded), for numpy or torch batches."""
        mask = attention_mask[..., None]
        if hasattr(mask, "to") and not hasattr(mask, "astype"):  # torch
            mask = mask.to(token_vectors.dtype)
            return (token_vectors * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        mask = mask.astype(token_vectors.dtype)
        denom = mask.sum(1)
        denom[denom == 0] = 1e-9
        return (token_vectors * mask).sum(1) / denom
