"""Per-text overhead of the embedding pipeline vs llama-index-core's BaseEmbedding, same run.

Both sides use the same trivial model (the hook returns a fixed 8-float list), so what is timed
is the framework: batching, events, callbacks, cache reads/writes, ordering.

    python bench/core_overhead.py            # needs llama-index-core (bench-only)
    python bench/core_overhead.py --batch 200 --single 20   # a quick look
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llama_index.core.base.embeddings.base import BaseEmbedding as LIBase
from llama_index.core.storage.kvstore import SimpleKVStore as LISimpleKVStore

from _common import best_of
from embedstack import BaseEmbedding as ESBase
from embedstack.kvstore import SimpleKVStore, SQLiteKVStore

VEC = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]


class LIModel(LIBase):
    def _get_query_embedding(self, query: str) -> list[float]:
        return VEC

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return VEC

    def _get_text_embedding(self, text: str) -> list[float]:
        return VEC


class ESModel(ESBase):
    def _get_query_embedding(self, query: str) -> list[float]:
        return VEC

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return VEC

    def _get_text_embedding(self, text: str) -> list[float]:
        return VEC


def per_text_us(fn: Callable[[], Any], n: int, repeat: int = 3) -> float:
    """Best of `repeat` runs of `fn()`, in microseconds per text (`fn` embeds `n` texts)."""
    return best_of(fn, repeat)[0] / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=20_000, help="texts per batch run (default %(default)s)")
    parser.add_argument("--single", type=int, default=2_000, help="single calls (default %(default)s)")
    args = parser.parse_args()
    n_batch, n_single = args.batch, min(args.single, args.batch)
    texts = [f"text number {i} with some words" for i in range(n_batch)]
    singles = texts[:n_single]
    tmp = Path(tempfile.mkdtemp())
    rows: list[tuple[str, float, float]] = []

    def row(name: str, li: float, es: float) -> None:
        rows.append((name, li, es))

    li, es = LIModel(), ESModel()
    row(
        "get_text_embedding_batch, no cache",
        per_text_us(lambda: li.get_text_embedding_batch(texts), n_batch),
        per_text_us(lambda: es.get_text_embedding_batch(texts), n_batch),
    )
    row(
        "get_text_embedding, no cache",
        per_text_us(lambda: [li.get_text_embedding(t) for t in singles], n_single),
        per_text_us(lambda: [es.get_text_embedding(t) for t in singles], n_single),
    )
    row(
        "aget_text_embedding_batch, no cache",
        per_text_us(lambda: asyncio.run(li.aget_text_embedding_batch(texts)), n_batch),
        per_text_us(lambda: asyncio.run(es.aget_text_embedding_batch(texts)), n_batch),
    )

    li_c = LIModel(embeddings_cache=LISimpleKVStore())
    es_simple = ESModel(embeddings_cache=SimpleKVStore())
    es_sqlite = ESModel(embeddings_cache=SQLiteKVStore(tmp / "cache.sqlite"))
    # cold: first pass fills the cache (single pass each; fresh stores)
    rows.append(
        (
            "batch, cold cache (LI SimpleKVStore vs ES SQLiteKVStore)",
            per_text_us(lambda: li_c.get_text_embedding_batch(texts), n_batch, repeat=1),
            per_text_us(lambda: es_sqlite.get_text_embedding_batch(texts), n_batch, repeat=1),
        )
    )
    es_simple.get_text_embedding_batch(texts)
    row(
        "batch, warm cache (LI SimpleKVStore vs ES SimpleKVStore)",
        per_text_us(lambda: li_c.get_text_embedding_batch(texts), n_batch),
        per_text_us(lambda: es_simple.get_text_embedding_batch(texts), n_batch),
    )
    row(
        "batch, warm cache (LI SimpleKVStore vs ES SQLiteKVStore)",
        per_text_us(lambda: li_c.get_text_embedding_batch(texts), n_batch),
        per_text_us(lambda: es_sqlite.get_text_embedding_batch(texts), n_batch),
    )
    es_disk = ESModel(embeddings_cache=SQLiteKVStore(tmp / "cache.sqlite", memory_entries=0))
    row(
        "batch, warm cache (LI SimpleKVStore vs ES SQLiteKVStore read from disk)",
        per_text_us(lambda: li_c.get_text_embedding_batch(texts), n_batch),
        per_text_us(lambda: es_disk.get_text_embedding_batch(texts), n_batch),
    )
    row(
        "get_text_embedding, warm cache (LI Simple vs ES SQLite)",
        per_text_us(lambda: [li_c.get_text_embedding(t) for t in singles], n_single),
        per_text_us(lambda: [es_sqlite.get_text_embedding(t) for t in singles], n_single),
    )

    print(f"{n_batch} texts per batch run, {n_single} single calls; best of 3; µs per text\n")
    print("| case | llama-index-core | embedstack | speed-up |")
    print("|---|---:|---:|---:|")
    for name, a, b in rows:
        print(f"| {name} | {a:.2f} | {b:.2f} | {a / b:.1f}x |")


if __name__ == "__main__":
    main()
