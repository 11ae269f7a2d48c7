"""Attack on the vectors that leave `embed` and come back from `search`, against numpy on a slice of the benchmark
corpus (bench/data/packages-retrieval.jsonl) embedded with the bundled model:

- rows and ids in input order whatever the cache held (a warm cache for some texts, repeats within the run) and
  across an append, every vector the model's own for its text;
- exact and index search (float32, int8, binary + rescoring; .npy, Parquet, JSON Lines) give the ids and scores
  numpy gives over the stored vectors, with exact ties (repeated texts) going to the lower row.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from embedstack.jobs import embed_records, load_embeddings, search
from embedstack.vectors import normalize

pytestmark = pytest.mark.slow  # the bundled model embeds ~130 texts

BENCH = Path(__file__).resolve().parents[2] / "bench" / "data" / "packages-retrieval.jsonl"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """120 benchmark records (texts cut to 240 characters) with three exact repeats placed before and after
    their originals, the model's vectors of every text, and five queries that hit the repeats."""
    from embedstack import resolve_embed_model

    lines = BENCH.read_text(encoding="utf-8").splitlines()[:120]
    rows = [{"id": r["id"], "text": r["text"][:240], "query": r["query"]} for r in map(json.loads, lines)]
    originals = [rows[40], rows[10], rows[90]]
    for at, of in zip((3, 60, 118), originals):  # a repeat before, between and after: exact ties
        rows.insert(at, {"id": f"repeat-of-{of['id']}", "text": of["text"], "query": ""})
    model = resolve_embed_model("local")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vectors = np.asarray(model.embed([r["text"] for r in rows]), dtype=np.float32)
        queries = [r["query"] for r in originals]  # their texts are repeated: ties near the top
        queries += [rows[5]["query"], rows[77]["query"]]
        qv = np.asarray([model.get_query_embedding(q) for q in queries], dtype=np.float32)
    return {"rows": rows, "vectors": vectors, "queries": queries, "qv": qv, "model": model}


def test_rows_stay_in_input_order_through_cache_repeats_and_append(corpus: dict[str, Any], tmp_path: Path) -> None:
    rows, want, model = corpus["rows"], corpus["vectors"], corpus["model"]
    cache = tmp_path / "cache.sqlite"
    records = [{"id": r["id"], "text": r["text"]} for r in rows]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        embed_records(records[::3], tmp_path / "warm.npy", model=model, cache=cache)  # every third text cached
        for ext in ("npy", "parquet", "jsonl"):
            out = tmp_path / f"o.{ext}"
            first = embed_records(records[:70], out, model=model, cache=cache, id_field="id", chunk_size=17)
            second = embed_records(records[70:], out, model=model, cache=cache, id_field="id", append=True)
            assert (first.count, second.count, second.total_rows) == (70, len(rows) - 70, len(rows))
            got = load_embeddings(out)
            assert list(got.ids) == [r["id"] for r in rows], ext
            np.testing.assert_allclose(got.vectors, want, atol=1e-6, err_msg=ext)
            np.testing.assert_array_equal(got.vectors[3], got.vectors[41])  # a repeat is its original's row


def _numpy_top(stored: np.ndarray, q: np.ndarray, k: int) -> tuple[list[int], np.ndarray]:
    """Cosine of the unit query with each stored row, best first, ties to the lower row."""
    scores = (stored.astype(np.float64) @ q.astype(np.float64)) / np.linalg.norm(stored.astype(np.float64), axis=1)
    order = np.lexsort((np.arange(len(scores)), -scores))[:k]
    return order.tolist(), scores[order]


@pytest.mark.parametrize("ext", ["npy", "parquet", "jsonl"])
@pytest.mark.parametrize("precision", ["float32", "int8", "binary"])
def test_exact_and_index_search_equal_numpy(corpus: dict[str, Any], tmp_path: Path, ext: str, precision: str) -> None:
    pytest.importorskip("faiss")
    rows, model = corpus["rows"], corpus["model"]
    out = tmp_path / f"o.{ext}"
    embed_records(
        [{"id": r["id"], "text": r["text"]} for r in rows],
        out,
        model=model,
        cache=None,
        id_field="id",
        precision=precision,
        chunk_size=29,
    )
    stored = load_embeddings(out).vectors  # dequantised int8; binary: its int8 rescoring vectors
    ids = [r["id"] for r in rows]
    tied = 0
    for query, qv in zip(corpus["queries"], corpus["qv"]):
        want_rows, want_scores = _numpy_top(stored, normalize(qv[None, :])[0], 10)
        tied += int(np.any(want_scores[1:] == want_scores[:-1]))
        for index in (False, True):
            hits = search(out, query, k=10, model=model, cache=None, index=index)
            assert ("index" in hits.method) is index, hits.method
            assert [h.id for h in hits] == [ids[i] for i in want_rows], (precision, index, query, hits.method)
            np.testing.assert_allclose([h.score for h in hits], want_scores, atol=2e-6)
    assert tied >= 2  # the repeats really tie at the top, so the tie rule was checked
