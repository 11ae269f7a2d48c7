"""CallbackManager: fans legacy callback events out to handlers and tracks the event tree."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Generator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from pydantic import GetCoreSchemaHandler
from pydantic_core import CoreSchema, core_schema

from embedstack.callbacks.base_handler import BaseCallbackHandler
from embedstack.callbacks.schema import BASE_TRACE_EVENT, CBEventType, EventPayload

__all__ = ["CallbackManager", "EventContext"]

_event_stack: ContextVar[tuple[str, ...]] = ContextVar("embedstack_cb_event_stack", default=(BASE_TRACE_EVENT,))
_trace_stack: ContextVar[tuple[str, ...]] = ContextVar("embedstack_cb_trace_stack", default=())


class CallbackManager(BaseCallbackHandler):
    """Holds handlers; every event start/end goes to each handler not ignoring that type."""

    def __init__(self, handlers: list[BaseCallbackHandler] | None = None) -> None:
        self.handlers: list[BaseCallbackHandler] = list(handlers or [])
        self._trace_map: dict[str, list[str]] = defaultdict(list)

    @classmethod
    def __get_pydantic_core_schema__(cls, source: type[Any], handler: GetCoreSchemaHandler) -> CoreSchema:
        """Let pydantic models hold a CallbackManager as an opaque value."""
        return core_schema.is_instance_schema(cls)

    def __repr__(self) -> str:
        return f"CallbackManager(handlers={len(self.handlers)})"

    def on_event_start(
        self,
        event_type: CBEventType,
        payload: dict[str, Any] | None = None,
        event_id: str | None = None,
        parent_id: str | None = None,
        **kwargs: Any,
    ) -> str:
        """Record the start of an event and tell every handler."""
        event_id = event_id or str(uuid.uuid4())
        stack = _event_stack.get()
        parent_id = parent_id or stack[-1]
        self._trace_map[parent_id].append(event_id)
        for handler in self.handlers:
            if event_type not in handler.event_starts_to_ignore:
                handler.on_event_start(event_type, payload, event_id=event_id, parent_id=parent_id, **kwargs)
        if event_type not in (CBEventType.LLM, CBEventType.EMBEDDING):
            _event_stack.set((*stack, event_id))
        return event_id

    def on_event_end(
        self,
        event_type: CBEventType,
        payload: dict[str, Any] | None = None,
        event_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        """Record the end of an event and tell every handler."""
        event_id = event_id or str(uuid.uuid4())
        for handler in self.handlers:
            if event_type not in handler.event_ends_to_ignore:
                handler.on_event_end(event_type, payload, event_id=event_id, **kwargs)
        stack = _event_stack.get()
        if event_type not in (CBEventType.LLM, CBEventType.EMBEDDING) and stack[-1] == event_id:
            _event_stack.set(stack[:-1])

    def add_handler(self, handler: BaseCallbackHandler) -> None:
        """Add a handler."""
        self.handlers.append(handler)

    def remove_handler(self, handler: BaseCallbackHandler) -> None:
        """Remove a handler."""
        self.handlers.remove(handler)

    def set_handlers(self, handlers: list[BaseCallbackHandler]) -> None:
        """Replace all handlers."""
        self.handlers = list(handlers)

    @contextmanager
    def event(
        self,
        event_type: CBEventType,
        payload: dict[str, Any] | None = None,
        event_id: str | None = None,
    ) -> Generator[EventContext, None, None]:
        """Context manager: start on enter, end on exit (an EXCEPTION event if the body raises)."""
        ctx = EventContext(self, event_type, event_id=event_id)
        ctx.on_start(payload=payload)
        try:
            yield ctx
        except Exception as e:
            self.on_event_start(CBEventType.EXCEPTION, payload={EventPayload.EXCEPTION: e})
            raise
        finally:
            if not ctx.finished:
                ctx.on_end()

    @contextmanager
    def as_trace(self, trace_id: str) -> Generator[None, None, None]:
        """Context manager around start_trace/end_trace."""
        self.start_trace(trace_id=trace_id)
        try:
            yield
        finally:
            self.end_trace(trace_id=trace_id)

    def start_trace(self, trace_id: str | None = None) -> None:
        """Begin a trace (nested traces are folded into the outermost one)."""
        if trace_id is None:
            return
        stack = _trace_stack.get()
        if not stack:
            self._trace_map = defaultdict(list)
            _event_stack.set((BASE_TRACE_EVENT,))
            for handler in self.handlers:
                handler.start_trace(trace_id=trace_id)
        _trace_stack.set((*stack, trace_id))

    def end_trace(self, trace_id: str | None = None, trace_map: dict[str, list[str]] | None = None) -> None:
        """End a trace; the outermost one reports the trace map to every handler."""
        if trace_id is None:
            return
        stack = _trace_stack.get()
        if stack:
            stack = stack[:-1]
            _trace_stack.set(stack)
        if not stack:
            for handler in self.handlers:
                handler.end_trace(trace_id=trace_id, trace_map=dict(self._trace_map))

    @property
    def trace_map(self) -> dict[str, list[str]]:
        """Parent event id → child event ids, for the current trace."""
        return dict(self._trace_map)


class EventContext:
    """One event's start/end, as yielded by CallbackManager.event()."""

    def __init__(self, callback_manager: CallbackManager, event_type: CBEventType, event_id: str | None = None):
        self._callback_manager = callback_manager
        self._event_type = event_type
        self._event_id = event_id or str(uuid.uuid4())
        self.started = False
        self.finished = False

    def on_start(self, payload: dict[str, Any] | None = None, **kwargs: Any) -> None:
        """Start the event (once)."""
        if not self.started:
            self.started = True
            self._callback_manager.on_event_start(self._event_type, payload=payload, event_id=self._event_id, **kwargs)

    def on_end(self, payload: dict[str, Any] | None = None, **kwargs: Any) -> None:
        """End the event (once)."""
        if not self.finished:
            self.finished = True
            self._callback_manager.on_event_end(self._event_type, payload=payload, event_id=self._event_id, **kwargs)
