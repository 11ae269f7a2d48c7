"""Settings: process-wide defaults (embed model and callback manager), resolved lazily."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from embedstack.callbacks.manager import CallbackManager
from embedstack.registry import resolve_dense_model, set_default_callback_manager

if TYPE_CHECKING:
    from embedstack.base import BaseEmbedding

__all__ = ["Settings"]


class _Settings:
    """Global defaults; embed_model resolves "default" on first read."""

    def __init__(self) -> None:
        self._embed_model: BaseEmbedding | None = None
        self._callback_manager: CallbackManager | None = None

    @property
    def embed_model(self) -> BaseEmbedding:
        """The default embed model (resolved from "default" on first read)."""
        if self._embed_model is None:
            self._embed_model = resolve_dense_model("default")
        return self._embed_model

    @embed_model.setter
    def embed_model(self, embed_model: Any) -> None:
        self._embed_model = resolve_dense_model(embed_model)

    @property
    def callback_manager(self) -> CallbackManager:
        """The default callback manager."""
        if self._callback_manager is None:
            self._callback_manager = CallbackManager()
        return self._callback_manager

    @callback_manager.setter
    def callback_manager(self, callback_manager: CallbackManager) -> None:
        self._callback_manager = callback_manager


Settings = _Settings()
set_default_callback_manager(lambda: Settings.callback_manager)  # resolve_embed_model attaches it, as LlamaIndex does
