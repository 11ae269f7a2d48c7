"""Rerank servers: pairs/s of `embedstack serve`'s /v1/rerank against infinity's /v1/rerank on the same model.

The model is bench/rerank.py's (the bundled MiniLM-L6 encoder under a seeded one-label head, saved once); the
load is --clients concurrent clients, each sending requests of one query and its --candidates documents
(Cohere's shape, which both servers speak), until every query of the round has been sent. Targets, started one
at a time (only one holds the CPU while it is measured), each checked before timing (its ranking of the first
query must be sentence-transformers' and its scores within 1e-3):

- ``es-torch``: ``embedstack serve --model ce=rerank:DIR --no-cache`` (torch fp32, the dynamic batcher);
- ``es-onnx``: the same app with the reranker on ONNX Runtime fp32 (``CrossEncoderReranker(DIR, backend="onnx")``);
- ``infinity``: ``infinity_emb v2 --model-id DIR --engine torch`` (CPU, no disk cache), in its own virtualenv:

      python3.11 -m venv /work/bench-venvs/infinity
      /work/bench-venvs/infinity/bin/pip install "infinity-emb[server,torch]" -c constraints.txt

Rounds interleave the targets (each restarted per round is not needed: all stay up, the others paused with
SIGSTOP); a ratio is the median over rounds of the round's ratio.

    flock /tmp/embedstack-cpu.lock .venv/bin/python bench/rerank_server.py --queries 8 --clients 16 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from _common import free_port, median_ratio
from rerank import build_cross_encoder, pairs_for

INFINITY = Path(os.environ.get("INFINITY_BIN", "/work/bench-venvs/infinity/bin/infinity_emb"))
ENV = {"HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0", "PYTHONWARNINGS": "ignore"}
SERVED = "ce"
_ONNX_LAUNCHER = """
import sys, uvicorn
from embedstack.rerank import CrossEncoderReranker
from embedstack.server import create_app
app = create_app({"ce": CrossEncoderReranker(sys.argv[1], backend="onnx", onnx_cache_dir=sys.argv[3])})
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
"""


def argv_of(name: str, model_dir: Path, port: int, work: Path) -> list[str]:
    if name == "es-torch":
        spec = f"{SERVED}=rerank:{model_dir}"
        return [sys.executable, "-m", "embedstack.cli", "serve", "--model", spec, "--no-cache", "--port", str(port)]
    if name == "es-onnx":
        return [sys.executable, "-c", _ONNX_LAUNCHER, str(model_dir), str(port), str(work / "onnx")]
    if name == "infinity":
        return [
            str(INFINITY), "v2", "--model-id", str(model_dir), "--served-model-name", SERVED, "--engine", "torch",
            "--device", "cpu", "--no-vector-disk-cache", "--url-prefix", "/v1", "--host", "127.0.0.1",
            "--port", str(port),
        ]  # fmt: skip
    raise SystemExit(f"unknown target {name!r}")


def start(name: str, model_dir: Path, work: Path, timeout: float = 600) -> tuple[subprocess.Popen[bytes], str]:
    import httpx

    port = free_port()
    log = (work / f"{name}.log").open("wb")
    proc = subprocess.Popen(
        argv_of(name, model_dir, port, work), stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **ENV},
        start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited: {(work / f'{name}.log').read_text()[-2000:]}")
        with contextlib.suppress(httpx.HTTPError):
            r = httpx.post(f"{url}/v1/rerank", json={"model": SERVED, "query": "q", "documents": ["d"]}, timeout=30)
            if r.status_code == 200:
                return proc, url
        time.sleep(0.5)
    raise RuntimeError(f"{name} not ready after {timeout:.0f} s")


async def load(url: str, requests: list[tuple[str, list[str]]], clients: int) -> float:
    """Seconds for `clients` concurrent clients to send every request (one at a time each)."""
    import httpx

    queue: asyncio.Queue[tuple[str, list[str]]] = asyncio.Queue()
    for r in requests:
        queue.put_nowait(r)

    async def client(http: httpx.AsyncClient) -> None:
        while not queue.empty():
            query, docs = queue.get_nowait()
            r = await http.post(f"{url}/v1/rerank", json={"model": SERVED, "query": query, "documents": docs})
            r.raise_for_status()

    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(timeout=600, limits=limits) as http:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=16)
    parser.add_argument("--candidates", type=int, default=50)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--targets", default="es-torch,es-onnx,infinity")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    import httpx
    from sentence_transformers import CrossEncoder

    work = Path(tempfile.mkdtemp(prefix="bench-rerank-server-"))
    model_dir = build_cross_encoder(work / "minilm-l6-ce")
    pairs = pairs_for(args.queries, args.candidates)
    requests = [
        (pairs[i][0], [d for _, d in pairs[i : i + args.candidates]]) for i in range(0, len(pairs), args.candidates)
    ]
    want = CrossEncoder(str(model_dir), local_files_only=True).predict(
        [(requests[0][0], d) for d in requests[0][1]], show_progress_bar=False
    )
    names = args.targets.split(",")
    if "infinity" in names and not INFINITY.exists():
        print(f"infinity: {INFINITY} not found (see the set-up in this file's docstring); skipped", file=sys.stderr)
        names.remove("infinity")
    procs: dict[str, subprocess.Popen[bytes]] = {}
    urls: dict[str, str] = {}
    try:
        for name in names:
            procs[name], urls[name] = start(name, model_dir, work)
            first = httpx.post(
                f"{urls[name]}/v1/rerank", json={"model": SERVED, "query": requests[0][0], "documents": requests[0][1]},
                timeout=600,
            ).json()["results"]  # fmt: skip
            got = np.zeros(len(want))
            for x in first:
                got[x["index"]] = x["relevance_score"]
            diff = float(np.abs(got - want).max())
            if not diff < 1e-3:
                raise SystemExit(f"{name}'s scores differ from sentence-transformers' by {diff:.1e}; not timed")
            print(f"{name}: ready, max score difference to sentence-transformers {diff:.1e}", flush=True)
            os.killpg(procs[name].pid, signal.SIGSTOP)
        seconds: dict[str, list[float]] = {n: [] for n in names}
        for _ in range(args.rounds):
            for name in names:
                os.killpg(procs[name].pid, signal.SIGCONT)
                seconds[name].append(asyncio.run(load(urls[name], requests, args.clients)))
                os.killpg(procs[name].pid, signal.SIGSTOP)
    finally:
        for proc in procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGCONT)
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=30)
    base = "infinity" if "infinity" in names else names[0]
    print(f"\n{len(pairs)} pairs per round ({args.queries} requests of {args.candidates}), {args.clients} clients")
    print(f"{'target':<10} {'pairs/s':>9} {f'vs {base}':>12}")
    out: dict[str, Any] = {}
    for name in names:
        best = len(pairs) / min(seconds[name])
        ratio = median_ratio(seconds[base], seconds[name])
        print(f"{name:<10} {best:>9.1f} {ratio or 1:>11.2f}x")
        out[name] = {"pairs_per_s": best, "ratio_vs_" + base: ratio, "seconds": seconds[name]}
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
