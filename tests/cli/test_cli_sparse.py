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
    assert "sparse   bm25 (bm25: BM25Embedding" in info.stdout
    assert "statistics fitted on this corpus: 60 documents" in info.stdout and "Parquet schema metadata" in info.stdout
    rows = [json.loads(line) for line in sample_jsonl.read_text().splitlines()]
    query = rows[5]["query"]
    found = cli("search", "out.parquet", query, "--hybrid", "--fusion", "convex", "--alpha", "0", "--json", "-k", "1")
    assert found.returncode == 0, found.stderr
    assert "sparse scan" in found.stderr
    hits = json.loads(found.stdout)
    assert hits[0]["fields"]["sparse_rank"] == 1 and hits[0]["score"] == 1.0
    dense = cli("search", "out.parquet", query, "--hybrid", "-k", "3", "--json")
    assert dense.returncode == 0 and len(json.loads(dense.stdout)) == 3


def test_sparse_only_jsonl_append_search_and_info(cli: Run, sample_rows: list[dict[str, str]], tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in sample_rows[:30]), encoding="utf-8")
    (tmp_path / "b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in sample_rows[30:]), encoding="utf-8")
    (tmp_path / "all.jsonl").write_text("".join(json.dumps(r) + "\n" for r in sample_rows), encoding="utf-8")
    args = ["--sparse", "bm25", "--no-dense", "--no-cache"]
    first = cli("embed", "a.jsonl", "-o", "out.jsonl", *args)
    assert first.returncode == 0, first.stderr
    assert "with bm25 (sparse only)" in first.stderr
    more = cli("embed", "b.jsonl", "-o", "out.jsonl", *args, "--append")
    assert more.returncode == 0, more.stderr
    assert cli("embed", "all.jsonl", "-o", "scratch.parquet", *args).returncode == 0
    info = cli("info", "out.jsonl")
    assert info.returncode == 0, info.stderr
    assert "model    none (sparse vectors only)" in info.stdout and "count    60" in info.stdout
    assert "60 documents" in info.stdout and "in out.jsonl.bm25.json" in info.stdout
    query = sample_rows[44]["query"]
    found = [cli("search", out, query, "-k", "4", "--json") for out in ("out.jsonl", "scratch.parquet")]
    assert found[0].returncode == 0, found[0].stderr
    assert "sparse exact (bm25 dot product)" in found[0].stderr
    hits = [[(h["id"], round(h["score"], 4)) for h in json.loads(f.stdout)] for f in found]
    assert hits[0] == hits[1] and len(hits[0]) == 4  # appended, then searched: as the whole corpus embedded at once


def test_sparse_beside_dense_in_npy_info(cli: Run, sample_jsonl: Path) -> None:
    done = cli("embed", str(sample_jsonl), "-o", "out.npy", "-m", "fake:16", "--sparse", "bm25", "--no-cache")
    assert done.returncode == 0, done.stderr
    info = cli("info", "out.npy")
    assert "in out.npy.bm25.json" in info.stdout and "vectors  float32" in info.stdout
    hybrid = cli("search", "out.npy", "json parser", "--hybrid", "--json", "-k", "2")
    assert hybrid.returncode == 0 and len(json.loads(hybrid.stdout)) == 2


def test_sparse_errors_name_the_fix(cli: Run, sample_jsonl: Path) -> None:
    bad = cli("embed", str(sample_jsonl), "-o", "out.npy", "--sparse", "bm25", "--no-dense", "--no-cache")
    assert bad.returncode != 0 and ".npy output holds a dense matrix" in bad.stderr
    alone = cli("embed", str(sample_jsonl), "-o", "o.parquet", "--no-dense", "--no-cache")
    assert alone.returncode != 0 and "--no-dense needs --sparse SPEC" in alone.stderr
    both = cli("embed", str(sample_jsonl), "-o", "o.parquet", "--no-dense", "-m", "fake:8", "--sparse", "bm25")
    assert both.returncode != 0 and "--model fake:8 has nothing to do" in both.stderr
    cli("embed", str(sample_jsonl), "-o", "dense.parquet", "-m", "fake:16", "--no-cache")
    no_sparse = cli("search", "dense.parquet", "q", "--hybrid")
    assert no_sparse.returncode != 0 and "--sparse bm25" in no_sparse.stderr
