"""A fork server for kill tests: `embedstack` (with the "slowfake" test model) in a fresh process per run.

Importing embedstack takes about a second here; forking this pre-imported process takes
milliseconds, so a test can start (and kill -9) many real `embedstack embed` processes quickly.
Each child is an ordinary process with its own files, SQLite connections and signals.

Protocol, one JSON object per line. The test sends {"argv": [...], "cwd": DIR, "env": {...},
"log": PATH}; the server forks a child that runs `embedstack ARGV` in DIR with ENV added, stdout and
stderr to LOG, and answers {"pid": PID}. The test then sends {"kill": true} (SIGKILL the child now)
or {"kill": false}; the server kills it if asked (it is not reaped yet, so the pid is still the
child's), waits for it and answers {"status": EXIT (negative: the signal), "seconds": RUN TIME}.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for tests.cli

import pyarrow.parquet  # noqa: F401  (imported once here, not in every child)
from tests.cli.slow_cli import _logging_embed_batch, _slowfake

import embedstack.cli._run
import embedstack.jobs
import embedstack.kvstore.sqlite  # noqa: F401
from embedstack.cli import main
from embedstack.providers.mock import FakeEmbedding
from embedstack.registry import register_provider


def _child(request: dict[str, Any]) -> None:
    """Run one command in the forked child and exit without returning."""
    code = 1
    try:
        os.chdir(request["cwd"])
        os.environ.update(request["env"])
        fd = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        code = main(request["argv"])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException as e:
        print(f"forkserver child: {type(e).__name__}: {e}", file=sys.stderr)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def serve() -> None:
    """Answer requests until stdin closes."""
    FakeEmbedding._embed_batch = _logging_embed_batch  # type: ignore[method-assign]
    register_provider("slowfake", _slowfake, '"slowfake:<dim>" (tests)')
    for line in sys.stdin:
        request = json.loads(line)
        sys.stdout.flush()
        start = time.monotonic()
        pid = os.fork()
        if pid == 0:
            _child(request)
        print(json.dumps({"pid": pid}), flush=True)
        order = json.loads(sys.stdin.readline() or '{"kill": true}')
        if order.get("kill"):
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        seconds = time.monotonic() - start
        print(json.dumps({"status": os.waitstatus_to_exitcode(status), "seconds": seconds}), flush=True)


if __name__ == "__main__":
    serve()
