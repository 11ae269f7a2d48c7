"""Fixtures for the OpenAI provider tests: a real fake-OpenAI HTTP server and models pointed at it."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from openai_fake_server import FakeOpenAIServer
from openai_testutil import FAST, KEY

from embedstack.providers.openai import OpenAIEmbedding

_ENV = (
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "OPENAI_API_BASE",
    "AZURE_OPENAI_API_KEY",
    "AZURE_OPENAI_ENDPOINT",
    "OPENAI_API_VERSION",
    "AZURE_OPENAI_API_VERSION",
    "IS_TESTING",
)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in _ENV:
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(dim=16, api_key=KEY) as s:
        yield s


@pytest.fixture
def make_model(server: FakeOpenAIServer) -> Callable[..., Any]:
    """A model of `cls` (OpenAIEmbedding by default) on the fake server, with millisecond backoffs."""

    def make(cls: type = OpenAIEmbedding, **kw: Any) -> Any:
        args: dict[str, Any] = {"api_key": KEY, "api_base": server.url, **FAST}
        args.update(kw)
        return cls(**args)

    return make


@pytest.fixture(params=["sync", "async"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)
