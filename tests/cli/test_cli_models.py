"""`embedstack models`: the known models' facts table, its --provider filter and --json, without torch or openai."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.conftest import Run, cli_env

from embedstack.providers.catalog import MODELS

pytestmark = pytest.mark.slow  # `embedstack` in subprocesses


def _table(stdout: str) -> list[str]:
    """The lines of the known-models table (header first), as printed."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("known models")) + 1
    return lines[start:]


def test_the_table_lists_every_known_model_in_aligned_columns(cli: Run) -> None:
    r = cli("models")
    assert r.returncode == 0, r.stderr
    assert "cli          installed" in r.stdout  # the other sections are still there
    header, *rows = _table(r.stdout)
    assert header.split() == [
        "provider",
        "name",
        "dims",
        "max",
        "tokens",
        "pooling",
        "matryoshka",
        "licence",
        "fast-path",
        "verified",
    ]
    assert len(rows) == len(MODELS)
    dims_end = header.index("dims") + len("dims")
    for row, facts in zip(rows, MODELS):
        assert row.split()[:2] == [facts.provider, facts.name]
        assert row[:dims_end].rstrip().endswith(str(facts.dimensions))  # right-aligned under "dims"
    default = next(row for row in rows if "all-MiniLM-L6-v2" in row)
    assert "all-MiniLM-L6-v2 *" in default and default.split()[3:6] == ["384", "256", "mean"]
    assert "onnx fp32" in default and "openvino bf16 (opt-in)" in default
    assert "text-embedding-3-large " in r.stdout and "text-embedding-3-large *" not in r.stdout
    flags = {row.split()[1]: row[header.index("matryoshka") :].split()[0] for row in rows}
    assert flags["nomic-ai/nomic-embed-text-v1.5"] == "yes" and flags["BAAI/bge-small-en-v1.5"] == "-"
    fast = {row.split()[1]: row[header.index("fast-path") :].split()[0] for row in rows}
    assert fast["Qwen/Qwen3-Embedding-0.6B"] == "yes" and fast["nomic-ai/nomic-embed-text-v1.5"] == "torch"
    assert fast["text-embedding-3-small"] == "-"
    licences = {row.split()[1]: row[header.index("licence") :].split()[0] for row in rows}
    assert licences["BAAI/bge-m3"] == "mit" and licences["Alibaba-NLP/gte-modernbert-base"] == "apache-2.0"


def test_provider_filter_and_json(cli: Run) -> None:
    r = cli("models", "--provider", "clip")
    assert r.returncode == 0, r.stderr
    rows = _table(r.stdout)[1:]
    assert [row.split()[0] for row in rows] == ["clip"] * 4
    assert rows[0].split()[1:4] == ["openai/clip-vit-base-patch32", "*", "512"]
    info = json.loads(cli("models", "--json", "--provider", "openai").stdout)
    assert {m["name"]: m["dimensions"] for m in info["known"]} == {
        "text-embedding-3-small": 1536,
        "text-embedding-3-large": 3072,
        "text-embedding-ada-002": 1536,
    }
    assert [m["default"] for m in info["known"]] == [True, False, False] and info["extras"]["cli"] is True
    everything = json.loads(cli("models", "--json").stdout)["known"]
    assert len(everything) == len(MODELS) and everything[0]["verified"][0] == "torch fp32"
    bad = cli("models", "--provider", "cohere")
    assert bad.returncode == 2 and "invalid choice: 'cohere'" in bad.stderr


def test_listing_models_imports_neither_torch_nor_openai(cli: Run, tmp_path: Path) -> None:
    r = cli("models", env=cli_env(tmp_path, PYTHONPROFILEIMPORTTIME="1"))
    assert r.returncode == 0, r.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    assert "embedstack.providers.catalog" in imported  # the profile is real: the table's module is listed
    assert not imported & {"torch", "openai", "transformers", "PIL"}
