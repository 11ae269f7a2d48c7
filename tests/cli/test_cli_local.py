"""The Quick start path with the real default model ("local", bundled all-MiniLM-L6-v2), offline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tests.conftest import Run

from embedstack.jobs import load_embeddings

pytestmark = pytest.mark.slow  # `embedstack` in subprocesses, with the bundled model


def test_embed_and_search_with_the_default_local_model(
    cli: Run, tmp_path: Path, sample_rows: list[dict[str, str]]
) -> None:
    rows = sample_rows[:40]
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    r = cli("embed", "docs.jsonl", "-o", "docs.parquet", "--cache", "c.sqlite", timeout=300)
    assert r.returncode == 0, r.stderr
    assert "embedded 40 texts (40 computed, 0 from cache) with local → docs.parquet" in r.stderr
    assert "Traceback" not in r.stderr and "Loading weights" not in r.stderr

    s = cli(
        "search",
        "docs.parquet",
        "library for stubbing HTTP requests in Ruby",
        "-k",
        "3",
        "--json",
        "--cache",
        "c.sqlite",
        timeout=300,
    )
    assert s.returncode == 0, s.stderr
    hits = json.loads(s.stdout)
    assert hits[0]["id"] == "ruby-webmock" and hits[0]["score"] > hits[1]["score"]

    data = load_embeddings(tmp_path / "docs.parquet")
    assert data.meta["model"] == "local" and data.meta["model_name"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert data.vectors.shape == (40, 384)
    np.testing.assert_allclose(np.linalg.norm(data.vectors, axis=1), 1.0, atol=1e-4)
    precision = data.meta["model_identity"]["precision"]  # bf16 where "local" runs OpenVINO bf16
    info = cli("info", "docs.parquet")
    assert f"(HuggingFaceEmbedding, sentence-transformers/all-MiniLM-L6-v2, {precision})" in info.stdout
