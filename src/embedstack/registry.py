"""resolve_embed_model and the provider registry: a prefix or an object kind → a model factory.

Providers register by name ("local", "clip", "openai", ...) with a lazy "module:function" target,
so resolving never imports a heavy provider that is not asked for.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from embedstack.base import BaseEmbedding
from embedstack.callbacks.manager import CallbackManager
from embedstack.sparse import BaseSparseEmbedding

__all__ = [
    "ProviderSpec",
    "register_object_adapter",
    "register_provider",
    "resolve_dense_model",
    "resolve_embed_model",
    "set_default_callback_manager",
]


#: What a spec resolves to: a dense model, or a sparse one ("splade:...", "bm25").
AnyModel = BaseEmbedding | BaseSparseEmbedding


@dataclass(frozen=True)
class ProviderSpec:
    """A registered provider: its prefix, its factory ("module:function" or a callable) and a usage line."""

    prefix: str
    factory: str | Callable[[str | None], AnyModel]
    usage: str

    def load(self) -> Callable[[str | None], AnyModel]:
        """The factory, imported on first use."""
        if callable(self.factory):
            return self.factory
        module, _, attr = self.factory.partition(":")
        return getattr(importlib.import_module(module), attr)  # type: ignore[no-any-return]


_providers: dict[str, ProviderSpec] = {}
_object_adapters: list[tuple[Callable[[Any], bool], str | Callable[[Any], BaseEmbedding]]] = []


def register_provider(prefix: str, factory: str | Callable[[str | None], AnyModel], usage: str) -> None:
    """Make "prefix" and "prefix:<arg>" resolve through `factory(arg or None)`."""
    _providers[prefix] = ProviderSpec(prefix, factory, usage)


def register_object_adapter(matches: Callable[[Any], bool], adapter: str | Callable[[Any], BaseEmbedding]) -> None:
    """Make objects for which `matches(obj)` is true resolve through `adapter(obj)` (e.g. LangChain)."""
    _object_adapters.append((matches, adapter))


def _default(arg: str | None) -> BaseEmbedding:
    if os.getenv("IS_TESTING"):
        from embedstack.providers.mock import MockEmbedding

        return MockEmbedding(embed_dim=8)
    model = _providers["openai"].load()(arg)
    assert isinstance(model, BaseEmbedding)
    return model


def _is_langchain(obj: Any) -> bool:
    return any(c.__module__.startswith("langchain") and c.__name__ == "Embeddings" for c in type(obj).__mro__)


def _fake(arg: str | None) -> BaseEmbedding:
    from embedstack.providers.mock import FakeEmbedding

    try:
        dim = int(arg) if arg else 16
    except ValueError:
        raise ValueError(f"fake model dimension must be an integer, got {arg!r} (e.g. 'fake:32')") from None
    return FakeEmbedding(embed_dim=dim)


register_provider("default", _default, '"default" (OpenAI; MockEmbedding(8) when IS_TESTING is set)')
register_provider("local", "embedstack.providers.huggingface:from_spec", '"local" or "local:<model name or path>"')
for _backend in ("torch", "onnx", "openvino"):
    register_provider(
        _backend,
        f"embedstack.providers.huggingface.embedding:{_backend}_from_spec",
        f'"{_backend}" or "{_backend}:<model name or path>" (the local model on this backend, fp32)',
    )
register_provider("clip", "embedstack.providers.clip:from_spec", '"clip" or "clip:<model name or path>"')
register_provider("openai", "embedstack.providers.openai:from_spec", '"openai:<model>"')
register_provider("fake", _fake, '"fake" or "fake:<dim>" (deterministic hash vectors, for tests)')
register_provider(
    "splade",
    "embedstack.providers.splade:from_spec",
    '"splade:<model name or path>" (SPLADE sparse vectors; "splade:onnx:<path>" on ONNX Runtime)',
)
register_provider("bm25", "embedstack.providers.bm25:from_spec", '"bm25" or "bm25:<statistics.json>" (sparse BM25)')
register_object_adapter(_is_langchain, "embedstack.providers.langchain:LangchainEmbedding")


def accepted_forms() -> list[str]:
    """Every accepted form of embed_model, for messages and `embedstack models`."""
    return [
        "None (MockEmbedding, embeddings disabled)",
        "a BaseEmbedding or BaseSparseEmbedding instance",
        "a LangChain Embeddings object",
    ] + [p.usage for p in _providers.values()]


def _from_string(spec: str) -> AnyModel:
    prefix, sep, arg = spec.partition(":")
    provider = _providers.get(prefix.strip().lower())
    if provider is None:
        forms = "; ".join(accepted_forms())
        raise ValueError(f"unknown embed_model {spec!r}; accepted forms: {forms}")
    try:
        factory = provider.load()
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith("embedstack"):
            raise ValueError(f"provider {prefix!r} is not available in this version of embedstack") from e
        raise
    return factory(arg.strip() or None if sep else None)


def resolve_embed_model(embed_model: Any = None, callback_manager: CallbackManager | None = None) -> AnyModel:
    """Turn None, a spec string, a LangChain Embeddings or a model into a BaseEmbedding (a BaseSparseEmbedding
    for sparse specs such as "splade:<path>" and "bm25")."""
    if embed_model is None:
        from embedstack.providers.mock import MockEmbedding

        print("Embeddings have been explicitly disabled. Using MockEmbedding.")
        model: AnyModel = MockEmbedding(embed_dim=1)
    elif isinstance(embed_model, (BaseEmbedding, BaseSparseEmbedding)):
        model = embed_model
    elif isinstance(getattr(embed_model, "model", None), BaseEmbedding) and type(embed_model).__module__.startswith(
        "embedstack.interop"
    ):
        model = embed_model.model  # one of our own adapters (as_langchain / as_llama_index): unwrap it
    elif isinstance(embed_model, str):
        model = _from_string(embed_model)
    else:
        for matches, adapter in _object_adapters:
            if matches(embed_model):
                if isinstance(adapter, str):
                    module, _, attr = adapter.partition(":")
                    adapter = getattr(importlib.import_module(module), attr)
                model = adapter(embed_model)  # type: ignore[operator]
                break
        else:
            forms = "; ".join(accepted_forms())
            raise ValueError(f"cannot use {type(embed_model).__name__} as an embed model; accepted forms: {forms}")
    model.callback_manager = callback_manager or _default_callback_manager()
    return model


def resolve_dense_model(embed_model: Any = None, callback_manager: CallbackManager | None = None) -> BaseEmbedding:
    """`resolve_embed_model` for the places that take dense models only (Settings, jobs, the server)."""
    model = resolve_embed_model(embed_model, callback_manager)
    if not isinstance(model, BaseEmbedding):
        raise TypeError(
            f"{embed_model!r} is a sparse model ({type(model).__name__}); dense vectors are needed here "
            "(use a dense model, or the sparse model's own methods)"
        )
    return model


def _no_callbacks() -> CallbackManager:
    return CallbackManager([])


_default_callback_manager: Callable[[], CallbackManager] = _no_callbacks


def set_default_callback_manager(factory: Callable[[], CallbackManager]) -> None:
    """Where resolve_embed_model takes the callback manager it attaches when none is passed.

    `embedstack.settings` points it at `Settings.callback_manager` (LlamaIndex's behaviour), so the
    registry never reads Settings itself.
    """
    global _default_callback_manager
    _default_callback_manager = factory
