"""Benchmark: embedstack's OpenAIEmbedding vs llama-index's on the same fake OpenAI server, same run.

The server (tests/openai/openai_fake_server.py, run as a separate process) adds 50 ms to every
request and returns 1,536-dim vectors, like text-embedding-3-small. 10,000 texts are embedded at
each client's default settings and at num_workers=8; every result is checked against the
server's vectors. Needs `pip install -c constraints.txt llama-index-embeddings-openai` (bench only).

    flock /tmp/embedstack-cpu.lock .venv/bin/python bench/openai_client.py [--n 10000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SERVER = ROOT / "tests" / "openai" / "openai_fake_server.py"
KEY = "sk-bench-not-a-real-key"
DIM = 1536

sys.path.insert(0, str(SERVER.parent))
from openai_fake_server import vector_for  # noqa: E402


def start_server(delay: float) -> tuple[subprocess.Popen[str], str]:
    """The fake server in its own process (so its work never competes for this process's GIL)."""
    proc = subprocess.Popen(
        [sys.executable, str(SERVER), "--delay", str(delay), "--dim", str(DIM), "--api-key", KEY],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    return proc, url


def stats(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url.removesuffix("/v1") + "/stats") as r:
        return json.loads(r.read())  # type: ignore[no-any-return]


def reset(url: str) -> None:
    req = urllib.request.Request(url.removesuffix("/v1") + "/reset", data=b"{}", method="POST")
    urllib.request.urlopen(req).read()


def texts_for(n: int) -> list[str]:
    words = "retrieval augmented generation splits documents into chunks and embeds every chunk once".split()
    return [f"document {i}: " + " ".join(words[(i + k) % len(words)] for k in range(60)) for i in range(n)]


def make_llama(url: str, workers: int | None) -> Any:
    from llama_index.embeddings.openai import OpenAIEmbedding as LlamaOpenAIEmbedding

    return LlamaOpenAIEmbedding(
        model="text-embedding-3-small", api_key=KEY, api_base=url, num_workers=workers, embed_batch_size=100
    )


def make_ours(url: str, workers: int | None, batch: int | None = None) -> Any:
    from embedstack import OpenAIEmbedding

    kw: dict[str, Any] = {"api_key": KEY, "api_base": url, "num_workers": workers}
    if batch:
        kw["embed_batch_size"] = batch
    return OpenAIEmbedding(model="text-embedding-3-small", **kw)


def run_sync(model: Any, texts: list[str]) -> list[list[float]]:
    return model.get_text_embedding_batch(texts)  # type: ignore[no-any-return]


def run_async(model: Any, texts: list[str]) -> list[list[float]]:
    return asyncio.run(model.aget_text_embedding_batch(texts))  # type: ignore[no-any-return]


def run_numpy(model: Any, texts: list[str]) -> Any:
    return model.embed(texts)  # the bulk path: one float32 matrix, no Python lists


def check(out: Any, texts: list[str]) -> None:
    for i in (0, len(texts) // 2, len(texts) - 1):
        np.testing.assert_allclose(out[i], vector_for(texts[i], DIM), rtol=1e-6, atol=1e-7)
    assert len(out) == len(texts)


Runner = Callable[[Any, list[str]], Any]


def measure(
    name: str, factory: Callable[[], Any], runner: Runner, texts: list[str], url: str, repeats: int
) -> dict[str, Any]:
    times = []
    requests = 0
    for _ in range(repeats):
        model = factory()
        reset(url)
        t0 = time.perf_counter()
        out = runner(model, texts)
        times.append(time.perf_counter() - t0)
        s = stats(url)
        requests = s["requests"]
        check(out, texts)
    return {"name": name, "time": statistics.median(times), "requests": requests, "max_conc": s["max_concurrency"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--delay", type=float, default=0.05)
    args = p.parse_args()
    os.environ.pop("OPENAI_API_KEY", None)
    texts = texts_for(args.n)
    proc, url = start_server(args.delay)
    try:
        # Untimed: import both clients, and let the server compute (and keep) every text's vector.
        make_ours(url, 8).embed(texts)
        make_llama(url, None).get_text_embedding_batch(texts[:10])
        reset(url)
        rows = [
            ("llama-index, defaults (sync, batch 100)", "ll-default", lambda: make_llama(url, None), run_sync),
            ("embedstack, defaults (sync, batch 512)", "es-default", lambda: make_ours(url, None), run_sync),
            ("embedstack, sync, batch 100", "es-b100", lambda: make_ours(url, None, 100), run_sync),
            ("embedstack, defaults, embed() -> numpy", "es-numpy", lambda: make_ours(url, None), run_numpy),
            ("llama-index, num_workers=8 (async, batch 100)", "ll-w8", lambda: make_llama(url, 8), run_async),
            ("embedstack, num_workers=8 (async, batch 512)", "es-w8-async", lambda: make_ours(url, 8), run_async),
            ("embedstack, num_workers=8 (sync threads, batch 512)", "es-w8-sync", lambda: make_ours(url, 8), run_sync),
            ("embedstack, num_workers=8 (async, batch 100)", "es-w8-b100", lambda: make_ours(url, 8, 100), run_async),
        ]
        results = {key: measure(name, f, r, texts, url, args.repeats) for name, key, f, r in rows}
    finally:
        proc.terminate()
        proc.wait()

    base = {"ll-default": results["ll-default"]["time"], "ll-w8": results["ll-w8"]["time"]}
    delay_ms = args.delay * 1000
    print(f"\n{args.n} texts, server delay {delay_ms:.0f} ms/request, {DIM}-dim vectors, median of {args.repeats}\n")
    print("| client and settings | requests | max concurrent | time (s) | texts/s | speed-up vs llama-index |")
    print("|---|---:|---:|---:|---:|---:|")
    for _, key, _, _ in rows:
        r = results[key]
        ref = base["ll-w8"] if "w8" in key else base["ll-default"]
        print(
            f"| {r['name']} | {r['requests']} | {r['max_conc']} | {r['time']:.2f} | {args.n / r['time']:,.0f} "
            f"| {ref / r['time']:.2f}x |"
        )


if __name__ == "__main__":
    main()
