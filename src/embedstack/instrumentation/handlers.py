"""Event and span handler base classes, and a simple span recorder."""

from __future__ import annotations

import inspect
import threading
import time
from abc import abstractmethod
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from embedstack.instrumentation.events import BaseEvent

__all__ = ["BaseEventHandler", "BaseSpan", "BaseSpanHandler", "SimpleSpan", "SimpleSpanHandler"]


class BaseEventHandler(BaseModel):
    """Receives every event dispatched where it is attached (and below, by propagation)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    @classmethod
    def class_name(cls) -> str:
        """Class name."""
        return "BaseEventHandler"

    @abstractmethod
    def handle(self, event: BaseEvent, **kwargs: Any) -> Any:
        """Handle one event."""

    async def ahandle(self, event: BaseEvent, **kwargs: Any) -> Any:
        """Handle one event from async code."""
        return self.handle(event, **kwargs)


class BaseSpan(BaseModel):
    """A span: an id, its parent's id and tags."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    id_: str
    parent_id: str | None = None
    tags: dict[str, Any] = Field(default_factory=dict)


class SimpleSpan(BaseSpan):
    """A span with wall-clock timing."""

    start_time: float = Field(default_factory=time.perf_counter)
    end_time: float | None = None
    duration: float = 0.0
    metadata: dict[str, Any] | None = None


T = TypeVar("T", bound=BaseSpan)


class BaseSpanHandler(BaseModel, Generic[T]):
    """Tracks open, completed and dropped spans; subclasses say how a span is made and closed."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    open_spans: dict[str, T] = Field(default_factory=dict)
    completed_spans: list[T] = Field(default_factory=list)
    dropped_spans: list[T] = Field(default_factory=list)
    current_span_ids: dict[Any, str | None] = Field(default_factory=dict)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    @classmethod
    def class_name(cls) -> str:
        """Class name."""
        return "BaseSpanHandler"

    def span_enter(
        self,
        id_: str,
        bound_args: inspect.BoundArguments,
        instance: Any | None = None,
        parent_id: str | None = None,
        tags: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Open a span."""
        if id_ in self.open_spans:
            return
        span = self.new_span(id_=id_, bound_args=bound_args, instance=instance, parent_span_id=parent_id, tags=tags)
        if span is not None:
            with self._lock:
                self.open_spans[id_] = span

    def span_exit(
        self,
        id_: str,
        bound_args: inspect.BoundArguments,
        instance: Any | None = None,
        result: Any | None = None,
        **kwargs: Any,
    ) -> None:
        """Close a span that returned."""
        span = self.prepare_to_exit_span(id_=id_, bound_args=bound_args, instance=instance, result=result)
        if span is not None:
            with self._lock:
                self.open_spans.pop(id_, None)

    def span_drop(
        self,
        id_: str,
        bound_args: inspect.BoundArguments,
        instance: Any | None = None,
        err: BaseException | None = None,
        **kwargs: Any,
    ) -> None:
        """Close a span that raised."""
        span = self.prepare_to_drop_span(id_=id_, bound_args=bound_args, instance=instance, err=err)
        if span is not None:
            with self._lock:
                self.open_spans.pop(id_, None)

    @abstractmethod
    def new_span(
        self,
        id_: str,
        bound_args: inspect.BoundArguments,
        instance: Any | None = None,
        parent_span_id: str | None = None,
        tags: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> T | None:
        """Make a span object."""

    @abstractmethod
    def prepare_to_exit_span(
        self,
        id_: str,
        bound_args: inspect.BoundArguments,
        instance: Any | None = None,
        result: Any | None = None,
        **kwargs: Any,
    ) -> T | None:
        """Finish a span that returned."""

    @abstractmethod
    def prepare_to_drop_span(
        self,
        id_: str,
        bound_args: inspect.BoundArguments,
        instance: Any | None = None,
        err: BaseException | None = None,
        **kwargs: Any,
    ) -> T | None:
        """Finish a span that raised."""


class SimpleSpanHandler(BaseSpanHandler[SimpleSpan]):
    """Records SimpleSpans with their durations."""

    @classmethod
    def class_name(cls) -> str:
        """Class name."""
        return "SimpleSpanHandler"

    def new_span(
        self,
        id_: str,
        bound_args: inspect.BoundArguments,
        instance: Any | None = None,
        parent_span_id: str | None = None,
        tags: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> SimpleSpan:
        """A timed span."""
        return SimpleSpan(id_=id_, parent_id=parent_span_id, tags=tags or {})

    def _close(self, id_: str, into: list[SimpleSpan]) -> SimpleSpan | None:
        span = self.open_spans.get(id_)
        if span is None:
            return None
        span.end_time = time.perf_counter()
        span.duration = span.end_time - span.start_time
        with self._lock:
            into.append(span)
        return span

    def prepare_to_exit_span(
        self,
        id_: str,
        bound_args: inspect.BoundArguments,
        instance: Any | None = None,
        result: Any | None = None,
        **kwargs: Any,
    ) -> SimpleSpan | None:
        """Move the span to completed_spans."""
        return self._close(id_, self.completed_spans)

    def prepare_to_drop_span(
        self,
        id_: str,
        bound_args: inspect.BoundArguments,
        instance: Any | None = None,
        err: BaseException | None = None,
        **kwargs: Any,
    ) -> SimpleSpan | None:
        """Move the span to dropped_spans."""
        return self._close(id_, self.dropped_spans)
