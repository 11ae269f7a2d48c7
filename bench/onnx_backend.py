"""ONNX Runtime backend vs torch: throughput, latency, memory and fidelity on the default model.

One run, same texts, same threads: sentence-transformers' encode, embedstack with backend="torch",
backend="onnx" fp32 and int8, backend="openvino" fp32, bf16 (on CPUs with native bf16) and int8 (the
fast mode). Each backend lives in its own process (so peak RSS
is its own and no backend warms another's caches), loaded once; the parent runs them one at a time,
interleaved: each round embeds the "query" and then the "text" field of the first N records of
bench/data/packages-retrieval.jsonl with every backend in turn. The machine is shared and its
speed drifts by +-30% over minutes, so a ratio is the median over rounds of the per-round ratio
(same minute, same load); texts/s is each backend's best round. Latency is one short query at a
time through the public API.
Fidelity: cosine of every vector to sentence-transformers' (bf16 and int8 also to onnx fp32),
recall@1/@10 of query→text retrieval.

    flock /tmp/embedstack-cpu.lock .venv/bin/python bench/onnx_backend.py
    flock /tmp/embedstack-cpu.lock .venv/bin/python bench/onnx_backend.py --n 500 --rounds 2  # quick

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

from _common import DATA, FIELDS, bundled_model_dir, columns, median_ratio, recall, row_cosines

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore", message=".*truncated")  # long "text" records: expected

BACKENDS = {
    "st": "sentence-transformers encode",
    "torch": "embedstack torch",
    "onnx-fp32": "embedstack onnx fp32",
    "onnx-int8": "embedstack onnx int8",
    "openvino-fp32": "embedstack openvino fp32",
    "openvino-bf16": "embedstack openvino bf16",
    "openvino-int8": "embedstack openvino int8 (fast)",
}


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


# -- worker side (one backend per process) ---------------------------------------------------------
def label(name: str) -> str:
    """A path's row label: "onnx-fp32@16" is onnx fp32 at an explicit embed_batch_size=16."""
    base, _, size = name.partition("@")
    return BACKENDS.get(base, base) + (f" (embed_batch_size={size})" if size else "")


def make_backend(name: str, threads: int, batch_size: int | None, token_budget: int = 0) -> Any:
    """(bulk(texts, role) -> array, one(text) -> vector) for a backend; a suffix "@N" (e.g. "onnx-fp32@16")
    sets embed_batch_size=N for that path alone."""
    name, _, size = name.partition("@")
    batch_size = int(size) if size else batch_size
    if name == "st":
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(threads)
        st = SentenceTransformer(str(bundled_model_dir()), device="cpu", local_files_only=True)
        bs = batch_size or 32
        return (lambda items, role: st.encode(items, batch_size=bs)), (lambda text: st.encode(text))
    from embedstack.providers.huggingface import HuggingFaceEmbedding
    from embedstack.providers.huggingface import onnx_encoder as _onnx

    _onnx.physical_cores = lambda: threads  # the provider passes threads=None → physical cores
    kwargs: dict[str, Any] = {"device": "cpu"} if name == "torch" else {}
    if batch_size:
        kwargs["embed_batch_size"] = batch_size
    if name == "torch":
        import torch

        torch.set_num_threads(threads)
        model = HuggingFaceEmbedding(backend="torch", **kwargs)
    else:
        runtime, precision = name.split("-")
        model = HuggingFaceEmbedding(backend=runtime, precision=precision, **kwargs)
    model.load()
    if token_budget and name != "torch":  # padded tokens per graph run (OnnxEncoder's DEFAULT_TOKEN_BUDGET)
        model._loaded().token_budget = token_budget  # type: ignore[attr-defined]
    assert model._instruction(model_role("query")) in (None, ""), "benchmark assumes no instruction"
    return (lambda items, role: model.embed(items, role)), model.get_query_embedding


def model_role(name: str) -> Any:
    from embedstack.types import Role

    return Role(name)


def worker(args: argparse.Namespace) -> None:
    """Load one backend, then serve the parent's commands (one JSON line each) until "quit"."""
    reply = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    sys.stdout = sys.stderr  # libraries' chatter must not corrupt the replies
    base_rss = rss_mb()
    t0 = time.perf_counter()
    bulk, one = make_backend(args.worker, args.threads, args.batch_size, args.token_budget)
    load_s = time.perf_counter() - t0
    data = columns(args.data, args.n)
    for field in FIELDS:
        bulk(data[field][:32], field)  # warm-up: first-call allocations, thread pools
    vectors: dict[str, Any] = {}
    info: dict[str, Any] = {"load_s": load_s, "rss_loaded_mb": rss_mb(), "rss_start_mb": base_rss}
    reply.write(json.dumps(info) + "\n")
    reply.flush()
    for line in sys.stdin:
        cmd, _, field = line.strip().partition(" ")
        if cmd == "run":
            t = time.perf_counter()
            vectors[field] = np.asarray(bulk(data[field], field), dtype=np.float32)
            answer: dict[str, Any] = {"seconds": time.perf_counter() - t}
        elif cmd == "latency":
            queries = data["query"][: args.latency]
            for q in queries[:10]:
                one(q)
            times = []
            for q in queries:
                t = time.perf_counter()
                one(q)
                times.append(time.perf_counter() - t)
            answer = {"p50_ms": 1000 * statistics.median(times), "p99_ms": 1000 * float(np.percentile(times, 99))}
        else:  # quit
            np.savez(args.out.with_suffix(".npz"), **vectors)
            answer = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
        reply.write(json.dumps(answer) + "\n")
        reply.flush()
        if cmd == "quit":
            return


class Worker:
    """The parent's handle on one backend's process: one command at a time, answers as dicts."""

    def __init__(self, name: str, args: argparse.Namespace, out: Path, env: dict[str, str]) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            _command("worker", name, args, out), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )
        self.info = self._answer()

    def _answer(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"backend {self.name} exited (code {self.proc.wait()}); see its stderr above")
        return dict(json.loads(line))

    def ask(self, command: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        answer = self._answer()
        time.sleep(0.3)  # let this process's idle threads stop spinning before the next one runs
        return answer


def prepare(args: argparse.Namespace) -> None:
    """Build the fp32 and int8 graphs into the cache (timed), so workers only load them."""
    from embedstack.providers.huggingface.onnx_encoder import OnnxEncoder

    times = {}
    builds = (("onnxruntime", "fp32"), ("onnxruntime", "int8"), ("openvino", "fp32"), ("openvino", "int8"))
    for runtime, precision in builds:
        t = time.perf_counter()
        OnnxEncoder(bundled_model_dir(), precision=precision, runtime=runtime)
        times[f"{runtime} {precision}"] = time.perf_counter() - t
    args.out.write_text(json.dumps({"build": times, "peak": matmul_peak(args.threads)}))


def matmul_peak(threads: int) -> dict[str, float]:
    """GFLOP/s of one (1024x384)@(384x1536) matmul in fp32 and bf16 (torch, same threads): the ceiling."""
    import torch

    torch.set_num_threads(threads)
    peak = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(1024, 384, dtype=dtype), torch.randn(384, 1536, dtype=dtype)
        for _ in range(10):
            a @ b
        t, n = time.perf_counter(), 200
        for _ in range(n):
            a @ b
        peak[name] = 2 * 1024 * 384 * 1536 * n / (time.perf_counter() - t) / 1e9
    return peak


def field_gflop(texts: list[str]) -> float:
    """The model's arithmetic for `texts` (linear layers plus attention over each text's own length)."""
    from tokenizers import Tokenizer

    cfg = json.loads((bundled_model_dir() / "config.json").read_text())
    layers, hidden, inner = cfg["num_hidden_layers"], cfg["hidden_size"], cfg["intermediate_size"]
    tok = Tokenizer.from_file(str(bundled_model_dir() / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(256)
    n = np.array([len(e.ids) for e in tok.encode_batch(texts)], dtype=np.float64)
    linear = 2 * layers * (4 * hidden * hidden + 2 * hidden * inner) * n.sum()
    attention = 4 * layers * hidden * (n * n).sum()  # scores and weighted sum
    return float(linear + attention) / 1e9


# -- parent side -----------------------------------------------------------------------------------
def recall_pct(q: np.ndarray, t: np.ndarray, k: int) -> float:
    """Percent of queries whose own text (same row) is in the top k texts by cosine."""
    return 100.0 * recall(q, t, k)


def _command(mode: str, name: str, args: argparse.Namespace, out: Path) -> list[str]:
    cmd = [sys.executable, __file__, f"--{mode}", name, "--out", str(out), "--n", str(args.n)]
    cmd += ["--threads", str(args.threads), "--rounds", str(args.rounds), "--latency", str(args.latency)]
    cmd += ["--data", str(args.data)]
    if args.batch_size:
        cmd += ["--batch-size", str(args.batch_size)]
    if args.token_budget:
        cmd += ["--token-budget", str(args.token_budget)]
    return cmd


def main(args: argparse.Namespace) -> None:
    from embedstack.providers.huggingface.onnx_encoder import physical_cores

    args.threads = args.threads or physical_cores()
    env = dict(os.environ)
    cache = Path(args.cache_dir) if args.cache_dir else Path(tempfile.mkdtemp(prefix="onnx-bench-"))
    env["EMBEDSTACK_CACHE_DIR"] = str(cache)
    env.setdefault("TOKENIZERS_PARALLELISM", "true")
    work = Path(tempfile.mkdtemp(prefix="onnx-bench-out-"))
    print(
        f"{args.n} records, {args.threads} threads, {args.rounds} interleaved round(s), "
        f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}, cache {cache}",
        flush=True,
    )
    subprocess.run(_command("prepare", "graphs", args, work / "prepare.json"), check=True, env=env)
    prepared = json.loads((work / "prepare.json").read_text())
    build, peak = prepared["build"], prepared["peak"]
    names = args.backends.split(",")
    if "openvino-bf16" in names and not _native_bf16():
        names.remove("openvino-bf16")
        print("  (openvino-bf16 skipped: this CPU has no native bfloat16)", flush=True)
    workers = {name: Worker(name, args, work / f"{name}.json", env) for name in names}
    times: dict[str, dict[str, list[float]]] = {name: {f: [] for f in FIELDS} for name in names}
    for r in range(args.rounds):  # every backend runs each field once per round, in rotating order
        for field in FIELDS:
            for name in names[r % len(names) :] + names[: r % len(names)]:
                times[name][field].append(workers[name].ask(f"run {field}")["seconds"])
        speeds = ", ".join(f"{n} {args.n / times[n]['text'][-1]:.1f} text/s" for n in names)
        print(f"  round {r + 1}: {speeds}", flush=True)
    results: dict[str, dict[str, Any]] = {}
    vecs: dict[str, dict[str, np.ndarray]] = {}
    for name, w in workers.items():
        results[name] = {**w.info, **w.ask("latency"), "times": times[name]}
        for field in FIELDS:
            results[name][f"{field}_per_s"] = args.n / min(times[name][field])
        results[name].update(w.ask("quit"))
        w.proc.wait()
        with np.load((work / f"{name}.json").with_suffix(".npz")) as z:
            vecs[name] = {f: z[f] for f in FIELDS}
    report(args, build, results, vecs)
    data = columns(args.data, args.n)
    gflop = {f: field_gflop(data[f]) for f in FIELDS}
    print(
        f"Arithmetic rate (model FLOPs / time, best round) against the measured matmul ceiling "
        f"(fp32 {peak['fp32']:.0f}, bf16 {peak['bf16']:.0f} GFLOP/s):"
    )
    for name in results:
        rates = [gflop[f] / min(times[name][f]) for f in FIELDS]
        print(f"  {label(name)}: queries {rates[0]:.0f}, texts {rates[1]:.0f} GFLOP/s")


def _native_bf16() -> bool:
    try:
        import openvino as ov
    except ImportError:
        return False
    from embedstack.providers.huggingface.onnx_encoder import native_bf16

    return native_bf16(ov)


def ratio(results: dict[str, dict[str, Any]], name: str, field: str) -> str:
    """Median over rounds of (ST's time / this backend's time) in the same round: noise-robust."""
    base = results.get("st")
    r = None if base is None else median_ratio(base["times"][field], results[name]["times"][field])
    return "-" if r is None else f"{r:.2f}x"


def report(
    args: argparse.Namespace,
    build: dict[str, float],
    results: dict[str, dict[str, Any]],
    vecs: dict[str, dict[str, np.ndarray]],
) -> None:
    ref = vecs.get("st")
    print()
    print(f"### ONNX backend, {args.n} records, {args.threads} threads (all-MiniLM-L6-v2)")
    print()
    print(
        "| backend | query texts/s | × ST | text texts/s | × ST | 1-query p50 ms | p99 ms | "
        "peak RSS MB | cos vs ST min / mean | R@1 | R@10 |"
    )
    print("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for name, r in results.items():
        ratios = {f: ratio(results, name, f) for f in FIELDS}
        if ref is not None:
            cos = np.concatenate([row_cosines(vecs[name][f], ref[f]) for f in FIELDS])
            fid = f"{cos.min():.5f} / {cos.mean():.5f}"
        else:
            fid = "-"
        q, t = vecs[name]["query"], vecs[name]["text"]
        print(
            f"| {label(name)} | {r['query_per_s']:.0f} | {ratios['query']} | {r['text_per_s']:.1f} | "
            f"{ratios['text']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['peak_rss_mb']:.0f} | {fid} | "
            f"{recall_pct(q, t, 1):.2f} | {recall_pct(q, t, 10):.2f} |"
        )
    for fast in ("onnx-int8", "openvino-bf16", "openvino-int8"):
        if "onnx-fp32" not in vecs or fast not in vecs:
            continue
        a, b = vecs["onnx-fp32"], vecs[fast]
        cos = np.concatenate([row_cosines(a[f], b[f]) for f in FIELDS])
        d10 = recall_pct(b["query"], b["text"], 10) - recall_pct(a["query"], a["text"], 10)
        d1 = recall_pct(b["query"], b["text"], 1) - recall_pct(a["query"], a["text"], 1)
        verdict = "meets" if cos.mean() >= 0.99 and abs(d10) <= 0.5 else "MISSES"
        print()
        print(
            f"{label(fast)} vs onnx fp32: cosine mean {cos.mean():.5f}, min {cos.min():.5f}, "
            f"p1 {np.percentile(cos, 1):.5f}; recall@10 {d10:+.2f} points, recall@1 {d1:+.2f} points "
            f"({verdict} the bar: mean cosine >= 0.99, |recall@10 change| <= 0.5)."
        )
    for exact in ("onnx-fp32", "openvino-fp32", "openvino-bf16"):
        if ref is None or exact not in vecs:
            continue
        cos = np.concatenate([row_cosines(vecs[exact][f], ref[f]) for f in FIELDS])
        below = int((cos < 0.9999).sum())
        print(
            f"{label(exact)} vs sentence-transformers: {below} of {cos.size} texts below cosine 0.9999 "
            f"(min {cos.min():.6f})."
        )
    print(
        "One-time graph builds (export + fusions; then each quantisation): "
        + ", ".join(f"{k} {v:.1f} s" for k, v in build.items())
        + ". Load from cache: "
        + ", ".join(f"{n} {r['load_s']:.2f} s" for n, r in results.items())
    )


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=2000, help="records of the benchmark file (default 2000)")
    p.add_argument("--threads", type=int, default=0, help="threads for every backend (default: physical cores)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; ratios are medians over rounds")
    p.add_argument("--latency", type=int, default=200, help="single queries timed for p50/p99")
    p.add_argument("--batch-size", type=int, default=0, help="override every backend's batch size")
    p.add_argument(
        "--token-budget", type=int, default=0, help="padded tokens per ONNX/OpenVINO graph run (default 1024)"
    )
    p.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated subset of " + ",".join(BACKENDS))
    p.add_argument("--cache-dir", default="", help="ONNX graph cache (default: a fresh temp folder)")
    p.add_argument("--data", type=Path, default=DATA, help="JSONL corpus (default: %(default)s)")
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
