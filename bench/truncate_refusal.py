"""A "truncate": false request of 64 texts, one over the model's token limit, refused (400) by the server with the
bundled local model (in process, httpx's ASGI transport): how long the refusal takes and how many model calls it
cost. Before issue 26 the model embedded the whole request first; now the request is refused on arrival.

    python bench/truncate_refusal.py
    # the code before: git archive 72b244f src | tar -x -C /tmp/old; PYTHONPATH=/tmp/old/src python ...
"""

from __future__ import annotations

import asyncio
import statistics
import time
import warnings

import httpx

from embedstack.server import create_app

warnings.simplefilter("ignore")
LONG = " ".join(["quick brown fox jumps over the lazy dog"] * 60)  # ~540 tokens, over MiniLM's 256
TEXTS = [f"package number {i} provides a library for parsing and writing files " * 3 for i in range(63)] + [LONG]


async def main() -> None:
    app = create_app({"m": "local"})
    async with app.router.lifespan_context(app):
        await asyncio.wait_for(app.state.embedstack.loaded.wait(), 120)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=120) as c:
            times = []
            for i in range(5):
                body = {"input": [f"{t} {i}" for t in TEXTS], "model": "m", "truncate": False}  # fresh texts each time
                t0 = time.perf_counter()
                r = await c.post("/v1/embeddings", json=body)
                times.append(time.perf_counter() - t0)
                assert r.status_code == 400, r.text
            calls = app.state.embedstack.models["m"].batcher.calls
    print(f"refused in p50 {statistics.median(times) * 1000:.1f} ms (min {min(times) * 1000:.1f}); model calls {calls}")


asyncio.run(main())
