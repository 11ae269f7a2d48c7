"""Instrumentation: a dispatcher tree, event and span handlers, and the embedding events.

The pydantic event and handler classes are imported on first use (PEP 562), so `import embedstack`
does not pay for them when nobody instruments.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from embedstack.instrumentation.dispatcher import Dispatcher, get_dispatcher

if TYPE_CHECKING:
    from embedstack.instrumentation.events import (
        BaseEvent,
        EmbeddingEndEvent,
        EmbeddingStartEvent,
        SparseEmbeddingEndEvent,
        SparseEmbeddingStartEvent,
    )
    from embedstack.instrumentation.handlers import (
        BaseEventHandler,
        BaseSpan,
        BaseSpanHandler,
        SimpleSpan,
        SimpleSpanHandler,
    )

_LAZY = {
    "BaseEvent": "events",
    "EmbeddingEndEvent": "events",
    "EmbeddingStartEvent": "events",
    "SparseEmbeddingEndEvent": "events",
    "SparseEmbeddingStartEvent": "events",
    "BaseEventHandler": "handlers",
    "BaseSpan": "handlers",
    "BaseSpanHandler": "handlers",
    "SimpleSpan": "handlers",
    "SimpleSpanHandler": "handlers",
}

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
    "SparseEmbeddingEndEvent",
    "SparseEmbeddingStartEvent",
    "get_dispatcher",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'embedstack.instrumentation' has no attribute {name!r}")
    return getattr(importlib.import_module(f"embedstack.instrumentation.{module}"), name)
