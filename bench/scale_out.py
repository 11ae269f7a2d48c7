"""Scale-out benchmark (issue 16): Ray Data with N actors vs single-process embed_files, a warm Redis cache vs a
warm SQLite cache, and a simulated two-node cluster (`ray.cluster_utils.Cluster`, one actor per node), on texts
of bench/data/packages-retrieval.jsonl with the default model.

    flock /tmp/embedstack-test.lock .venv/bin/python bench/scale_out.py [--n 10000] [--actors 2] [--two-nodes-only]

Ray's start-up (ray.init, or the two nodes' start and the connect) and the actors' start-up (model load: the
first batch out) are reported apart from the embedding rate. `--two-nodes-only` runs the single process and the
two-node cluster alone. Needs redis-server on PATH for the Redis figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import DATA, columns, free_port, records


def _texts(data: Path, n: int) -> list[dict[str, str]]:
    """The "text" field of the first `n` records, as {"id", "text"} rows."""
    return [{"id": f"t{i}", "text": text} for i, text in enumerate(columns(data, n, ["text"])["text"])]


def _redis(tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
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


def drain(dataset: Any, expected: int, batch_size: int = 256) -> tuple[float, float, float]:
    """Iterate an embedded Ray dataset: (seconds to the first batch = actor start-up, total seconds, texts/s
    after the first batch)."""
    t0 = time.perf_counter()
    first = t_first = None
    n = 0
    for batch in dataset.iter_batches(batch_format="pyarrow", batch_size=None):
        if t_first is None:
            first, t_first = time.perf_counter() - t0, time.perf_counter()
        n += len(batch)
    total = time.perf_counter() - t0
    assert n == expected, n
    return first or 0.0, total, (n - batch_size) / max(time.perf_counter() - (t_first or t0), 1e-9)


def _two_node_child(src: Path, record_dir: Path) -> None:
    """Child process: start a head and a worker node on 127.0.0.1 (1 CPU each), embed SRC with one actor per node."""
    import ray
    from ray.cluster_utils import Cluster

    from embedstack.jobs import embed_dataset
    from embedstack.providers.huggingface.embedding import HuggingFaceEmbedding
    from embedstack.registry import resolve_embed_model

    class Recording(HuggingFaceEmbedding):
        """The default model, counting the texts each actor embeds in a file named after its node."""

        record_dir: str = ""

        def _embed(self, batch: Any) -> Any:  # the pipeline's one call into a model, per batch
            vectors = super()._embed(batch)
            node = ray.get_runtime_context().get_node_id()
            with open(Path(self.record_dir) / f"{node}.{os.getpid()}", "a") as f:
                f.write(f"{len(batch.items)}\n")
            return vectors

    rows = records(src)
    temp = os.path.join(os.environ["RAY_TMPDIR"], "ray")
    os.makedirs(temp, exist_ok=True)
    node_args: dict[str, Any] = {
        "num_cpus": 1,
        "node_ip_address": "127.0.0.1",
        "object_store_memory": 100 * 1024 * 1024,
        "temp_dir": temp,
        "resources": {"embed_slot": 1},
    }
    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    cluster = Cluster(initialize_head=True, head_node_args={**node_args, "include_dashboard": False})
    try:
        cluster.add_node(**node_args)
        cluster.wait_for_nodes(timeout=120)
        out["two_node_cluster_start_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
        out["two_node_connect_s"] = time.perf_counter() - t0
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        ctx.wait_for_min_actors_s = 600  # both actors loaded before the first batch goes out (else one does it all)
        ds = ray.data.from_items(rows)  # as a user would: embed_dataset spreads it over the pool
        spec = resolve_embed_model("local").to_dict()  # the default model's settings, loaded on the actors only
        spec.pop("class_name", None)
        model = Recording(**spec, record_dir=str(record_dir))
        embedded = embed_dataset(ds, model, concurrency=2, batch_size=256, num_cpus=0.5, resources={"embed_slot": 1})
        first, total, rate = drain(embedded, len(rows))
        out["two_node_nodes_used"] = _nodes_used(embedded.stats())  # Ray Data's stats of the run drain made
        out["two_node_actor_startup_s"] = first
        out["two_node_total_s"] = total
        out["two_node_after_first_batch_rate"] = rate
        names = {cluster.head_node.node_id: "head", **{w.node_id: "worker" for w in cluster.worker_nodes}}
        per_node: dict[str, int] = dict.fromkeys(names, 0)  # a node that embedded nothing shows 0
        for path in record_dir.iterdir():
            node = path.name.split(".")[0]
            per_node[node] = per_node.get(node, 0) + sum(int(x) for x in path.read_text().split())
        for node, count in per_node.items():
            out[f"two_node_rows_{names.get(node, node)}"] = count
    finally:
        ray.shutdown()
        cluster.shutdown()
    print(json.dumps(out), flush=True)


def _nodes_used(stats: str) -> int:
    """Nodes that ran the embedding operator's tasks, from Ray Data's own stats ("...; N nodes used")."""
    import re

    part = stats[stats.index("MapBatches(_Embedder)") :].split("\nOperator ", 1)[0]
    found = re.search(r"Tasks per node: .*; (\d+) nodes used", part)
    return int(found.group(1)) if found else 0


def _two_nodes(src: Path, n: int, tmp: Path) -> dict[str, Any]:
    """Run the two-node cluster in a child process (its own Ray, loopback kept as is); kill its group at the end."""
    temp = tempfile.mkdtemp(prefix="rc", dir="/tmp")  # Ray's socket paths must stay short
    record = tmp / "two_node_batches"
    record.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    # RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0: Ray otherwise rewrites the driver's 127.0.0.1 address to the machine's
    # network address, where nothing listens (ray-project/ray#59110); RAY_TMPDIR keeps Cluster's address file private.
    env.update(RAY_TMPDIR=temp, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0")
    cmd = [sys.executable, __file__, "--two-node-child", str(src), "--record-dir", str(record)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env, start_new_session=True, text=True)
    try:
        stdout, _ = proc.communicate(timeout=300 + n / 5)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the cluster's processes, whatever happened
        except ProcessLookupError:
            pass
        proc.wait(30)
        shutil.rmtree(temp, ignore_errors=True)
    if proc.returncode != 0:
        raise SystemExit(f"the two-node run failed ({proc.returncode}); its log is above")
    result: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA, help="JSONL corpus (default: %(default)s)")
    ap.add_argument("--n", type=int, default=10_000, help="texts (at most the corpus' records)")
    ap.add_argument("--actors", type=int, default=2)
    ap.add_argument("--two-nodes-only", action="store_true", help="only the single process and the two-node run")
    ap.add_argument("--two-node-child", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--record-dir", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.two_node_child:
        _two_node_child(args.two_node_child, args.record_dir)
        return
    rows = _texts(args.data, args.n)
    tmp = Path(tempfile.mkdtemp(prefix="scaleout"))
    src = tmp / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    out: dict[str, Any] = {"texts": len(rows), "cpus": os.cpu_count() or 0}
    try:
        if args.two_nodes_only:
            from embedstack.jobs import embed_files

            t0 = time.perf_counter()
            embed_files(src, tmp / "single.parquet", model="local", cache=tmp / "c.sqlite")  # as the full run
            out["single_s"] = time.perf_counter() - t0
        else:
            _local_ray_and_caches(rows, src, tmp, args.actors, out)
        out.update(_two_nodes(src, len(rows), tmp))
        out["two_node_vs_single_total"] = out["single_s"] / out["two_node_total_s"]
        if "ray_total_s" in out:
            out["two_node_vs_local_ray_total"] = out["ray_total_s"] / out["two_node_total_s"]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in out.items()}, indent=1))


def _local_ray_and_caches(rows: list[dict[str, str]], src: Path, tmp: Path, actors: int, out: dict[str, Any]) -> None:
    """Single-process embed_files vs Ray Data with `actors` actors on one local Ray; warm Redis vs warm SQLite."""
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

    ds = ray.data.from_items(rows, override_num_blocks=max(8, actors * 4)).materialize()
    first, total, rate = drain(embed_dataset(ds, "local", concurrency=actors, batch_size=256, cache=url), len(rows))
    out["ray_actor_startup_s"] = first
    out["ray_total_s"] = total
    out["ray_after_first_batch_rate"] = rate
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


if __name__ == "__main__":
    main()
