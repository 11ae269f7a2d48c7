"""The layers above the pipeline (server, jobs, Ray, CLI, corpus map, interop, registry) use models only through
public API: nothing there reads a private attribute of a model (issue 22). Providers and the pipeline may."""

from __future__ import annotations

import ast
from pathlib import Path

import embedstack
from embedstack.base import BaseEmbedding, BatchEmbedding, ModelProvider, MultiModalEmbedding

SRC = Path(embedstack.__file__).parent
ABOVE = ["server", "jobs", "cli", "corpusmap", "interop", "registry.py", "settings.py"]


def _model_privates() -> set[str]:
    """Private names of the model classes: hooks, derived state, memo (the providers' own included)."""
    from embedstack.providers.bm25 import BM25Embedding
    from embedstack.providers.clip import ClipEmbedding
    from embedstack.providers.huggingface import HuggingFaceEmbedding
    from embedstack.providers.langchain import LangchainEmbedding
    from embedstack.providers.mock import FakeEmbedding
    from embedstack.providers.openai import AzureOpenAIEmbedding, OpenAIEmbedding, OpenAILikeEmbedding
    from embedstack.providers.splade import SpladeEmbedding
    from embedstack.sparse import BaseSparseEmbedding

    names: set[str] = set()
    for cls in (
        BaseEmbedding,
        BatchEmbedding,
        MultiModalEmbedding,
        FakeEmbedding,
        HuggingFaceEmbedding,
        OpenAIEmbedding,
        OpenAILikeEmbedding,
        AzureOpenAIEmbedding,
        ClipEmbedding,
        LangchainEmbedding,
        BaseSparseEmbedding,
        SpladeEmbedding,
        BM25Embedding,
    ):
        names |= {n for n in dir(cls) if n.startswith("_") and not n.startswith("__")}
        names |= set(getattr(cls, "__private_attributes__", {}))
    names |= {n for n in dir(ModelProvider) if n.startswith("_") and not n.startswith("__")}
    return names


def _reads(path: Path, private: set[str]) -> list[str]:
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in private:
            owner = node.value
            if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
                continue
            if isinstance(owner, ast.Call) and isinstance(owner.func, ast.Name) and owner.func.id == "super":
                continue
            shown = path.relative_to(SRC) if path.is_relative_to(SRC) else path.name
            found.append(f"{shown}:{node.lineno}: .{node.attr}")
    return found


def test_nothing_above_the_pipeline_reads_a_private_model_attribute() -> None:
    private = _model_privates()
    assert {"_identity", "_embed", "_plan", "_memo", "_instruction"} <= private  # the scan sees the hooks
    files = [p for name in ABOVE for p in ((SRC / name).rglob("*.py") if (SRC / name).is_dir() else [SRC / name])]
    assert len(files) > 20
    offenders = [hit for path in files for hit in _reads(path, private)]
    assert not offenders, (
        "private model attributes read above the pipeline (use model.provider / model.pipeline):\n"
        + "\n".join(offenders)
    )


def test_the_scan_finds_a_private_read(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("def f(model, self):\n    self._plan(1)\n    return model._identity()\n")
    assert _reads(sample, _model_privates()) == ["sample.py:3: ._identity"]
