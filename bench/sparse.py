"""Sparse retrieval: recall@10 of BM25, dense and hybrid (reciprocal rank fusion), and BM25 speed against bm25s.

On the benchmark corpus (3,000 package descriptions; each package's one-line description is the query, its
long description the document to find), in one run:

- recall@10 for embedstack's BM25Embedding, the default dense model (the bundled all-MiniLM-L6-v2, cosine),
  and their fusion: reciprocal rank fusion (score = Σ 1/(60 + rank) over each list's top 100), and a convex
  combination of min-max normalised scores (`--alpha`, dense weight);
- BM25 indexing (statistics + document vectors + a CSR matrix) and querying (query vectors + scores + top 10
  for every query), best of `--repeat`, against bm25s (tokenize + index; tokenize + retrieve) on the same
  texts with the same tokenising (lowercase, \\w\\w+, Lucene's English stopwords, Snowball English stemmer),
  and the largest difference between the two libraries' top-10 scores (ours / (k1+1) vs bm25s "lucene").

    python bench/sparse.py                 # the whole corpus
    python bench/sparse.py --n 1000 --no-dense

Dense vectors are cached in the temp folder (SQLite), so a second run skips the model.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from _common import DATA, records
from embedstack import resolve_embed_model
from embedstack.kvstore import SQLiteKVStore
from embedstack.providers.bm25 import BM25Embedding


def csr(rows: list[Any], width: int) -> Any:
    """SparseVectors as a scipy CSR matrix."""
    from scipy.sparse import csr_matrix

    indptr = np.zeros(len(rows) + 1, dtype=np.int64)
    indptr[1:] = np.cumsum([len(r.indices) for r in rows])
    indices = np.concatenate([r.indices for r in rows]) if rows else np.zeros(0, np.int32)
    values = np.concatenate([r.values for r in rows]) if rows else np.zeros(0, np.float32)
    return csr_matrix((values, indices, indptr), shape=(len(rows), width))


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Each row's k best columns, best first."""
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)  # type: ignore[no-any-return]


def recall(ranked: np.ndarray, k: int = 10) -> float:
    """Share of queries whose own document (same row) is in their top k."""
    return float(np.mean([i in set(row[:k].tolist()) for i, row in enumerate(ranked)]))


def rrf(lists: list[np.ndarray], n_docs: int, k: int = 60) -> np.ndarray:
    """Reciprocal rank fusion of ranked lists (one row per query): the fused top 10."""
    fused = np.zeros((lists[0].shape[0], n_docs), dtype=np.float64)
    rows = np.arange(fused.shape[0])[:, None]
    for ranked in lists:
        fused[rows, ranked] += 1.0 / (k + 1 + np.arange(ranked.shape[1]))[None, :]
    return top_k(fused, 10)


def convex(a: np.ndarray, b: np.ndarray, alpha: float) -> np.ndarray:
    """alpha · minmax(a) + (1 − alpha) · minmax(b), row by row: the fused top 10."""

    def mm(x: np.ndarray) -> np.ndarray:
        lo, hi = x.min(axis=1, keepdims=True), x.max(axis=1, keepdims=True)
        return (x - lo) / np.where(hi > lo, hi - lo, 1.0)

    return top_k(alpha * mm(a) + (1 - alpha) * mm(b), 10)


def ours(texts: list[str], queries: list[str]) -> tuple[float, float, np.ndarray, np.ndarray]:
    """(index seconds, query seconds, top-100 doc ids, their scores) for embedstack's BM25."""
    t0 = time.perf_counter()
    model = BM25Embedding()
    docs = model.fit_transform(texts)
    width = len(model.stats.vocab)
    matrix = csr(docs, width).T.tocsr()  # (vocab, docs): a query row times it scores every doc
    t1 = time.perf_counter()
    scores = (csr(model.embed(queries, "query"), width) @ matrix).toarray()
    ranked = top_k(scores, 100)
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1, ranked, np.take_along_axis(scores, ranked, axis=1)


def peer(texts: list[str], queries: list[str]) -> tuple[float, float, np.ndarray, np.ndarray]:
    """The same for bm25s ("lucene", k1=1.5, b=0.75)."""
    import bm25s
    import Stemmer

    stemmer = Stemmer.Stemmer("english")
    t0 = time.perf_counter()
    retriever = bm25s.BM25(method="lucene", k1=1.5, b=0.75)
    retriever.index(bm25s.tokenize(texts, stopwords="en", stemmer=stemmer, show_progress=False), show_progress=False)
    t1 = time.perf_counter()
    tokens = bm25s.tokenize(queries, stopwords="en", stemmer=stemmer, show_progress=False)
    docs, scores = retriever.retrieve(tokens, k=100, show_progress=False, n_threads=1)
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1, np.asarray(docs), np.asarray(scores)


def dense_ranked(texts: list[str], queries: list[str], cache: Path) -> np.ndarray:
    model = resolve_embed_model("local")
    model.embeddings_cache = SQLiteKVStore(cache)
    docs = model.embed(texts, "text", show_progress=True)
    qs = model.embed(queries, "query", show_progress=True)
    docs /= np.linalg.norm(docs, axis=1, keepdims=True)
    qs /= np.linalg.norm(qs, axis=1, keepdims=True)
    return top_k(qs @ docs.T, 100), qs @ docs.T


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=None, help="records to use (default: all 3,000)")
    parser.add_argument("--repeat", type=int, default=3, help="timing rounds, best of (default: 3)")
    parser.add_argument("--alpha", type=float, default=0.5, help="dense weight of the convex combination")
    parser.add_argument("--no-dense", action="store_true", help="skip the dense model and the hybrid rows")
    args = parser.parse_args()
    rows = records(DATA, args.n)
    texts, queries = [r["text"] for r in rows], [r["query"] for r in rows]
    print(f"corpus: {len(texts)} documents, {len(queries)} queries ({DATA.name})")

    times: dict[str, list[float]] = {"ours index": [], "ours query": [], "bm25s index": [], "bm25s query": []}
    for _ in range(args.repeat):  # interleaved rounds: both libraries see the same machine load
        oi, oq, o_ranked, o_scores = ours(texts, queries)
        pi, pq, p_ranked, p_scores = peer(texts, queries)
        times["ours index"].append(oi)
        times["ours query"].append(oq)
        times["bm25s index"].append(pi)
        times["bm25s query"].append(pq)
    best = {k: min(v) for k, v in times.items()}
    diff = float(np.abs(o_scores[:, :10] / 2.5 - p_scores[:, :10]).max())
    print(f"BM25 top-10 scores, largest |ours/(k1+1) - bm25s|: {diff:.2e}")
    print(f"{'BM25 speed (best of ' + str(args.repeat) + ')':<34}{'embedstack':>12}{'bm25s':>12}{'ratio':>10}")
    for what in ("index", "query"):
        a, b = best[f"ours {what}"], best[f"bm25s {what}"]
        print(f"  {what + ' (s)':<32}{a:>12.3f}{b:>12.3f}{b / a:>9.2f}x")
    print("  (ratio: bm25s time / embedstack time; above 1 means embedstack is faster)")

    print(f"\n{'recall@10':<34}{'':>12}")
    print(f"  {'BM25 (embedstack)':<32}{recall(o_ranked):>12.4f}")
    print(f"  {'BM25 (bm25s)':<32}{recall(p_ranked):>12.4f}")
    if args.no_dense:
        return
    cache = Path(tempfile.gettempdir()) / "embedstack-bench-sparse.sqlite"
    d_ranked, d_scores = dense_ranked(texts, queries, cache)
    print(f"  {'dense (all-MiniLM-L6-v2)':<32}{recall(d_ranked):>12.4f}")
    print(f"  {'hybrid, RRF (k=60, top 100)':<32}{recall(rrf([o_ranked, d_ranked], len(texts))):>12.4f}")
    bm25_full = np.zeros_like(d_scores)
    np.put_along_axis(bm25_full, o_ranked, o_scores, axis=1)
    label = f"hybrid, convex (alpha={args.alpha})"
    print(f"  {label:<32}{recall(convex(d_scores, bm25_full, args.alpha)):>12.4f}")


if __name__ == "__main__":
    main()
