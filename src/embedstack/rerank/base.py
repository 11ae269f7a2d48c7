"""BaseReranker: what every reranker offers (rank, score, async), over its pipeline of (query, document) pairs.

A reranker is a `Pipeline` over a provider of `Role.PAIR` items with `Scores` rows; the subclasses are
`CrossEncoderReranker` (a local checkpoint) and `RemoteReranker` (a reranking API: Cohere's/Jina's shape or
TEI's). The LlamaIndex postprocessor, the LangChain compressor, `embedstack search --rerank` and
`embedstack serve` take any of them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from embedstack._pipeline import check_texts
from embedstack.pipeline import Pipeline
from embedstack.types import Role

__all__ = ["BaseReranker", "RerankResult"]


@dataclass(frozen=True)
class RerankResult:
    """One document's place in a ranking: its index in the documents passed, its score, and the document."""

    index: int
    score: float
    document: str


class BaseReranker(ABC):
    """Scores (query, document) pairs through `pipeline` (cache keyed by the model's identity and the pair,
    dedupe, events, errors naming the pair); `rank` sorts documents by those scores."""

    #: The model's name (what a server serves it as when no name is given).
    model_name: str
    #: The activation applied to the model's raw logits; None when the scores are a remote server's own
    #: (its logits are not known).
    activation: str | None
    pipeline: Pipeline

    @property
    def num_labels(self) -> int:
        """Outputs per pair: 1 for a relevance score."""
        return 1

    @abstractmethod
    def identity(self) -> dict[str, Any]:
        """What makes the scores what they are (the cache key hashes it); never a secret."""

    @abstractmethod
    def with_activation(self, activation: str) -> BaseReranker:
        """A twin applying `activation` to the same model's raw logits, with its own pipeline (the same cache,
        other keys); ValueError when the raw logits are not known."""

    def load(self) -> BaseReranker:
        """Load what the first call would (weights, tokenizer); returns self."""
        return self

    def max_input_tokens(self) -> int | None:
        """The most tokens a pair may have before it is cut (None: not known here)."""
        return None

    # -- scoring -------------------------------------------------------------------------------
    def _values(self, rows: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        return np.asarray(rows[:, 0] if self.num_labels == 1 else rows, dtype=np.float32)

    def score(self, pairs: Sequence[tuple[str, str]], *, show_progress: bool = False) -> npt.NDArray[np.float32]:
        """Each (query, document) pair's score, in input order: shape (n,), or (n, num_labels) for several
        labels (as `CrossEncoder.predict`); cached scores are reused, repeated pairs scored once."""
        rows = self.pipeline.embed(pairs, Role.PAIR, label="pairs", show_progress=show_progress).values
        return self._values(rows)

    async def ascore(self, pairs: Sequence[tuple[str, str]]) -> npt.NDArray[np.float32]:
        """Async `score`: never blocks the event loop."""
        rows = (await self.pipeline.aembed(pairs, Role.PAIR, label="pairs")).values
        return self._values(rows)

    def _pairs(self, query: Any, documents: Any) -> list[tuple[str, str]]:
        if not isinstance(query, str):
            raise TypeError(f"query is {type(query).__name__}, expected str")
        if isinstance(documents, (str, bytes, bytearray)):
            raise TypeError(
                f"documents must be a list of texts, not a single {type(documents).__name__}; wrap it in a list"
            )
        if self.num_labels != 1:
            raise ValueError(
                f"rank() needs one score per document, but {self.model_name!r} has num_labels={self.num_labels}; "
                "use score(pairs) for its logits"
            )
        docs = list(documents)
        check_texts(docs, "documents")
        return [(query, d) for d in docs]

    @staticmethod
    def _ranked(scores: npt.NDArray[np.float32], documents: list[str], top_n: int | None) -> list[RerankResult]:
        if top_n is not None and (not isinstance(top_n, int) or isinstance(top_n, bool) or top_n < 0):
            raise ValueError(f"top_n must be a non-negative int or None, got {top_n!r}")
        order = np.argsort(-scores, kind="stable").tolist()
        return [RerankResult(i, float(scores[i]), documents[i]) for i in order[:top_n]]

    def rank(self, query: str, documents: Sequence[str], top_n: int | None = None) -> list[RerankResult]:
        """`documents` by relevance to `query`, best first (ties keep input order): the first `top_n`, or all."""
        pairs = self._pairs(query, documents)
        if not pairs:
            return []
        return self._ranked(self.score(pairs), [d for _, d in pairs], top_n)

    async def arank(self, query: str, documents: Sequence[str], top_n: int | None = None) -> list[RerankResult]:
        """Async `rank`; never blocks the event loop."""
        pairs = self._pairs(query, documents)
        if not pairs:
            return []
        return self._ranked(await self.ascore(pairs), [d for _, d in pairs], top_n)
