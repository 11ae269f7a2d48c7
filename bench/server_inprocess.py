"""The server's request path in process, two source trees side by side: sequential single-text requests.

`create_app({"m": "local"})` under httpx's ASGI transport (no sockets, no load generator), one request at a time:
p50 latency and CPU per request, so a change to the request path (e.g. where texts are tokenised) is measured
without the noise of HTTP clients. Each tree runs in its own subprocess (its `src` first on PYTHONPATH); the
trees take turns for `--rounds` rounds and the ratio is the median of same-round ratios.

    git archive <commit> src | tar -x -C /tmp/before
    python bench/server_inprocess.py --trees src,/tmp/before/src --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from _common import DATA, ROOT, columns, median_ratio


def worker(n: int, warm: int) -> None:
    import httpx

    from embedstack.server import create_app

    texts = columns(DATA, n + warm, ["query"])["query"]
    app = create_app({"m": "local"})

    async def run() -> dict[str, float]:
        async with app.router.lifespan_context(app):
            await app.state.embedstack.loaded.wait()
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
                for text in texts[:warm]:
                    await client.post("/v1/embeddings", json={"input": text, "model": "m"})
                lat: list[float] = []
                c0 = time.process_time()
                for text in texts[warm:]:
                    t0 = time.perf_counter()
                    r = await client.post("/v1/embeddings", json={"input": text, "model": "m"})
                    lat.append(time.perf_counter() - t0)
                    if r.status_code != 200:
                        raise SystemExit(r.text)
                cpu = time.process_time() - c0
        lat.sort()
        return {"p50_ms": lat[len(lat) // 2] * 1e3, "cpu_ms": cpu / len(lat) * 1e3}

    print(json.dumps(asyncio.run(run())), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trees", default="src", help="comma-separated src folders (the first is the new one)")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--warm", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.requests, args.warm)
        return
    trees = [str((ROOT / t).resolve()) if not Path(t).is_absolute() else t for t in args.trees.split(",")]
    results: dict[str, list[dict[str, float]]] = {t: [] for t in trees}
    for rnd in range(args.rounds):
        for tree in trees:
            env = {**os.environ, "PYTHONPATH": tree, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
            argv = [sys.executable, __file__, "--worker", "--requests", str(args.requests), "--warm", str(args.warm)]
            out = subprocess.run(argv, env=env, capture_output=True, text=True, check=True).stdout
            res = json.loads(out.strip().splitlines()[-1])
            results[tree].append(res)
            print(f"round {rnd} {tree}: p50 {res['p50_ms']:.2f} ms, cpu {res['cpu_ms']:.2f} ms/request", flush=True)
    first = trees[0]
    for tree in trees[1:]:
        for key in ("p50_ms", "cpu_ms"):
            r = median_ratio([x[key] for x in results[first]], [x[key] for x in results[tree]])
            print(f"{first} / {tree}, {key}: {r:.2f}x (median of same-round ratios; < 1: the first is cheaper)")


if __name__ == "__main__":
    main()
