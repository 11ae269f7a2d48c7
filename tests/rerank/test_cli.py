"""`embedstack search OUT QUERY --rerank MODEL --candidates N`: the cosine top N rescored by a cross-encoder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from embedstack.rerank import CrossEncoderReranker

pytestmark = pytest.mark.slow


def test_search_reranks_the_best_candidates(cli, tmp_path: Path, sample_jsonl: Path, ce_bert: Path) -> None:  # type: ignore[no-untyped-def]
    assert cli("embed", "docs.jsonl", "-o", "a.parquet", "-m", "fake:16", "--no-cache").returncode == 0
    query = "library for stubbing HTTP requests"
    plain = json.loads(cli("search", "a.parquet", query, "-k", "8", "--json", "--no-cache").stdout)
    r = cli(
        "search",
        "a.parquet",
        query,
        "-k",
        "3",
        "--json",
        "--timings",
        "--no-cache",
        "--rerank",
        str(ce_bert),
        "--candidates",
        "8",
    )
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    want = CrossEncoderReranker(str(ce_bert)).rank(query, [h["text"] for h in plain], top_n=3)
    assert [h["id"] for h in doc["hits"]] == [plain[w.index]["id"] for w in want]
    assert [h["rank"] for h in doc["hits"]] == [1, 2, 3]
    assert [h["score"] for h in doc["hits"]] == pytest.approx([w.score for w in want], abs=1e-6)
    assert [h["fields"]["cosine"] for h in doc["hits"]] == pytest.approx([plain[w.index]["score"] for w in want])
    assert doc["timings"]["rerank_pairs"] == 8 and doc["timings"]["rerank_s"] > 0
    assert "reranked by" in doc["method"] and "rerank: model load" in r.stderr

    bad = cli("search", "a.parquet", query, "--no-cache", "--rerank", str(tmp_path / "missing") + "/")
    assert bad.returncode != 0 and "does not exist" in bad.stderr
