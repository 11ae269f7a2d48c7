"""Compact vectors: retrieval quality kept, and search speed and memory at scale, in one run.

Part 1 (real model): recall@10 on the (query, text) pairs of packages-retrieval.jsonl with the default local
model, for int8, binary, binary + rescore, and 256 / 128 dimensions, as % of float32's recall@10.
Part 2 (synthetic): query latency and memory over N random 384-dim unit vectors for float32 brute force,
int8 and binary + rescore (embedstack.quantize), with the overlap of each top-10 with the exact one.

    python bench/compact.py                            # 3,000 pairs, 1,000,000 synthetic vectors
    python bench/compact.py --pairs 1000 --synthetic 200000    # quicker
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from embedstack import resolve_embed_model
from embedstack.kvstore import SQLiteKVStore
from embedstack.quantize import (
    binary_top_k,
    calibration_ranges,
    dequantize,
    quantize,
    truncate_dimensions,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "packages-retrieval.jsonl"


def recall_at_10(queries: np.ndarray, search: object) -> float:
    """Share of queries whose own text (same row number) is in the top 10 `search(q)` returns."""
    found = sum(i in {j for j, _ in search(q)} for i, q in enumerate(queries))  # type: ignore[operator]
    return found / len(queries)


def exact_top(corpus: np.ndarray, k: int = 10):  # type: ignore[no-untyped-def]
    def search(q: np.ndarray) -> list[tuple[int, float]]:
        scores = corpus @ q
        top = np.argpartition(-scores, k - 1)[:k]
        return [(int(i), float(scores[i])) for i in top[np.argsort(-scores[top])]]

    return search


def quality(pairs: int, data: Path) -> None:
    rows = [json.loads(line) for line in data.read_text(encoding="utf-8").splitlines()[:pairs]]
    model = resolve_embed_model("local")
    model.embeddings_cache = SQLiteKVStore(Path(tempfile.gettempdir()) / "embedstack-bench-compact.sqlite")
    t0 = time.perf_counter()
    texts = model.embed([r["text"] for r in rows])
    queries = model.embed([r["query"] for r in rows], role="query")
    print(f"embedded {len(rows)} pairs in {time.perf_counter() - t0:.1f}s (cached after the first run)")
    base = recall_at_10(queries, exact_top(texts))
    ranges = calibration_ranges(texts)
    int8 = dequantize(quantize(texts, "int8", ranges), "int8", ranges)
    bits = quantize(texts, "binary")
    cases = {
        "float32 (exact)": base,
        "int8": recall_at_10(queries, exact_top(int8)),
        "binary (Hamming only)": recall_at_10(queries, lambda q: binary_top_k(q, bits, 10)),
        "binary + rescore (int8, 4x candidates)": recall_at_10(
            queries, lambda q: binary_top_k(q, bits, 10, rescore_vectors=int8, rescore_multiplier=4)
        ),
    }
    for dims in (256, 128):
        cases[f"{dims} dimensions"] = recall_at_10(
            truncate_dimensions(queries, dims), exact_top(truncate_dimensions(texts, dims))
        )
    print(f"\nrecall@10 on {len(rows)} pairs ({model.model_name}, {texts.shape[1]} dims)\n")
    print("| vectors | recall@10 | % of float32 | bytes per vector |")
    print("|---|---:|---:|---:|")
    size = {"float32 (exact)": 4 * 384, "int8": 384, "256 dimensions": 4 * 256, "128 dimensions": 4 * 128}
    for name, r in cases.items():
        nbytes = size.get(name, 48 if "Hamming" in name else 48 + 384)
        print(f"| {name} | {r:.3f} | {100 * r / base:.1f}% | {nbytes} |")


def speed(n: int, dim: int = 384, n_queries: int = 20) -> None:
    rng = np.random.default_rng(0)
    corpus = np.empty((n, dim), dtype=np.float32)
    for i in range(0, n, 100_000):  # clustered rows, as embeddings are: 1,000 centres
        block = rng.standard_normal((min(100_000, n - i), dim), dtype=np.float32)
        corpus[i : i + len(block)] = block
    centres = rng.standard_normal((1000, dim), dtype=np.float32) * 2
    corpus += centres[rng.integers(0, 1000, n)]
    corpus /= np.linalg.norm(corpus, axis=1, keepdims=True)
    queries = corpus[rng.choice(n, n_queries, replace=False)] + 0.1 * rng.standard_normal((n_queries, dim)).astype(
        np.float32
    )
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    ranges = calibration_ranges(corpus[:10_000])
    int8_codes = quantize(corpus, "int8", ranges)
    bits = quantize(corpus, "binary")
    step = (ranges[1] - ranges[0]) / 255

    def int8_search(q: np.ndarray) -> list[tuple[int, float]]:
        # dot(q, low + (c + 128) * step) ranks like dot(q * step, c); numpy has no int8 GEMV, so blocks of rows
        # are widened to float32 as they are scored (a C int8 kernel would read 4x less memory than float32)
        w = (q * step).astype(np.float32)
        scores = np.concatenate([int8_codes[i : i + 65536].astype(np.float32) @ w for i in range(0, n, 65536)])
        top = np.argpartition(-scores, 9)[:10]
        return [(int(i), float(scores[i])) for i in top]

    def binary_rescore(q: np.ndarray) -> list[tuple[int, float]]:
        hits = binary_top_k(q, bits, 40)  # 4x candidates by Hamming distance
        idx = np.array([i for i, _ in hits])
        rows = dequantize(int8_codes[idx], "int8", ranges)
        scores = rows @ q
        order = np.argsort(-scores)[:10]
        return [(int(idx[i]), float(scores[i])) for i in order]

    cases = {
        "float32 brute force": (exact_top(corpus), corpus.nbytes),
        "int8 brute force": (int8_search, int8_codes.nbytes),
        "binary + rescore (int8 rows)": (binary_rescore, bits.nbytes),
    }
    exact = [{i for i, _ in exact_top(corpus)(q)} for q in queries]
    print(f"\n{n:,} synthetic {dim}-dim vectors, {n_queries} queries, top-10\n")
    print("| search | ms per query | speed-up | index memory | memory ratio | overlap with exact top-10 |")
    print("|---|---:|---:|---:|---:|---:|")
    base_ms = None
    for name, (search, nbytes) in cases.items():
        search(queries[0])
        t0 = time.perf_counter()
        results = [search(q) for q in queries]
        ms = (time.perf_counter() - t0) / n_queries * 1000
        base_ms = base_ms or ms
        overlap = np.mean([len(e & {i for i, _ in r}) / 10 for e, r in zip(exact, results)])
        print(
            f"| {name} | {ms:.1f} | {base_ms / ms:.1f}x | {nbytes / 2**20:,.0f} MiB | "
            f"{corpus.nbytes / nbytes:.0f}x less | {overlap:.3f} |"
        )
    print("\n(binary + rescore keeps the int8 rows on disk or memory-mapped; only the bit codes are the index)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--pairs", type=int, default=3000)
    parser.add_argument("--synthetic", type=int, default=1_000_000)
    args = parser.parse_args()
    if args.pairs:
        quality(args.pairs, args.data)
    if args.synthetic:
        speed(args.synthetic)


if __name__ == "__main__":
    main()
