"""`embedstack serve` against its peers: throughput and p50/p99 latency under 1, 8 and 64 concurrent clients.

One run, one model (the bundled sentence-transformers/all-MiniLM-L6-v2), one CPU. Targets, each a subprocess
on a free 127.0.0.1 port, waited on by polling its health/models endpoint and stopped by pid:

- ``es-onnx``      ``embedstack serve --model minilm=local --no-cache`` (ONNX Runtime fp32, the `local` default)
- ``es-openvino``  ``embedstack serve --model minilm=openvino --no-cache`` (the same server on OpenVINO fp32)
- ``infinity``     ``infinity_emb v2`` (torch engine, CPU, no vector cache) serving the same model directory
- ``naive``        bench/peers/naive_st_server.py: FastAPI calling sentence-transformers' ``encode`` per request
- ``inproc-onnx`` / ``inproc-openvino``: ``model.embed`` on the same texts in a worker process, one call at a
  time, no server: the reference for the cost of serving
- ``es-onnx-base`` (with ``--baseline-src DIR``): ``es-onnx`` run from another source tree (``DIR`` is put first
  on PYTHONPATH, e.g. ``git archive <commit> src | tar -x -C /tmp/base`` then ``--baseline-src /tmp/base/src``):
  a change measured before and after in the same run

Load: async clients in this process (aiohttp, or httpx with ``--client httpx``: the openai SDK's transport,
which spends ~3 ms of CPU per request on this machine, on top of the server's latency), one keep-alive
connection per simulated client as separate services would have, closed loop (each sends its next request
when the last one is answered) for ``--duration`` seconds after ``--warm`` seconds of the same load, each
request 1 text (the bare string form) or 32 texts (a list), OpenAI's ``/v1/embeddings`` with
``encoding_format="float"``. Texts: the ``--field`` of bench/data/packages-retrieval.jsonl (``query``
by default: short package descriptions,
12 tokens on average; ``text`` for the long ones), request k of a cell taking texts [k*size, (k+1)*size) of
the pool, so every server sees the same texts in the same order and no two concurrent requests share a text.
embedstack runs with ``--no-cache``, so repeats of the pool (after 3,000 texts) are computed again.
Throughput counts every text answered from the first request of the cell to the last answer (requests in
flight at the deadline are waited for); latency is per request, client-side.

The machine is shared and its speed drifts: targets take turns within each round (the others are paused
with SIGSTOP, so an idle server costs nothing), and a ratio is the median over rounds of the ratio measured
within one round. Each target is checked before timing: the vectors of the first texts must match the
in-process ONNX model's (cosine >= 0.999).

Set up the peers once (infinity in its own virtualenv; torch pinned to the CPU build by constraints.txt):

    python3.11 -m venv /work/bench-venvs/infinity
    /work/bench-venvs/infinity/bin/pip install "infinity-emb[server,torch]" -c constraints.txt
    # the naive peer and the OpenVINO launcher use the repo's venv (extras server, onnx, openvino)

Run (the lock keeps test suites off the CPU while it measures):

    flock /tmp/embedstack-test.lock .venv/bin/python bench/server.py            # full, ~10 min
    flock /tmp/embedstack-test.lock .venv/bin/python bench/server.py --quick    # ~2 min
    ... --targets es-onnx,naive --clients 64 --sizes 1                          # a subset
    ... --infinity PATH/TO/infinity_emb --data PATH/TO/packages-retrieval.jsonl --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from _common import BENCH, DATA, ROOT, bundled_model_dir, columns, free_port, median_ratio

INFINITY = Path(os.environ.get("INFINITY_BIN", "/work/bench-venvs/infinity/bin/infinity_emb"))
MODEL = "sentence-transformers/all-MiniLM-L6-v2"
SERVED = "minilm"
ENV = {"HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0", "PYTHONWARNINGS": "ignore"}
TARGETS = ("es-onnx", "es-onnx-base", "es-openvino", "infinity", "naive", "inproc-onnx", "inproc-openvino")
CHECK_TEXTS = 4


def load_texts(path: Path, field_name: str) -> list[str]:
    """The `field_name` value of every record, in file order."""
    return columns(path, None, [field_name])[field_name]


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


# -- in-process worker (a subprocess speaking JSON lines on stdin/stdout) ----------------------------------
def inprocess_worker(backend: str, data: Path, field_name: str) -> None:
    """Load the model once; answer {"size", "duration", "warm"} lines with {"tput", "p50", "p99"} lines."""
    import warnings

    warnings.filterwarnings("ignore")
    from embedstack import resolve_embed_model
    from embedstack.providers.huggingface import HuggingFaceEmbedding

    model = (
        resolve_embed_model("local")
        if backend == "onnx"
        else HuggingFaceEmbedding(MODEL, backend="openvino", precision="fp32")
    )
    assert model.embeddings_cache is None
    texts = load_texts(data, field_name)
    vectors = model.embed(texts[:CHECK_TEXTS])
    print(
        json.dumps({"ready": True, "backend": getattr(model, "backend", "?"), "vectors": vectors.tolist()}), flush=True
    )
    for line in sys.stdin:
        job = json.loads(line)
        size = int(job["size"])
        chunks = [texts[i : i + size] for i in range(0, len(texts) - size + 1, size)]
        chunks = [c[0] for c in chunks] if size == 1 else chunks  # type: ignore[misc]
        result: dict[str, Any] = {}
        for seconds in (job["warm"], job["duration"]):
            lat: list[float] = []
            n = k = 0
            t0 = time.perf_counter()
            cpu0 = time.process_time()
            while time.perf_counter() - t0 < seconds:
                chunk = chunks[k % len(chunks)]
                t = time.perf_counter()
                model.embed([chunk] if size == 1 else chunk)
                lat.append(time.perf_counter() - t)
                n += size
                k += 1
            wall = time.perf_counter() - t0
            result = {
                "texts": n,
                "requests": k,
                "wall": wall,
                "tput": n / wall,
                "p50": percentile(lat, 50) * 1e3,
                "p99": percentile(lat, 99) * 1e3,
                "cpu": (time.process_time() - cpu0) / wall,
            }
        print(json.dumps(result), flush=True)


# -- targets -----------------------------------------------------------------------------------------------
@dataclass
class Target:
    """A process under test: a server (HTTP) or an in-process worker (JSON lines on a pipe)."""

    name: str
    argv: list[str]
    port: int = 0
    ready_path: str = "/health"
    proc: subprocess.Popen[str] | None = None
    log: Path | None = None
    start_s: float = 0.0
    vectors: list[list[float]] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    @property
    def inprocess(self) -> bool:
        return self.name.startswith("inproc-")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)  # its own session: the server and any child it started

    def pause(self) -> None:
        self.signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.proc.wait(5)

    def tail(self, n: int = 25) -> str:
        if self.log is None or not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


def make_target(name: str, args: argparse.Namespace, mdir: Path) -> Target:
    py = sys.executable
    if name.startswith("inproc-"):
        argv = [py, str(Path(__file__).resolve()), "--inprocess-worker", name.removeprefix("inproc-")]
        return Target(name, [*argv, "--data", str(args.data), "--field", args.field])
    port = free_port()
    host = ["--host", "127.0.0.1", "--port", str(port)]
    if name in ("es-onnx", "es-onnx-base"):
        argv = [py, "-m", "embedstack.cli", "serve", "--model", f"{SERVED}=local", "--no-cache", *host]
        env: dict[str, str] = {}
        if name == "es-onnx-base":
            if args.baseline_src is None:
                raise SystemExit("es-onnx-base needs --baseline-src DIR (the other tree's src folder)")
            env["PYTHONPATH"] = os.pathsep.join([str(args.baseline_src), os.environ.get("PYTHONPATH", "")])
        return Target(name, argv + args.serve_args, port, "/health", env=env)
    if name == "es-openvino":
        argv = [py, "-m", "embedstack.cli", "serve", "--model", f"{SERVED}=openvino", "--no-cache", *host]
        return Target(name, argv + args.serve_args, port, "/health")
    if name == "infinity":
        argv = [str(args.infinity), "v2", "--model-id", str(mdir), "--served-model-name", SERVED]
        argv += ["--engine", "torch", "--device", "cpu", "--no-vector-disk-cache", "--url-prefix", "/v1", *host]
        return Target(name, argv, port, "/v1/models")
    if name == "naive":
        argv = [py, str(BENCH / "peers" / "naive_st_server.py"), "--model-dir", str(mdir), *host]
        return Target(name, argv, port, "/health")
    raise SystemExit(f"unknown target {name!r}; choose from {', '.join(TARGETS)}")


def start(target: Target, logdir: Path, timeout: float) -> None:
    """Start the process and wait until it answers (health 200, or the worker's ready line)."""
    import httpx

    target.log = logdir / f"{target.name}.log"
    env = {**os.environ, **ENV, **target.env}
    t0 = time.perf_counter()
    stderr = target.log.open("w")
    if target.inprocess:
        target.proc = subprocess.Popen(
            target.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env,
            start_new_session=True,
        )  # fmt: skip
        assert target.proc.stdout is not None
        line = target.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{target.name} exited before it was ready:\n{target.tail()}")
        target.vectors = json.loads(line)["vectors"]
        target.start_s = time.perf_counter() - t0
        return
    target.proc = subprocess.Popen(
        target.argv, stdout=stderr, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True
    )
    while time.perf_counter() - t0 < timeout:
        if target.proc.poll() is not None:
            raise RuntimeError(f"{target.name} exited with {target.proc.returncode}:\n{target.tail()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(target.url + target.ready_path, timeout=2).status_code == 200:
                target.start_s = time.perf_counter() - t0
                return
        time.sleep(0.25)
    raise RuntimeError(f"{target.name} not ready after {timeout:.0f} s:\n{target.tail()}")


# -- load --------------------------------------------------------------------------------------------------
@dataclass
class Cell:
    """One timed run of one target at one (request size, clients)."""

    target: str
    size: int
    clients: int
    round: int
    texts: int
    requests: int
    errors: int
    wall: float
    tput: float
    p50: float
    p99: float
    server_cpu: float  # cores used by the target process, on average
    client_cpu: float  # cores used by this process (the load generator)
    error_kinds: dict[str, int] = field(default_factory=dict)


def bodies(texts: list[str], size: int) -> list[bytes]:
    """Pre-serialised request bodies, request k holding texts [k*size, (k+1)*size)."""
    out = []
    for i in range(0, len(texts) - size + 1, size):
        payload: str | list[str] = texts[i] if size == 1 else texts[i : i + size]
        out.append(json.dumps({"model": SERVED, "input": payload, "encoding_format": "float"}).encode())
    return out


CLIENT = "aiohttp"  # --client


async def drive(
    pool: list[Any], post: Callable[[Any, bytes], Awaitable[tuple[int, str]]], reqs: list[bytes], seconds: float
) -> tuple[list[float], dict[str, int], float]:
    """One task per client in `pool` posting requests back to back for `seconds`: (latencies, errors, wall)."""
    lat: list[float] = []
    errors: dict[str, int] = {}
    counter = iter(range(10**9))
    t0 = time.perf_counter()
    deadline = t0 + seconds

    async def one_client(client: Any) -> None:
        while time.perf_counter() < deadline:
            body = reqs[next(counter) % len(reqs)]
            t = time.perf_counter()
            status, head = await post(client, body)
            if status == 200:
                lat.append(time.perf_counter() - t)
            else:
                key = f"{status} {head}"
                errors[key] = errors.get(key, 0) + 1

    await asyncio.gather(*(one_client(c) for c in pool))
    return lat, errors, time.perf_counter() - t0


async def closed_loop(
    url: str, reqs: list[bytes], size: int, clients: int, seconds: float
) -> tuple[list[float], dict[str, int], float]:
    """`clients` tasks sending requests back to back for `seconds`: (latencies, errors by status, wall)."""
    if CLIENT == "aiohttp":
        return await closed_loop_aiohttp(url, reqs, clients, seconds)
    import httpx

    headers = {"content-type": "application/json"}
    # One client (one keep-alive connection) per simulated client, as separate services would have: a
    # single AsyncClient pooling 64 connections spends ~18 ms of CPU per request in its pool at 64 clients.
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    tls = ssl.create_default_context()  # loaded once, not per client (plain http here anyway)
    async with contextlib.AsyncExitStack() as stack:
        pool = [
            await stack.enter_async_context(httpx.AsyncClient(limits=limits, timeout=300, verify=tls))
            for _ in range(clients)
        ]

        async def post(client: httpx.AsyncClient, body: bytes) -> tuple[int, str]:
            r = await client.post(url, content=body, headers=headers)
            return r.status_code, r.text[:80]

        return await drive(pool, post, reqs, seconds)


async def closed_loop_aiohttp(
    url: str, reqs: list[bytes], clients: int, seconds: float
) -> tuple[list[float], dict[str, int], float]:
    """closed_loop with aiohttp: one session and one keep-alive connection per simulated client."""
    import aiohttp

    headers = {"content-type": "application/json"}
    timeout = aiohttp.ClientTimeout(total=300)
    async with contextlib.AsyncExitStack() as stack:
        pool = [
            await stack.enter_async_context(
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1), timeout=timeout)
            )
            for _ in range(clients)
        ]

        async def post(session: aiohttp.ClientSession, body: bytes) -> tuple[int, str]:
            async with session.post(url, data=body, headers=headers) as r:
                payload = await r.read()
            return r.status, payload[:80].decode(errors="replace")

        return await drive(pool, post, reqs, seconds)


def measure_server(
    target: Target, reqs: list[bytes], size: int, clients: int, args: argparse.Namespace, rnd: int
) -> Cell:
    url = target.url + "/v1/embeddings"
    if args.warm > 0:
        asyncio.run(closed_loop(url, reqs, size, clients, args.warm))
    assert target.proc is not None
    cpu0, c0 = cpu_seconds(target.proc.pid), time.process_time()
    lat, errors, wall = asyncio.run(closed_loop(url, reqs, size, clients, args.duration))
    server_cpu, client_cpu = cpu_seconds(target.proc.pid) - cpu0, time.process_time() - c0
    return Cell(
        target.name, size, clients, rnd, len(lat) * size, len(lat), sum(errors.values()), wall, len(lat) * size / wall,
        percentile(lat, 50) * 1e3, percentile(lat, 99) * 1e3, server_cpu / wall, client_cpu / wall, errors,
    )  # fmt: skip


def measure_inprocess(target: Target, size: int, args: argparse.Namespace, rnd: int) -> Cell:
    assert target.proc is not None and target.proc.stdin is not None and target.proc.stdout is not None
    target.proc.stdin.write(json.dumps({"size": size, "duration": args.duration, "warm": args.warm}) + "\n")
    target.proc.stdin.flush()
    line = target.proc.stdout.readline()
    if not line:
        raise RuntimeError(f"{target.name} died:\n{target.tail()}")
    r = json.loads(line)
    return Cell(
        target.name, size, 1, rnd, r["texts"], r["requests"], 0, r["wall"], r["tput"], r["p50"], r["p99"], r["cpu"], 0.0
    )


def check_vectors(target: Target, texts: list[str], reference: list[list[float]]) -> float:
    """Min cosine of the target's vectors for the first texts to the reference; also warms the server."""
    if not target.inprocess:
        import httpx

        body = {"model": SERVED, "input": texts[:CHECK_TEXTS], "encoding_format": "float"}
        r = httpx.post(target.url + "/v1/embeddings", json=body, timeout=120)
        r.raise_for_status()
        data = sorted(r.json()["data"], key=lambda d: d["index"])
        target.vectors = [d["embedding"] for d in data]
    a, b = np.asarray(target.vectors, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if a.shape != b.shape:
        raise RuntimeError(f"{target.name}: vectors of shape {a.shape}, expected {b.shape}")
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    return float(cos.min())


# -- report ------------------------------------------------------------------------------------------------
def versions(args: argparse.Namespace) -> dict[str, str]:
    import importlib.metadata as md
    import platform

    out = {"python": platform.python_version()}
    for dist in ("onnxruntime", "openvino", "sentence-transformers", "torch", "fastapi", "uvicorn", "httpx", "aiohttp"):
        with contextlib.suppress(md.PackageNotFoundError):
            out[dist] = md.version(dist)
    infinity_py = args.infinity.parent / "python"
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        cmd = [str(infinity_py), "-c", "import importlib.metadata as m; print(m.version('infinity-emb'))"]
        out["infinity-emb"] = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        cmd = ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]
        out["embedstack"] = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        out["cpu"] = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "?")
    out["cores"] = str(os.cpu_count())
    return out


def summarise(cells: list[Cell]) -> dict[tuple[str, int, int], dict[str, float]]:
    """Per (target, size, clients): median texts/s over rounds, p50/p99 medians, errors summed."""
    groups: dict[tuple[str, int, int], list[Cell]] = {}
    for c in cells:
        groups.setdefault((c.target, c.size, c.clients), []).append(c)
    return {
        k: {
            "tput": statistics.median(c.tput for c in v),
            "p50": statistics.median(c.p50 for c in v),
            "p99": statistics.median(c.p99 for c in v),
            "server_cpu": statistics.median(c.server_cpu for c in v),
            "client_cpu": statistics.median(c.client_cpu for c in v),
            "errors": sum(c.errors for c in v),
        }
        for k, v in groups.items()
    }


def ratio(cells: list[Cell], a: tuple[str, int, int], b: tuple[str, int, int]) -> float | None:
    """Median over rounds of tput(a) / tput(b), both measured in the same round."""
    by = {(c.target, c.size, c.clients, c.round): c.tput for c in cells}
    rounds = [r for r in sorted({c.round for c in cells}) if (*a, r) in by and (*b, r) in by]
    return median_ratio([by[(*a, r)] for r in rounds], [by[(*b, r)] for r in rounds])


def report(cells: list[Cell], targets: list[Target], checks: dict[str, float], args: argparse.Namespace) -> str:
    s = summarise(cells)
    lines = ["| target | request | clients | texts/s | p50 ms | p99 ms | target CPU | client CPU | errors |"]
    lines.append("|---|--:|--:|--:|--:|--:|--:|--:|--:|")
    for (name, size, clients), v in sorted(s.items(), key=lambda kv: (kv[0][1], kv[0][2], TARGETS.index(kv[0][0]))):
        who = "1 caller" if name.startswith("inproc-") else str(clients)
        lines.append(
            f"| {name} | {size} | {who} | {v['tput']:.0f} | {v['p50']:.1f} | {v['p99']:.1f} | "
            f"{v['server_cpu']:.2f} | {v['client_cpu']:.2f} | {v['errors']} |"
        )
    lines.append("")
    lines.append("start-up s / min cosine to in-process onnx: " + ", ".join(
        f"{t.name} {t.start_s:.1f} / {checks.get(t.name, float('nan')):.6f}" for t in targets
    ))  # fmt: skip
    lines.append("")
    lines.append("Goals (ratios: median over rounds of same-round ratios):")
    for clients in args.clients:
        for size in args.sizes:
            r = ratio(cells, ("es-onnx", size, clients), ("es-onnx-base", size, clients))
            if r is not None:
                lines.append(f"- es-onnx vs es-onnx-base (--baseline-src), {clients} clients x {size} texts: {r:.2f}x")
    for es in ("es-onnx", "es-openvino"):
        backend = es.removeprefix("es-")
        for peer, goal in (("naive", ">= 3x"), ("infinity", "> 1x")):
            r = ratio(cells, (es, 1, 64), (peer, 1, 64))
            if r is not None:
                lines.append(f"- {es} vs {peer}, 64 clients x 1 text: {r:.2f}x (goal {goal})")
        if (es, 1, 1) in s:
            inproc = s.get((f"inproc-{backend}", 1, 1))
            same = f"; in-process single call p50 {inproc['p50']:.1f} ms in the same run" if inproc else ""
            lines.append(f"- {es} idle single request p50: {s[(es, 1, 1)]['p50']:.1f} ms (goal <= 10 ms{same})")
        for clients in args.clients:
            r = ratio(cells, (es, 32, clients), (f"inproc-{backend}", 32, 1))
            if r is not None:
                lines.append(
                    f"- {es} 32-text requests, {clients} client(s), vs in-process 32-text calls: {r:.2f}x "
                    f"(serving cost {max(0.0, 1 - r) * 100:.0f}%; goal <= 15%)"
                )
    return "\n".join(lines)


# -- main --------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def running(targets: list[Target]) -> Iterator[None]:
    try:
        yield
    finally:
        for t in targets:
            t.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA, help="packages-retrieval.jsonl (default: %(default)s)")
    parser.add_argument("--field", default="query", choices=("query", "text"), help="which texts to send")
    parser.add_argument(
        "--targets",
        default=",".join(t for t in TARGETS if t != "es-onnx-base"),
        help="comma-separated, from: " + ", ".join(TARGETS) + " (es-onnx-base joins with --baseline-src)",
    )
    parser.add_argument("--clients", help="concurrent clients, comma-separated (default: 1,8,64; --quick: 1,64)")
    parser.add_argument("--sizes", default="1,32", help="texts per request (comma-separated)")
    parser.add_argument("--duration", type=float, default=3.0, help="timed seconds per cell (requests then drain)")
    parser.add_argument("--warm", type=float, default=1.0, help="untimed seconds of the same load before each cell")
    parser.add_argument("--rounds", type=int, default=2, help="rounds; every target takes its turn in each")
    parser.add_argument(
        "--quick", action="store_true", help="~2 min: --clients 1,64 --duration 1.5 --warm 0 --rounds 1"
    )
    parser.add_argument(
        "--infinity", type=Path, default=INFINITY, help="infinity_emb executable (default: %(default)s)"
    )
    parser.add_argument(
        "--serve-arg", dest="serve_args", action="append", default=[], help="extra embedstack serve argument"
    )
    parser.add_argument(
        "--client",
        choices=("aiohttp", "httpx"),
        default="aiohttp",
        help="load generator's HTTP client (default aiohttp; httpx adds ~3 ms of its own CPU per request here)",
    )
    parser.add_argument(
        "--baseline-src", type=Path, help="source tree (its src folder) the es-onnx-base target runs from"
    )
    parser.add_argument("--start-timeout", type=float, default=180.0)
    parser.add_argument("--json", type=Path, help="write every cell and the environment here")
    parser.add_argument("--inprocess-worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inprocess_worker:
        inprocess_worker(args.inprocess_worker, args.data, args.field)
        return
    if args.quick:
        args.duration, args.warm, args.rounds = 1.5, 0.0, 1
    global CLIENT
    CLIENT = args.client
    if CLIENT == "aiohttp":
        try:
            import aiohttp  # noqa: F401
        except ImportError:
            print("aiohttp not installed: the load generator uses httpx", file=sys.stderr)
            CLIENT = "httpx"
    args.clients = [int(c) for c in (args.clients or ("1,64" if args.quick else "1,8,64")).split(",")]
    args.sizes = [int(c) for c in args.sizes.split(",")]
    names = [n.strip() for n in args.targets.split(",") if n.strip()]
    if args.baseline_src is not None and "es-onnx-base" not in names:
        names.append("es-onnx-base")
    if "infinity" in names and not args.infinity.exists():
        print(
            f"infinity: {args.infinity} not found (see the set-up in this file's docstring); skipped", file=sys.stderr
        )
        names.remove("infinity")

    texts = load_texts(args.data, args.field)
    mdir = bundled_model_dir()
    requests = {size: bodies(texts, size) for size in args.sizes}
    env = versions(args)
    env["client"] = CLIENT
    print("environment:", json.dumps(env), file=sys.stderr)
    targets = [make_target(n, args, mdir) for n in names]
    cells: list[Cell] = []
    checks: dict[str, float] = {}
    t_run = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-server-") as tmp, running(targets):
        reference: list[list[float]] | None = None
        for t in sorted(targets, key=lambda t: t.name != "inproc-onnx"):  # the reference first
            print(f"starting {t.name} ...", file=sys.stderr, flush=True)
            start(t, Path(tmp), args.start_timeout)
            if reference is None:
                if t.name != "inproc-onnx":
                    reference = [list(map(float, v)) for v in np.asarray(ref_vectors(texts), dtype=np.float32)]
                else:
                    reference = t.vectors
            checks[t.name] = check_vectors(t, texts, reference)
            print(f"  ready in {t.start_s:.1f} s, min cosine {checks[t.name]:.6f}", file=sys.stderr, flush=True)
            if checks[t.name] < 0.999:
                raise SystemExit(f"{t.name} does not compute the same vectors (min cosine {checks[t.name]:.6f})")
            if not t.inprocess:  # one burst at the largest load: threads, shapes, queues
                size, clients = max(args.sizes), max(args.clients)
                asyncio.run(closed_loop(t.url + "/v1/embeddings", requests[size], size, clients, 0.01))
            t.pause()
        for rnd in range(args.rounds):
            for size in args.sizes:
                for clients in args.clients:
                    for t in targets:
                        if t.inprocess and clients != args.clients[0]:
                            continue
                        t.resume()
                        try:
                            cell = (
                                measure_inprocess(t, size, args, rnd)
                                if t.inprocess
                                else measure_server(t, requests[size], size, clients, args, rnd)
                            )
                        finally:
                            t.pause()
                        cells.append(cell)
                        print(
                            f"round {rnd} {t.name:16s} size {size:2d} clients {clients:2d}: {cell.tput:7.0f} texts/s "
                            f"p50 {cell.p50:7.1f} ms p99 {cell.p99:7.1f} ms errors {cell.error_kinds or 0}",
                            file=sys.stderr,
                            flush=True,
                        )
    total = time.perf_counter() - t_run
    text = report(cells, targets, checks, args)
    print(text)
    print(f"\n{len(cells)} cells in {total:.0f} s; texts: {args.field} field; {env}")
    if args.json:
        out = {"env": env, "args": {k: str(v) for k, v in vars(args).items()}, "cells": [asdict(c) for c in cells]}
        args.json.write_text(json.dumps(out, indent=1))


def ref_vectors(texts: list[str]) -> Any:
    """In-process ONNX vectors of the first texts, when inproc-onnx is not among the targets."""
    from embedstack import resolve_embed_model

    return resolve_embed_model("local").embed(texts[:CHECK_TEXTS])


if __name__ == "__main__":
    main()
