"""Interrupted runs (kill -9, Ctrl-C, SIGTERM) then resume; outputs are never half-written."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import shutil
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from tests.conftest import SAMPLE, cli_env

from embedstack.jobs import load_embeddings
from embedstack.kvstore import SQLiteKVStore
from embedstack.providers.mock import FakeEmbedding
from embedstack.types import Role

pytestmark = pytest.mark.slow  # kill -9, Ctrl-C and SIGTERM rounds of `embedstack` subprocesses

SLOW_CLI = Path(__file__).with_name("slow_cli.py")  # the CLI with a slow fake model (faults injected there)
TEXTS = [json.loads(line)["text"] for line in SAMPLE.read_text(encoding="utf-8").splitlines()]
KEY = FakeEmbedding(embed_dim=16).pipeline.key_factory(Role.TEXT)


def slow_cli(tmp_path: Path, *args: str, delay: float, log: str, **popen: object) -> subprocess.Popen[bytes]:
    env = cli_env(tmp_path, SLOWFAKE_DELAY=str(delay), SLOWFAKE_LOG=str(tmp_path / log))
    # Ctrl-C as in a terminal: a test run started in the background (`cmd &` in a script) hands its children
    # SIGINT ignored, and Python then never raises KeyboardInterrupt
    popen.setdefault("preexec_fn", _default_sigint)
    return subprocess.Popen([sys.executable, str(SLOW_CLI), *args], cwd=tmp_path, env=env, **popen)  # type: ignore[call-overload]


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_slow(tmp_path: Path, *args: str, log: str) -> subprocess.CompletedProcess[str]:
    proc = slow_cli(tmp_path, *args, delay=0, log=log, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def cached_texts(cache: Path) -> set[str]:
    found = SQLiteKVStore(cache).get_vectors([KEY(t) for t in TEXTS], "embeddings")
    return {t for t, v in zip(TEXTS, found, strict=True) if v is not None}


def wait_for_cache(proc: subprocess.Popen[bytes], cache: Path, rows: int) -> None:
    """Block until the running embed has committed at least `rows` vectors to its cache."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the embed finished before it could be interrupted; raise SLOWFAKE_DELAY"
        if cache.exists() and SQLiteKVStore(cache).count_vectors("embeddings") >= rows:
            return
        time.sleep(0.02)
    raise AssertionError("the embed never reached the cache")


def temps(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp"))


def logged(path: Path) -> list[str]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []


ARGS = ("embed", "docs.jsonl", "-m", "slowfake:16", "--batch-size", "10", "--chunk-size", "40")


def test_kill_9_then_resume_computes_only_the_missing_texts(tmp_path: Path) -> None:
    shutil.copy(SAMPLE, tmp_path / "docs.jsonl")
    proc = slow_cli(
        tmp_path,
        *ARGS,
        "-o",
        "out.parquet",
        "--cache",
        "c.sqlite",
        delay=0.05,
        log="run1.log",
        stderr=subprocess.DEVNULL,
    )
    wait_for_cache(proc, tmp_path / "c.sqlite", 90)  # a few chunks written to the temp output
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)

    # nothing that looks complete: no out.parquet, only a hidden temp that is not readable Parquet
    assert not (tmp_path / "out.parquet").exists()
    leftovers = temps(tmp_path)
    assert [p.name.startswith(".out.parquet.") for p in leftovers] == [True]
    with pytest.raises(Exception, match=r"Parquet|magic|footer|size"):
        pq.read_table(leftovers[0])

    done = cached_texts(tmp_path / "c.sqlite")
    assert 90 <= len(done) < len(TEXTS)
    assert done <= set(logged(tmp_path / "run1.log"))

    r = run_slow(tmp_path, *ARGS, "-o", "out.parquet", "--cache", "c.sqlite", log="run2.log")
    assert r.returncode == 0, r.stderr
    missing = len(TEXTS) - len(done)
    assert f"embedded {len(TEXTS)} texts ({missing} computed, {len(done)} from cache)" in r.stderr
    second = logged(tmp_path / "run2.log")
    # the model saw exactly the missing texts, once each
    assert sorted(second) == sorted(set(TEXTS) - done)
    assert temps(tmp_path) == []  # the dead run's temp file was cleaned up

    ref = run_slow(tmp_path, *ARGS, "-o", "ref.parquet", "--cache", "fresh.sqlite", log="ref.log")
    assert f"({len(TEXTS)} computed, 0 from cache)" in ref.stderr
    resumed, uninterrupted = (
        pq.read_table(tmp_path / "out.parquet"),
        pq.read_table(tmp_path / "ref.parquet"),
    )
    assert resumed.replace_schema_metadata(None).equals(uninterrupted.replace_schema_metadata(None))
    meta = [json.loads(t.schema.metadata[b"embedstack"]) for t in (resumed, uninterrupted)]
    for m in meta:
        m.pop("created")
    assert meta[0] == meta[1]


def test_a_killed_run_leaves_the_previous_output_intact(tmp_path: Path) -> None:
    rows = SAMPLE.read_text(encoding="utf-8").splitlines()
    (tmp_path / "small.jsonl").write_text("\n".join(rows[:20]) + "\n", encoding="utf-8")
    shutil.copy(SAMPLE, tmp_path / "docs.jsonl")
    first = run_slow(
        tmp_path,
        "embed",
        "small.jsonl",
        "-o",
        "out.npy",
        "-m",
        "slowfake:16",
        "--no-cache",
        log="a.log",
    )
    assert first.returncode == 0, first.stderr

    proc = slow_cli(
        tmp_path,
        *ARGS,
        "-o",
        "out.npy",
        "--cache",
        "c.sqlite",
        delay=0.05,
        log="b.log",
        stderr=subprocess.DEVNULL,
    )
    wait_for_cache(proc, tmp_path / "c.sqlite", 90)
    proc.kill()
    proc.wait(timeout=30)
    # still the complete 20-row output, checked against its metadata
    data = load_embeddings(tmp_path / "out.npy")
    assert len(data) == 20 and data.meta["inputs"] == ["small.jsonl"]
    left = temps(tmp_path)  # the dead run's .npy and .rows.jsonl temps, hidden
    assert len(left) == 2 and sum(p.name.startswith(".out.npy.rows.jsonl.") for p in left) == 1, left

    # the re-run removes both (the .rows.jsonl one too) and replaces the output
    r = run_slow(tmp_path, *ARGS, "-o", "out.npy", "--cache", "c.sqlite", log="c.log")
    assert r.returncode == 0, r.stderr
    assert temps(tmp_path) == []
    assert len(load_embeddings(tmp_path / "out.npy")) == len(TEXTS)


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 128 + signal.SIGTERM)])
def test_ctrl_c_and_sigterm_clean_up_and_keep_the_cache(tmp_path: Path, sig: signal.Signals, code: int) -> None:
    shutil.copy(SAMPLE, tmp_path / "docs.jsonl")
    proc = slow_cli(
        tmp_path,
        *ARGS,
        "-o",
        "out.jsonl",
        "--cache",
        "c.sqlite",
        delay=0.05,
        log="run1.log",
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_cache(proc, tmp_path / "c.sqlite", 60)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == code, err
    assert "Traceback" not in err
    if sig == signal.SIGINT:
        assert (
            "embedstack: interrupted; what was computed is kept in the cache: re-run the same command to resume" in err
        )
    assert not (tmp_path / "out.jsonl").exists() and temps(tmp_path) == []

    done = cached_texts(tmp_path / "c.sqlite")
    r = run_slow(tmp_path, *ARGS, "-o", "out.jsonl", "--cache", "c.sqlite", log="run2.log")
    assert f"({len(TEXTS) - len(done)} computed, {len(done)} from cache)" in r.stderr
    assert len(load_embeddings(tmp_path / "out.jsonl")) == len(TEXTS)


def test_progress_bar_on_a_terminal_only(tmp_path: Path) -> None:
    shutil.copy(SAMPLE, tmp_path / "docs.jsonl")
    master, slave = pty.openpty()
    # a real terminal has a size (tqdm draws nothing in 0 columns)
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    proc = slow_cli(tmp_path, *ARGS, "-o", "tty.parquet", "--no-cache", delay=0.01, log="tty.log", stderr=slave)
    assert proc.wait(timeout=120) == 0
    os.close(slave)
    reader.join(timeout=10)
    os.close(master)
    shown = b"".join(chunks).decode(errors="replace")
    assert "embedding: 100%" in shown and re.search(r"\d+(\.\d+)?text/s", shown), shown
    assert re.search(r"<\d\d:\d\d", shown), shown  # the ETA
    assert "embedded 300 texts" in shown

    piped = run_slow(tmp_path, *ARGS, "-o", "pipe.parquet", "--no-cache", log="pipe.log")
    assert "text/s" not in piped.stderr and piped.stderr.count("\n") == 1
