"""embedstack.vectors.compact: truncation, scalar and binary codes, and searching them, against brute-force numpy."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from embedstack.vectors import (
    PRECISIONS,
    binary_top_k,
    calibration_ranges,
    dequantize,
    hamming_distances,
    quantize,
    truncate_dimensions,
)


def unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@given(n=st.integers(1, 20), dim=st.integers(1, 70), seed=st.integers(0, 2**32 - 1))
@settings(max_examples=60, deadline=None)
def test_binary_codes_are_the_sign_bits_packed(n: int, dim: int, seed: int) -> None:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    ub = quantize(x, "ubinary")
    assert ub.dtype == np.uint8 and ub.shape == (n, (dim + 7) // 8)
    np.testing.assert_array_equal(np.unpackbits(ub, axis=1)[:, :dim], (x > 0).astype(np.uint8))
    b = quantize(x, "binary")
    assert b.dtype == np.int8
    np.testing.assert_array_equal(b.astype(np.int16) + 128, ub)


@pytest.mark.parametrize("dim", [100, 128, 384])  # 13 bytes (byte table) and 16 / 48 bytes (64-bit words)
def test_hamming_distances_match_counting_bits(dim: int) -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((50, dim)).astype(np.float32)
    bits = x > 0
    for codes in (quantize(x, "binary"), quantize(x, "ubinary")):
        for i in (0, 7, 49):
            want = (bits != bits[i]).sum(axis=1)
            np.testing.assert_array_equal(hamming_distances(codes[i], codes), want)
    signed, unsigned = quantize(x, "binary"), quantize(x, "ubinary")
    want = (bits != bits[3]).sum(axis=1)
    np.testing.assert_array_equal(hamming_distances(unsigned[3], signed), want)  # mixed code types
    np.testing.assert_array_equal(hamming_distances(signed[3], unsigned), want)


def test_int8_round_trip_is_within_half_a_step_and_clips_outside_the_ranges() -> None:
    rng = np.random.default_rng(2)
    x = unit(rng, 200, 32)
    ranges = calibration_ranges(x)
    codes = quantize(x, "int8", ranges)
    assert codes.dtype == np.int8 and codes.min() == -128 and codes.max() == 127
    step = (ranges[1] - ranges[0]) / 255
    assert np.all(np.abs(dequantize(codes, "int8", ranges) - x) <= step / 2 + 1e-6)
    u = quantize(x, "uint8", ranges)
    np.testing.assert_array_equal(u.astype(np.int16) - 128, codes)
    far = np.full((1, 32), 10.0, dtype=np.float32)
    assert (quantize(far, "int8", ranges) == 127).all()


def test_one_set_of_ranges_makes_chunked_and_whole_corpora_identical() -> None:
    rng = np.random.default_rng(3)
    x = unit(rng, 300, 16)
    ranges = calibration_ranges(x)
    whole = quantize(x, "int8", ranges)
    chunked = np.vstack([quantize(x[i : i + 64], "int8", ranges) for i in range(0, 300, 64)])
    np.testing.assert_array_equal(whole, chunked)
    per_chunk = np.vstack([quantize(x[i : i + 64], "int8") for i in range(0, 300, 64)])
    assert not np.array_equal(whole, per_chunk)  # why ranges must be kept


def test_truncation_keeps_the_leading_dimensions_at_unit_length() -> None:
    x = unit(np.random.default_rng(4), 10, 64)
    t = truncate_dimensions(x, 16)
    np.testing.assert_allclose(np.linalg.norm(t, axis=1), 1.0, rtol=1e-5)
    cos = (t * (x[:, :16] / np.linalg.norm(x[:, :16], axis=1, keepdims=True))).sum(axis=1)
    np.testing.assert_allclose(cos, 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match="between 1 and the vectors' 64"):
        truncate_dimensions(x, 65)


def test_binary_search_with_full_rescoring_is_exact_and_without_is_hamming_order() -> None:
    rng = np.random.default_rng(5)
    corpus = unit(rng, 500, 64)
    query = unit(rng, 1, 64)[0]
    codes = quantize(corpus, "binary")
    exact = np.argsort(-(corpus @ query), kind="stable")[:10].tolist()
    got = binary_top_k(query, codes, 10, rescore_vectors=corpus, rescore_multiplier=50)  # every row rescored
    assert [i for i, _ in got] == exact
    dist = hamming_distances(np.packbits(query > 0), codes)
    plain = binary_top_k(query, codes, 10)
    assert [d for d in dist[[i for i, _ in plain]]] == sorted(dist)[:10]


def test_rescored_binary_search_finds_planted_neighbours() -> None:
    """Clustered data, as real embeddings are: binary + rescore keeps the true top-10 nearly always."""
    rng = np.random.default_rng(6)
    centres = unit(rng, 40, 128)
    corpus = unit(rng, 4000, 128) * 0.35 + np.repeat(centres, 100, axis=0)
    corpus /= np.linalg.norm(corpus, axis=1, keepdims=True)
    queries = corpus[rng.choice(4000, 50, replace=False)] + 0.05 * unit(rng, 50, 128)
    codes, ranges = quantize(corpus, "binary"), calibration_ranges(corpus)
    int8 = dequantize(quantize(corpus, "int8", ranges), "int8", ranges)
    hits = total = 0
    for q in queries:
        exact = set(np.argsort(-(corpus @ q))[:10].tolist())
        got = {i for i, _ in binary_top_k(q, codes, 10, rescore_vectors=int8, rescore_multiplier=8)}
        hits += len(exact & got)
        total += 10
    assert hits / total >= 0.9


@pytest.mark.parametrize("precision", PRECISIONS)
def test_bad_input_is_refused_with_the_fix(precision: str) -> None:
    bad = np.ones((3, 4), dtype=np.float32)
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match=r"vectors\[2\] has NaN"):
        quantize(bad, precision)


def test_unknown_precision_and_bad_ranges() -> None:
    x = np.ones((2, 4), dtype=np.float32)
    with pytest.raises(ValueError, match="unknown precision 'int4'"):
        quantize(x, "int4")
    with pytest.raises(ValueError, match=r"shape \(2, 4\)"):
        quantize(x, "int8", np.zeros((2, 3)))
    with pytest.raises(ValueError, match="needs the ranges"):
        dequantize(quantize(x, "int8", calibration_ranges(np.vstack([x, -x]))), "int8")
    with pytest.raises(ValueError, match="cannot be turned back"):
        dequantize(quantize(x, "binary"), "binary")


@settings(max_examples=60, deadline=None)
@given(
    keys=st.lists(st.integers(0, 6), min_size=0, max_size=80),
    k=st.integers(0, 12),
    chunk=st.integers(1, 20),
)
def test_running_top_k_is_the_exact_top_k_with_ties_to_the_lower_row(keys: list[int], k: int, chunk: int) -> None:
    """Offered chunk by chunk (few distinct keys: many ties), it keeps what one sort of everything keeps."""
    from embedstack.vectors import RunningTopK

    top = RunningTopK(k)
    values = np.asarray(keys, dtype=np.float64)
    for start in range(0, len(values), chunk):
        top.add(start, values[start : start + chunk])
    expected = np.lexsort((np.arange(len(values)), values))[:k]
    assert top.rows.tolist() == expected.tolist()
    assert top.keys.tolist() == values[expected].tolist()
