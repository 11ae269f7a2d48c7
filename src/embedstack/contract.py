"""The model ↔ pipeline contract, declared in one place.

`PipelineModel` is everything `embedstack._pipeline` reads or calls on a model, and nothing else;
`BaseEmbedding` implements all of it. A provider meets the pipeline only through the declarations
below (`ProviderDeclarations`): it overrides some of them and never the drivers, the cache or the
events. Batches carry the caller's positions (`embedstack.types.Batch`), so a provider names items
in its errors without side channels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Protocol, runtime_checkable

from embedstack.types import Batch, Plan, Role

__all__ = ["PipelineModel", "ProviderDeclarations"]


@runtime_checkable
class PipelineModel(Protocol):
    """What the pipeline needs of a model (implemented once, by BaseEmbedding)."""

    embed_batch_size: int
    embeddings_cache: Any  # a BaseKVStore or None
    plan_in_thread: ClassVar[bool]  # run _plan off the event loop (it tokenises, loads files)
    callback_manager: Any  # a CallbackManager (legacy LlamaIndex events)

    def _check_items(self, items: Sequence[Any], role: Role, label: str, offset: int) -> None:
        """Refuse a call before any work; item i is `label[offset + i]` in the caller's input."""

    def _key_factory(self, role: Role) -> Callable[[Any], str]:
        """item → cache key for `role` (embedstack.cache_key, over the identity and the instruction)."""

    def _dim_key(self) -> str:
        """Cache key of this model's recorded vector length."""

    def _known_dim(self) -> tuple[int | None, str]:
        """The vector length results must have (declared or seen), and where it comes from."""

    def _learn_dim(self, dim: int) -> None:
        """Remember the vector length the model returned."""

    def _plan(self, items: list[Any], role: Role) -> Plan:
        """The order to embed one round's missing `items` in, and any per-item work already done
        (`Plan.prepared`, handed to each batch as `Batch.prepared`)."""

    def _sync_workers(self) -> int:
        """Batches of one sync call that may run at once."""

    def _async_workers(self) -> int | None:
        """Batches of one async call that may run at once (None: no limit)."""

    def _embed(self, batch: Batch) -> Any:
        """Embed one batch: vectors (list or 2-D array) or an EmbedResult."""

    async def _aembed(self, batch: Batch) -> Any:
        """Async _embed."""

    def _descriptor(self) -> dict[str, Any]:
        """The model as events show it (no secrets), computed once."""


class ProviderDeclarations(Protocol):
    """What a provider may declare or override; BaseEmbedding turns these into the contract above.

    Identity (what the cache key holds): `_identity()` (class path + every output-changing field;
    fields in `_identity_exclude` are left out). Instructions: `_instruction(role)`. Vector length:
    `_declared_dim()` (a `dimensions` or `embed_dim` field by default). Batch order:
    `_batch_order(items)`, or `_plan(items, role)` to also hand each batch per-item work done while
    ordering (`Batch.prepared`, e.g. tokens). Derived state (loaded weights, clients, located files):
    `_derived` names the private attributes rebuilt from the fields, `_refresh(changed, fresh)` rebuilds them.
    Concurrency: `max_concurrency`, `parallel_sync_batches`, `plan_in_thread`. Input checks:
    `_check_items`. Work: `_embed_batch(items, role)` (BatchEmbedding) or the LlamaIndex hooks, or
    `_embed(batch)` when positions are needed.
    """

    _identity_exclude: ClassVar[frozenset[str]]
    _derived: ClassVar[frozenset[str]]
    max_concurrency: ClassVar[int | None]
    parallel_sync_batches: ClassVar[bool]
    plan_in_thread: ClassVar[bool]

    def _identity(self) -> dict[str, Any]:
        """Class path and every field that changes the vectors."""

    def _instruction(self, role: Role) -> str | None:
        """The instruction applied for `role` (part of the cache key)."""

    def _declared_dim(self) -> int | None:
        """The vector length promised without running."""

    def _batch_order(self, items: list[Any]) -> list[int] | None:
        """The order to embed `items` in (e.g. longest first); None keeps input order."""

    def _refresh(self, changed: frozenset[str], fresh: bool) -> None:
        """Rebuild derived state after the fields in `changed` changed (fresh: none exists yet)."""
