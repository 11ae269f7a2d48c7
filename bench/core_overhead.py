"""Per-text overhead of the embedding pipeline vs llama-index-core's BaseEmbedding, same run.

Both sides use the same custom model as LlamaIndex users write it: the hook returns a fixed
384-float list (MiniLM's size), so what is timed is the framework: batching, events, callbacks,
cache reads/writes, ordering, and turning the hook's lists into vectors.

    python bench/core_overhead.py                 # needs llama-index-core (extra `llama-index`)
    python bench/core_overhead.py --old OLD/src   # also an older embedstack checkout, same run

Rows marked (issue 22) are the goals: list batch >= 1.0x, single call >= 2x, embed() >= 4x,
warm embed() >= 4x llama-index-core. "single call: contract only" times what any single call that returns
float32-exact values must do (check the hook's list, round it to float32, hand back 384 new floats) without the
pipeline around it: the floor the single call's pipeline cost sits on.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

DIM = 384
VEC = [((i * 37) % 101) / 101.0 for i in range(DIM)]


def per_text_us(fn: Callable[[], Any], n: int, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return best / n * 1e6


def measure(side: str, n_batch: int, n_single: int) -> dict[str, float]:
    """µs per text for each case, on llama-index-core (`li`) or the embedstack on sys.path (`es`)."""
    if side == "li":
        base = importlib.import_module("llama_index.core.base.embeddings.base").BaseEmbedding
        kv = importlib.import_module("llama_index.core.storage.kvstore").SimpleKVStore
    else:
        base = importlib.import_module("embedstack").BaseEmbedding
        kv = importlib.import_module("embedstack.kvstore").SimpleKVStore

    class Model(base):  # type: ignore[misc, valid-type]
        def _get_query_embedding(self, query: str) -> list[float]:
            return VEC

        async def _aget_query_embedding(self, query: str) -> list[float]:
            return VEC

        def _get_text_embedding(self, text: str) -> list[float]:
            return VEC

    texts = [f"text number {i} with some words" for i in range(n_batch)]
    singles = texts[:n_single]
    plain, cached = Model(), Model(embeddings_cache=kv())
    bulk = getattr(plain, "embed", plain.get_text_embedding_batch)  # embedstack's numpy path; LI has only lists
    warm_bulk = getattr(cached, "embed", cached.get_text_embedding_batch)
    out = {
        "list batch": per_text_us(lambda: plain.get_text_embedding_batch(texts), n_batch),
        "single call": per_text_us(lambda: [plain.get_text_embedding(t) for t in singles], n_single),
        "async list batch": per_text_us(lambda: asyncio.run(plain.aget_text_embedding_batch(texts)), n_batch),
        "embed()": per_text_us(lambda: bulk(texts), n_batch),
    }
    cached.get_text_embedding_batch(texts)  # warm the in-memory cache
    out["warm embed()"] = per_text_us(lambda: warm_bulk(texts), n_batch)
    out["warm list batch"] = per_text_us(lambda: cached.get_text_embedding_batch(texts), n_batch)
    if side == "es":
        as_matrix = importlib.import_module("embedstack.outputs").as_matrix

        def contract(text: str) -> list[float]:  # what any float32-exact single call must do, and nothing more
            return as_matrix([plain._get_text_embedding(text)], 1)[0].tolist()  # type: ignore[no-any-return]

        out["single call: contract only"] = per_text_us(lambda: [contract(t) for t in singles], n_single)
        sqlite = importlib.import_module("embedstack.kvstore").SQLiteKVStore
        path = Path(tempfile.mkdtemp()) / "cache.sqlite"
        disk = Model(embeddings_cache=sqlite(path))
        out["cold SQLite embed()"] = per_text_us(lambda: disk.embed(texts), n_batch, repeat=1)
        out["warm SQLite embed()"] = per_text_us(lambda: disk.embed(texts), n_batch)
    return out


GOALS = {"list batch": 1.0, "single call": 2.0, "embed()": 4.0, "warm embed()": 4.0}
LI_PEER = {
    "single call: contract only": "single call",
    "embed()": "list batch",
    "warm embed()": "warm list batch",
    "cold SQLite embed()": "list batch",
    "warm SQLite embed()": "warm list batch",
}


def child(side: str, src: str | None, n_batch: int, n_single: int) -> dict[str, float]:
    """Measure one side in a fresh interpreter (so two embedstack checkouts never share a process)."""
    env_path = f"import sys; sys.path.insert(0, {src!r}); " if src else ""
    code = (
        f"{env_path}import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import core_overhead as c; "
        f"print(json.dumps(c.measure({side!r}, {n_batch}, {n_single})))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    import json

    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old", help="src/ folder of another embedstack checkout, measured in the same run")
    parser.add_argument("--n", type=int, default=20_000, help="texts per batch run")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds; the best of each is kept")
    args = parser.parse_args()
    n_single = max(1, args.n // 10)
    sides = [("llama-index-core", "li", None), ("embedstack", "es", str(Path(__file__).parents[1] / "src"))]
    if args.old:
        sides.insert(1, ("embedstack (old)", "es", args.old))
    best: dict[str, dict[str, float]] = {}
    for _ in range(args.rounds):
        for name, side, src in sides:
            got = child(side, src, args.n, n_single)
            mine = best.setdefault(name, got)
            for case, value in got.items():
                mine[case] = min(mine.get(case, value), value)
    li = best["llama-index-core"]
    names = [name for name, _, _ in sides[1:]]
    print(
        f"{args.n} texts per batch run, {n_single} single calls, {DIM}-float list hook; µs per text, best of "
        f"3 x {args.rounds} rounds; speed-up = llama-index-core's µs / embedstack's\n"
    )
    print("| case | llama-index-core | " + " | ".join(f"{n} | speed-up" for n in names) + " | goal |")
    print("|---|---:|" + "---:|---:|" * len(names) + "---:|")
    for case in best[names[-1]]:
        peer = li[LI_PEER.get(case, case)]
        cells = " | ".join(
            f"{best[n][case]:.2f} | {peer / best[n][case]:.1f}x" if case in best[n] else "– | –" for n in names
        )
        goal = f"≥ {GOALS[case]:.0f}x" if case in GOALS else ""
        li_cell = f"{peer:.2f}" + ("" if case in li else f" ({LI_PEER[case]})")
        print(f"| {case} | {li_cell} | {cells} | {goal} |")


if __name__ == "__main__":
    main()
