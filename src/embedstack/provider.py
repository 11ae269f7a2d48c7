"""The provider protocol: what the pipeline (and the server, jobs and Ray above it) may ask of a model.

A provider is a description plus one call: its identity (what the cache key holds), its output
declared before loading (`embedstack.outputs`: `Dense(dim)` today; sparse vectors, token vectors and
scores are other kinds), public capabilities, a plan for a round of items and `embed(batch)`.
Everything else (cache, dedupe, order, events, async, usage) is the pipeline's.

A provider that tokenises may also `prepare` items ahead of a call (`Capabilities.prepares`): each
item's encoded form with its exact token count, made once, e.g. by a server as requests arrive
(TEI's router does the same); `Pipeline.embed(..., prepared=...)` then hands those values to `embed`
(`Batch.prepared`) instead of planning, so nothing is tokenised twice.

`ProviderBase` gives every method a default, so a new provider writes `output`, `identity` and
`embed` only; every `BaseEmbedding` is one through its `provider` property.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from embedstack.outputs import OutputKind
from embedstack.types import Batch, Plan, Role

__all__ = ["ARITHMETIC_FIELDS", "BatchOutput", "Capabilities", "Prepared", "Provider", "ProviderBase", "TokenCounts"]

#: Identity fields that change only the arithmetic (or, for "lowercase", the tokens of rare texts), left out of
#: `Provider.model_identity()`: outputs made at another precision (cosine >= 0.9999 apart for fp32/bf16; an int8
#: corpus is searchable with fp32 queries) or before a tokenisation fix stay usable.
ARITHMETIC_FIELDS = frozenset(
    {
        "precision",
        "int8_runtime",
        "int8_recipe",
        "int8_compute",
        "int8_versions",
        "bf16_runtime",
        "fp32_from",
        "lowercase",
    }
)

#: (tokens per item, whether each item was truncated to the model's limit).
TokenCounts = tuple[list[int], list[bool]]


@dataclass(frozen=True)
class Capabilities:
    """What a provider can do, declared (never discovered from module names).

    - `remote`: it calls a service over the network (a server does not send it a warm-up request;
      a pickled copy travels with its credentials).
    - `counts_tokens`: `count_tokens` gives the exact counts the model itself sees (its tokenizer,
      or the API's), not an estimate.
    - `max_concurrency`: batches of one call that may run at once whatever the caller asks (None: no cap).
    - `parallel_sync_batches`: the sync path may run batches in threads (remote APIs).
    - `plan_in_thread`: `plan` does real work (tokenising), so async callers run it off the event loop.
    - `default_async_workers`: batches in flight on the async path when the caller sets no limit
      (None: unbounded; a remote API wants a bound).
    - `catalog`: the provider's name in `embedstack.providers.catalog` ("local", "openai", "clip"), where
      the model's facts (dimensions, Matryoshka training, limits) are looked up; None: not catalogued.
    - `prepares`: `prepare` gives each item's encoded form (its tokens) and exact token count ahead of a
      call, safely from any thread while `embed` runs in another (a server tokenises once, on arrival).
    """

    remote: bool = False
    counts_tokens: bool = False
    max_concurrency: int | None = None
    parallel_sync_batches: bool = False
    plan_in_thread: bool = False
    default_async_workers: int | None = None
    catalog: str | None = None
    prepares: bool = False


@dataclass(frozen=True)
class BatchOutput:
    """A batch's values and, per item, its token count and whether it was truncated (None: not known)."""

    values: Any
    token_counts: Sequence[int] | None = None
    truncated: Sequence[bool] | None = None

    @property
    def vectors(self) -> Any:
        """The values (the name `EmbedResult` gives them, for dense outputs)."""
        return self.values


@dataclass(frozen=True)
class Prepared:
    """Items made ready for `embed` ahead of a call (`Provider.prepare`): per item, the value a batch hands
    to `embed` as `Batch.prepared` (e.g. its tokens), the tokens the model sees (instruction and special
    tokens included, after truncation: the exact count usage reports) and whether it was truncated."""

    values: list[Any]
    token_counts: list[int]
    truncated: list[bool]

    def __post_init__(self) -> None:
        if not len(self.values) == len(self.token_counts) == len(self.truncated):
            raise ValueError(
                f"Prepared needs one value, count and flag per item, got {len(self.values)}, "
                f"{len(self.token_counts)} and {len(self.truncated)}"
            )

    def __len__(self) -> int:
        return len(self.values)

    def take(self, positions: Sequence[int]) -> Prepared:
        """The prepared items at `positions`, in that order."""
        return Prepared(
            [self.values[i] for i in positions],
            [self.token_counts[i] for i in positions],
            [self.truncated[i] for i in positions],
        )


@runtime_checkable
class Provider(Protocol):
    """Everything the pipeline asks of a model; configuration is fixed for the provider's lifetime."""

    @property
    def output(self) -> OutputKind:
        """What one item becomes, and its size when known before loading."""

    @property
    def capabilities(self) -> Capabilities:
        """What it can do (remote, exact token counts, concurrency, planning off the loop)."""

    def identity(self) -> Mapping[str, Any]:
        """What makes its outputs what they are (class and every output-changing setting); the cache key
        hashes it. Never a secret."""

    def model_identity(self) -> Mapping[str, Any]:
        """`identity()` without the settings that change only the arithmetic (backend, precision): outputs
        made by two providers of one model identity may be searched or extended by either."""

    def descriptor(self) -> Mapping[str, Any]:
        """The model as events, logs and repr show it: serialisable settings, never secrets."""

    def instruction(self, role: Role) -> str | None:
        """The instruction applied to items of `role` (part of the cache key)."""

    def check(self, items: Sequence[Any], role: Role, label: str, offset: int) -> None:
        """Refuse a call before any work; item i is `label[offset + i]` in the caller's input."""

    def plan(self, items: list[Any], role: Role) -> Plan:
        """The order to embed one round's missing items in, and per-item work done already (`Plan.prepared`)."""

    def embed(self, batch: Batch) -> Any:
        """One batch's values: what `output.check` accepts, a `BatchOutput` or an `EmbedResult`."""

    async def aembed(self, batch: Batch) -> Any:
        """Async `embed`; must never block the event loop."""

    def count_tokens(self, items: list[Any], role: Role) -> TokenCounts | None:
        """Each item's tokens as the model will see them, and whether it will be truncated (None: cannot)."""

    def prepare(self, items: list[Any], role: Role) -> Prepared | None:
        """Each item's encoded form for `embed` and its exact token count, made ahead of the call (safe to call
        from any thread while `embed` runs); None when the provider prepares nothing (`Capabilities.prepares`)."""

    def tokenize(self, texts: list[str], add_special_tokens: bool = True) -> list[list[dict[str, Any]]] | None:
        """Each text's tokens, never truncated, as TEI's /tokenize shows them ({"id", "text", "special", "start",
        "stop"} each); None when the provider has no tokenizer to show."""

    def warm_up(self) -> None:
        """Load what the first call would load (weights, tokenizer, client), so it pays none of it."""


class ProviderBase:
    """Defaults for every `Provider` method but `output`, `identity` and `embed`."""

    capabilities = Capabilities()

    @property
    def output(self) -> OutputKind:
        """What one item becomes."""
        raise NotImplementedError(f"{type(self).__name__} must declare its output")

    def identity(self) -> Mapping[str, Any]:
        """The class path (override to add every output-changing setting)."""
        return {"py_class": f"{type(self).__module__}.{type(self).__qualname__}"}

    def model_identity(self) -> Mapping[str, Any]:
        """The identity."""
        return self.identity()

    def descriptor(self) -> Mapping[str, Any]:
        """The identity."""
        return self.identity()

    def instruction(self, role: Role) -> str | None:
        """No instruction."""
        return None

    def check(self, items: Sequence[Any], role: Role, label: str, offset: int) -> None:
        """Accept everything the pipeline's own checks accepted."""

    def plan(self, items: list[Any], role: Role) -> Plan:
        """Input order, nothing prepared."""
        return Plan()

    def embed(self, batch: Batch) -> Any:
        """One batch's values."""
        raise NotImplementedError(f"{type(self).__name__} must implement embed(batch)")

    async def aembed(self, batch: Batch) -> Any:
        """`embed` in a worker thread."""
        return await asyncio.to_thread(self.embed, batch)

    def count_tokens(self, items: list[Any], role: Role) -> TokenCounts | None:
        """Unknown."""
        return None

    def prepare(self, items: list[Any], role: Role) -> Prepared | None:
        """Nothing prepared ahead (a remote API tokenises on its side): `embed` gets the items alone."""
        return None

    def tokenize(self, texts: list[str], add_special_tokens: bool = True) -> list[list[dict[str, Any]]] | None:
        """No tokenizer to show."""
        return None

    def warm_up(self) -> None:
        """Nothing to load."""
