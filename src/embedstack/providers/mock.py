"""Mock models: LlamaIndex's constant mocks, and an input-dependent fake for tests."""

from __future__ import annotations

import hashlib
import threading
import time
from typing import Any, ClassVar

import numpy as np
from pydantic import Field, PrivateAttr

from embedstack.base import BaseEmbedding, BatchEmbedding, MultiModalEmbedding
from embedstack.types import Embedding, ImageType, Role

__all__ = ["FakeEmbedding", "MockEmbedding", "MockMultiModalEmbedding"]


class MockEmbedding(BaseEmbedding):
    """Returns [0.5] * embed_dim for every query and text."""

    embed_dim: int

    def __init__(self, embed_dim: int, **kwargs: Any) -> None:
        super().__init__(embed_dim=embed_dim, **kwargs)

    @classmethod
    def class_name(cls) -> str:
        """Name stored in to_dict()."""
        return "MockEmbedding"

    def _get_vector(self) -> Embedding:
        return [0.5] * self.embed_dim

    def _get_query_embedding(self, query: str) -> Embedding:
        return self._get_vector()

    async def _aget_query_embedding(self, query: str) -> Embedding:
        return self._get_vector()

    def _get_text_embedding(self, text: str) -> Embedding:
        return self._get_vector()

    async def _aget_text_embedding(self, text: str) -> Embedding:
        return self._get_vector()

    def _get_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return [self._get_vector() for _ in texts]


class MockMultiModalEmbedding(MockEmbedding, MultiModalEmbedding):
    """Returns [0.5] * embed_dim for every query, text and image."""

    @classmethod
    def class_name(cls) -> str:
        """Name stored in to_dict()."""
        return "MockMultiModalEmbedding"

    def _get_image_embedding(self, img_file_path: ImageType) -> Embedding:
        return self._get_vector()

    async def _aget_image_embedding(self, img_file_path: ImageType) -> Embedding:
        return self._get_vector()


class FakeEmbedding(BatchEmbedding, MultiModalEmbedding):
    """Deterministic, input-dependent vectors (seeded from a hash of role and item) for tests.

    Records every batch it is asked for in `calls`, so tests can see what reached the model.
    """

    model_name: str = "fake"
    embed_dim: int = Field(default=16, gt=0)
    delay_s: float = Field(
        default=0.0, ge=0, description="Seconds to sleep per batch (to test progress and interruption)."
    )
    _calls: list[tuple[str, list[Any]]] = PrivateAttr(default_factory=list)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    _identity_exclude: ClassVar[frozenset[str]] = frozenset({"delay_s"})

    @classmethod
    def class_name(cls) -> str:
        """Name stored in to_dict()."""
        return "FakeEmbedding"

    @property
    def calls(self) -> list[tuple[str, list[Any]]]:
        """(role, items) for every batch embedded so far."""
        return self._calls

    @property
    def embedded(self) -> list[Any]:
        """Every item embedded so far, in call order."""
        return [item for _, items in self._calls for item in items]

    def vector_for(self, item: Any, role: Role | str = Role.TEXT) -> np.ndarray:
        """The vector this model gives `item` as `role` (float32, unit length)."""
        from embedstack._images import image_bytes

        role = Role(role)
        data = image_bytes(item) if role is Role.IMAGE else str(item).encode("utf-8", "surrogatepass")
        seed = int.from_bytes(hashlib.sha256(role.value.encode() + b"\0" + data).digest()[:8], "little")
        vec = np.random.default_rng(seed).standard_normal(self.embed_dim).astype(np.float32)
        out: np.ndarray = vec / np.linalg.norm(vec)
        return out

    def _embed_batch(self, items: list[Any], role: Role) -> np.ndarray:
        with self._lock:
            self._calls.append((role.value, list(items)))
        if self.delay_s:
            time.sleep(self.delay_s)
        return np.stack([self.vector_for(i, role) for i in items])
