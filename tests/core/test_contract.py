"""The declared model ↔ pipeline contract is the whole contract: the pipeline reads nothing else."""

from __future__ import annotations

import ast
from pathlib import Path

import embedstack._pipeline as pipeline
from embedstack import FakeEmbedding, MockEmbedding
from embedstack.provider import Provider


def _provider_attributes() -> set[str]:
    """Every attribute the pipeline engine reads off something named `provider` (or `job.provider`)."""
    tree = ast.parse(Path(pipeline.__file__).read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            owner = node.value
            if isinstance(owner, ast.Name) and owner.id == "provider":
                found.add(node.attr)
            elif isinstance(owner, ast.Attribute) and owner.attr == "provider":
                found.add(node.attr)
    return found


def test_pipeline_uses_only_the_declared_contract() -> None:
    declared = {n for n in dir(Provider) if not n.startswith("__")}
    used = _provider_attributes()
    assert used, "the scan found no provider attributes: update the test"
    assert used <= declared, f"the pipeline uses undeclared provider attributes: {sorted(used - declared)}"


def test_every_model_implements_the_contract() -> None:
    assert isinstance(FakeEmbedding().provider, Provider)
    assert isinstance(MockEmbedding(embed_dim=3).provider, Provider)
