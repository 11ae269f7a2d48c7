"""ONNX Runtime backend vs torch: throughput, latency, memory and fidelity on the default model.

One run, same texts, same threads: sentence-transformers' encode, embedstack with backend="torch",
backend="onnx" fp32 and the fast mode (int8). Each backend runs in its own subprocess (so peak
RSS is its own and no backend warms another's caches), on the "query" and the "text" fields of the
first N records of ../shared/data/packages-retrieval.jsonl; throughput is the best of --rounds
passes (the machine is shared), latency is one short query at a time through the public API.
Fidelity: cosine of every vector to sentence-transformers' (the fast mode also to onnx fp32),
recall@1/@10 of query→text retrieval.

    flock /tmp/embedstack-cpu.lock .venv/bin/python bench/onnx_backend.py
    flock /tmp/embedstack-cpu.lock .venv/bin/python bench/onnx_backend.py --n 500 --rounds 1  # quick

The ONNX graphs are built (and timed) first, in their own subprocess, into --cache-dir (default:
a fresh temporary folder, so the export cost is measured too).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore", message=".*truncated")  # long "text" records: expected

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "packages-retrieval.jsonl"
BACKENDS = {
    "st": "sentence-transformers encode",
    "torch": "embedstack torch",
    "onnx-fp32": "embedstack onnx fp32",
    "onnx-int8": "embedstack onnx int8 (fast)",
}
FIELDS = ("query", "text")


def load(path: Path, n: int) -> dict[str, list[str]]:
    rows: dict[str, list[str]] = {f: [] for f in FIELDS}
    with path.open(encoding="utf-8") as f:
        for line, _ in zip(f, range(n)):
            row = json.loads(line)
            for field in FIELDS:
                rows[field].append(row[field])
    return rows


def model_dir() -> Path:
    from embedstack.providers._hf_source import DEFAULT_MODEL, locate_model

    return locate_model(DEFAULT_MODEL).path


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


# -- worker side (one backend per process) ---------------------------------------------------------
def make_backend(name: str, threads: int, batch_size: int | None) -> Any:
    """(bulk(texts, role) -> array, one(text) -> vector) for a backend."""
    if name == "st":
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(threads)
        st = SentenceTransformer(str(model_dir()), device="cpu", local_files_only=True)
        bs = batch_size or 32
        return (lambda items, role: st.encode(items, batch_size=bs)), (lambda text: st.encode(text))
    from embedstack.providers import _onnx
    from embedstack.providers.huggingface import HuggingFaceEmbedding

    _onnx.physical_cores = lambda: threads  # the provider passes threads=None → physical cores
    kwargs: dict[str, Any] = {"device": "cpu"} if name == "torch" else {}
    if batch_size:
        kwargs["embed_batch_size"] = batch_size
    if name == "torch":
        import torch

        torch.set_num_threads(threads)
        model = HuggingFaceEmbedding(backend="torch", **kwargs)
    else:
        model = HuggingFaceEmbedding(backend="onnx", precision=name.split("-")[1], **kwargs)
    model.load()
    assert model._instruction(model_role("query")) in (None, ""), "benchmark assumes no instruction"
    return (lambda items, role: model.embed(items, role)), model.get_query_embedding


def model_role(name: str) -> Any:
    from embedstack.types import Role

    return Role(name)


def worker(args: argparse.Namespace) -> None:
    base_rss = rss_mb()
    t0 = time.perf_counter()
    bulk, one = make_backend(args.worker, args.threads, args.batch_size)
    load_s = time.perf_counter() - t0
    loaded_rss = rss_mb()
    data = load(args.data, args.n)
    result: dict[str, Any] = {"load_s": load_s, "rss_loaded_mb": loaded_rss, "rss_start_mb": base_rss}
    vectors = {}
    for field in FIELDS:
        items = data[field]
        bulk(items[:32], field)  # warm-up: first-call allocations, thread pools
        best = float("inf")
        for _ in range(args.rounds):
            t = time.perf_counter()
            out = bulk(items, field)
            best = min(best, time.perf_counter() - t)
        vectors[field] = np.asarray(out, dtype=np.float32)
        result[f"{field}_per_s"] = len(items) / best
    queries = data["query"][: args.latency]
    for q in queries[:10]:
        one(q)
    times = []
    for q in queries:
        t = time.perf_counter()
        one(q)
        times.append(time.perf_counter() - t)
    result["p50_ms"] = 1000 * statistics.median(times)
    result["p99_ms"] = 1000 * float(np.percentile(times, 99))
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    np.savez(args.out.with_suffix(".npz"), **vectors)
    args.out.write_text(json.dumps(result))


def prepare(args: argparse.Namespace) -> None:
    """Build the fp32 and int8 graphs into the cache (timed), so workers only load them."""
    from embedstack.providers._onnx import OnnxEncoder

    times = {}
    for precision in ("fp32", "int8"):
        t = time.perf_counter()
        OnnxEncoder(model_dir(), precision=precision)
        times[precision] = time.perf_counter() - t
    args.out.write_text(json.dumps(times))


# -- parent side -----------------------------------------------------------------------------------
def unit(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    return m / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-12)


def recall(q: np.ndarray, t: np.ndarray, k: int) -> float:
    """Percent of queries whose own text (same row) is in the top k texts by cosine."""
    scores = unit(q) @ unit(t).T
    own = scores[np.arange(len(q)), np.arange(len(q))]
    rank = (scores > own[:, None]).sum(axis=1)
    return 100.0 * float((rank < k).mean())


def spawn(mode: str, name: str, args: argparse.Namespace, out: Path, env: dict[str, str]) -> None:
    cmd = [sys.executable, __file__, f"--{mode}", name, "--out", str(out), "--n", str(args.n)]
    cmd += ["--threads", str(args.threads), "--rounds", str(args.rounds), "--latency", str(args.latency)]
    cmd += ["--data", str(args.data)]
    if args.batch_size:
        cmd += ["--batch-size", str(args.batch_size)]
    subprocess.run(cmd, check=True, env=env)


def main(args: argparse.Namespace) -> None:
    from embedstack.providers._onnx import physical_cores

    args.threads = args.threads or physical_cores()
    env = dict(os.environ)
    cache = Path(args.cache_dir) if args.cache_dir else Path(tempfile.mkdtemp(prefix="onnx-bench-"))
    env["EMBEDSTACK_CACHE_DIR"] = str(cache)
    env.setdefault("TOKENIZERS_PARALLELISM", "true")
    work = Path(tempfile.mkdtemp(prefix="onnx-bench-out-"))
    print(
        f"{args.n} records, {args.threads} threads, best of {args.rounds} round(s), "
        f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}, cache {cache}",
        flush=True,
    )
    spawn("prepare", "graphs", args, work / "prepare.json", env)
    build = json.loads((work / "prepare.json").read_text())
    results: dict[str, dict[str, Any]] = {}
    vecs: dict[str, dict[str, np.ndarray]] = {}
    for name in args.backends.split(","):
        out = work / f"{name}.json"
        spawn("worker", name, args, out, env)
        results[name] = json.loads(out.read_text())
        with np.load(out.with_suffix(".npz")) as z:
            vecs[name] = {f: z[f] for f in FIELDS}
        r = results[name]
        print(f"  {name}: query {r['query_per_s']:.0f}/s text {r['text_per_s']:.1f}/s", flush=True)
    report(args, build, results, vecs)


def report(
    args: argparse.Namespace,
    build: dict[str, float],
    results: dict[str, dict[str, Any]],
    vecs: dict[str, dict[str, np.ndarray]],
) -> None:
    ref = vecs.get("st")
    base = results.get("st")
    print()
    print(f"### ONNX backend, {args.n} records, {args.threads} threads (all-MiniLM-L6-v2)")
    print()
    print(
        "| backend | query texts/s | × ST | text texts/s | × ST | 1-query p50 ms | p99 ms | "
        "peak RSS MB | cos vs ST min / mean | R@1 | R@10 |"
    )
    print("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for name, r in results.items():
        ratio = {f: f"{r[f'{f}_per_s'] / base[f'{f}_per_s']:.2f}x" if base else "-" for f in FIELDS}
        if ref is not None:
            cos = np.concatenate([(unit(vecs[name][f]) * unit(ref[f])).sum(1) for f in FIELDS])
            fid = f"{cos.min():.5f} / {cos.mean():.5f}"
        else:
            fid = "-"
        q, t = vecs[name]["query"], vecs[name]["text"]
        print(
            f"| {BACKENDS[name]} | {r['query_per_s']:.0f} | {ratio['query']} | {r['text_per_s']:.1f} | "
            f"{ratio['text']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['peak_rss_mb']:.0f} | {fid} | "
            f"{recall(q, t, 1):.2f} | {recall(q, t, 10):.2f} |"
        )
    if "onnx-fp32" in vecs and "onnx-int8" in vecs:
        a, b = vecs["onnx-fp32"], vecs["onnx-int8"]
        cos = np.concatenate([(unit(a[f]) * unit(b[f])).sum(1) for f in FIELDS])
        d10 = recall(b["query"], b["text"], 10) - recall(a["query"], a["text"], 10)
        d1 = recall(b["query"], b["text"], 1) - recall(a["query"], a["text"], 1)
        verdict = "meets" if cos.mean() >= 0.99 and abs(d10) <= 0.5 else "MISSES"
        print()
        print(
            f"Fast mode (int8) vs onnx fp32: cosine mean {cos.mean():.5f}, min {cos.min():.5f}, "
            f"p1 {np.percentile(cos, 1):.5f}; recall@10 {d10:+.2f} points, recall@1 {d1:+.2f} points "
            f"({verdict} the bar: mean cosine >= 0.99, |recall@10 change| <= 0.5)."
        )
    if ref is not None and "onnx-fp32" in vecs:
        cos = np.concatenate([(unit(vecs["onnx-fp32"][f]) * unit(ref[f])).sum(1) for f in FIELDS])
        below = int((cos < 0.9999).sum())
        print(
            f"onnx fp32 vs sentence-transformers: {below} of {cos.size} texts below cosine 0.9999 "
            f"(min {cos.min():.6f})."
        )
    print(
        f"One-time graph build (export + fusions; then quantise): fp32 {build['fp32']:.1f} s, "
        f"int8 {build['int8']:.1f} s. Load from cache: "
        + ", ".join(f"{n} {r['load_s']:.2f} s" for n, r in results.items())
    )


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=2000, help="records of the benchmark file (default 2000)")
    p.add_argument("--threads", type=int, default=0, help="threads for every backend (default: physical cores)")
    p.add_argument("--rounds", type=int, default=2, help="passes per field; the fastest counts")
    p.add_argument("--latency", type=int, default=200, help="single queries timed for p50/p99")
    p.add_argument("--batch-size", type=int, default=0, help="override every backend's batch size")
    p.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated subset of " + ",".join(BACKENDS))
    p.add_argument("--cache-dir", default="", help="ONNX graph cache (default: a fresh temp folder)")
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--prepare", help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    return p.parse_args()


if __name__ == "__main__":
    ns = parse()
    if ns.worker:
        worker(ns)
    elif ns.prepare:
        prepare(ns)
    else:
        main(ns)
