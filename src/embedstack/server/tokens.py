"""Token counts per input, for `usage` and the batcher's token budget, by the served model's own tokenizer.

A local model's counts come from a tokenizer of its own directory (instructions and special tokens
included, after truncation to the model's limit), a second instance kept apart from the model's so
that counting never waits for a running batch. OpenAI-style models count with their tiktoken
counter; anything else is estimated (UTF-8 bytes / 4).
"""

from __future__ import annotations

import threading
from typing import Any

from embedstack.base import BaseEmbedding
from embedstack.types import Role

__all__ = ["IMAGE_COST", "Counts", "TokenCounter", "counter_for"]

#: What one image weighs in a batch's token budget (a ViT-B/32 sees 50 patches, each dearer than a text token).
IMAGE_COST = 256

#: (tokens per input, whether each input was truncated to the model's limit).
Counts = tuple[list[int], list[bool]]


class TokenCounter:
    """Estimated counts: UTF-8 bytes / 4, never truncated (the base of the exact counters)."""

    exact = False

    def __init__(self, model: BaseEmbedding) -> None:
        self.model = model

    def count(self, items: list[Any], role: Role) -> Counts:
        """Tokens of each item as the model sees it, and whether it was truncated; images weigh IMAGE_COST."""
        if role is Role.IMAGE:
            return [IMAGE_COST] * len(items), [False] * len(items)
        return self._count_texts(items, role)

    def _count_texts(self, texts: list[str], role: Role) -> Counts:
        prefix = self.model._instruction(role) or ""
        return [max(1, len((prefix + t).encode("utf-8", "surrogatepass")) // 4) for t in texts], [False] * len(texts)


class _LocalCounter(TokenCounter):
    """A local model's tokenizer (its own instance, used by one thread at a time)."""

    exact = True

    def __init__(self, model: BaseEmbedding) -> None:
        super().__init__(model)
        self._lock = threading.Lock()
        self._tokenizer: Any = None
        self._made = False

    def _count_texts(self, texts: list[str], role: Role) -> Counts:
        from embedstack.providers.huggingface import HuggingFaceEmbedding

        model = self.model
        assert isinstance(model, HuggingFaceEmbedding)
        with self._lock:
            if not self._made:
                self._tokenizer, self._made = model._make_tokenizer(), True
            if self._tokenizer is None:  # a model whose texts no tokenizer of ours reads
                return super()._count_texts(texts, role)
            tokens = self._tokenizer.tokenize(model._texts(texts, role))
        return [len(t.ids) for t in tokens], [bool(t.truncated) for t in tokens]


class _TiktokenCounter(TokenCounter):
    """An OpenAI-style model's counter (tiktoken when it has one): what its API will count."""

    def __init__(self, model: BaseEmbedding) -> None:
        super().__init__(model)
        self._counter: Any = model._counter()  # type: ignore[attr-defined]
        self.exact = bool(getattr(self._counter, "exact", False))

    def _count_texts(self, texts: list[str], role: Role) -> Counts:
        prefix = self.model._instruction(role) or ""
        return [self._counter.count(prefix + t) for t in texts], [False] * len(texts)


def counter_for(model: BaseEmbedding) -> TokenCounter:
    """The most exact counter this server has for `model`."""
    module = type(model).__module__
    if module.startswith("embedstack.providers.huggingface"):
        return _LocalCounter(model)
    if module.startswith("embedstack.providers.openai") and hasattr(model, "_counter"):
        return _TiktokenCounter(model)
    return TokenCounter(model)
