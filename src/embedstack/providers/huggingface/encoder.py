"""The interface every local backend implements: `Encoder` (texts → pooled vectors) and its `TextTokenizer`.

`HuggingFaceEmbedding` talks to a backend only through these Protocols; TorchEncoder and OnnxEncoder
(ONNX Runtime and OpenVINO) satisfy them: mypy checks it where the provider builds them
(`HuggingFaceEmbedding._make_encoder` returns an `Encoder`), and a test checks each class at runtime.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from embedstack.providers.huggingface.tokens import Tokens
from embedstack.types import EmbedResult

__all__ = ["Encoder", "TextTokenizer", "TokenEncoder"]


@runtime_checkable
class TextTokenizer(Protocol):
    """A backend's tokenizer, usable before (and without) the weights: what orders a call's texts."""

    @property
    def max_length(self) -> int:
        """The token limit texts are truncated to (special tokens included)."""
        ...

    def tokenize(self, texts: list[str]) -> list[Tokens]:
        """Tokens of each text, as the encoder will feed them."""
        ...


@runtime_checkable
class Encoder(Protocol):
    """What a backend provides: pooled, un-normalised float32 vectors for a list of texts."""

    @property
    def dim(self) -> int:
        """Length of the vectors `encode` returns."""
        ...

    @property
    def max_length(self) -> int:
        """The token limit texts are truncated to."""
        ...

    @property
    def device(self) -> str:
        """Where the model runs ("cpu", "cuda:0", "mps", ...): an accelerator gets larger default batches."""
        ...

    @property
    def text_tokenizer(self) -> TextTokenizer | None:
        """The tokenizer whose tokens `encode` accepts (None: the backend tokenises its own way)."""
        ...

    def encode(self, texts: list[str], tokens: Sequence[Tokens] | None = None) -> EmbedResult:
        """Vectors for `texts` (from `tokens`, their text_tokenizer's tokens, when given), with
        token_count and the number of truncated texts."""
        ...


@runtime_checkable
class TokenEncoder(Protocol):
    """A backend that also hands out token vectors (late chunking pools them by span)."""

    def token_vectors(self, tokens: Sequence[Tokens]) -> list[npt.NDArray[np.float32]]:
        """Each row's token vectors, (len(row.ids), hidden) float32, as the model's pooling sees them."""
        ...

    def after_pooling(self, pooled: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Mean-pooled token vectors through the model's modules after its pooling (Dense layers), not normalised
        at the end; raises ValueError naming what it cannot compute."""
        ...
