"""Fixtures for the command-line tests: `embedstack` in a subprocess on a temp dir; sample data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "examples" / "packages.jsonl"
SLOW_CLI = Path(__file__).with_name("slow_cli.py")

Run = Callable[..., subprocess.CompletedProcess[str]]


def cli_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment for a CLI subprocess: offline, and any default cache inside the temp dir."""
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        XDG_CACHE_HOME=str(tmp_path / "xdg-cache"),
        PYTHONWARNINGS="default",
        COLUMNS="200",
    )
    env.update(extra)
    return env


@pytest.fixture
def cli(tmp_path: Path) -> Run:
    """Run `python -m embedstack.cli ARGS` in tmp_path; returns the CompletedProcess (text mode)."""

    def run(
        *args: str,
        input: str | bytes | None = None,
        env: dict[str, str] | None = None,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "embedstack.cli", *args],
            cwd=tmp_path,
            input=input.encode() if isinstance(input, str) else input,
            capture_output=True,
            env=env or cli_env(tmp_path),
            timeout=timeout,
        )
        return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(), proc.stderr.decode())

    return run


@pytest.fixture
def sample_rows() -> list[dict[str, str]]:
    """The first 60 records of the bundled sample corpus."""
    with open(SAMPLE, encoding="utf-8") as f:
        return [json.loads(line) for line in f][:60]


@pytest.fixture
def sample_jsonl(tmp_path: Path, sample_rows: list[dict[str, str]]) -> Path:
    """Those records as docs.jsonl in the temp dir."""
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in sample_rows), encoding="utf-8")
    return path
