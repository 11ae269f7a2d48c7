"""Fixtures for the server tests: in-process apps over httpx.ASGITransport, real `embedstack serve`
processes on a free 127.0.0.1 port (stopped by pid), a tiny random BERT, and a gated model that holds
its batches until the test lets them go (to fill queues and cut clients off at will)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import PrivateAttr

from embedstack.base import BatchEmbedding
from embedstack.types import Role

WORDS = (
    "the a an man woman is are eating food bread piece of cat dog sat on mat quick brown fox jumps "
    "over lazy red blue green house car tree river city music book".split()
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServerProcess:
    """A running `embedstack serve`: its process, base URL and log file."""

    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def metric(self, name: str, **labels: str) -> float:
        """The value of one sample on /metrics (0 when absent)."""
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        return parse_metric(text, name, **labels)

    def stop(self) -> int:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        return int(self.proc.returncode)


def parse_metric(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        metric, _, rest = head.partition("{")
        if metric != name:
            continue
        got = ",".join(sorted(p for p in rest.rstrip("}").split(",") if p)) if rest else ""
        if not want or all(f'{k}="{v}"' in got for k, v in labels.items()):
            total += float(value)
    return total


def start_server(tmp_path: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 120) -> ServerProcess:
    """`python -m embedstack serve ARGS --port <free>`; returns once /health says 200 (polled, no sleeps)."""
    port = free_port()
    log = tmp_path / f"serve-{port}.log"
    full_env = dict(os.environ)
    full_env.update(HF_HUB_OFFLINE="1", XDG_CACHE_HOME=str(tmp_path / "xdg-cache"))
    full_env.update(env or {})
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "embedstack", "serve", "--port", str(port), *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=full_env,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=2) as client:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"embedstack serve exited with {proc.returncode}:\n{log.read_text()}")
            if time.monotonic() > deadline:
                os.kill(proc.pid, signal.SIGKILL)
                raise RuntimeError(f"embedstack serve did not get ready in {timeout}s:\n{log.read_text()}")
            try:
                if client.get(f"{url}/health").status_code == 200:
                    return ServerProcess(proc, url, log)
            except httpx.TransportError:
                pass
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=0.05)  # poll cadence without a bare sleep


@contextlib.asynccontextmanager
async def serving(app: FastAPI, **client_kw: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The app's lifespan, and an httpx client on it once /health says ready."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60, **client_kw) as client:
            state = app.state.embedstack
            assert state.loaded is not None
            await asyncio.wait_for(state.loaded.wait(), 60)
            yield client


class GatedEmbedding(BatchEmbedding):
    """A deterministic model whose batches wait for `gate` (a threading.Event) and that records what it saw:
    the fault injection that fills queues and keeps requests in flight on purpose."""

    model_name: str = "gated"
    embed_dim: int = 4

    _gate: threading.Event = PrivateAttr(default_factory=threading.Event)
    _seen: list[list[str]] = PrivateAttr(default_factory=list)
    _entered: threading.Event = PrivateAttr(default_factory=threading.Event)

    def model_post_init(self, context: Any, /) -> None:
        super().model_post_init(context)
        self._gate.set()

    def _embed_batch(self, items: list[Any], role: Role) -> Any:
        self._seen.append(list(items))
        self._entered.set()
        if not self._gate.wait(30):
            raise TimeoutError("gate never opened")
        import numpy as np

        out = np.zeros((len(items), self.embed_dim), dtype=np.float32)
        for i, t in enumerate(items):
            out[i, hash(t) % self.embed_dim] = 1.0
            out[i, (len(t) + 1) % self.embed_dim] += 0.5
        return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_bert_checkpoint: Path) -> Path:
    """The shared tiny random BERT as a sentence-transformers directory (mean pooling, normalised, 16 tokens)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    root = tmp_path_factory.mktemp("tiny-bert-server")
    plain = tiny_bert_checkpoint
    st = root / "st-mean"
    SentenceTransformer(
        modules=[Transformer(str(plain), max_seq_length=16), Pooling(32, pooling_mode="mean"), Normalize()],
        device="cpu",
    ).save(str(st))
    prompts = root / "st-prompts"
    SentenceTransformer(
        modules=[Transformer(str(plain), max_seq_length=16), Pooling(32, pooling_mode="mean"), Normalize()],
        device="cpu",
        prompts={"query": "red car ", "document": "blue house "},  # words of the vocabulary: they change vectors
    ).save(str(prompts))
    return st


@pytest.fixture(scope="session")
def tiny_prompts_dir(tiny_model_dir: Path) -> Path:
    """The tiny BERT with query and document prompts, so a query's vector differs from a document's."""
    return tiny_model_dir.parent / "st-prompts"


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir: Path) -> Any:
    """The tiny BERT on torch (fast to load; token limit 16)."""
    from embedstack.providers.huggingface import HuggingFaceEmbedding

    return HuggingFaceEmbedding(str(tiny_model_dir), backend="torch").load()


@pytest.fixture
def gated() -> Iterator[GatedEmbedding]:
    model = GatedEmbedding()
    yield model
    model._gate.set()


def texts(n: int, prefix: str = "t") -> list[str]:
    return [f"{prefix} {WORDS[i % len(WORDS)]} {i}" for i in range(n)]


async def until(cond: Callable[[], bool], timeout: float = 20) -> None:
    """Yield to the loop until `cond()` holds (no fixed sleeps)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


@contextlib.contextmanager
def uvicorn_thread(app: FastAPI) -> Iterator[str]:
    """The app under a real uvicorn (real HTTP, real disconnects) in a thread of this process; yields its URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    try:
        with httpx.Client(timeout=2) as client:
            while True:
                try:
                    if client.get(f"{url}/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline or not thread.is_alive():
                    raise RuntimeError("uvicorn did not get ready")
                thread.join(0.02)
        yield url
    finally:
        server.should_exit = True
        thread.join(30)
