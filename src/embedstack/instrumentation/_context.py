"""The context variable holding the current span id (shared by events and the dispatcher)."""

from __future__ import annotations

from contextvars import ContextVar

current_span_id: ContextVar[str | None] = ContextVar("embedstack_current_span_id", default=None)
