"""A simulated two-node Ray cluster (`ray.cluster_utils.Cluster`) running embed_dataset; prints a JSON result.

Run by tests/scaleout/test_two_nodes.py in its own process (a driver connects to one cluster at a time, and the
test session already has its local Ray). Every node listens on 127.0.0.1 and lives under one private temp dir;
the caller sets RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 so Ray keeps 127.0.0.1 as it is when the driver connects
(otherwise Ray rewrites a loopback address to the machine's network address, where nothing listens:
ray-project/ray#59110) and RAY_TMPDIR to that temp dir (Cluster records its address there, not in /tmp/ray).

    python tests/scaleout/two_node_job.py --rows 200 --record-dir DIR
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from embedstack.providers.mock import FakeEmbedding
from embedstack.types import Batch

#: Object store per simulated node: small, so two nodes fit a CI machine (Ray's minimum is ~75 MB).
OBJECT_STORE_BYTES = 100 * 1024 * 1024


class NodeRecordingFake(FakeEmbedding):
    """FakeEmbedding that appends each batch it embeds, with the Ray node id of its actor, to `record_dir`."""

    record_dir: str = ""

    def _embed(self, batch: Batch) -> Any:  # the pipeline's one call into a model, per batch
        import ray

        vectors = super()._embed(batch)
        line = json.dumps({"node": ray.get_runtime_context().get_node_id(), "texts": list(batch.items)})
        with open(Path(self.record_dir) / f"{os.getpid()}.jsonl", "a", encoding="utf-8") as f:
            f.write(line + "\n")
        return vectors


def start_cluster(temp_dir: str) -> Any:
    """A head and one worker node on 127.0.0.1, 1 CPU each, one `embed_slot` each (at most one actor a node)."""
    from ray.cluster_utils import Cluster

    common = {
        "num_cpus": 1,
        "node_ip_address": "127.0.0.1",
        "object_store_memory": OBJECT_STORE_BYTES,
        "temp_dir": temp_dir,
    }
    cluster = Cluster(
        initialize_head=True,
        head_node_args={**common, "include_dashboard": False, "resources": {"embed_slot": 1}},
    )
    try:
        cluster.add_node(**common, resources={"embed_slot": 1})
        cluster.wait_for_nodes(timeout=60)
    except BaseException:
        cluster.shutdown()
        raise
    return cluster


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=200)
    ap.add_argument("--record-dir", required=True)
    ap.add_argument("--deadline-s", type=float, default=150.0, help="dump every thread's stack and exit after this")
    ap.add_argument(
        "--plain",
        action="store_true",
        help="as a new user would: from_items' own blocks, the default batch size and Ray Data's default settings",
    )
    args = ap.parse_args()
    faulthandler.dump_traceback_later(args.deadline_s, exit=True)  # a hang shows where it hung, then ends

    import ray

    from embedstack.jobs import embed_dataset

    temp_dir = os.path.join(os.environ["RAY_TMPDIR"], "ray")
    os.makedirs(temp_dir, exist_ok=True)
    t0 = time.perf_counter()
    cluster = start_cluster(temp_dir)
    out: dict[str, Any] = {"cluster_start_s": time.perf_counter() - t0}
    try:
        t0 = time.perf_counter()
        ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
        out["connect_s"] = time.perf_counter() - t0
        out["head"] = cluster.head_node.node_id
        out["workers"] = [n.node_id for n in cluster.worker_nodes]
        out["alive_nodes"] = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        items = [{"id": f"r{i}", "text": f"two-node text {i} about packages", "n": i} for i in range(args.rows)]
        model = NodeRecordingFake(embed_dim=16, delay_s=0.05, record_dir=args.record_dir)
        ctx.wait_for_min_actors_s = 60  # both actors up before the first batch is handed out (else a timeout)
        if args.plain:  # one actor per node (each needs the node's only embed_slot); blocks and batches untuned
            ds = ray.data.from_items(items)
            embedded = embed_dataset(ds, model, concurrency=2, num_cpus=0.5, resources={"embed_slot": 1})
        else:
            ctx.max_tasks_in_flight_per_actor = 1  # a busy actor takes no more: the next batch goes to the other node
            ds = ray.data.from_items(items, override_num_blocks=max(2, args.rows // 25))
            embedded = embed_dataset(ds, model, concurrency=2, batch_size=25, num_cpus=0.5, resources={"embed_slot": 1})
        t0 = time.perf_counter()
        done = embedded.materialize()
        rows: list[dict[str, Any]] = []
        for batch in done.iter_batches(batch_format="pyarrow", batch_size=None):
            rows += batch.to_pylist()
        out["job_s"] = time.perf_counter() - t0
        out["stats"] = done.stats()
        out["rows"] = [{**r, "embedding": [float(x) for x in r["embedding"]]} for r in rows]
    finally:
        ray.shutdown()
        cluster.shutdown()
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    sys.exit(main())
