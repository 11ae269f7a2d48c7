"""embedstack.vectors.index (the HNSW index beside an output) and the exact Hamming kernels it is checked against."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import embedstack.vectors.compact as qz
from embedstack.errors import OutputError
from embedstack.vectors import binary_top_k, hamming_distances, quantize


@pytest.fixture(scope="module")
def ix() -> Any:
    """embedstack.vectors.index; its tests skip where faiss (the extra 'index') is not installed."""
    return pytest.importorskip("embedstack.vectors.index", exc_type=ImportError)


def clustered(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """Unit vectors around 40 centres: neighbourhoods like embeddings have, unlike uniform noise."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((40, dim)).astype(np.float32) * 2
    x = rng.standard_normal((n, dim)).astype(np.float32) + centres[rng.integers(0, 40, n)]
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    return clustered(2000, 64)


def recall(index: Any, queries: np.ndarray, exact: list[set[int]], k: int = 10) -> float:
    return float(np.mean([len(set(index.search(q, k)[0].tolist()) & e) / k for q, e in zip(queries, exact)]))


# ---- exact Hamming kernels against a naive reference ----

KERNELS = ["numpy", "faiss"]


@contextlib.contextmanager
def kernel(name: str) -> Iterator[None]:
    """Run with numpy's Hamming loop or faiss's (skipped when faiss is not installed)."""
    saved = qz._faiss_module
    qz._faiss_module = False if name == "numpy" else None
    try:
        if name == "faiss" and qz._faiss() is None:
            pytest.skip("faiss is not installed")
        yield
    finally:
        qz._faiss_module = saved


def naive_distances(q: np.ndarray, codes: np.ndarray) -> np.ndarray:
    bits = np.unpackbits(codes.view(np.uint8), axis=1)
    return (bits != np.unpackbits(q.view(np.uint8))).sum(axis=1)


@given(
    name=st.sampled_from(KERNELS),
    n=st.integers(1, 300),
    dim=st.integers(1, 200),
    distinct=st.integers(1, 8),
    k=st.integers(1, 40),
    seed=st.integers(0, 2**32 - 1),
)
@settings(max_examples=80, deadline=None)
def test_binary_top_k_is_the_exact_hamming_top_k_ties_by_lowest_row(
    name: str, n: int, dim: int, distinct: int, k: int, seed: int
) -> None:
    # few distinct rows, so many codes tie; dims not a multiple of 64 take the byte path
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((distinct, dim)).astype(np.float32)[rng.integers(0, distinct, n)]
    x += rng.standard_normal(x.shape).astype(np.float32) * rng.choice([0.0, 0.3])
    codes = quantize(x, "binary")
    q = rng.standard_normal(dim).astype(np.float32)
    want_d = naive_distances(quantize(q[None], "binary")[0], codes)
    np.testing.assert_array_equal(hamming_distances(quantize(q[None], "ubinary")[0], codes), want_d)
    want = np.lexsort((np.arange(n), want_d))[:k]  # by distance, then by row
    with kernel(name):
        got = binary_top_k(q, codes, k)
        np.testing.assert_array_equal(hamming_distances(quantize(q[None], "ubinary")[0], codes), want_d)
    assert [i for i, _ in got] == want.tolist()
    assert [s for _, s in got] == pytest.approx([1 - want_d[i] / dim for i in want])


@pytest.mark.parametrize("name", KERNELS)
def test_hamming_kernels_read_a_memmap_in_chunks(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    x = clustered(3000, 384, seed=1)
    codes = quantize(x, "ubinary")
    np.save(tmp_path / "codes.npy", codes)
    mm = np.load(tmp_path / "codes.npy", mmap_mode="r")
    assert not mm.flags.writeable
    monkeypatch.setattr(qz, "_CHUNK_ROWS", 256)  # many chunks: the running top-k must merge them exactly
    monkeypatch.setattr(qz, "_faiss_module", False if name == "numpy" else None)
    if name == "faiss" and qz._faiss() is None:
        pytest.skip("faiss is not installed")
    q = x[17] + 0.2 * np.random.default_rng(2).standard_normal(384).astype(np.float32)
    d = naive_distances(quantize(q[None], "ubinary")[0], codes)
    np.testing.assert_array_equal(hamming_distances(quantize(q[None], "ubinary")[0], mm), d)
    assert [i for i, _ in binary_top_k(q, mm, 25)] == np.lexsort((np.arange(len(d)), d))[:25].tolist()
    rescored = binary_top_k(q, mm, 10, rescore_vectors=x, rescore_multiplier=4)
    candidates = np.lexsort((np.arange(len(d)), d))[:40]
    best = candidates[np.argsort(-(x[candidates] @ q), kind="stable")][:10]
    assert [i for i, _ in rescored] == best.tolist()


# ---- the index ----


def test_index_path_sits_beside_the_output(ix: Any, tmp_path: Path) -> None:
    assert ix.index_path(tmp_path / "out.parquet") == tmp_path / "out.parquet.index"
    (tmp_path / "ds").mkdir()
    assert ix.index_path(tmp_path / "ds") == tmp_path / "ds" / "_embedstack.index"


def test_cos_index_finds_the_exact_neighbours_and_survives_save_and_load(
    ix: Any, tmp_path: Path, vectors: np.ndarray
) -> None:
    queries = clustered(50, 64, seed=9)
    exact = [set(np.argsort(-(vectors @ q))[:10].tolist()) for q in queries]
    index = ix.VectorIndex.build(vectors, metric="cos", fingerprint="count=2000;mtime=1")
    assert len(index) == 2000 and index.metric == "cos" and index.backend == "faiss"
    assert recall(index, queries, exact) >= 0.8  # measured ~1.0; HNSW is approximate
    rows, scores = index.search(queries[0], 10)
    assert rows.dtype == np.int64 and scores.dtype == np.float32 and len(rows) == 10
    np.testing.assert_allclose(scores, vectors[rows] @ queries[0], atol=0.02)  # cosine, int8 storage
    assert (np.diff(scores) <= 1e-6).all()  # best first

    path = ix.index_path(tmp_path / "out.npy")
    index.save(path)
    assert ix.VectorIndex.stored_fingerprint(path) == "count=2000;mtime=1"
    loaded = ix.VectorIndex.load(path)
    assert (loaded.fingerprint, loaded.metric, len(loaded)) == ("count=2000;mtime=1", "cos", 2000)
    for q in queries[:5]:
        np.testing.assert_array_equal(loaded.search(q, 10)[0], index.search(q, 10)[0])
    assert len(loaded.search(queries[0], 5000)[0]) <= 2000  # k above the row count is capped


def test_hamming_index_scores_are_minus_the_distance(ix: Any, vectors: np.ndarray) -> None:
    signed = quantize(vectors, "binary")
    index = ix.VectorIndex.build(signed, metric="hamming", fingerprint="f")  # int8 'binary' codes are accepted
    unsigned = quantize(vectors, "ubinary")
    queries = unsigned[:50]
    exact = [set(np.lexsort((np.arange(2000), naive_distances(q, unsigned)))[:10].tolist()) for q in queries]
    rows, scores = index.search(unsigned[3], 10)
    np.testing.assert_array_equal(-scores, naive_distances(unsigned[3], unsigned)[rows])
    assert rows[0] == 3 and scores[0] == 0
    # ties at the 10th distance make sets differ even for an exact search; the bar stays well below measured
    assert recall(index, queries, exact) >= 0.6
    np.testing.assert_array_equal(index.search(signed[3], 10)[1], scores)  # an int8 query means the same


def test_build_rejects_what_it_cannot_index(ix: Any, vectors: np.ndarray) -> None:
    with pytest.raises(ValueError, match="metric"):
        ix.VectorIndex.build(vectors, metric="l2", fingerprint="f")
    with pytest.raises(ValueError, match="dequantize"):
        ix.VectorIndex.build(quantize(vectors, "int8"), metric="cos", fingerprint="f")
    bad = vectors.copy()
    bad[7, 3] = np.nan
    with pytest.raises(ValueError, match=r"vectors\[7\]"):
        ix.VectorIndex.build(bad, metric="cos", fingerprint="f")
    index = ix.VectorIndex.build(vectors[:100], metric="cos", fingerprint="f")
    with pytest.raises(ValueError, match="64 per vector"):
        index.search(np.ones(32, np.float32), 5)


def test_a_failed_save_leaves_the_old_index_and_no_partial_file(
    ix: Any, tmp_path: Path, vectors: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = ix.index_path(tmp_path / "out.npy")
    ix.VectorIndex.build(vectors[:500], metric="cos", fingerprint="old").save(path)
    before = sorted(p.name for p in tmp_path.iterdir())
    new = ix.VectorIndex.build(vectors, metric="cos", fingerprint="new")
    real_write = ix._write

    def write_then_fail(index: object, metric: str, target: str) -> None:  # the disk fills part-way through
        real_write(index, metric, target)
        with open(target, "r+b") as fh:
            fh.truncate(1000)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ix, "_write", write_then_fail)
    with pytest.raises(OSError, match="No space"):
        new.save(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert ix.VectorIndex.stored_fingerprint(path) == "old" and len(ix.VectorIndex.load(path)) == 500


@pytest.mark.parametrize("damage", ["truncate", "flip_header", "no_sidecar", "garbage_sidecar", "missing"])
def test_a_damaged_index_is_a_clear_error_and_reads_as_no_fingerprint(
    ix: Any, tmp_path: Path, vectors: np.ndarray, damage: str
) -> None:
    path = ix.index_path(tmp_path / "out.npy")
    ix.VectorIndex.build(vectors[:300], metric="cos", fingerprint="fp").save(path)
    sidecar = path.with_name(path.name + ".json")
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip_header":
        path.write_bytes(bytes(b ^ 0xFF for b in data[:64]) + data[64:])
    elif damage == "no_sidecar":
        sidecar.unlink()
    elif damage == "garbage_sidecar":
        sidecar.write_text("{not json", encoding="utf-8")
    else:
        path.unlink()
    if damage != "flip_header":  # same size and sidecar: only loading finds the damage
        assert ix.VectorIndex.stored_fingerprint(path) is None
    with pytest.raises(OutputError, match=r"out\.npy\.index.*rebuild"):
        ix.VectorIndex.load(path)
