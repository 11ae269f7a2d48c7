"""`embedstack embed --sparse`, `info` and `search --hybrid` in a subprocess, on the bundled sample corpus."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.conftest import Run

pytest.importorskip("Stemmer")


def test_embed_sparse_info_and_hybrid_search(cli: Run, sample_jsonl: Path, tmp_path: Path) -> None:
    done = cli("embed", str(sample_jsonl), "-o", "out.parquet", "-m", "fake:16", "--sparse", "bm25", "--no-cache")
    assert done.returncode == 0, done.stderr
    assert "+ sparse bm25" in done.stderr
    info = cli("info", "out.parquet")
    assert info.returncode == 0, info.stderr
    assert "sparse   bm25 (BM25Embedding" in info.stdout and "statistics in OUT" in info.stdout
    rows = [json.loads(line) for line in sample_jsonl.read_text().splitlines()]
    query = rows[5]["query"]
    found = cli("search", "out.parquet", query, "--hybrid", "--fusion", "convex", "--alpha", "0", "--json", "-k", "1")
    assert found.returncode == 0, found.stderr
    assert "sparse scan" in found.stderr
    hits = json.loads(found.stdout)
    assert hits[0]["fields"]["sparse_rank"] == 1 and hits[0]["score"] == 1.0
    dense = cli("search", "out.parquet", query, "--hybrid", "-k", "3", "--json")
    assert dense.returncode == 0 and len(json.loads(dense.stdout)) == 3


def test_sparse_errors_name_the_fix(cli: Run, sample_jsonl: Path) -> None:
    bad = cli("embed", str(sample_jsonl), "-o", "out.npy", "-m", "fake:16", "--sparse", "bm25", "--no-cache")
    assert bad.returncode != 0 and "Parquet outputs only" in bad.stderr
    cli("embed", str(sample_jsonl), "-o", "dense.parquet", "-m", "fake:16", "--no-cache")
    no_sparse = cli("search", "dense.parquet", "q", "--hybrid")
    assert no_sparse.returncode != 0 and "--sparse bm25" in no_sparse.stderr
