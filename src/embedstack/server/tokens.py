"""Token counts per input, for `usage` and the batcher's token budget, by the served model's own tokenizer.

A model whose provider counts tokens (`Capabilities.counts_tokens`: a local model's tokenizer, an
OpenAI-style model's tiktoken) is asked through the public `Provider.count_tokens`. A local model's
computed inputs are counted by the model itself in the worker thread: its pipeline reports each
item's tokens (`EmbedOutput.token_counts`, instructions and special tokens included, after
truncation), so on arrival such inputs only get an estimate for the batch budget (`estimate`), and
cache hits, which never reach the model, are counted with `count_tokens`. Anything else is estimated
(UTF-8 bytes / 4).

With `"truncate": false` every input is counted exactly on arrival (`count`), so an over-long input is refused
before it is queued and costs no model time. `tokens` answers `POST /tokenize` (TEI's shape) with the provider's
`tokenize`, which never truncates.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from embedstack.base import BaseEmbedding
from embedstack.types import Role

__all__ = ["IMAGE_COST", "Counts", "SimpleTokens", "UsageCounter", "counter_for"]

#: What one image weighs in a batch's token budget (a ViT-B/32 sees 50 patches, each dearer than a text token).
IMAGE_COST = 256

#: (tokens per input, whether each input was truncated to the model's limit).
Counts = tuple[list[int], list[bool]]


Matrix = npt.NDArray[np.float32]
#: One input's tokens as TEI's /tokenize gives them: {"id", "text", "special", "start", "stop"} each.
SimpleTokens = list[dict[str, Any]]


class UsageCounter:
    """Estimated counts: UTF-8 bytes / 4, never truncated (the base of the exact counters)."""

    exact = False
    #: The model's own call counts the inputs it computes (`embed`); on arrival only hits need `count`.
    in_worker = False

    def __init__(self, model: BaseEmbedding) -> None:
        self.model = model
        self.provider = model.provider

    def estimate(self, items: list[Any], role: Role) -> list[int]:
        """Each item's weight in the batch budget before the model has seen it (an exact count when cheap)."""
        return self.count(items, role)[0]

    def embed(self, values: list[Any], role: Role) -> tuple[Matrix, Counts | None]:
        """One model call through its pipeline (cache, dedupe, events), in the worker thread; no counts
        (this counter counts on arrival)."""
        return self.model.pipeline.embed(values, role, label="input").values, None

    def count(self, items: list[Any], role: Role) -> Counts:
        """Tokens of each item as the model sees it, and whether it was truncated; images weigh IMAGE_COST."""
        if role is Role.IMAGE:
            return [IMAGE_COST] * len(items), [False] * len(items)
        return self._count_texts(items, role)

    def _count_texts(self, texts: list[str], role: Role) -> Counts:
        prefix = self.provider.instruction(role) or ""
        return [max(1, len((prefix + t).encode("utf-8", "surrogatepass")) // 4) for t in texts], [False] * len(texts)

    def tokens(self, texts: list[str], add_special_tokens: bool = True) -> list[SimpleTokens] | None:
        """Each text's tokens as the model's tokenizer makes them, untruncated (None: no tokenizer to show)."""
        return self.provider.tokenize(texts, add_special_tokens)


class _ProviderCounter(UsageCounter):
    """A provider that counts its own tokens (`Provider.count_tokens`), on arrival."""

    exact = True

    def _count_texts(self, texts: list[str], role: Role) -> Counts:
        counted = self.provider.count_tokens(texts, role)
        return counted if counted is not None else super()._count_texts(texts, role)


class _LocalCounter(_ProviderCounter):
    """A local model: the counts its own pipeline reports for what it computes (`embed`); `count_tokens` for
    cache hits; an estimate for the budget on arrival."""

    in_worker = True

    def estimate(self, items: list[Any], role: Role) -> list[int]:
        """UTF-8 bytes / 4 plus the instruction and two special tokens, at most the model's limit."""
        counts = UsageCounter._count_texts(self, items, role)[0]
        limit = int(getattr(self.model, "max_length", None) or 512)
        return [min(limit, c + 2) for c in counts]

    def embed(self, values: list[Any], role: Role) -> tuple[Matrix, Counts | None]:
        """The model's pipeline on `values`, and each value's token count as the model tokenised it."""
        out = self.model.pipeline.embed(values, role, label="input")
        n = len(values)
        counts = out.token_counts.tolist() if out.token_counts is not None else [-1] * n
        cut = out.truncated.tolist() if out.truncated is not None else [False] * n
        missing = [i for i, c in enumerate(counts) if c < 0]
        if missing:  # found in the model's cache meanwhile (never tokenised)
            extra, extra_cut = self.count([values[i] for i in missing], role)
            for j, i in enumerate(missing):
                counts[i], cut[i] = extra[j], extra_cut[j]
        return out.values, (counts, cut)


def counter_for(model: BaseEmbedding) -> UsageCounter:
    """The most exact counter this server has for `model` (by its declared capabilities)."""
    caps = model.provider.capabilities
    if not caps.counts_tokens:
        return UsageCounter(model)
    if caps.remote:
        return _ProviderCounter(model)
    return _LocalCounter(model)
