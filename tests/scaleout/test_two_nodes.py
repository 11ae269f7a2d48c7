"""embed_dataset on a simulated two-node Ray cluster: both nodes embed, and the output is complete and row-aligned.

The cluster runs in a child process (tests/scaleout/two_node_job.py): this session's driver is already connected
to its own local Ray, and a driver belongs to one cluster at a time.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from embedstack.providers.mock import FakeEmbedding

from .conftest import embedder_stats

pytestmark = pytest.mark.slow  # a two-node Ray cluster

JOB = Path(__file__).with_name("two_node_job.py")
ROWS = 200
TIMEOUT_S = 180  # the child dumps its stacks and exits at 150 s; this is the backstop


def _run_job(record_dir: Path, *extra: str, rows: int = ROWS) -> dict[str, Any]:
    """Run the two-node job in its own session; kill its process group (Ray's nodes included) whatever happens."""
    temp = tempfile.mkdtemp(prefix="rc", dir="/tmp")  # Ray's socket paths must stay short
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_TMPDIR=temp, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0")
    cmd = [sys.executable, str(JOB), "--rows", str(rows), "--record-dir", str(record_dir), "--deadline-s", "150"]
    cmd += extra
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True, text=True
    )
    try:
        stdout, stderr = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=30)
        pytest.fail(f"the two-node job did not finish in {TIMEOUT_S} s:\n{stderr[-4000:]}")
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # anything of the cluster still alive in the child's group
        except ProcessLookupError:
            pass
        shutil.rmtree(temp, ignore_errors=True)
    assert proc.returncode == 0, f"the two-node job failed ({proc.returncode}):\n{stderr[-4000:]}"
    result: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    return result


def test_two_node_cluster_embeds_on_both_nodes(tmp_path: Path) -> None:
    pytest.importorskip("ray.data")
    record_dir = tmp_path / "batches"
    record_dir.mkdir()
    result = _run_job(record_dir)

    nodes = {result["head"], *result["workers"]}
    assert len(nodes) == 2 and sorted(nodes) == result["alive_nodes"]
    embedded_on: dict[str, list[str]] = {}
    for path in record_dir.glob("*.jsonl"):
        for line in path.read_text(encoding="utf-8").splitlines():
            rec = json.loads(line)
            embedded_on.setdefault(rec["node"], []).extend(rec["texts"])
    assert set(embedded_on) == nodes  # the head and the worker node each embedded batches
    assert all(embedded_on.values())

    items = {f"r{i}": (f"two-node text {i} about packages", i) for i in range(ROWS)}
    texts_embedded = Counter(t for texts in embedded_on.values() for t in texts)
    assert texts_embedded == Counter(text for text, _ in items.values())  # each text embedded exactly once

    rows = result["rows"]
    assert sorted(r["id"] for r in rows) == sorted(items)  # complete, none doubled
    model = FakeEmbedding(embed_dim=16)
    for row in rows:
        text, n = items[row["id"]]
        assert (row["text"], row["n"]) == (text, n)  # other columns kept, aligned with their id
        np.testing.assert_array_equal(np.asarray(row["embedding"], np.float32), model.vector_for(text))


def test_small_dataset_uses_every_node(tmp_path: Path) -> None:
    """from_items(300 rows) with the default batch size, one actor per node: Ray Data's own stats say both
    nodes ran embedding tasks, and each node embedded a fair share (before: two tasks of 256 and 44 rows,
    often both on one node)."""
    pytest.importorskip("ray.data")
    record_dir = tmp_path / "batches"
    record_dir.mkdir()
    result = _run_job(record_dir, "--plain", rows=300)
    stats = embedder_stats(result["stats"])
    assert stats["nodes"] == 2, result["stats"]
    per_node: Counter[str] = Counter()
    for path in record_dir.glob("*.jsonl"):
        for line in path.read_text(encoding="utf-8").splitlines():
            rec = json.loads(line)
            per_node[rec["node"]] += len(rec["texts"])
    assert sum(per_node.values()) == 300 and len(per_node) == 2
    assert min(per_node.values()) >= 75, per_node  # a quarter at least: four equal batches, two per node
    assert sorted(r["id"] for r in result["rows"]) == sorted(f"r{i}" for i in range(300))
