"""Long inputs: what each way of embedding a text past the model's limit keeps of retrieval.

The benchmark corpus (packages-retrieval.jsonl: 3,000 Debian packages, each a one-line "query" and a "text"
description) with its descriptions made long: document i is the descriptions of packages GROUP*i ..
GROUP*i+GROUP-1 joined by blank lines, and each package's query targets the document holding its description.
With the default all-MiniLM-L6-v2 (limit 256 tokens), recall@10 (the target document in the top 10) for:

- truncate: one vector per document, cut at 256 tokens (the default, `long_inputs="truncate"`);
- chunk: one vector per document, embedded whole (`long_inputs="chunk"`: overlapping pieces averaged by tokens);
- late chunking: the document cut into chunks of CHUNK tokens, each chunk's vector by late chunking
  (`embed_chunks`: the document encoded once, in overlapping macro windows past the limit); a document's score
  is its best chunk's;
- naive chunks: the same chunks embedded on their own (no context), best chunk's score (the usual RAG baseline).

Recall is also given by where the target description sits in its document (1st, 2nd, ...): what truncation
loses is the descriptions past the first 256 tokens. Wall time per mode is from this run, on this machine.

    python bench/long_inputs.py                   # 3,000 queries, 750 documents of 4 descriptions
    python bench/long_inputs.py --group 6 --chunk 128 --backend torch
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import numpy as np

from _common import DATA, records
from embedstack import HuggingFaceEmbedding


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=3000, help="packages used (default: all 3,000)")
    parser.add_argument("--group", type=int, default=4, help="descriptions per document (default: 4)")
    parser.add_argument("--chunk", type=int, default=128, help="late/naive chunk size in tokens (default: 128)")
    parser.add_argument("--backend", default="onnx", choices=["torch", "onnx", "openvino"])
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = parser.parse_args()

    rows = records(DATA, args.records)
    n_docs = len(rows) // args.group
    rows = rows[: n_docs * args.group]
    documents = ["\n\n".join(r["text"] for r in rows[d * args.group : (d + 1) * args.group]) for d in range(n_docs)]
    queries = [r["query"] for r in rows]
    target = np.arange(len(rows)) // args.group
    place = np.arange(len(rows)) % args.group

    warnings.filterwarnings("ignore", message=".*were truncated")  # truncation is what is measured here
    truncate = HuggingFaceEmbedding(backend=args.backend).load()
    chunk = HuggingFaceEmbedding(backend=args.backend, long_inputs="chunk").load()
    counts, _ = chunk.provider.count_tokens(documents, "text")  # type: ignore[misc,arg-type]
    limit = max(truncate.provider.count_tokens(documents, "text")[0])  # type: ignore[index]
    long_share = float(np.mean(np.asarray(counts) > limit))
    for model in (truncate, chunk):  # warm: the first calls' one-off costs are not timed
        model.embed(documents[:8])
        chunk.embed_chunks(documents[0], chunk.chunk_spans(documents[0], args.chunk))

    t0 = time.perf_counter()
    q = truncate.embed(queries, "query")
    timings = {"queries": time.perf_counter() - t0}
    results: dict[str, np.ndarray] = {}  # mode → (queries, documents) scores

    for name, model in (("truncate", truncate), ("chunk", chunk)):
        t0 = time.perf_counter()
        docs = model.embed(documents)
        timings[name] = time.perf_counter() - t0
        results[name] = q @ docs.T

    spans = [chunk.chunk_spans(d, args.chunk) for d in documents]
    owner = np.repeat(np.arange(n_docs), [len(s) for s in spans])
    t0 = time.perf_counter()
    late = np.concatenate([chunk.embed_chunks(d, s) for d, s in zip(documents, spans)])
    timings["late chunking"] = time.perf_counter() - t0
    results["late chunking"] = _best_chunk(q @ late.T, owner, n_docs)
    t0 = time.perf_counter()
    naive = truncate.embed([d[a:b] for d, s in zip(documents, spans) for a, b in s])
    timings["naive chunks"] = time.perf_counter() - t0
    results["naive chunks"] = _best_chunk(q @ naive.T, owner, n_docs)

    table = {}
    for name, scores in results.items():
        top = np.argsort(-scores, axis=1)[:, :10]
        hit = (top == target[:, None]).any(1)
        table[name] = {
            "recall@10": float(hit.mean()),
            "by_place": [float(hit[place == p].mean()) for p in range(args.group)],
            "seconds": timings[name],
        }
    print(
        f"{len(queries)} queries, {n_docs} documents of {args.group} descriptions "
        f"({np.mean(counts):.0f} tokens on average, {long_share:.0%} past the {limit}-token limit); "
        f"all-MiniLM-L6-v2 on {args.backend}; chunks of {args.chunk} tokens ({len(owner) / n_docs:.1f} per "
        f"document); queries embedded in "
        f"{timings['queries']:.1f}s"
    )
    places = " | ".join(f"#{p + 1}" for p in range(args.group))
    print(f"\n| mode | recall@10 | {places} | documents embedded in |")
    print("|---|---|" + "---|" * args.group + "---|")
    for name, row in table.items():
        by = " | ".join(f"{v:.3f}" for v in row["by_place"])
        print(f"| {name} | {row['recall@10']:.3f} | {by} | {row['seconds']:.1f} s |")
    if args.json:
        print(json.dumps({"documents": n_docs, "long_share": long_share, "modes": table}, indent=2))


def _best_chunk(scores: np.ndarray, owner: np.ndarray, n_docs: int) -> np.ndarray:
    """(queries, documents): each document's best chunk score."""
    out = np.full((scores.shape[0], n_docs), -np.inf, dtype=np.float32)
    np.maximum.at(out.T, owner, scores.T)
    return out


if __name__ == "__main__":
    main()
