"""Dispatcher: routes events and spans to handlers, propagating up to the root dispatcher.

Emitting with no handler attached anywhere costs one short walk up the parent chain.
"""

from __future__ import annotations

import functools
import inspect
import threading
import uuid
from collections.abc import Callable, Generator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar, cast

from embedstack.instrumentation._context import current_span_id

if TYPE_CHECKING:  # the pydantic event and handler classes load only when someone uses them
    from embedstack.instrumentation.events import BaseEvent
    from embedstack.instrumentation.handlers import BaseEventHandler, BaseSpanHandler

__all__ = ["Dispatcher", "get_dispatcher"]

F = TypeVar("F", bound=Callable[..., Any])
ROOT = "root"


class Dispatcher:
    """A named node in the dispatcher tree with its own event and span handlers."""

    def __init__(self, name: str, parent: Dispatcher | None = None, propagate: bool = True) -> None:
        self.name = name
        self.parent = parent
        self.propagate = propagate
        self.event_handlers: list[BaseEventHandler] = []
        self.span_handlers: list[BaseSpanHandler[Any]] = []

    def __repr__(self) -> str:
        counts = f"event_handlers={len(self.event_handlers)}, span_handlers={len(self.span_handlers)}"
        return f"Dispatcher(name={self.name!r}, {counts})"

    @property
    def parent_name(self) -> str | None:
        """Name of the parent dispatcher (None for the root)."""
        return self.parent.name if self.parent else None

    def add_event_handler(self, handler: BaseEventHandler) -> None:
        """Attach an event handler here."""
        self.event_handlers.append(handler)

    def add_span_handler(self, handler: BaseSpanHandler[Any]) -> None:
        """Attach a span handler here."""
        self.span_handlers.append(handler)

    def _chain(self) -> Generator[Dispatcher, None, None]:
        node: Dispatcher | None = self
        while node is not None:
            yield node
            node = node.parent if node.propagate else None

    def has_event_handlers(self) -> bool:
        """Whether any event handler would see an event dispatched here."""
        node: Dispatcher | None = self
        while node is not None:  # a plain loop: this runs on every embedding call
            if node.event_handlers:
                return True
            node = node.parent if node.propagate else None
        return False

    def event(self, event: BaseEvent, **kwargs: Any) -> None:
        """Send an event to every handler here and above."""
        for d in self._chain():
            for h in d.event_handlers:
                h.handle(event, **kwargs)

    def _span_handlers(self) -> list[BaseSpanHandler[Any]]:
        found: list[BaseSpanHandler[Any]] = []
        node: Dispatcher | None = self
        while node is not None:  # a plain loop: every public embedding method asks
            if node.span_handlers:
                found.extend(node.span_handlers)
            node = node.parent if node.propagate else None
        return found

    @contextmanager
    def _span_scope(
        self,
        func: Callable[..., Any],
        handlers: list[BaseSpanHandler[Any]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Generator[list[Any], None, None]:
        """Open a span around one call; the body puts its result in the yielded list."""
        id_ = f"{func.__qualname__}-{uuid.uuid4()}"
        try:
            bound = inspect.signature(func).bind(*args, **kwargs)
        except TypeError:
            bound = inspect.Signature().bind()
        instance = args[0] if args else None
        parent = current_span_id.get()
        token = current_span_id.set(id_)
        for h in handlers:
            h.span_enter(id_=id_, bound_args=bound, instance=instance, parent_id=parent, tags={})
        out: list[Any] = []
        try:
            yield out
        except BaseException as e:
            for h in handlers:
                h.span_drop(id_=id_, bound_args=bound, instance=instance, err=e)
            raise
        finally:
            current_span_id.reset(token)
        for h in handlers:
            h.span_exit(id_=id_, bound_args=bound, instance=instance, result=out[0] if out else None)

    def span(self, func: F) -> F:
        """Decorator: run `func` (sync or async) inside a span when span handlers listen."""
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                handlers = self._span_handlers()
                if not handlers:
                    return await func(*args, **kwargs)
                with self._span_scope(func, handlers, args, kwargs) as out:
                    out.append(await func(*args, **kwargs))
                return out[0]

            return cast(F, async_wrapper)

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            handlers = self._span_handlers()
            if not handlers:
                return func(*args, **kwargs)
            with self._span_scope(func, handlers, args, kwargs) as out:
                out.append(func(*args, **kwargs))
            return out[0]

        return cast(F, wrapper)


_lock = threading.Lock()
_dispatchers: dict[str, Dispatcher] = {ROOT: Dispatcher(ROOT)}


def get_dispatcher(name: str = ROOT) -> Dispatcher:
    """The dispatcher called `name`, created on first use under its nearest dotted ancestor (or root)."""
    with _lock:
        found = _dispatchers.get(name)
        if found is not None:
            return found
        parent_name = name
        parent = _dispatchers[ROOT]
        while "." in parent_name:
            parent_name = parent_name.rsplit(".", 1)[0]
            if parent_name in _dispatchers:
                parent = _dispatchers[parent_name]
                break
        dispatcher = Dispatcher(name, parent=parent)
        _dispatchers[name] = dispatcher
        return dispatcher
