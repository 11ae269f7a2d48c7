"""Each input tokenised once, on arrival: exact token counts for `usage` and the batcher's budget, and the
tokens themselves for the model call (as TEI's router queues encodings, not texts).

A provider that prepares items (`Capabilities.prepares`: a local model's tokenizer, a reranker's pair
tokenizer) gives, on arrival, each input's encoded form and its exact count (`Provider.prepare`); the
batcher queues those values with the inputs and the model call reuses them (`Pipeline.embed(...,
prepared=...)`), so nothing is tokenised twice and no estimate stands in for a count. A provider that
only counts (`Capabilities.counts_tokens`: an OpenAI-style model's tiktoken, a sparse model) is counted
with `Provider.count_tokens`; anything else is estimated (UTF-8 bytes / 4). Images weigh `IMAGE_COST`.

With `"truncate": false` an input over the limit is refused before it is queued (the counts are there
already). `tokens` answers `POST /tokenize` (TEI's shape) with the provider's `tokenize`, which never truncates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from embedstack.provider import Prepared, Provider
from embedstack.types import Role

__all__ = ["IMAGE_COST", "Arrival", "SimpleTokens", "UsageCounter", "counter_for"]

#: What one image weighs in a batch's token budget (a ViT-B/32 sees 50 patches, each dearer than a text token).
IMAGE_COST = 256

#: One input's tokens as TEI's /tokenize gives them: {"id", "text", "special", "start", "stop"} each.
SimpleTokens = list[dict[str, Any]]


@dataclass(frozen=True)
class Arrival:
    """What tokenising a request's inputs on arrival gave: each input's token count and truncation, and its
    encoded form for the model call (None when the provider prepares nothing: the call tokenises itself)."""

    counts: list[int]
    truncated: list[bool]
    prepared: Prepared | None = None


class UsageCounter:
    """Tokens of each input, on arrival, by the most exact means the provider declares (see the module)."""

    def __init__(self, provider: Provider) -> None:
        self.provider = provider
        caps = provider.capabilities
        self.prepares = caps.prepares
        #: Whether the counts are the model's own (else estimates).
        self.exact = caps.prepares or caps.counts_tokens

    def arrive(self, items: list[Any], role: Role) -> Arrival:
        """Tokenise `items` once: exact counts (or estimates) and, where the provider prepares, their tokens."""
        if role is Role.IMAGE:
            return Arrival([IMAGE_COST] * len(items), [False] * len(items))
        if self.prepares:
            prepared = self.provider.prepare(items, role)
            if prepared is not None:
                return Arrival(list(prepared.token_counts), list(prepared.truncated), prepared)
        counts, truncated = self.count(items, role)
        return Arrival(counts, truncated)

    def count(self, items: list[Any], role: Role) -> tuple[list[int], list[bool]]:
        """Token counts without the tokens: the provider's `count_tokens`, else UTF-8 bytes / 4."""
        if role is Role.IMAGE:
            return [IMAGE_COST] * len(items), [False] * len(items)
        if self.exact:
            counted = self.provider.count_tokens(items, role)
            if counted is not None:
                return list(counted[0]), list(counted[1])
        prefix = self.provider.instruction(role) or ""
        return [max(1, len((prefix + t).encode("utf-8", "surrogatepass")) // 4) for t in items], [False] * len(items)

    def tokens(self, texts: list[str], add_special_tokens: bool = True) -> list[SimpleTokens] | None:
        """Each text's tokens as the model's tokenizer makes them, untruncated (None: no tokenizer to show)."""
        return self.provider.tokenize(texts, add_special_tokens)


def counter_for(provider: Provider) -> UsageCounter:
    """The arrival tokeniser for a served model's provider."""
    return UsageCounter(provider)
