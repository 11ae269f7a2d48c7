"""BaseCallbackHandler: the legacy LlamaIndex handler interface."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from embedstack.callbacks.schema import CBEventType

__all__ = ["BaseCallbackHandler"]


class BaseCallbackHandler(ABC):
    """Receives event starts/ends and trace boundaries; event types in the ignore lists are skipped."""

    def __init__(
        self,
        event_starts_to_ignore: list[CBEventType],
        event_ends_to_ignore: list[CBEventType],
    ) -> None:
        self.event_starts_to_ignore = tuple(event_starts_to_ignore)
        self.event_ends_to_ignore = tuple(event_ends_to_ignore)

    @abstractmethod
    def on_event_start(
        self,
        event_type: CBEventType,
        payload: dict[str, Any] | None = None,
        event_id: str = "",
        parent_id: str = "",
        **kwargs: Any,
    ) -> str:
        """An event started; returns its id."""

    @abstractmethod
    def on_event_end(
        self,
        event_type: CBEventType,
        payload: dict[str, Any] | None = None,
        event_id: str = "",
        **kwargs: Any,
    ) -> None:
        """An event ended."""

    @abstractmethod
    def start_trace(self, trace_id: str | None = None) -> None:
        """A trace began."""

    @abstractmethod
    def end_trace(
        self,
        trace_id: str | None = None,
        trace_map: dict[str, list[str]] | None = None,
    ) -> None:
        """A trace ended, with the map of parent event id to child ids."""
