"""Compact vectors: retrieval quality kept, and search speed and memory at scale, in one run.

Part 1 (real model): recall@10 on the (query, text) pairs of packages-retrieval.jsonl with the default local
model, for int8, binary, binary + rescore, and 256 / 128 dimensions, as % of float32's recall@10.
Part 2 (synthetic, see `synthetic`): p50 query latency, index memory and recall@10 against the exact float32
top-10 over N clustered 384-dim unit vectors, for float32 brute force (BLAS), int8 brute force, exact binary +
rescore (embedstack.vectors) and embedstack's HNSW index (cosine, and binary + rescore), with ratios to
float32 brute force. Built indexes are cached in the temp folder between runs; their build time is reported.

    python bench/compact.py                                  # 3,000 pairs, 1,000,000 synthetic vectors
    python bench/compact.py --pairs 0 --synthetic 100000 --usearch   # + usearch's HNSW, the comparison
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import DATA, records
from embedstack import resolve_embed_model
from embedstack.kvstore import SQLiteKVStore
from embedstack.vectors import (
    binary_top_k,
    calibration_ranges,
    dequantize,
    quantize,
    scalar_cosines,
    truncate_dimensions,
)


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
    rows = records(data, pairs)
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


CACHE = Path(tempfile.gettempdir()) / "embedstack-bench-compact"


def synthetic(n: int, dim: int = 384, n_queries: int = 100, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`n` clustered unit vectors and `n_queries` fresh ones from the same distribution (not copies of rows).

    Like sentence embeddings, they have a low intrinsic dimension and a shared mean direction: 2,000 cluster
    centres in a 48-dim latent space, each point its centre plus N(0, 0.6²) latent noise, mapped to `dim` by a
    fixed random matrix with decaying column scales (1/sqrt(j+1)), plus a common offset and small isotropic
    noise (0.05), then normalised. Uniform random vectors would make every top-10 a tie of noise.
    """
    rng = np.random.default_rng(seed)
    latent = 48
    scales = 1 / np.sqrt(np.arange(1, latent + 1, dtype=np.float32))
    w = (rng.standard_normal((latent, dim), dtype=np.float32) * scales[:, None]).astype(np.float32)
    offset = rng.standard_normal(dim, dtype=np.float32) * 0.15
    centres = rng.standard_normal((2000, latent), dtype=np.float32)

    def draw(m: int) -> np.ndarray:
        out = np.empty((m, dim), dtype=np.float32)
        for i in range(0, m, 100_000):
            b = min(100_000, m - i)
            z = centres[rng.integers(0, len(centres), b)] + 0.6 * rng.standard_normal((b, latent), dtype=np.float32)
            block = z @ w + offset + 0.05 * rng.standard_normal((b, dim), dtype=np.float32)
            out[i : i + b] = block / np.linalg.norm(block, axis=1, keepdims=True)
        return out

    return draw(n), draw(n_queries)


def exact_top10(corpus: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """The exact top-10 rows of each query by cosine (float32), in blocks of rows."""
    best_s = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(queries), 0), dtype=np.int64)
    for start in range(0, len(corpus), 200_000):
        s = queries @ corpus[start : start + 200_000].T
        top = np.argpartition(-s, 9, axis=1)[:, :10]
        best_s = np.concatenate([best_s, np.take_along_axis(s, top, 1)], axis=1)
        best_i = np.concatenate([best_i, top + start], axis=1)
        keep = np.argsort(-best_s, axis=1)[:, :10]
        best_s, best_i = np.take_along_axis(best_s, keep, 1), np.take_along_axis(best_i, keep, 1)
    return best_i


def p50_ms(search: object, queries: np.ndarray) -> tuple[float, list[list[int]]]:
    """Median latency of one query at a time, and each query's returned rows."""
    search(queries[0])  # type: ignore[operator]
    times, results = [], []
    for q in queries:
        t0 = time.perf_counter()
        hits = search(q)  # type: ignore[operator]
        times.append(time.perf_counter() - t0)
        results.append([int(i) for i in hits])
    return float(np.median(times) * 1000), results


def cached_index(name: str, build: object, fingerprint: str) -> tuple[object, float, int]:
    """Build (or reuse from the temp folder) an embedstack VectorIndex; returns it, build seconds, file bytes."""
    from embedstack.vectors.index import VectorIndex

    path = CACHE / f"{name}.index"
    timing = CACHE / f"{name}.build.json"
    if VectorIndex.stored_fingerprint(path) == fingerprint and timing.exists():
        seconds = json.loads(timing.read_text())["seconds"]
    else:
        t0 = time.perf_counter()
        index = build()  # type: ignore[operator]
        seconds = time.perf_counter() - t0
        index.save(path)
        timing.write_text(json.dumps({"seconds": seconds}))
    return VectorIndex.load(path), seconds, path.stat().st_size


def usearch_hnsw(kind: str, data: np.ndarray) -> tuple[object, float, int]:
    """The comparison: a usearch HNSW ("f16", "i8" or "b1") with embedstack's parameters, cached in the temp folder."""
    from usearch.index import Index

    from embedstack.jobs import _index

    path = CACHE / f"usearch-{kind}-{len(data)}-{_index.CONNECTIVITY}-{_index.EXPANSION_ADD}.usearch"
    timing = path.with_suffix(".json")
    if path.exists() and timing.exists():
        index = Index.restore(str(path), view=True)
        seconds = json.loads(timing.read_text())["seconds"]
    else:
        t0 = time.perf_counter()
        ndim = data.shape[1] * 8 if kind == "b1" else data.shape[1]
        index = Index(
            ndim=ndim,
            metric="hamming" if kind == "b1" else "cos",
            dtype=kind,
            connectivity=_index.CONNECTIVITY,
            expansion_add=_index.EXPANSION_ADD,
        )
        index.add(np.arange(len(data)), data)
        seconds = time.perf_counter() - t0
        index.save(str(path))
        timing.write_text(json.dumps({"seconds": seconds}))
    index.expansion_search = _index.EXPANSION_SEARCH
    return index, seconds, path.stat().st_size


def speed(n: int, dim: int = 384, n_queries: int = 100, with_usearch: bool = False) -> None:
    from embedstack.jobs import _index

    CACHE.mkdir(exist_ok=True)
    t0 = time.perf_counter()
    corpus, queries = synthetic(n, dim, n_queries)
    exact = exact_top10(corpus, queries)
    print(f"\n{n:,} synthetic {dim}-dim vectors and their exact top-10s in {time.perf_counter() - t0:.0f}s")
    ranges = calibration_ranges(corpus[:10_000])
    int8_codes = quantize(corpus, "int8", ranges)
    bits = quantize(corpus, "binary")

    def top10(scores: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        top = np.argpartition(-scores, 9)[:10]
        top = top[np.argsort(-scores[top])]
        return top if rows is None else rows[top]

    def float_search(q: np.ndarray) -> np.ndarray:
        return top10(corpus @ q)  # one BLAS matrix-vector product over all rows

    def int8_search(q: np.ndarray) -> np.ndarray:
        # what `embedstack search` runs on int8 outputs: the exact cosine of the dequantised rows with the ranges
        # folded into the query (quantize.scalar_cosines: cache-sized blocks widened to float32, no dequantised copy)
        return top10(scalar_cosines(int8_codes, q, "int8", ranges))

    def rescore_int8(q: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return top10(dequantize(int8_codes[rows], "int8", ranges) @ q, rows)

    def binary_rescore(q: np.ndarray) -> np.ndarray:
        rows = np.array([i for i, _ in binary_top_k(q, bits, 40)])  # exact Hamming top-40, then int8 rows
        return rescore_int8(q, rows)

    fp = f"synthetic-v1-{n}-{dim}-{_index.VectorIndex.backend}-m{_index.CONNECTIVITY}-ef{_index.EXPANSION_ADD}"
    cos_index, cos_build, cos_bytes = cached_index(
        f"cos-{n}", lambda: _index.VectorIndex.build(corpus, metric="cos", fingerprint=fp), fp
    )
    ham_index, ham_build, ham_bytes = cached_index(
        f"hamming-{n}", lambda: _index.VectorIndex.build(bits, metric="hamming", fingerprint=fp), fp
    )

    def hnsw(q: np.ndarray) -> np.ndarray:
        return cos_index.search(q, 10)[0]  # type: ignore[attr-defined,no-any-return]

    def hnsw_binary_rescore(q: np.ndarray) -> np.ndarray:
        codes = np.packbits(q > 0)
        return rescore_int8(q, ham_index.search(codes, 40)[0])  # type: ignore[attr-defined]

    cases: dict[str, tuple[object, int, float | None, int]] = {
        "float32 brute force (BLAS)": (float_search, corpus.nbytes, None, n_queries),
        "int8 brute force (numpy)": (int8_search, int8_codes.nbytes, None, min(n_queries, 20)),
        "binary + rescore (exact Hamming, int8 rows)": (binary_rescore, bits.nbytes, None, n_queries),
        f"HNSW cos, 8-bit ({cos_index.backend})": (hnsw, cos_bytes, cos_build, n_queries),  # type: ignore[attr-defined]
        f"HNSW binary + rescore ({ham_index.backend})": (hnsw_binary_rescore, ham_bytes, ham_build, n_queries),  # type: ignore[attr-defined]
    }
    if with_usearch:
        for kind, label in (("f16", "float16"), ("i8", "int8"), ("b1", "binary + rescore")):
            data = quantize(corpus, "ubinary") if kind == "b1" else corpus
            index, seconds, nbytes = usearch_hnsw(kind, data)
            if kind == "b1":

                def search(q: np.ndarray, index: object = index) -> np.ndarray:
                    return rescore_int8(q, index.search(np.packbits(q > 0), 40).keys)  # type: ignore[attr-defined]
            else:

                def search(q: np.ndarray, index: object = index) -> np.ndarray:
                    return index.search(q, 10).keys  # type: ignore[attr-defined,no-any-return]

            cases[f"HNSW {label} (usearch)"] = (search, nbytes, seconds, n_queries)
    print(f"\n{n:,} vectors, p50 over {n_queries} queries (one at a time), top-10; recall@10 against exact float32\n")
    print("| search | p50 ms/query | speed-up | index memory | memory ratio | recall@10 | build |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    base_ms = None
    for name, (search, nbytes, build_s, nq) in cases.items():
        ms, results = p50_ms(search, queries[:nq])
        base_ms = base_ms or ms
        rec = np.mean([len(set(r) & set(e.tolist())) / 10 for r, e in zip(results, exact)])
        build = "-" if build_s is None else f"{build_s:.0f} s"
        print(
            f"| {name} | {ms:.2f} | {base_ms / ms:.1f}x | {nbytes / 2**20:,.0f} MiB | "
            f"{corpus.nbytes / nbytes:.1f}x less | {rec:.3f} | {build} |"
        )
    sweep = []
    for ef in (16, 32, 64, 128):  # the search-time candidate list: recall against latency, no rebuild
        cos_index._index.hnsw.efSearch = ef  # type: ignore[attr-defined]
        ms, results = p50_ms(hnsw, queries)
        rec = np.mean([len(set(r) & set(e.tolist())) / 10 for r, e in zip(results, exact)])
        sweep.append(f"{ef}: {ms:.2f} ms, {base_ms / ms:.0f}x, recall {rec:.3f}")  # type: ignore[operator]
    cos_index._index.hnsw.efSearch = _index.EXPANSION_SEARCH  # type: ignore[attr-defined]
    print("\nHNSW cos expansion_search sweep: " + "; ".join(sweep))
    print(
        f"\n(HNSW: connectivity {_index.CONNECTIVITY}, expansion_add {_index.EXPANSION_ADD}, expansion_search "
        f"{_index.EXPANSION_SEARCH}; index memory = file size, memory-mapped. Binary + rescore keeps only the bit "
        "codes as the index; the int8 rows for rescoring stay on disk / memory-mapped.)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA, help="JSONL corpus (default: %(default)s)")
    parser.add_argument("--pairs", type=int, default=3000)
    parser.add_argument("--synthetic", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--usearch", action="store_true", help="also build usearch's HNSW indexes (the comparison)")
    args = parser.parse_args()
    if args.pairs:
        quality(args.pairs, args.data)
    if args.synthetic:
        speed(args.synthetic, n_queries=args.queries, with_usearch=args.usearch)


if __name__ == "__main__":
    main()
