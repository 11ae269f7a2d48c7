"""KV stores: LlamaIndex API, persistence, SQLite across threads and processes, and kill -9."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from embedstack.kvstore import UNREADABLE, BaseKVStore, SimpleKVStore, SQLiteKVStore


@pytest.fixture(params=["simple", "sqlite"])
def store(request: Any, tmp_path: Path) -> BaseKVStore:
    return SimpleKVStore() if request.param == "simple" else SQLiteKVStore(tmp_path / "kv.sqlite")


def test_dict_api(store: BaseKVStore) -> None:
    store.put("a", {"x": 1})
    store.put("b", {"y": [1, 2]}, collection="other")
    assert store.get("a") == {"x": 1}
    assert store.get("a", collection="other") is None
    assert store.get_all("other") == {"b": {"y": [1, 2]}}
    store.put_all([("c", {"z": 3}), ("d", {"w": 4})])
    assert store.get_many(["d", "nope", "c"]) == [{"w": 4}, None, {"z": 3}]
    assert store.delete("a") is True
    assert store.delete("a") is False
    assert store.get("a") is None


async def test_async_twins(store: BaseKVStore) -> None:
    await store.aput("k", {"v": 1})
    assert await store.aget("k") == {"v": 1}
    await store.aput_all([("k2", {"v": 2})])
    assert set((await store.aget_all()).keys()) == {"k", "k2"}
    assert await store.aget_many(["k2"]) == [{"v": 2}]
    assert await store.adelete("k") is True


def test_vectors_round_trip(store: BaseKVStore) -> None:
    mat = np.random.default_rng(0).standard_normal((5, 7)).astype(np.float32)
    store.put_vectors([f"k{i}" for i in range(5)], mat, "emb")
    got = store.get_vectors(["k3", "missing", "k0"], "emb")
    assert got[1] is None
    np.testing.assert_array_equal(got[0], mat[3])
    np.testing.assert_array_equal(got[2], mat[0])
    assert got[0].dtype == np.float32


async def test_async_vectors(store: BaseKVStore) -> None:
    mat = np.ones((2, 3), dtype=np.float32)
    await store.aput_vectors(["a", "b"], mat, "emb")
    got = await store.aget_vectors(["b", "c"], "emb")
    np.testing.assert_array_equal(got[0], mat[1])
    assert got[1] is None


def test_simple_corrupt_vector_is_unreadable() -> None:
    store = SimpleKVStore()
    store.put("a", {"dim": 3, "f32": "AAAA"}, collection="emb")  # 3 bytes, not 12
    store.put("b", {"something": "else"}, collection="emb")
    assert store.get_vectors(["a", "b"], "emb") == [UNREADABLE, UNREADABLE]


def test_simple_persist_round_trip(tmp_path: Path) -> None:
    store = SimpleKVStore()
    store.put("a", {"x": 1}, collection="c1")
    store.put_vectors(["v"], np.arange(4, dtype=np.float32)[None, :], "emb")
    path = tmp_path / "sub" / "store.json"
    store.persist(path)
    assert json.loads(path.read_text())["c1"] == {"a": {"x": 1}}
    loaded = SimpleKVStore.from_persist_path(path)
    assert loaded.get("a", collection="c1") == {"x": 1}
    np.testing.assert_array_equal(loaded.get_vectors(["v"], "emb")[0], np.arange(4, dtype=np.float32))
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_simple_bad_persist_paths(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no SimpleKVStore file"):
        SimpleKVStore.from_persist_path(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match=r"bad.json: not a SimpleKVStore file \(not JSON"):
        SimpleKVStore.from_persist_path(bad)


def test_sqlite_is_wal_and_stores_blobs(tmp_path: Path) -> None:
    store = SQLiteKVStore(tmp_path / "c.sqlite")
    store.put_vectors(["k"], np.ones((1, 4), dtype=np.float32), "emb")
    con = sqlite3.connect(tmp_path / "c.sqlite")
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    dim, data = con.execute("SELECT dim, data FROM vectors").fetchone()
    assert dim == 4 and isinstance(data, bytes) and len(data) == 16
    assert store.count_vectors("emb") == 1


def test_sqlite_memory_layer_is_bounded_and_consistent(tmp_path: Path) -> None:
    store = SQLiteKVStore(tmp_path / "c.sqlite", memory_entries=10)
    keys = [f"k{i}" for i in range(25)]
    store.put_vectors(keys, np.arange(25, dtype=np.float32)[:, None], "emb")
    assert len(store._mem["emb"]) == 10
    other = SQLiteKVStore(tmp_path / "c.sqlite", memory_entries=0)  # reads only from disk
    assert [float(v[0]) for v in other.get_vectors(keys, "emb")] == list(range(25))
    assert other._mem == {}
    store.delete("k24", collection="emb")
    assert store.get_vectors(["k24"], "emb") == [None]
    assert [float(v[0]) for v in store.get_vectors(keys[:24], "emb")] == list(range(24))


def test_sqlite_directory_path_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(IsADirectoryError, match="is a directory"):
        SQLiteKVStore(tmp_path)


def test_sqlite_many_keys_beyond_variable_limit(tmp_path: Path) -> None:
    store = SQLiteKVStore(tmp_path / "c.sqlite")
    keys = [f"k{i}" for i in range(2500)]
    store.put_vectors(keys, np.arange(2500, dtype=np.float32)[:, None], "emb")
    got = store.get_vectors(keys[::-1], "emb")
    assert [float(v[0]) for v in got] == list(range(2499, -1, -1))


def test_sqlite_threads(tmp_path: Path) -> None:
    store = SQLiteKVStore(tmp_path / "c.sqlite")

    async def main() -> None:
        await asyncio.gather(
            *(store.aput_vectors([f"t{i}"], np.full((1, 2), i, dtype=np.float32), "emb") for i in range(40))
        )

    asyncio.run(main())
    assert store.count_vectors("emb") == 40


WRITER = textwrap.dedent(
    """
    import sys, numpy as np
    from embedstack.kvstore import SQLiteKVStore
    path, worker, batches, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    store = SQLiteKVStore(path)
    for b in range(batches):
        keys = [f"w{worker}-b{b}-{i}" for i in range(size)]
        store.put_vectors(keys, np.full((size, 8), b, dtype=np.float32), "emb")
        print(b, flush=True)
    """
)


def test_sqlite_several_processes_one_file(tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite"
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(w), "30", "20"], stdout=subprocess.DEVNULL)
        for w in range(4)
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0]
    store = SQLiteKVStore(path)
    assert store.count_vectors("emb") == 4 * 30 * 20


def test_sqlite_kill_9_mid_write_keeps_committed_batches(tmp_path: Path) -> None:
    path = tmp_path / "killed.sqlite"
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), "0", "100000", "200"], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    committed = -1
    deadline = time.time() + 60
    while committed < 20 and time.time() < deadline:
        committed = int(proc.stdout.readline())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    store = SQLiteKVStore(path)
    n = store.count_vectors("emb")
    # every batch reported committed is there whole, and no batch is there in part
    assert n >= (committed + 1) * 200
    assert n % 200 == 0
    got = store.get_vectors([f"w0-b{committed}-{i}" for i in range(200)], "emb")
    assert all(v is not None and v[0] == committed for v in got)
