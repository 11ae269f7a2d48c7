"""The model ↔ pipeline contract, declared in one place.

The pipeline asks a model only for the `embedstack.provider.Provider` protocol (a test scans the
pipeline's attribute reads). A `BaseEmbedding` is one through `model.provider`, which turns the
declarations below (`ProviderDeclarations`: the hooks a LlamaIndex-style model overrides) into it.
Batches carry the caller's positions (`embedstack.types.Batch`), so a provider names items in its
errors without side channels.
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol

from embedstack.provider import Provider
from embedstack.types import Role

__all__ = ["Provider", "ProviderDeclarations"]


class ProviderDeclarations(Protocol):
    """What a BaseEmbedding subclass may declare or override; `model.provider` turns these into the Provider.

    Identity (what the cache key holds): `_identity()` (class path + every output-changing field;
    fields in `_identity_exclude` are left out). Instructions: `_instruction(role)`. Vector length:
    `_declared_dim()` (a `dimensions` or `embed_dim` field by default). Batch order:
    `_batch_order(items)`, or `_plan(items, role)` to also hand each batch per-item work done while
    ordering (`Batch.prepared`, e.g. tokens). Derived state (loaded weights, clients, located files):
    `_derived` names the private attributes rebuilt from the fields, `_refresh(changed, fresh)` rebuilds them.
    Concurrency: `max_concurrency`, `parallel_sync_batches`, `plan_in_thread`. Input checks:
    `_check_items`. Capabilities: `is_remote`, `_count_tokens(items, role)` (exact counts), `_prepare(items, role)`
    (tokens made ahead of a call, e.g. on a server's arrival path: `Batch.prepared` then), `_warm_up()`,
    `_preferred_batch_size()`. Work: `_embed_batch(items, role)` (BatchEmbedding) or the LlamaIndex
    hooks, or `_embed(batch)` when positions are needed.
    """

    _identity_exclude: ClassVar[frozenset[str]]
    _derived: ClassVar[frozenset[str]]
    max_concurrency: ClassVar[int | None]
    parallel_sync_batches: ClassVar[bool]
    plan_in_thread: ClassVar[bool]
    is_remote: ClassVar[bool]

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
