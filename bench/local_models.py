"""Local model throughput and retrieval quality: embedstack vs sentence-transformers vs llama-index.

Same process, same torch threads, same model (the bundled all-MiniLM-L6-v2), first N records of
bench/data/packages-retrieval.jsonl: texts/s on the short "query" and the long "text" fields,
cosine agreement with sentence-transformers, and recall@1/@10 of query→text retrieval.

    flock /tmp/embedstack-cpu.lock .venv/bin/python bench/local_models.py
    flock /tmp/embedstack-cpu.lock .venv/bin/python bench/local_models.py --sweep   # batch sizes
    .venv/bin/python bench/local_models.py --padding   # padding when sorted by characters vs tokens

llama-index's HuggingFaceEmbedding (package llama-index-embeddings-huggingface, bench-only) runs
at its defaults (embed_batch_size=10) when installed.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from _common import DATA, bundled_model_dir, columns, recall, row_cosines

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore", message=".*truncated")  # long "text" records: expected

Runner = Callable[[list[str], str], np.ndarray]


def timed(fn: Runner, items: list[str], role: str) -> tuple[float, np.ndarray]:
    fn(items[:64], role)  # warm-up (first-call allocations, thread pools, lazy init)
    t0 = time.perf_counter()
    out = fn(items, role)
    return time.perf_counter() - t0, np.asarray(out, dtype=np.float32)


def runners(model_dir: Path, with_llama: bool) -> dict[str, Runner]:
    from sentence_transformers import SentenceTransformer

    from embedstack import HuggingFaceEmbedding

    st = SentenceTransformer(str(model_dir), device="cpu")
    ours = HuggingFaceEmbedding(device="cpu").load()
    found: dict[str, Runner] = {
        "sentence-transformers encode (bs=32)": lambda items, role: st.encode(items, batch_size=32),
        f"embedstack HuggingFaceEmbedding (bs={ours.embed_batch_size})": lambda items, role: ours.embed(items, role),
    }
    if with_llama:
        try:
            from llama_index.embeddings.huggingface import HuggingFaceEmbedding as LlamaHF
        except ImportError:
            print("llama-index-embeddings-huggingface not installed: skipped")
        else:
            li = LlamaHF(model_name=str(model_dir), device="cpu")
            found[f"llama-index HuggingFaceEmbedding (bs={li.embed_batch_size})"] = lambda items, role: (
                li.get_text_embedding_batch(items)
            )
    return found


def sweep(queries: list[str], texts: list[str], repeats: int) -> None:
    from embedstack import HuggingFaceEmbedding

    model = HuggingFaceEmbedding(device="cpu").load()
    sizes = (4, 8, 16, 32, 64, 128)
    best: dict[tuple[int, int], float] = {}
    for _ in range(repeats):
        for bs in sizes:
            model.embed_batch_size = bs
            for f, items in enumerate((queries, texts)):
                model.embed(items[:8])
                t0 = time.perf_counter()
                model.embed(items)
                rate = len(items) / (time.perf_counter() - t0)
                best[bs, f] = max(best.get((bs, f), 0.0), rate)
    print(f"\n| embed_batch_size | query texts/s ({len(queries)}) | text texts/s ({len(texts)}) |")
    print("|---:|---:|---:|")
    for bs in sizes:
        print(f"| {bs} | {best[bs, 0]:.0f} | {best[bs, 1]:.1f} |")


def padding(queries: list[str], texts: list[str], batch_size: int = 16) -> None:
    """Padding (padded tokens / real tokens - 1) of batches of `batch_size` when the texts are sorted,
    longest first, by characters or by token count (what HuggingFaceEmbedding._plan sorts by)."""
    from embedstack import HuggingFaceEmbedding

    tokenizer = HuggingFaceEmbedding(device="cpu")._text_tokenizer()
    assert tokenizer is not None
    print(f"\n| field (batches of {batch_size}) | sorted by characters | sorted by tokens |")
    print("|---|---:|---:|")
    for field, items in (("query", queries), ("text", texts)):
        lengths = np.array([len(t.ids) for t in tokenizer.tokenize(items)])
        cells = []
        for key in (np.array([len(t) for t in items]), lengths):
            order = np.argsort(-key, kind="stable")
            chunks = [lengths[order[i : i + batch_size]] for i in range(0, len(order), batch_size)]
            padded = sum(int(c.max()) * len(c) for c in chunks)
            cells.append(f"{padded / lengths.sum() - 1:.1%}")
        print(f"| {field} | {cells[0]} | {cells[1]} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("-n", type=int, default=2000, help="records to use (default 2000)")
    parser.add_argument("--no-llama-index", action="store_true", help="skip llama-index's HuggingFaceEmbedding")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved rounds; best kept")
    parser.add_argument("--sweep", action="store_true", help="only time embedstack at several batch sizes")
    parser.add_argument("--padding", action="store_true", help="only measure padding: texts sorted by chars vs tokens")
    args = parser.parse_args()

    import torch

    data = columns(args.data, args.n)
    queries, texts = data["query"], data["text"]
    model_dir = bundled_model_dir()
    threads = torch.get_num_threads()
    print(f"{len(queries)} records from {args.data}; torch {torch.__version__}, {threads} threads")
    if args.sweep:
        sweep(queries, texts[:500], args.repeats)
        return
    if args.padding:
        padding(queries, texts)
        return

    found = runners(model_dir, not args.no_llama_index)
    rates: dict[tuple[str, str], float] = {}
    vectors: dict[tuple[str, str], np.ndarray] = {}
    for rnd in range(args.repeats):  # interleaved rounds, best rate kept: the machine is shared
        for name, fn in found.items():
            for field, items, role in (("query", queries, "query"), ("text", texts, "text")):
                secs, vecs = timed(fn, items, role)
                rates[name, field] = max(rates.get((name, field), 0.0), len(items) / secs)
                vectors[name, field] = vecs
                print(f"  round {rnd + 1} {name}: {field} {len(items) / secs:.1f} texts/s", flush=True)

    base = next(iter(found))
    print("\n| implementation | query texts/s | ratio | text texts/s | ratio | min cos vs ST | recall@1 | recall@10 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in found:
        min_cos = min(float(row_cosines(vectors[name, f], vectors[base, f]).min()) for f in ("query", "text"))
        r = {k: recall(vectors[name, "query"], vectors[name, "text"], k) for k in (1, 10)}
        q, t = rates[name, "query"], rates[name, "text"]
        print(
            f"| {name} | {q:.0f} | {q / rates[base, 'query']:.2f}x | {t:.1f} "
            f"| {t / rates[base, 'text']:.2f}x | {min_cos:.6f} | {r[1]:.3f} | {r[10]:.3f} |"
        )


if __name__ == "__main__":
    main()
