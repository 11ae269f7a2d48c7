"""Sparse vectors beside dense ones or alone, in every output format (`embed_files(sparse=...)`), appended to
(BM25 statistics updated), searched alone and fused with dense results (hybrid)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from embedstack.jobs import (
    InputError,
    ModelMismatchError,
    OutputError,
    embed_files,
    embed_records,
    load_embeddings,
    read_meta,
    search,
)
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


def _rows(path: Path, rows: list[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _same_sparse(a: list[Any], b: list[Any]) -> bool:
    return len(a) == len(b) and all(
        np.array_equal(x.indices, y.indices) and np.array_equal(x.values, y.values) for x, y in zip(a, b)
    )


def _files(path: Path) -> dict[str, bytes]:
    """Every file of an output (the target and its sidecars), by name."""
    return {p.name: p.read_bytes() for p in path.parent.iterdir() if p.name.startswith(path.name) and p.is_file()}


KINDS = [("parquet", "fake:16"), ("parquet", None), ("jsonl", "fake:16"), ("jsonl", None), ("npy", "fake:16")]


@pytest.mark.parametrize(("ext", "dense"), KINDS, ids=[f"{e}-{'dense' if d else 'sparse-only'}" for e, d in KINDS])
def test_bm25_append_equals_an_embed_of_the_whole_corpus(
    tmp_path: Path, sample_rows: list[dict[str, str]], ext: str, dense: str | None
) -> None:
    first, second = _rows(tmp_path / "a.jsonl", sample_rows[:35]), _rows(tmp_path / "b.jsonl", sample_rows[35:])
    whole = _rows(tmp_path / "all.jsonl", sample_rows)
    out, scratch = tmp_path / f"out.{ext}", tmp_path / f"scratch.{ext}"
    embed_files(first, out, model=dense, sparse="bm25", cache=None, chunk_size=9)
    before = load_embeddings(out)
    report = embed_files(second, out, model=dense, sparse="bm25", cache=None, chunk_size=9, append=True)
    assert report.total_rows == len(sample_rows) and report.dense == (dense is not None)
    embed_files(whole, scratch, model=dense, sparse="bm25", cache=None, chunk_size=13)
    got, want = load_embeddings(out), load_embeddings(scratch)
    assert got.ids == want.ids and np.array_equal(got.vectors, want.vectors)
    assert got.sparse is not None and want.sparse is not None and _same_sparse(got.sparse, want.sparse)
    texts = [r["text"] for r in sample_rows]
    fitted = BM25Embedding().fit(texts)  # the statistics of the whole corpus
    assert _same_sparse(got.sparse, BM25Embedding().fit_transform(texts))
    assert sparse_model_of(out, read_meta(out)).stats.to_json() == fitted.stats.to_json()
    assert read_meta(out)["sparse"]["stats"] == read_meta(scratch)["sparse"]["stats"]
    assert read_meta(out)["sparse"]["stats"]["documents"] == len(sample_rows)
    assert before.sparse is not None and not _same_sparse(before.sparse, got.sparse[:35])  # old rows re-weighed
    query = sample_rows[40]["query"]
    find = search if dense is None else hybrid_search
    after, fresh = find(out, query, 5, cache=None), find(scratch, query, 5, cache=None)
    assert [(h.id, h.score) for h in after] == [(h.id, h.score) for h in fresh]
    if dense is None:  # sparse search: BM25 scores under the whole corpus's statistics
        q = fitted.get_query_embedding(query)
        scores = [sparse_dot(q, d) for d in fitted.get_text_embedding_batch(texts)]
        best = sorted(range(len(texts)), key=lambda i: (-scores[i], i))[:5]
        assert [h.id for h in after] == [sample_rows[i]["id"] for i in best]
        assert [h.score for h in after] == pytest.approx([scores[i] for i in best], rel=1e-5)
        assert after.method.startswith("sparse exact") and after[0].text == sample_rows[best[0]]["text"]


def test_given_statistics_stay_as_they_are_on_append(tmp_path: Path, sample_rows: list[dict[str, str]]) -> None:
    stats = BM25Embedding().fit([r["text"] for r in sample_rows[:10]]).save_stats(tmp_path / "stats.json")
    out = tmp_path / "out.jsonl"
    spec = f"bm25:{stats}"
    embed_records(sample_rows[:20], out, model=None, sparse=spec, cache=None)
    embed_records(sample_rows[20:], out, model=None, sparse=spec, cache=None, append=True)
    meta = read_meta(out)
    assert meta["sparse"]["stats"]["from"] == "given" and meta["sparse"]["stats"]["documents"] == 10
    model = BM25Embedding(stats_path=str(stats))
    got = load_embeddings(out).sparse
    assert got is not None and _same_sparse(got, model.embed([r["text"] for r in sample_rows]))
    other = BM25Embedding().fit(["another corpus entirely"]).save_stats(tmp_path / "other.json")
    with pytest.raises(ModelMismatchError, match=r"different sparse model \(stats="):
        embed_records(sample_rows[:2], out, model=None, sparse=f"bm25:{other}", cache=None, append=True)


def test_splade_like_sparse_models_append_as_they_are(tmp_path: Path, sample_rows: list[dict[str, str]]) -> None:
    out = tmp_path / "out.npy"
    fixed = BM25Embedding().fit(["fixed statistics for a model object"])
    embed_records(sample_rows[:7], out, model="fake:8", sparse=fixed, cache=None)
    embed_records(sample_rows[7:12], out, model="fake:8", sparse=fixed, cache=None, append=True)
    got = load_embeddings(out).sparse
    assert got is not None and _same_sparse(got, fixed.embed([r["text"] for r in sample_rows[:12]]))
    assert np.load(tmp_path / "out.npy.sparse.npz")["indptr"].tolist()[-1] == sum(len(r.indices) for r in got)


def test_a_failed_append_leaves_the_output_and_keeps_the_cache(
    tmp_path: Path, sample_rows: list[dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    from embedstack.jobs import _output
    from embedstack.kvstore import SQLiteKVStore

    for ext in ("jsonl", "npy", "parquet"):
        out = tmp_path / f"out.{ext}"
        embed_records(sample_rows[:20], out, model="fake:8", sparse="bm25", cache=None)
        kept = _files(out)
        cache = SQLiteKVStore(tmp_path / f"cache-{ext}.sqlite")
        writer = {"jsonl": _output.JsonlWriter, "npy": _output.NpyWriter, "parquet": _output.ParquetWriter}[ext]
        calls = {"n": 0}
        real = writer._write

        def failing(self: Any, *args: Any, real: Any = real, calls: dict[str, int] = calls) -> None:
            calls["n"] += 1
            if calls["n"] == 2:
                raise RuntimeError("disk full")
            real(self, *args)

        monkeypatch.setattr(writer, "_write", failing)
        with pytest.raises(RuntimeError, match="disk full"):
            embed_records(sample_rows[20:], out, model="fake:8", sparse="bm25", cache=cache, chunk_size=10, append=True)
        monkeypatch.undo()
        assert _files(out) == kept, ext  # the old output, byte for byte, and no temp files beside it
        assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
        again = embed_records(sample_rows[20:], out, model="fake:8", sparse="bm25", cache=cache, append=True)
        assert again.computed == len(sample_rows) - 40, ext  # the two chunks embedded before the failure were cached


def test_sparse_outputs_refuse_what_they_cannot_do(
    tmp_path: Path, sample_jsonl: Path, sample_rows: list[dict[str, str]]
) -> None:
    with pytest.raises(InputError, match=r"\.npy output holds a dense matrix.*\.parquet or \.jsonl"):
        embed_files(sample_jsonl, tmp_path / "o.npy", model=None, sparse="bm25", cache=None)
    with pytest.raises(ValueError, match="nothing to embed"):
        embed_files(sample_jsonl, tmp_path / "o.parquet", model=None, cache=None)
    with pytest.raises(ValueError, match="shape dense vectors"):
        embed_files(sample_jsonl, tmp_path / "o.parquet", model=None, sparse="bm25", precision="int8", cache=None)
    with pytest.raises(ValueError, match="is a dense model"):
        embed_files(sample_jsonl, tmp_path / "o.parquet", model="fake:16", sparse="fake:8", cache=None)
    dense_only = tmp_path / "dense.parquet"
    embed_files(sample_jsonl, dense_only, model="fake:16", cache=None)
    with pytest.raises(OutputError, match="has no sparse vectors"):
        hybrid_search(dense_only, "q", cache=None)
    with pytest.raises(OutputError, match="holds no sparse vectors; refusing to append"):
        embed_files(sample_jsonl, dense_only, model="fake:16", sparse="bm25", cache=None, append=True)
    both = tmp_path / "both.jsonl"
    embed_records(sample_rows[:5], both, model="fake:16", sparse="bm25", cache=None)
    with pytest.raises(ModelMismatchError, match="add --sparse bm25"):
        embed_records(sample_rows[5:9], both, model="fake:16", cache=None, append=True)
    with pytest.raises(ModelMismatchError, match="refusing to append rows without them; use --model fake:16"):
        embed_records(sample_rows[5:9], both, model=None, sparse="bm25", cache=None, append=True)
    with pytest.raises(ModelMismatchError, match=r"different sparse model \(k1=1\.5 vs 1\.2\)"):
        embed_records(sample_rows[5:9], both, model="fake:16", sparse=BM25Embedding(k1=1.2), cache=None, append=True)
    with pytest.raises(ModelMismatchError, match="pass an unfitted BM25"):
        fitted = BM25Embedding().fit(["x y"])
        embed_records(sample_rows[5:9], both, model="fake:16", sparse=fitted, cache=None, append=True)
    sparse_only = tmp_path / "sparse.parquet"
    embed_records(sample_rows[:5], sparse_only, model=None, sparse="bm25", cache=None)
    with pytest.raises(ModelMismatchError, match="holds sparse vectors only; refusing to append rows with dense"):
        embed_records(sample_rows[5:9], sparse_only, model="fake:16", sparse="bm25", cache=None, append=True)
    with pytest.raises(OutputError, match=r"holds sparse vectors only.*without --hybrid"):
        hybrid_search(sparse_only, "q", cache=None)
    with pytest.raises(ModelMismatchError, match="leave out --model"):
        search(sparse_only, "q", model="fake:16", cache=None)
    textless = tmp_path / "textless.jsonl"
    embed_records(sample_rows[:5], textless, model=None, sparse="bm25", keep="none", cache=None)
    kept = _files(textless)
    with pytest.raises(OutputError, match=r"keeps no 'text' column.*bm25:<stats.json>"):
        embed_records(sample_rows[5:9], textless, model=None, sparse="bm25", keep="none", cache=None, append=True)
    assert _files(textless) == kept
    assert not (tmp_path / "o.parquet").exists() and not (tmp_path / "o.npy").exists()


@pytest.mark.parametrize("ext", ["parquet", "jsonl"])
def test_sparse_search_ties_go_to_the_lower_row_as_every_top_k(tmp_path: Path, ext: str) -> None:
    """1000 rows with the very same BM25 score: the top k are the first k of them, as the dense searches and
    `embedstack.vectors.top_k` break ties (an unstable partition returned rows 1960, 1962, 1964 here)."""
    from embedstack.vectors import top_k

    texts = ["quick fox" if i % 2 == 0 else f"filler {i}" for i in range(2000)]
    out = tmp_path / f"s.{ext}"
    embed_records(texts, out, model=None, sparse="bm25", cache=None)
    hits = search(out, "quick fox", k=3)
    assert [h.id for h in hits] == ["0", "2", "4"]
    assert len({h.score for h in hits}) == 1 and hits[0].score > 0
    from embedstack.types import Role

    q = sparse_model_of(out, read_meta(out)).pipeline.embed(["quick fox"], Role.QUERY).values[0].to_dict()
    rows = load_embeddings(out).sparse
    assert rows is not None
    scores = np.array([sparse_dot(r.to_dict(), q) for r in rows])
    assert [h.id for h in search(out, "quick fox", k=7)] == [str(i) for i in top_k(scores, 7)]
