"""Cost of the LangChain / llama-index adapters over calling the embedstack model directly.

Real local default model (all-MiniLM-L6-v2), N short texts, best of R runs; ratios are against
`model.embed(texts)`. Also shown: llama-index's default embed_batch_size (10) on the adapter (what
a naive wrapper gets) and a warm SQLite cache through each adapter.

    HF_HUB_OFFLINE=1 python bench/interop.py [N] [R]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _common import best_interleaved
from embedstack import resolve_embed_model
from embedstack.kvstore import SQLiteKVStore


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("n", nargs="?", type=int, default=256, help="texts (default %(default)s)")
    parser.add_argument("repeat", nargs="?", type=int, default=3, help="rounds, best kept (default %(default)s)")
    args = parser.parse_args()
    n, repeat = args.n, args.repeat
    topics = ["rivers", "compilers", "bread", "volcanoes", "chess", "orbits", "violins", "tides"]
    texts = [f"Note {i}: a short paragraph about {topics[i % len(topics)]} and item {i}." for i in range(n)]
    model = resolve_embed_model("local")
    model.embed(texts[:8])  # warm up the weights
    lc, li = model.as_langchain(), model.as_llama_index()
    li_naive = model.as_llama_index()
    li_naive.embed_batch_size = 10  # llama-index's default

    cold = {
        "model.embed(texts) (baseline)": lambda: model.embed(texts),
        "as_langchain().embed_documents": lambda: lc.embed_documents(texts),
        "as_llama_index().get_text_embedding_batch": lambda: li.get_text_embedding_batch(texts),
        "  same, llama-index embed_batch_size=10": lambda: li_naive.get_text_embedding_batch(texts),
    }
    rows = list(best_interleaved(cold, repeat).items())
    with tempfile.TemporaryDirectory() as tmp:
        model.embeddings_cache = SQLiteKVStore(Path(tmp) / "cache.sqlite")
        lc.embed_documents(texts)  # fill the cache once
        warm = {
            "as_langchain(), warm SQLite cache": lambda: lc.embed_documents(texts),
            "as_llama_index(), warm SQLite cache": lambda: li.get_text_embedding_batch(texts),
        }
        rows += list(best_interleaved(warm, repeat).items())
        model.embeddings_cache = None

    base = rows[0][1]
    print(f"\nN={n} texts, best of {repeat} (interleaved), model={model.model_name}, ", end="")
    print(f"embedstack embed_batch_size={model.embed_batch_size}\n")
    print("| path | seconds | texts/s | ratio vs baseline |")
    print("|---|---:|---:|---:|")
    for name, secs in rows:
        print(f"| {name} | {secs:.3f} | {n / secs:,.0f} | {secs / base:.2f}x |")


if __name__ == "__main__":
    main()
