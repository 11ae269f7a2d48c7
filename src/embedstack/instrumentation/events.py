"""Instrumentation events: BaseEvent and the embedding start/end events (LlamaIndex's shapes)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Dict  # noqa: UP035 (BaseEvent.dict shadows the builtin in its class body)

from pydantic import BaseModel, ConfigDict, Field

from embedstack.instrumentation._context import current_span_id

__all__ = [
    "BaseEvent",
    "EmbeddingEndEvent",
    "EmbeddingStartEvent",
    "SparseEmbeddingEndEvent",
    "SparseEmbeddingStartEvent",
]


class BaseEvent(BaseModel):
    """An event, stamped with time, its own id and the span it happened in."""

    model_config = ConfigDict(arbitrary_types_allowed=True, protected_namespaces=("pydantic_model_",))
    timestamp: datetime = Field(default_factory=datetime.now)
    id_: str = Field(default_factory=lambda: str(uuid.uuid4()))
    span_id: str | None = Field(default_factory=lambda: current_span_id.get())
    tags: Dict[str, Any] = Field(default_factory=dict)  # noqa: UP006

    @classmethod
    def class_name(cls) -> str:
        """Stable name of the event class."""
        return "BaseEvent"

    def dict(self, **kwargs: Any) -> Dict[str, Any]:  # type: ignore[override]  # noqa: UP006
        """The event as data, with class_name."""
        data = self.model_dump(**kwargs)
        data["class_name"] = self.class_name()
        return data


class EmbeddingStartEvent(BaseEvent):
    """A batch is about to be embedded; model_dict describes the model (no secrets)."""

    model_dict: Dict[str, Any]  # noqa: UP006

    @classmethod
    def class_name(cls) -> str:
        """Class name."""
        return "EmbeddingStartEvent"


class EmbeddingEndEvent(BaseEvent):
    """A batch was embedded: its chunks, their vectors, and what it cost."""

    chunks: list[str]
    embeddings: list[list[float]]
    token_count: int | None = None
    truncated: int = 0
    role: str = "text"
    duration_s: float = 0.0

    @classmethod
    def class_name(cls) -> str:
        """Class name."""
        return "EmbeddingEndEvent"


class SparseEmbeddingStartEvent(EmbeddingStartEvent):
    """A batch is about to be embedded by a sparse model (an EmbeddingStartEvent, as in LlamaIndex)."""

    @classmethod
    def class_name(cls) -> str:
        """Class name."""
        return "SparseEmbeddingStartEvent"


class SparseEmbeddingEndEvent(BaseEvent):
    """A batch was embedded by a sparse model: its chunks and their {index: value} vectors."""

    chunks: list[str]
    embeddings: list[Dict[int, float]]  # noqa: UP006
    token_count: int | None = None
    truncated: int = 0
    role: str = "text"
    duration_s: float = 0.0

    @classmethod
    def class_name(cls) -> str:
        """Class name."""
        return "SparseEmbeddingEndEvent"
