"""Pooling token vectors into one sentence vector, for numpy arrays and torch tensors.

Every mode sentence-transformers' `Pooling` module has: cls, mean, max, mean_sqrt_len_tokens,
weightedmean and lasttoken. `Pooling.pool` computes them as sentence-transformers does, from the
attention mask, so left and right padding give the same vectors (the first and the last *real*
token, position weights counted from the first real token).
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["Pooling"]


class Pooling(str, Enum):
    """Pooling strategy; call it on a (tokens, dim) or (batch, tokens, dim) array or tensor (no padding),
    or use `pool` with an attention mask."""

    CLS = "cls"
    MEAN = "mean"
    MAX = "max"
    MEAN_SQRT_LEN = "mean_sqrt_len_tokens"
    WEIGHTED_MEAN = "weightedmean"
    LAST_TOKEN = "lasttoken"

    def __call__(self, array: Any) -> Any:
        """Pool `array` (every token real) with this strategy."""
        if self == Pooling.CLS:
            return self.cls_pooling(array)
        if self == Pooling.MEAN:
            return self.mean_pooling(array)
        ndim = len(array.shape)
        if ndim not in (2, 3):
            raise NotImplementedError(f"Unhandled shape {tuple(array.shape)}: expected 2 or 3 dimensions.")
        batch = array if ndim == 3 else array[None]
        if hasattr(batch, "detach"):  # torch: pool in numpy, hand back a tensor
            import torch

            ones = np.ones(tuple(batch.shape[:2]), dtype=np.int64)
            out = torch.from_numpy(Pooling.pool(batch.detach().cpu().numpy(), ones, [self]))
            return out if ndim == 3 else out[0]
        pooled = Pooling.pool(np.asarray(batch), np.ones(batch.shape[:2], dtype=np.int64), [self])
        return pooled if ndim == 3 else pooled[0]

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

    @staticmethod
    def pool(
        token_vectors: npt.NDArray[Any], attention_mask: npt.NDArray[Any], modes: Sequence[Pooling]
    ) -> npt.NDArray[np.float32]:
        """(batch, tokens, dim) numpy token vectors pooled with each of `modes`, concatenated in that order
        (sentence-transformers' order for combined modes): (batch, dim * len(modes)) float32.

        Padding may sit on either side: the mask says which tokens are real."""
        hidden = np.asarray(token_vectors, dtype=np.float32)
        mask = np.asarray(attention_mask).astype(bool)
        if hidden.ndim != 3 or mask.shape != hidden.shape[:2]:
            raise ValueError(f"token vectors {hidden.shape} and attention mask {mask.shape} do not match")
        if not modes:
            raise ValueError("no pooling mode given")
        rows = np.arange(hidden.shape[0])
        seq = hidden.shape[1]
        weights = mask[..., None].astype(np.float32)
        count = np.maximum(weights.sum(1), 1e-9)
        first = mask.argmax(1)  # the first real token (0 for a row without any)
        out: list[npt.NDArray[np.float32]] = []
        for mode in modes:
            mode = Pooling(mode)
            if mode is Pooling.CLS:
                out.append(hidden[rows, first])
            elif mode is Pooling.MEAN:
                out.append((hidden * weights).sum(1) / count)
            elif mode is Pooling.MEAN_SQRT_LEN:
                out.append((hidden * weights).sum(1) / np.sqrt(count))
            elif mode is Pooling.MAX:
                out.append(np.where(mask[..., None], hidden, np.float32(-np.inf)).max(1))
            elif mode is Pooling.WEIGHTED_MEAN:
                positions = np.arange(1, seq + 1, dtype=np.float32)[None, :] - first[:, None]
                weighted = weights * positions[..., None]
                out.append((hidden * weighted).sum(1) / np.maximum(weighted.sum(1), 1e-9))
            else:  # LAST_TOKEN: the last real token (the last position for a row without any)
                flipped = mask[:, ::-1]
                last = np.where(flipped.any(1), seq - 1 - flipped.argmax(1), seq - 1)
                out.append(hidden[rows, last] * mask[rows, last][:, None])
        return np.ascontiguousarray(np.concatenate(out, axis=1), dtype=np.float32)
