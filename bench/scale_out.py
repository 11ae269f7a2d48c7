"""Scale-out benchmark (issue 16): Ray Data with N actors vs single-process embed_files, a warm Redis cache vs a
warm SQLite cache, on texts of ../shared/data/packages-retrieval.jsonl with the default model.

    flock /tmp/embedstack-test.lock .venv/bin/python bench/scale_out.py [--n 10000] [--actors 2]

Ray's start-up (ray.init) and the actors' start-up (model load: the first batch out) are reported apart from
the embedding rate. Needs redis-server on PATH for the Redis figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "packages-retrieval.jsonl"


def _texts(n: int) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    with open(DATA, encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            text = rec.get("text") or rec.get("document") or rec.get("query")
            if isinstance(text, str) and text.strip():
                rows.append({"id": f"t{len(rows)}", "text": text})
            if len(rows) == n:
                break
    return rows


def _redis(tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(tmp)],
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    from embedstack.kvstore import RedisKVStore

    store = RedisKVStore(url, retry_after=0.05)
    while not store.ping():
        time.sleep(0.05)
    return proc, url


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--actors", type=int, default=2)
    args = ap.parse_args()
    rows = _texts(args.n)
    tmp = Path(tempfile.mkdtemp(prefix="scaleout"))
    src = tmp / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    out: dict[str, float | int | str] = {"texts": len(rows), "cpus": os.cpu_count() or 0}

    from embedstack.jobs import embed_files

    proc, url = _redis(tmp)  # both runs write their cache as they go: SQLite (single process), Redis (Ray)
    t0 = time.perf_counter()
    embed_files(src, tmp / "single.parquet", model="local", cache=tmp / "c.sqlite")
    out["single_s"] = time.perf_counter() - t0

    import ray

    os.environ.pop("RAY_ADDRESS", None)
    t0 = time.perf_counter()
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, _temp_dir=str(tmp / "r"),
             _node_ip_address="127.0.0.1", log_to_driver=False, configure_logging=False)  # fmt: skip
    out["ray_init_s"] = time.perf_counter() - t0
    ray.data.DataContext.get_current().enable_progress_bars = False
    from embedstack.jobs import embed_dataset

    ds = ray.data.from_items(rows, override_num_blocks=max(8, args.actors * 4)).materialize()
    t0 = time.perf_counter()
    first = None
    n = 0
    for batch in embed_dataset(ds, "local", concurrency=args.actors, batch_size=256, cache=url).iter_batches(
        batch_format="pyarrow", batch_size=None
    ):
        if first is None:
            first = time.perf_counter() - t0
            t_first = time.perf_counter()
        n += len(batch)
    total = time.perf_counter() - t0
    assert n == len(rows), n
    out["ray_actor_startup_s"] = first or 0.0
    out["ray_total_s"] = total
    out["ray_after_first_batch_rate"] = (n - 256) / max(time.perf_counter() - t_first, 1e-9)
    out["ray_vs_single_total"] = out["single_s"] / total

    try:
        from embedstack.kvstore import RedisKVStore, SQLiteKVStore
        from embedstack.registry import resolve_embed_model

        texts = [r["text"] for r in rows]
        for name, store in (("sqlite", SQLiteKVStore(tmp / "c.sqlite")), ("redis", RedisKVStore(url))):
            fresh = resolve_embed_model("local")  # warm: every vector is in the store, nothing in memory
            fresh.embeddings_cache = store
            fresh.embed(texts[:1])  # load the model outside the timing
            t0 = time.perf_counter()
            fresh.embed(texts)
            out[f"warm_{name}_s"] = time.perf_counter() - t0
        out["redis_vs_sqlite_warm"] = out["warm_sqlite_s"] / out["warm_redis_s"]
    finally:
        proc.terminate()
        proc.wait(10)
    ray.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in out.items()}, indent=1))


if __name__ == "__main__":
    main()
