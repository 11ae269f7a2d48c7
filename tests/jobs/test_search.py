"""Search at scale (issue 17): chunked/memory-mapped exact search, Hamming + rescoring, timings, the HNSW index.

Retrieval quality with the real default model `local` on the bundled sample's (query, text) pairs; fake
models where the model does not matter.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests.conftest import SAMPLE, Run

from embedstack.jobs import (
    OutputError,
    SearchResult,
    embed_records,
    load_embeddings,
    read_meta,
    search,
)
from embedstack.jobs._search import TIMING_KEYS
from embedstack.jobs._stored import open_stored
from embedstack.providers.mock import FakeEmbedding
from embedstack.vectors import truncate_dimensions

TEXTS = [f"document number {i} about topic {i % 11} and theme {i % 5}" for i in range(300)]
QUERY = "document number 42 about topic 9"


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """200 packages of the sample corpus embedded with `local` as float32, float16, int8 and binary (.npy),
    and the ids of each one's top 10 for the first 200 queries (the model and a cache shared)."""
    from embedstack import resolve_embed_model

    rows = [json.loads(line) for line in SAMPLE.read_text(encoding="utf-8").splitlines()][:200]
    tmp = tmp_path_factory.mktemp("real")
    model = resolve_embed_model("local")
    cache = tmp / "cache.sqlite"
    tops: dict[str, list[list[str]]] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a few long texts are truncated at 256 tokens
        for precision in ("float32", "float16", "int8", "binary"):
            out = tmp / f"{precision}.npy"
            embed_records(rows, out, model=model, cache=cache, precision=precision)
            tops[precision] = [[h.id for h in search(out, r["query"], k=10, model=model, cache=cache)] for r in rows]
        out = tmp / "hamming.npy"  # the same bits without rescoring vectors: what rescoring buys
        embed_records(rows, out, model=model, cache=cache, precision="binary", rescore=False)
        tops["hamming"] = [[h.id for h in search(out, r["query"], k=10, model=model, cache=cache)] for r in rows]
    return {"rows": rows, "tops": tops, "dir": tmp, "cache": cache}


def _overlap(a: list[list[str]], b: list[list[str]]) -> float:
    return float(np.mean([len(set(x) & set(y)) / len(y) for x, y in zip(a, b)]))


@pytest.mark.slow  # the bundled model embeds 200 records
def test_compact_outputs_retrieve_like_float32_with_the_real_model(real: dict[str, Any]) -> None:
    """Measured here: top-1 agreement with float32 1.0 (Hamming alone 0.925); overlap with float32's top 10:
    float16 1.0, int8 0.998, binary + rescoring 0.994, Hamming alone 0.62; own text in the top 10: 1.0
    (Hamming alone 0.985)."""
    rows, tops = real["rows"], real["tops"]
    base = tops["float32"]
    own = {name: np.mean([r["id"] in top for r, top in zip(rows, t)]) for name, t in tops.items()}
    assert own["float32"] >= 0.9
    for name, floor in (("float16", 0.98), ("int8", 0.95), ("binary", 0.9)):
        assert np.mean([t[0] == b[0] for t, b in zip(tops[name], base)]) >= 0.9, name
        assert _overlap(tops[name], base) >= floor, name
        assert own[name] >= 0.95 * own["float32"], name
    assert _overlap(tops["binary"], base) > _overlap(tops["hamming"], base) + 0.1  # rescoring is worth it


@pytest.mark.slow  # the bundled model embeds 200 records
def test_a_cached_query_never_loads_the_model(real: dict[str, Any]) -> None:
    """A repeated query is answered from the cache without loading the weights (seconds for a one-off search)."""
    from embedstack import resolve_embed_model

    out, cache, first = real["dir"] / "float32.npy", real["cache"], real["rows"][0]
    fresh = resolve_embed_model("local")
    hits = search(out, first["query"], k=10, model=fresh, cache=cache)  # the fixture searched it: cached
    assert fresh._encoder is None and [h.id for h in hits] == real["tops"]["float32"][0]
    search(out, "a query nobody searched before", k=3, model=fresh, cache=cache)
    assert fresh._encoder is not None


@pytest.mark.parametrize("ext", ["npy", "parquet", "jsonl"])
@pytest.mark.parametrize("precision", ["float32", "float16", "int8", "binary", "ubinary"])
def test_chunked_search_equals_in_memory_search(tmp_path: Path, ext: str, precision: str) -> None:
    """Chunks of 7 rows (a running top-k) give what one chunk gives, and what brute force gives."""
    model = FakeEmbedding(embed_dim=48)
    out = tmp_path / f"o.{ext}"
    embed_records(TEXTS, out, model=model, cache=None, precision=precision, chunk_size=64)
    small = search(out, QUERY, k=8, model=model, cache=None, chunk_size=7, index=False)
    whole = search(out, QUERY, k=8, model=model, cache=None, chunk_size=10_000, index=False)
    assert [h.id for h in small] == [h.id for h in whole]
    np.testing.assert_allclose([h.score for h in small], [h.score for h in whole], rtol=1e-5)
    q = model.vector_for(QUERY, "query")
    vectors = load_embeddings(out).vectors  # dequantised; binary: the rescoring vectors
    scores = vectors @ (q / np.linalg.norm(q)) / np.linalg.norm(vectors, axis=1)
    if precision in ("binary", "ubinary"):  # the rescored hits are the best of the candidates, by exact cosine
        assert small.method == "hamming top 80 + int8 rescoring"
        np.testing.assert_allclose([h.score for h in small], [scores[int(h.id)] for h in small], rtol=1e-5)
        assert [h.score for h in small] == sorted((h.score for h in small), reverse=True)
    else:
        assert [h.id for h in small] == [str(i) for i in np.argsort(-scores, kind="stable")[:8]]
        np.testing.assert_allclose([h.score for h in small], np.sort(scores)[::-1][:8], rtol=1e-5)
    assert small[0].text == TEXTS[int(small[0].id)]


def test_npy_outputs_are_memory_mapped_and_only_hits_are_read(tmp_path: Path) -> None:
    model = FakeEmbedding(embed_dim=16)
    out = tmp_path / "o.npy"
    embed_records(TEXTS, out, model=model, cache=None, precision="binary")
    stored = open_stored(out, read_meta(out))
    assert isinstance(stored.array("vector"), np.memmap) and isinstance(stored.array("rescore"), np.memmap)  # type: ignore[attr-defined]
    assert [r["id"] for r in stored.records([5, 1, 299])] == ["5", "1", "299"]
    np.testing.assert_array_equal(stored.take([7, 2], "vector"), np.load(out)[[7, 2]])


def test_the_query_gets_the_outputs_dimensions(tmp_path: Path) -> None:
    model = FakeEmbedding(embed_dim=32)
    out = tmp_path / "o.parquet"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        embed_records(TEXTS, out, model=model, cache=None, dimensions=12)
    hits = search(out, QUERY, k=5, model=model, cache=None)
    corpus = truncate_dimensions(np.stack([model.vector_for(t) for t in TEXTS]), 12)
    q = truncate_dimensions(model.vector_for(QUERY, "query")[None, :], 12)[0]
    scores = corpus @ q
    assert [h.id for h in hits] == [str(i) for i in np.argsort(-scores)[:5]]
    np.testing.assert_allclose([h.score for h in hits], np.sort(scores)[::-1][:5], rtol=1e-5)


def test_timings_in_the_api_and_on_the_command_line(cli: Run, tmp_path: Path) -> None:
    hits = search(_embedded(tmp_path, "o.npy", "int8"), QUERY, k=3, model="fake:16", cache=None)
    assert isinstance(hits, SearchResult) and isinstance(hits, list) and len(hits) == 3
    assert set(hits.timings) == set(TIMING_KEYS) and hits.timings["total_s"] >= hits.timings["candidate_search_s"] > 0
    assert hits.method == "exact int8"
    plain = cli("search", "o.npy", QUERY, "-k", "3", "--json", "--no-cache")
    assert plain.returncode == 0, plain.stderr
    listed = json.loads(plain.stdout)  # --json alone: the list of hits, as before
    assert [h["id"] for h in listed] == [h.id for h in hits]
    line = plain.stderr.strip().splitlines()[-1]
    assert line.startswith("search: model load ") and "candidates" in line and line.endswith("(exact int8)")
    full = cli("search", "o.npy", QUERY, "-k", "3", "--json", "--timings", "--no-cache", "-q")
    doc = json.loads(full.stdout)
    assert [h["id"] for h in doc["hits"]] == [h.id for h in hits] and set(doc["timings"]) == set(TIMING_KEYS)
    assert doc["method"] == "exact int8" and full.stderr == ""
    text = cli("search", "o.npy", QUERY, "-k", "2", "--no-cache", "--rescore", "0")
    assert text.returncode == 2 and "--rescore" in text.stderr


def _embedded(tmp_path: Path, name: str, precision: str) -> Path:
    out = tmp_path / name
    embed_records(TEXTS, out, model="fake:16", cache=None, precision=precision)
    return out


@pytest.mark.parametrize("precision", ["float32", "int8", "binary"])
def test_the_index_is_built_used_and_rebuilt_when_the_output_changes(tmp_path: Path, precision: str) -> None:
    pytest.importorskip("faiss")
    from embedstack.vectors.index import VectorIndex, index_path

    out = _embedded(tmp_path, "o.parquet", precision)
    exact = search(out, QUERY, k=5, cache=None)
    assert exact.timings["index_build_s"] == exact.timings["index_load_s"] == 0 and not index_path(out).exists()
    built = search(out, QUERY, k=5, cache=None, index=True)
    metric = "hamming" if precision == "binary" else "cos"
    assert built.timings["index_build_s"] > 0 and built.method.startswith(f"index ({metric})")
    assert VectorIndex.stored_fingerprint(index_path(out)) is not None
    used = search(out, QUERY, k=5, cache=None)  # found beside the output: used without being asked
    assert used.timings["index_load_s"] > 0 and used.timings["index_build_s"] == 0
    assert [h.id for h in used] == [h.id for h in built]  # the saved index answers as the built one
    if precision == "binary":  # a Hamming graph over 300 rows of 16 bits has many ties: the best is found
        assert used[0].id == exact[0].id
    else:  # 300 rows: the cosine graph is exact, and the stored vectors score the candidates
        assert [h.id for h in used] == [h.id for h in exact]
        np.testing.assert_allclose([h.score for h in used], [h.score for h in exact], rtol=1e-5)
    forced = search(out, QUERY, k=5, cache=None, index=False)
    assert forced.timings["index_load_s"] == 0 and not forced.method.startswith("index")
    embed_records([{"id": "new", "text": "one more document"}], out, model="fake:16", cache=None, append=True)
    rebuilt = search(out, QUERY, k=5, cache=None)
    assert rebuilt.timings["index_build_s"] > 0 and len(VectorIndex.load(index_path(out))) == 301
    assert rebuilt[0].id == search(out, QUERY, k=5, cache=None, index=False)[0].id
    again = search(out, QUERY, k=5, cache=None)
    assert again.timings["index_build_s"] == 0 and again.timings["index_load_s"] > 0


def test_cli_index_and_no_index(cli: Run, tmp_path: Path) -> None:
    pytest.importorskip("faiss")
    _embedded(tmp_path, "o.npy", "ubinary")
    built = cli("search", "o.npy", QUERY, "-k", "3", "--index", "--no-cache", "--json", "--timings")
    assert built.returncode == 0, built.stderr
    doc = json.loads(built.stdout)
    assert doc["timings"]["index_build_s"] > 0 and doc["method"].startswith("index (hamming)")
    assert (tmp_path / "o.npy.index").exists() and "index build" in built.stderr
    exact = cli("search", "o.npy", QUERY, "-k", "3", "--no-index", "--no-cache")
    assert exact.returncode == 0 and "(hamming top 30 + int8 rescoring)" in exact.stderr


def test_damaged_outputs_and_bad_arguments_are_refused(tmp_path: Path) -> None:
    out = _embedded(tmp_path, "o.npy", "int8")
    with pytest.raises(ValueError, match="rescore must be positive"):
        search(out, QUERY, model="fake:16", cache=None, rescore=0)
    rows = out.with_name("o.npy.rows.jsonl")
    rows.write_text("".join(rows.read_text(encoding="utf-8").splitlines(keepends=True)[:5]), encoding="utf-8")
    np.save(out, np.load(out)[:10])
    with pytest.raises(OutputError, match=r"holds 10 rows, but its metadata says 300"):
        search(out, QUERY, model="fake:16", cache=None)


def test_hits_are_read_at_their_offsets_not_by_a_scan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A .npy output keeps where each line of its rows sidecar starts: k hits are k seeks (the sidecar is never
    scanned), for a new output and after an append."""
    from embedstack.jobs import _stored
    from embedstack.jobs._output import line_offsets, offsets_path, rows_path

    model = FakeEmbedding(embed_dim=16)
    out = tmp_path / "o.npy"
    first = [{"id": f"d{i}", "text": t} for i, t in enumerate(TEXTS[:200])]
    embed_records(first, out, model=model, cache=None, id_field="id")
    more = [{"id": f"d{i}", "text": t} for i, t in enumerate(TEXTS) if i >= 200]
    embed_records(more, out, model=model, cache=None, id_field="id", append=True)
    kept = np.load(offsets_path(out))
    assert kept.shape == (301,)
    np.testing.assert_array_equal(kept, line_offsets(rows_path(out)))

    def scan(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the rows sidecar was scanned")

    monkeypatch.setattr(_stored, "_wanted_lines", scan)
    hits = search(out, QUERY, k=5, model=model, cache=None, index=False)
    assert [h.text for h in hits] == [TEXTS[int(h.id[1:])] for h in hits] and len(hits) == 5
    assert [r["id"] for r in open_stored(out, read_meta(out)).records([299, 0, 150, 0])] == ["d299", "d0", "d150", "d0"]


def test_outputs_without_offsets_or_with_stale_ones_still_find_the_right_rows(tmp_path: Path) -> None:
    """An output written before the offsets sidecar gets one on its first search; offsets that no longer fit
    the rows file (another size, or lines moved within the same size) are never trusted."""
    from embedstack.jobs._output import line_offsets, offsets_path, rows_path

    model = FakeEmbedding(embed_dim=16)
    out = tmp_path / "o.npy"
    embed_records(TEXTS, out, model=model, cache=None)
    want = [h.id for h in search(out, QUERY, k=5, model=model, cache=None, index=False)]
    offsets_path(out).unlink()  # as embedstack wrote .npy outputs before
    assert [h.id for h in search(out, QUERY, k=5, model=model, cache=None, index=False)] == want
    np.testing.assert_array_equal(np.load(offsets_path(out)), line_offsets(rows_path(out)))  # built and kept

    rows = rows_path(out)
    lines = rows.read_text(encoding="utf-8").splitlines(keepends=True)
    lines = [
        json.dumps({"id": f"moved-{json.loads(x)['id']}", "text": "x" * (n % 3)}) + "\n" for n, x in enumerate(lines)
    ]
    rows.write_text("".join(lines), encoding="utf-8")  # another size: rebuilt
    assert [h.id for h in search(out, QUERY, k=5, model=model, cache=None, index=False)] == [f"moved-{i}" for i in want]
    np.testing.assert_array_equal(np.load(offsets_path(out)), line_offsets(rows))

    first = [int(i) for i in want]
    a, b = lines[first[0]], lines[first[0] + 1]
    c, d = f"{b.rstrip()}\n", f"{a.rstrip()}\n"  # two neighbours swapped: the same size, boundaries moved
    assert len(a) != len(b)
    lines[first[0]], lines[first[0] + 1] = c, d
    rows.write_text("".join(lines), encoding="utf-8")
    hits = open_stored(out, read_meta(out)).records([first[0], first[0] + 1, 299])
    assert [h["id"] for h in hits] == [json.loads(c)["id"], json.loads(d)["id"], "moved-299"]


@pytest.mark.parametrize("precision", ["int8", "uint8"])
def test_scalar_cosines_rank_exactly_as_dequantising_does(precision: str) -> None:
    """The ranges folded into the query give the cosine of the dequantised rows (to float32 rounding) and the
    same ranking, best first, as dequantise-then-cosine."""
    from embedstack.vectors import calibration_ranges, dequantize, quantize, scalar_cosines

    rng = np.random.default_rng(7)
    vectors = rng.standard_normal((5000, 48)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ranges = calibration_ranges(vectors[:500])  # later rows fall outside: clipped codes at both ends
    codes = quantize(vectors, precision, ranges)
    q = truncate_dimensions(rng.standard_normal((1, 48)), 48)[0]
    decoded = dequantize(codes, precision, ranges).astype(np.float64)
    want = decoded @ q / np.linalg.norm(decoded, axis=1)
    got = scalar_cosines(codes, q, precision, ranges)
    assert got.dtype == np.float32 and got.shape == (5000,)
    np.testing.assert_allclose(got, want, atol=2e-6)
    np.testing.assert_array_equal(np.argsort(-got, kind="stable")[:100], np.argsort(-want, kind="stable")[:100])
    with pytest.raises(ValueError, match="int8 or uint8"):
        scalar_cosines(codes, q, "binary", ranges)
