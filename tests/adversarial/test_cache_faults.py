"""Real cache faults, each in a child process: a full disk (RLIMIT_FSIZE), a read-only file or folder
(root's permission override dropped with setpriv), a corrupt SQLite page, and 8 concurrent writers.

A cache failure never fails an embedding: every vector comes back right, what the cache holds stays
usable, and nothing committed is lost.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from embedstack import FakeEmbedding
from embedstack.kvstore import SQLiteKVStore

pytestmark = pytest.mark.slow  # faults injected into real processes and files (disk full, read-only, 8 writers)

DIM = 64

# Run in a child: embed TEXTS with FakeEmbedding over the cache at PATH, check every vector against a
# cache-less reference, and print what happened as JSON.
CHILD = textwrap.dedent(
    """
    import json, sys, warnings
    import numpy as np
    from embedstack import FakeEmbedding
    from embedstack.kvstore import SQLiteKVStore

    path, n, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    texts = [f"text number {i} " + "x" * (i % 50) for i in range(n)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        store = SQLiteKVStore(path, memory_entries=0)
        model = FakeEmbedding(embed_dim=DIM, embed_batch_size=batch, embeddings_cache=store)
        out = model.embed(texts)
    want = np.stack([model.vector_for(t) for t in texts])
    print(json.dumps({
        "correct": bool(np.array_equal(out, want)),
        "computed": len(model.embedded),
        "warnings": [str(w.message) for w in caught],
        "read_only": store.read_only,
    }))
    """
).replace("DIM", str(DIM))


def _child(path: Path, n: int, batch: int = 50, prefix: list[str] | None = None, **kw: Any) -> dict[str, Any]:
    proc = subprocess.run(
        [*(prefix or []), sys.executable, "-c", CHILD, str(path), str(n), str(batch)],
        capture_output=True,
        text=True,
        timeout=300,
        **kw,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _rows(path: Path) -> int:
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return int(db.execute("SELECT COUNT(*) FROM vectors WHERE collection = 'embeddings'").fetchone()[0])


def test_disk_full_returns_every_vector_and_keeps_what_was_written(tmp_path: Path) -> None:
    import resource

    path = tmp_path / "c.sqlite"
    assert _child(path, 200)["computed"] == 200
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    limit = path.stat().st_size + 96 * 1024  # room for a few more batches, not for 2,000 vectors

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    result = _child(path, 2000, preexec_fn=cap)
    assert result["correct"], result
    assert result["computed"] == 1800  # the first 200 came from the cache
    assert any("could not be written" in w and str(path) in w and "Fix:" in w for w in result["warnings"])
    assert sum("could not be written" in w for w in result["warnings"]) == 1  # once, not per batch
    kept = _rows(path)  # intact, and holding at least what was there before the disk filled
    assert 200 <= kept < 2000
    again = _child(path, 2000)  # with room again, the rest is computed once and cached
    assert again["correct"] and again["computed"] == 2000 - kept
    assert _rows(path) == 2000


def _unprivileged() -> list[str]:
    """A command prefix under which file permissions apply (root's DAC override dropped)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.fail("setpriv (util-linux) is needed to drop root's permission override: apt-get install util-linux")
    return [setpriv, "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search,-fowner", "--"]


@pytest.mark.parametrize("what", ["file", "folder"])
def test_read_only_cache_serves_hits_and_computes_the_rest(tmp_path: Path, what: str) -> None:
    folder = tmp_path / "cache"
    folder.mkdir()
    path = folder / "c.sqlite"
    assert _child(path, 100)["computed"] == 100
    SQLiteKVStore(path).close()  # last connection closed: WAL checkpointed, -wal/-shm removed
    ro = stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH
    target = path if what == "file" else folder
    os.chmod(target, ro | (stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH if what == "folder" else 0))
    try:
        result = _child(path, 150, prefix=_unprivileged())
    finally:
        os.chmod(target, 0o755 if what == "folder" else 0o644)
    assert result["correct"], result
    assert result["read_only"] is True
    assert result["computed"] == 50  # the 100 cached vectors were read
    written = [w for w in result["warnings"] if "could not be written" in w]
    assert len(written) == 1 and "read-only" in written[0] and str(path) in written[0]
    assert _rows(path) == 100


def test_corrupt_page_keeps_what_can_be_read(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    assert _child(path, 1500)["computed"] == 1500
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
        pages = db.execute("PRAGMA page_count").fetchone()[0]
    victim = pages // 2  # a leaf in the middle of the vectors table
    with open(path, "r+b") as f:
        f.seek(victim * page_size)
        f.write(os.urandom(page_size))
    result = _child(path, 1500)
    assert result["correct"], result
    assert 0 < result["computed"] < 1500  # the damaged page's entries were recomputed, the rest was read
    assert any("unreadable" in w or "could not be" in w for w in result["warnings"])


WRITER = textwrap.dedent(
    """
    import sys, random
    from embedstack import FakeEmbedding
    from embedstack.kvstore import SQLiteKVStore

    path, worker, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    rng = random.Random(worker)
    model = FakeEmbedding(embed_dim=16, embeddings_cache=SQLiteKVStore(path, timeout=120))
    texts = [f"w{worker}-{i}" for i in range(n)] + [f"shared-{i}" for i in range(200)]
    rng.shuffle(texts)
    i = 0
    while i < len(texts):
        size = rng.randint(1, 12)
        model.embed(texts[i : i + size])
        i += size
    """
)


def test_eight_processes_writing_one_cache_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    SQLiteKVStore(path).close()
    n = 2000
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(w), str(n)], stderr=subprocess.PIPE, text=True)
        for w in range(8)
    ]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    assert _rows(path) == 8 * n + 200
    store = SQLiteKVStore(path, memory_entries=0)
    model = FakeEmbedding(embed_dim=16, embeddings_cache=store)
    texts = [f"w{w}-{i}" for w in range(8) for i in range(n)] + [f"shared-{i}" for i in range(200)]
    out = model.embed(texts)
    assert model.embedded == []  # every entry was there
    np.testing.assert_array_equal(out, np.stack([model.vector_for(t) for t in texts]))
