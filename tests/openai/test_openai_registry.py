"""resolve_embed_model("default") / "openai:<model>", missing key and missing package, lazy import."""

from __future__ import annotations

import subprocess
import sys

import pytest
from openai_testutil import KEY

import embedstack
from embedstack import resolve_embed_model
from embedstack.providers.mock import MockEmbedding


def test_default_without_key_names_the_variable_and_the_local_alternative() -> None:
    with pytest.raises(ValueError) as info:
        resolve_embed_model("default")
    msg = str(info.value)
    assert "OPENAI_API_KEY" in msg and "'local'" in msg


def test_default_with_key_is_openai(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    model = resolve_embed_model("default")
    assert type(model).__name__ == "OpenAIEmbedding"
    assert model.model_name == "text-embedding-3-small"
    assert model.api_base == "https://api.openai.com/v1"


def test_openai_prefix_picks_the_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    model = resolve_embed_model("openai:text-embedding-3-large")
    assert model.model_name == "text-embedding-3-large"


def test_default_when_testing_is_the_mock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IS_TESTING", "1")
    model = resolve_embed_model("default")
    assert isinstance(model, MockEmbedding) and model.embed_dim == 8


def test_missing_openai_package_gives_the_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setitem(sys.modules, "openai", None)  # makes `import openai` raise ImportError
    with pytest.raises(ImportError, match=r"pip install 'embedstack\[openai\]'"):
        resolve_embed_model("default")
    with pytest.raises(ImportError, match=r"pip install 'embedstack\[openai\]'"):
        embedstack.OpenAIEmbedding(api_key=KEY)


def test_exported_lazily_and_import_stays_light() -> None:
    assert embedstack.OpenAIEmbedding.class_name() == "OpenAIEmbedding"
    assert embedstack.AzureOpenAIEmbedding.class_name() == "AzureOpenAIEmbedding"
    assert embedstack.OpenAILikeEmbedding.class_name() == "OpenAILikeEmbedding"
    code = (
        "import sys, embedstack, embedstack.providers.openai;"
        "print(any(m == 'openai' or m.startswith(('openai.', 'tiktoken')) for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"  # the provider module imports the SDK only when a model is made
