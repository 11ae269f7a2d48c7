"""Instrumentation: a dispatcher tree, event and span handlers, and the embedding events."""

from embedstack.instrumentation.dispatcher import Dispatcher, get_dispatcher
from embedstack.instrumentation.events import BaseEvent, EmbeddingEndEvent, EmbeddingStartEvent
from embedstack.instrumentation.handlers import (
    BaseEventHandler,
    BaseSpan,
    BaseSpanHandler,
    SimpleSpan,
    SimpleSpanHandler,
)

__all__ = [
    "BaseEvent",
    "BaseEventHandler",
    "BaseSpan",
    "BaseSpanHandler",
    "Dispatcher",
    "EmbeddingEndEvent",
    "EmbeddingStartEvent",
    "SimpleSpan",
    "SimpleSpanHandler",
    "get_dispatcher",
]
