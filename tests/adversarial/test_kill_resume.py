"""kill -9 `embedstack embed` at random moments, 50 times: the cache stays sound, a re-run resumes.

Each round starts a real `embedstack embed` process (forked from a pre-imported server, see
forkserver.py: a fresh interpreter would spend a second importing per run), kills it with SIGKILL at
a moment drawn from a seeded RNG within a run's duration, then checks the SQLite cache with
`PRAGMA integrity_check`, that any output is complete (the previous one) or absent, and that a
re-run asks the model for exactly the texts the cache lacks and writes the output an uninterrupted
run writes. Set EMBEDSTACK_KILL_SEED to replay another schedule.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests.conftest import SAMPLE, cli_env

from embedstack.jobs import OutputError, load_embeddings
from embedstack.kvstore import SQLiteKVStore
from embedstack.providers.mock import FakeEmbedding
from embedstack.types import Role

pytestmark = pytest.mark.slow  # kill -9 rounds

ROUNDS = 50
SEED = int(os.environ.get("EMBEDSTACK_KILL_SEED", "20240613"))
#: Seconds the model sleeps per batch: 20 batches make a run of a few tenths of a second.
DELAY = 0.01
FORMATS = ("parquet", "npy", "jsonl")
KEY = FakeEmbedding(embed_dim=16).pipeline.key_factory(Role.TEXT)
SERVER = Path(__file__).with_name("forkserver.py")


def corpus() -> list[dict[str, Any]]:
    """120 sample records with distinct texts (so "computed" counts texts one for one)."""
    rows, seen = [], set()
    for line in SAMPLE.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if row["text"] not in seen:
            seen.add(row["text"])
            rows.append(row)
    return rows[:120]


class ForkServer:
    """Runs `embedstack` commands in forked children of forkserver.py; kills them on request."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.proc = subprocess.Popen(
            [sys.executable, str(SERVER)],
            cwd=cwd,
            env=cli_env(cwd, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1"),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def _send(self, message: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(message) + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline()
        assert answer, f"the fork server died (exit {self.proc.poll()})"
        return dict(json.loads(answer))

    def run(self, *argv: str, name: str, kill_after: float | None = None) -> tuple[int, float]:
        """Run `embedstack ARGV` (stderr in NAME.err, the texts the model got in NAME.model); SIGKILL
        it after `kill_after` seconds unless it ended. Returns (exit status, negative: a signal; seconds)."""
        model_log = self.cwd / f"{name}.model"
        model_log.unlink(missing_ok=True)  # the model appends to it
        env = {"SLOWFAKE_DELAY": str(DELAY), "SLOWFAKE_LOG": str(model_log)}
        self._send({"argv": list(argv), "cwd": str(self.cwd), "env": env, "log": str(self.cwd / f"{name}.err")})
        if kill_after is not None:
            time.sleep(kill_after)  # the random moment itself; the outcome is checked, not assumed
        done = self._send({"kill": kill_after is not None})
        return int(done["status"]), float(done["seconds"])

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ForkServer]:
    srv = ForkServer(tmp_path)
    yield srv
    srv.close()


def remove_cache(cache: Path) -> None:
    for p in (cache, cache.with_name(cache.name + "-wal"), cache.with_name(cache.name + "-shm")):
        p.unlink(missing_ok=True)


def integrity(cache: Path) -> str:
    con = sqlite3.connect(cache)
    try:
        return ",".join(row[0] for row in con.execute("PRAGMA integrity_check"))
    finally:
        con.close()


def cached_texts(cache: Path, texts: list[str]) -> set[str]:
    if not cache.exists():
        return set()
    store = SQLiteKVStore(cache, memory_entries=0)
    try:
        found = store.get_vectors([KEY(t) for t in texts], "embeddings")
    finally:
        store.close()
    return {t for t, v in zip(texts, found, strict=True) if v is not None}


def logged(path: Path) -> list[str]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []


def temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp"))


def data_files(out: Path) -> list[Path]:
    """The files holding rows (not the metadata, which records when it was created)."""
    return [out, out.with_name(out.name + ".rows.jsonl")] if out.suffix == ".npy" else [out]


def assert_same_output(out: Path, ref: Path, what: str) -> None:
    got, want = load_embeddings(out), load_embeddings(ref)
    assert got.ids == want.ids, what
    assert np.array_equal(got.vectors, want.vectors), what
    assert got.columns == want.columns, what
    assert {k: v for k, v in got.meta.items() if k != "created"} == {
        k: v for k, v in want.meta.items() if k != "created"
    }, what
    if out.suffix != ".parquet":  # the rows, byte for byte
        for a, b in zip(data_files(out), data_files(ref), strict=True):
            assert a.read_bytes() == b.read_bytes(), f"{what}: {a.name}"


def test_kill_9_at_random_moments_then_resume(tmp_path: Path, server: ForkServer) -> None:
    rows = corpus()
    texts = [r["text"] for r in rows]
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    args = ("embed", "docs.jsonl", "-m", "slowfake:16", "--batch-size", "6", "--chunk-size", "24")
    resume = (*args, "--cache", "cache.sqlite")

    # uninterrupted reference runs, one per output format; they also time a run
    durations = []
    for fmt in FORMATS:
        status, seconds = server.run(*args, "-o", f"ref.{fmt}", "--cache", f"ref-{fmt}.sqlite", name=f"ref-{fmt}")
        err = (tmp_path / f"ref-{fmt}.err").read_text()
        assert status == 0 and f"({len(texts)} computed, 0 from cache)" in err, err
        durations.append(seconds)
    span = max(durations)

    rng = random.Random(SEED)
    cache = tmp_path / "cache.sqlite"
    phases = {"none cached": 0, "some cached": 0, "all cached": 0, "retried": 0}
    for n in range(ROUNDS):
        fmt = FORMATS[n % len(FORMATS)]
        out, ref = tmp_path / f"out.{fmt}", tmp_path / f"ref.{fmt}"
        remove_cache(cache)  # each round starts from an empty cache
        # the kill: a moment within a run's duration; a run that ended first is retried earlier
        status, tries = 0, list[float]()
        while status == 0 and len(tries) < 10:
            moment = rng.uniform(0, span)
            tries.append(round(moment, 3))
            status, seconds = server.run(*resume, "-o", out.name, name="kill", kill_after=moment)
            if status == 0:
                span = min(span, seconds)  # this machine runs faster now than when it was timed
                remove_cache(cache)
        what = f"round {n} ({fmt}, seed {SEED}, kill at {tries} s)"
        assert status == -9, f"{what}: never killed mid-run (exit {status})"

        # the cache is sound, and holds only what the model computed
        done = cached_texts(cache, texts)
        if cache.exists():
            assert integrity(cache) == "ok", what
        assert done <= set(logged(tmp_path / "kill.model")), what
        phases["none cached" if not done else "all cached" if len(done) == len(texts) else "some cached"] += 1
        phases["retried"] += len(tries) > 1
        # the output is the previous complete one, or absent/incomplete (and then refused), never partial
        try:
            assert_same_output(out, ref, what)
        except OutputError:
            assert n < len(FORMATS) or fmt != "parquet", what

        # the re-run computes exactly what is missing and writes what an uninterrupted run writes
        status, _ = server.run(*resume, "-o", out.name, name="rerun")
        err = (tmp_path / "rerun.err").read_text()
        assert status == 0, f"{what}: {err}"
        missing = len(texts) - len(done)
        assert f"embedded {len(texts)} texts ({missing} computed, {len(done)} from cache)" in err, f"{what}: {err}"
        assert sorted(logged(tmp_path / "rerun.model")) == sorted(set(texts) - done), what
        assert_same_output(out, ref, what)
        assert temps(tmp_path) == [], what
        assert SQLiteKVStore(cache).count_vectors("embeddings") == len(texts), what
    print(f"kill/resume: {ROUNDS} rounds, seed {SEED}, run span {span:.2f} s: {phases}")
    # the schedule reached the middle of the work, not only start-up and the final rename
    assert phases["some cached"] > 0, phases
