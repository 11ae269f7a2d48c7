"""Sparse vectors beside dense ones in a Parquet output (`embed_files(sparse=...)`) and hybrid search over it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from embedstack.jobs import InputError, OutputError, embed_files, load_embeddings, read_meta, search
from embedstack.jobs._sparse import RRF_K, hybrid_search, sparse_model_of
from embedstack.providers.bm25 import BM25Embedding
from embedstack.sparse import sparse_dot

pytest.importorskip("Stemmer")
pq = pytest.importorskip("pyarrow.parquet")


@pytest.fixture
def out(tmp_path: Path, sample_jsonl: Path) -> Path:
    target = tmp_path / "out.parquet"
    embed_files(sample_jsonl, target, model="fake:16", sparse="bm25", cache=None, chunk_size=7)
    return target


def test_sparse_list_columns_hold_bm25_fitted_on_the_input(out: Path, sample_rows: list[dict[str, str]]) -> None:
    table = pq.read_table(out)
    pa = pytest.importorskip("pyarrow")
    assert table.schema.field("sparse_indices").type.value_type == pa.int32()
    assert table.schema.field("sparse_values").type.value_type == pa.float32()
    texts = [r["text"] for r in sample_rows]
    want = BM25Embedding().fit_transform(texts)  # the same corpus, the same statistics
    for got_i, got_v, row in zip(
        table.column("sparse_indices").to_pylist(), table.column("sparse_values").to_pylist(), want
    ):
        assert got_i == row.indices.tolist() and np.allclose(got_v, row.values, rtol=0, atol=0)
    meta = read_meta(out)
    assert meta["sparse"]["model"] == "bm25" and meta["sparse"]["model_class"] == "BM25Embedding"
    assert set(load_embeddings(out).columns) == {"query", "text"}  # sparse columns are not kept fields
    model = sparse_model_of(out, meta)  # the statistics came back from the output
    assert model.stats.to_json() == BM25Embedding().fit(texts).stats.to_json()
    assert search(out, "a query", 2, cache=None)[0].fields.keys() == {"query"}


def test_hybrid_search_fuses_dense_and_sparse_ranks(out: Path, sample_rows: list[dict[str, str]]) -> None:
    query = sample_rows[3]["query"]
    hits = hybrid_search(out, query, 5, cache=None, candidates=60)
    dense = search(out, query, 60, cache=None)
    model = BM25Embedding().fit([r["text"] for r in sample_rows])
    q = model.get_query_embedding(query)
    bm25 = [sparse_dot(q, d) for d in model.get_text_embedding_batch([r["text"] for r in sample_rows])]
    sparse_order = [sample_rows[i]["id"] for i in sorted(range(len(bm25)), key=lambda i: (-bm25[i], i)) if bm25[i] > 0]
    dense_order = [h.id for h in dense]
    fused = {
        ident: sum(1 / (RRF_K + order.index(ident) + 1) for order in (dense_order, sparse_order) if ident in order)
        for ident in set(dense_order) | set(sparse_order)
    }
    want = sorted(fused.items(), key=lambda kv: -kv[1])[:5]
    assert [h.id for h in hits] == [i for i, _ in want]
    assert [h.score for h in hits] == pytest.approx([s for _, s in want])
    assert hits[0].fields["sparse_rank"] == sparse_order.index(hits[0].id) + 1
    assert "sparse scan" in hits.timing_line() and hits.method.startswith("hybrid RRF")
    sparse_only = hybrid_search(out, query, 3, cache=None, fusion="convex", alpha=0.0, candidates=60)
    assert [h.id for h in sparse_only] == sparse_order[:3]


def test_sparse_outputs_refuse_what_they_cannot_do(tmp_path: Path, sample_jsonl: Path) -> None:
    with pytest.raises(InputError, match="Parquet outputs only"):
        embed_files(sample_jsonl, tmp_path / "o.npy", model="fake:16", sparse="bm25", cache=None)
    with pytest.raises(ValueError, match="is a dense model"):
        embed_files(sample_jsonl, tmp_path / "o.parquet", model="fake:16", sparse="fake:8", cache=None)
    dense_only = tmp_path / "dense.parquet"
    embed_files(sample_jsonl, dense_only, model="fake:16", cache=None)
    with pytest.raises(OutputError, match="has no sparse vectors"):
        hybrid_search(dense_only, "q", cache=None)
    assert not (tmp_path / "o.parquet").exists()
