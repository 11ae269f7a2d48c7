"""One short CUDA check and benchmark of embedstack's local models on a GPU machine (< 4 min on an H100).

Run once on the device (no network; pydantic comes from .gpu/whl, embedstack from src/; .gpu/ is
git-excluded, so the device call must carry it):

    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/whl/*.whl && \
    PYTHONPATH=/tmp/site:src HF_HUB_OFFLINE=1 python3 tools/gpu/cuda_local.py \
        --model-dir .gpu/model --data .gpu/data.jsonl --out $OUT

Dry run on a CPU (every code path, with cpu standing in for cuda; --device cpu shrinks the defaults to
batch 32, 1 timed pass, 20 latency queries, fp16/bf16 on 10 records, ONNX on 50):

    flock /tmp/embedstack-cpu.lock env PYTHONPATH=src HF_HUB_OFFLINE=1 .venv/bin/python tools/gpu/cuda_local.py \
        --model-dir .gpu/model --data .gpu/data.jsonl --device cpu --n 100 --out /tmp/cuda_check_out --budget-s 120

Sections (each timed, guarded, skipped with a message when --budget-s runs short):
  a. environment;  b. throughput on the "query" and "text" fields, sentence-transformers' encode vs
  HuggingFaceEmbedding(backend="torch").embed at fp32/fp16/bf16 and batch 32/128;  c. fidelity: cosine
  to sentence-transformers' CPU fp32 vectors, recall@1/@10 of query→text;  d. single-query latency;
  e. peak GPU memory;  f. ClipEmbedding cuda vs cpu (tiny random CLIP);  g. the ONNX backend on CPU.
Without CUDA the device sections say "skipped"; past --budget-s + 30 s a SIGALRM ends the running step.
The model directory holds all-MiniLM-L6-v2 with fp16 weights (to fit the transfer limit); they are
expanded to fp32 under /tmp first and every backend runs those fp32 weights (values rounded through
fp16). Results are printed as they come and written to --out as summary.json and summary.md.
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import logging
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
warnings.filterwarnings("ignore", message=".*truncated")  # long "text" records: expected
warnings.filterwarnings("ignore", category=FutureWarning)

FIELDS = ("query", "text")
ST = "sentence-transformers"
ES = "embedstack"
NO_NEED = float("-inf")  # sections d and e only render what b measured: they always run
HARD_GRACE_S = 30  # SIGALRM this long after the budget: the running section fails, the summary is written

Bulk = Callable[[list[str], int], np.ndarray]
One = Callable[[str], Any]


class Skip(Exception):
    """A section that cannot run here (no CUDA, nothing measured): reported as skipped, not as an error."""


# -- reporting --------------------------------------------------------------------------------------
class Report:
    """Results as they come: printed, and summary.json / summary.md rewritten after every section."""

    def __init__(self, out: Path, budget_s: float) -> None:
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        self.t0 = time.perf_counter()
        self.budget_s = budget_s
        self.data: dict[str, Any] = {"sections": {}}
        self.md: list[str] = ["# embedstack CUDA check", ""]

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def left(self) -> float:
        return self.budget_s - self.elapsed()

    def line(self, text: str = "") -> None:
        print(text, flush=True)
        self.md.append(text)

    def table(self, header: list[str], rows: list[list[Any]]) -> None:
        def cell(v: Any) -> str:  # floats are cosines; other figures come formatted
            if isinstance(v, float):
                return f"{v:.6f}"
            return "–" if v is None else str(v)

        self.line("| " + " | ".join(header) + " |")
        self.line("|" + "|".join("---" for _ in header) + "|")
        for row in rows:
            self.line("| " + " | ".join(cell(v) for v in row) + " |")
        self.line()

    def save(self) -> None:
        self.data["elapsed_s"] = round(self.elapsed(), 2)
        (self.out / "summary.json").write_text(json.dumps(self.data, indent=2, default=_jsonable))
        (self.out / "summary.md").write_text("\n".join(self.md) + "\n")

    def run(self, key: str, title: str, need_s: float, fn: Callable[[dict[str, Any]], None]) -> None:
        """Run one section: skipped when under `need_s` of budget is left; errors are recorded, not raised."""
        sec: dict[str, Any] = {"title": title}
        self.data["sections"][key] = sec
        self.line(f"## {key}. {title}")
        self.line()
        if self.left() < need_s:
            sec["status"] = "skipped"
            sec["why"] = f"only {self.left():.0f} s of the {self.budget_s:.0f} s budget left (needs ~{need_s:.0f} s)"
            self.line(f"SKIPPED: {sec['why']}")
            self.line()
            self.save()
            return
        t = time.perf_counter()
        try:
            fn(sec)
            sec["status"] = "ok"
        except Skip as e:
            sec["status"] = "skipped"
            sec["why"] = str(e)
            self.line(f"SKIPPED: {e}")
        except Exception as e:
            sec["status"] = "error"
            sec["error"] = f"{type(e).__name__}: {e}"
            sec["traceback"] = traceback.format_exc()[-3000:]
            self.line(f"ERROR: {sec['error']}")
            self.line("```")
            self.line(sec["traceback"].rstrip())
            self.line("```")
        sec["seconds"] = round(time.perf_counter() - t, 2)
        self.line(f"_section {key}: {sec['status']} in {sec['seconds']:.1f} s; {self.elapsed():.0f} s elapsed_")
        self.line()
        self.save()


def _cos(v: Any) -> str:
    return f"{float(v):.7f}"


def _gap(cos: np.ndarray) -> str:
    """Mean of 1 - cos, in scientific notation (the interesting digits of a cosine near 1)."""
    return f"{float(np.mean(np.clip(1.0 - cos, 0.0, None))):.1e}"


def _pct(v: float | None) -> str | None:
    return None if v is None else f"{v:.1f}"


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return str(v)


# -- shared state -----------------------------------------------------------------------------------
@dataclass
class Run:
    """What the sections share: settings, data, the fp32 model directory and results so far."""

    args: argparse.Namespace
    rep: Report
    texts: dict[str, list[str]]
    model_dir: Path | None = None
    torch: Any = None
    cuda: bool = False
    results: dict[str, dict[str, Any]] = field(default_factory=dict)  # backend label → measurements
    vectors: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # label → field → (n, dim)
    ref: dict[str, np.ndarray] = field(default_factory=dict)  # sentence-transformers CPU fp32 reference
    scratch: list[Path] = field(default_factory=list)  # temporary folders, removed at the end

    def tmpdir(self, prefix: str) -> Path:
        path = Path(tempfile.mkdtemp(prefix=prefix))
        self.scratch.append(path)
        return path

    @property
    def device(self) -> str:
        return str(self.args.device)

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def free(self) -> None:
        gc.collect()
        if self.cuda:
            self.torch.cuda.synchronize()
            self.torch.cuda.empty_cache()


def load_data(path: Path, n: int) -> dict[str, list[str]]:
    rows: dict[str, list[str]] = {f: [] for f in FIELDS}
    with path.open(encoding="utf-8") as f:
        for line, _ in zip(f, range(n)):
            row = json.loads(line)
            for name in FIELDS:
                rows[name].append(str(row[name]))
    return rows


def expand_fp32(src: Path, dst: Path) -> dict[str, Any]:
    """Copy the model directory to `dst` with every floating-point weight as float32."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.safetensors"))
    info: dict[str, Any] = {}
    for weights in src.rglob("*.safetensors"):
        tensors = load_file(str(weights))
        info[str(weights.relative_to(src))] = sorted({str(t.dtype) for t in tensors.values()})
        out = {k: (t.float() if t.is_floating_point() else t).contiguous() for k, t in tensors.items()}
        target = dst / weights.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        save_file(out, str(target), metadata={"format": "pt"})
    return info


def unit(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    return m / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-12)


def row_cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(unit(a) * unit(b), axis=1)


def recall(q: np.ndarray, t: np.ndarray, k: int) -> float:
    """Percent of queries whose own text (same row) ranks in the top k texts by cosine."""
    scores = unit(q) @ unit(t).T
    own = scores[np.arange(len(q)), np.arange(len(q))]
    rank = (scores > own[:, None]).sum(axis=1)
    return 100.0 * float((rank < k).mean())


def best_of(run: Run, fn: Callable[[], Any], rounds: int) -> tuple[float, Any]:
    """Best wall time of `rounds` calls (synchronised) and the last result."""
    best, out = float("inf"), None
    for _ in range(rounds):
        run.sync()
        t = time.perf_counter()
        out = fn()
        run.sync()
        best = min(best, time.perf_counter() - t)
    return best, out


# -- a. environment ---------------------------------------------------------------------------------
def _safe(fn: Callable[[], Any]) -> Any:
    """fn(), or the error as text: one odd environment detail must not stop the run."""
    try:
        return fn()
    except Exception as e:
        return f"error: {type(e).__name__}: {e}"


def section_env(run: Run, sec: dict[str, Any]) -> None:
    import importlib.metadata as md

    import torch

    run.torch = torch
    torch.set_num_threads(run.args.cpu_threads)
    t = time.perf_counter()
    model_dir = run.tmpdir("embedstack-cuda-bench-") / "model"
    weights = expand_fp32(Path(run.args.model_dir), model_dir)
    run.model_dir = model_dir  # only once complete: later sections need it
    expand_s = round(time.perf_counter() - t, 2)
    want_cuda = run.device.startswith("cuda")
    run.cuda = want_cuda and torch.cuda.is_available()
    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": _safe(platform.platform),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": _safe(torch.cuda.is_available),
        "device_requested": run.device,
        "tf32_matmul": _safe(lambda: bool(torch.backends.cuda.matmul.allow_tf32)),
    }
    for pkg in ("transformers", "sentence-transformers", "onnxruntime", "onnx", "tokenizers", "pydantic", "numpy"):
        info[pkg] = _safe(lambda pkg=pkg: md.version(pkg))
    if run.cuda:
        idx = torch.device(run.device).index or 0
        t = time.perf_counter()
        torch.zeros(1, device=run.device)  # create the CUDA context here, not in the first backend's load
        torch.cuda.synchronize()
        info["cuda_init_s"] = round(time.perf_counter() - t, 2)
        info["gpu"] = _safe(lambda: torch.cuda.get_device_name(idx))
        props = _safe(lambda: torch.cuda.get_device_properties(idx))
        info["gpu_capability"] = _safe(lambda: f"{props.major}.{props.minor}")
        info["gpu_memory_gib"] = _safe(lambda: round(props.total_memory / 2**30, 1))
        info["bf16_supported"] = _safe(lambda: bool(torch.cuda.is_bf16_supported()))
    elif want_cuda:
        info["gpu"] = None
        run.rep.line("NOTE: CUDA is not available here: the CUDA sections will be skipped.")
    import sentence_transformers  # imported here so that no backend's load time includes it

    import embedstack
    from embedstack.providers.huggingface import onnx_encoder as _onnx

    info["sentence_transformers_path"] = str(Path(sentence_transformers.__file__).parent)
    info["embedstack"] = getattr(embedstack, "__version__", "?")
    info["embedstack_path"] = str(Path(embedstack.__file__).parent)
    info["physical_cores"] = _safe(_onnx.physical_cores)
    info["weights_in"] = weights
    info["fp32_model_dir"] = str(run.model_dir)
    info["expand_s"] = expand_s
    info["records"] = {f: len(v) for f, v in run.texts.items()}
    info["unique"] = {f: len(set(v)) for f, v in run.texts.items()}
    sec["info"] = info
    run.rep.table(["item", "value"], [[k, str(v)] for k, v in info.items()])
    run.rep.line(
        f"Weights: {weights} in {run.args.model_dir}, expanded to float32 in {run.model_dir} "
        f"({expand_s} s): every backend runs the same fp32 weights (values rounded through fp16)."
    )
    run.rep.line()


# -- b/d/e. one backend at a time on the device ----------------------------------------------------------
def make_st(run: Run, device: str, half: bool) -> tuple[Any, Bulk, One, str]:
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(run.model_dir), device=device, local_files_only=True)
    if half:
        st = st.half()
    st.eval()

    def bulk(texts: list[str], bs: int) -> np.ndarray:
        out = st.encode(texts, batch_size=bs, convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(out, dtype=np.float32)

    p = next(st.parameters())
    return st, bulk, st.encode, f"{p.device}/{p.dtype}"


def make_es(run: Run, device: str, precision: str) -> tuple[Any, Bulk, One, str]:
    from embedstack.providers.huggingface import HuggingFaceEmbedding
    from embedstack.types import Role

    model = HuggingFaceEmbedding(
        model_name=str(run.model_dir),
        device=device,
        backend="torch",  # never the ONNX default of resolve_embed_model("local")
        precision=precision,
        embed_batch_size=32,
        # no embeddings_cache: every call runs the model
    ).load()
    assert model.embeddings_cache is None, "the benchmark must run without a cache"
    instructions = (model._instruction(Role.QUERY), model._instruction(Role.TEXT))
    assert instructions == (None, None), f"benchmark assumes no instruction, got {instructions}"
    enc = model._loaded()
    p = next(enc.st.parameters()) if enc.st is not None else next(enc.model.parameters())

    def bulk(texts: list[str], bs: int) -> np.ndarray:
        model.embed_batch_size = bs  # not a reload field: the weights stay loaded
        return model.embed(texts, "text")

    return model, bulk, model.get_query_embedding, f"{p.device}/{p.dtype} (backend {type(enc).__name__})"


def measure_backend(
    run: Run, label: str, make: Callable[[], tuple[Any, Bulk, One, str]], limit: int | None = None
) -> dict[str, Any]:
    """Load, throughput per field and batch size (first `limit` records), latency and peak memory of one backend."""
    rep, args, torch = run.rep, run.args, run.torch
    res: dict[str, Any] = {"throughput": {}, "notes": []}
    run.results[label] = res
    run.free()
    if run.cuda:
        torch.cuda.reset_peak_memory_stats()
        res["mem_base_mb"] = torch.cuda.memory_allocated() / 2**20
    t = time.perf_counter()
    _model, bulk, one, placed = make()  # the model stays alive until this returns
    run.sync()
    res["load_s"] = time.perf_counter() - t
    res["placed"] = placed
    if run.cuda:
        res["mem_loaded_mb"] = torch.cuda.memory_allocated() / 2**20
    vecs: dict[str, np.ndarray] = {}
    try:
        for name in FIELDS:
            texts = run.texts[name][:limit]
            for bs in args.batch_sizes:
                if rep.left() - args.reserve_s < 3:
                    res["notes"].append(f"throughput {name}@{bs} skipped: budget")
                    continue
                t = time.perf_counter()
                bulk(texts, bs)  # warm-up: kernels, allocator, thread pools
                need = (time.perf_counter() - t) * args.rounds  # the warm-up pass is the worst case
                rounds = args.rounds if rep.left() - args.reserve_s > need else 1
                if rounds < args.rounds:
                    res["notes"].append(f"{name}@{bs}: 1 timed pass (budget)")
                best, out = best_of(run, lambda texts=texts, bs=bs: bulk(texts, bs), rounds)
                res["throughput"][f"{name}@{bs}"] = len(texts) / best
                vecs[name] = np.asarray(out, dtype=np.float32)
        if rep.left() - args.reserve_s >= 2:
            queries = run.texts["query"][: args.latency]
            for q in queries[:10]:
                one(q)
            times = []
            for q in queries:
                run.sync()
                t = time.perf_counter()
                one(q)
                run.sync()
                times.append(time.perf_counter() - t)
            res["p50_ms"] = 1000 * statistics.median(times)
            res["p99_ms"] = 1000 * float(np.percentile(times, 99))
            res["latency_n"] = len(times)
        else:
            res["notes"].append("latency skipped: budget")
    finally:
        if run.cuda:
            res["mem_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
        run.vectors[label] = vecs  # the model is freed when this returns (run.free() at the next start)
    tp = ", ".join(f"{k} {v:,.0f}/s" for k, v in res["throughput"].items())
    print(f"  {label}: load {res['load_s']:.1f} s, {placed}; {tp}; p50 {res.get('p50_ms', float('nan')):.2f} ms")
    return res


def backends(run: Run) -> list[tuple[str, str, str, Callable[[], tuple[Any, Bulk, One, str]]]]:
    """(label, library, precision, factory) in priority order: the baseline first, optional ST fp16 last."""
    dev = run.device
    out: list[tuple[str, str, str, Callable[[], tuple[Any, Bulk, One, str]]]] = [
        (f"{ST} fp32", ST, "fp32", lambda: make_st(run, dev, False))
    ]
    for p in ("fp32", "fp16", "bf16"):
        out.append((f"{ES} {p}", ES, p, lambda p=p: make_es(run, dev, p)))
    out.append((f"{ST} fp16", ST, "fp16", lambda: make_st(run, dev, True)))
    return out


def section_throughput(run: Run, sec: dict[str, Any]) -> None:
    rep, args = run.rep, run.args
    if not run.cuda and run.device.startswith("cuda"):
        raise Skip(f"CUDA is not available on this machine (--device {run.device})")
    rep.line(
        f"{len(run.texts['query'])} records on {run.device}; warm-up pass, then best of {args.rounds}; "
        f"{ST}: SentenceTransformer(dir).encode(texts, batch_size=B); {ES}: HuggingFaceEmbedding("
        f"backend='torch', precision=P, embed_batch_size=B).embed(texts, 'text'), no cache."
        + (f" fp16/bf16 on the first {args.half_n} records only (--half-n)." if args.half_n else "")
    )
    rep.line()
    for label, _lib, p, make in backends(run):
        if rep.left() - args.reserve_s < args.backend_need_s:
            run.results[label] = {"skipped": f"budget ({rep.left():.0f} s left)"}
            rep.line(f"SKIPPED {label}: {rep.left():.0f} s of budget left")
            continue
        try:
            measure_backend(run, label, make, None if p == "fp32" else args.half_n)
        except Exception as e:
            run.results[label] = {**run.results.get(label, {}), "error": f"{type(e).__name__}: {e}"}
            rep.line(f"ERROR in {label}: {type(e).__name__}: {e}")
            print(traceback.format_exc()[-2000:], flush=True)
    rows = []
    base = run.results.get(f"{ST} fp32", {}).get("throughput", {})
    for name in FIELDS:
        for bs in args.batch_sizes:
            key = f"{name}@{bs}"
            for label, lib, p, _ in backends(run):
                tp = run.results.get(label, {}).get("throughput", {}).get(key)
                if tp is None:
                    continue
                ratio = tp / base[key] if base.get(key) else None
                rows.append([name, bs, lib, p, f"{tp:,.0f}", f"{ratio:.2f}x" if ratio else None])
    rep.table(["field", "batch", "backend", "precision", "texts/s", f"vs {ST} fp32"], rows)
    for label, res in run.results.items():
        extra = [res.get("placed"), *(res.get("notes") or []), res.get("error"), res.get("skipped")]
        rep.line(f"- {label}: " + "; ".join(str(x) for x in extra if x))
    rep.line()
    sec["results"] = {k: {kk: vv for kk, vv in v.items()} for k, v in run.results.items()}


# -- c. fidelity --------------------------------------------------------------------------------------------
def section_fidelity(run: Run, sec: dict[str, Any]) -> None:
    rep, args = run.rep, run.args
    make = make_st(run, "cpu", False)
    st_cpu, bulk = make[0], make[1]
    t0 = time.perf_counter()
    texts = run.texts["text"][: args.ref_n]
    done: list[np.ndarray] = []
    chunk = 250
    for i in range(0, len(texts), chunk):  # the long field in chunks, stopping at --ref-max-s
        if done and (time.perf_counter() - t0 > args.ref_max_s or rep.left() < 8):
            break
        done.append(bulk(texts[i : i + chunk], 32))
    ref_t = np.concatenate(done)
    m = len(ref_t)
    ref_q = bulk(run.texts["query"][:m], 32)
    run.ref = {"query": ref_q, "text": ref_t}
    del st_cpu, make
    sec["ref_records"] = m
    sec["ref_s"] = round(time.perf_counter() - t0, 2)
    rep.line(
        f"Reference: {ST} fp32 on CPU ({args.cpu_threads} torch threads), first {m} records of each field "
        f"({sec['ref_s']} s). Cosine of each vector to the reference vector of the same text; recall of "
        f"query i → text i among the first {m} texts."
    )
    rep.line()
    rows: list[list[Any]] = [
        [
            f"{ST} (reference)",
            "cpu",
            "fp32",
            "1",
            "0",
            "1",
            "0",
            f"{recall(ref_q, ref_t, 1):.1f}",
            f"{recall(ref_q, ref_t, 10):.1f}",
        ]
    ]
    fid: dict[str, Any] = {
        f"{ST} cpu fp32": {"recall@1": recall(ref_q, ref_t, 1), "recall@10": recall(ref_q, ref_t, 10)},
    }
    for label, _lib, p, _ in backends(run):
        vecs = run.vectors.get(label) or {}
        if not all(f in vecs for f in FIELDS):
            continue
        k = min(m, len(vecs["query"]), len(vecs["text"]))  # fp16/bf16 may have run on fewer (--half-n)
        cq = row_cos(vecs["query"][:k], ref_q[:k])
        ct = row_cos(vecs["text"][:k], ref_t[:k])
        r1 = recall(vecs["query"][:m], vecs["text"][:m], 1) if k == m else None
        r10 = recall(vecs["query"][:m], vecs["text"][:m], 10) if k == m else None
        fid[label] = {
            "min_cos_query": float(cq.min()),
            "mean_cos_query": float(cq.mean()),
            "min_cos_text": float(ct.min()),
            "mean_cos_text": float(ct.mean()),
            "recall@1": r1,
            "recall@10": r10,
            "records": k,
        }
        rows.append([label, run.device, p, _cos(cq.min()), _gap(cq), _cos(ct.min()), _gap(ct), _pct(r1), _pct(r10)])
    sec["fidelity"] = fid
    rep.table(
        [
            "backend",
            "device",
            "precision",
            "min cos q",
            "mean 1-cos q",
            "min cos text",
            "mean 1-cos text",
            "R@1 %",
            "R@10 %",
        ],
        rows,
    )


# -- d. latency, e. memory (measured in b) -------------------------------------------------------------------
def section_latency(run: Run, sec: dict[str, Any]) -> None:
    rep = run.rep
    base = run.results.get(f"{ST} fp32", {}).get("p50_ms")
    rows = []
    for label, lib, p, _ in backends(run):
        res = run.results.get(label, {})
        if "p50_ms" not in res:
            continue
        ratio = f"{base / res['p50_ms']:.2f}x" if base else None
        rows.append([lib, p, f"{res['p50_ms']:.2f}", f"{res['p99_ms']:.2f}", ratio])
    if not rows:
        raise Skip("no latency measured (see section b)")
    n = next(iter(r.get("latency_n") for r in run.results.values() if r.get("latency_n")))
    rep.line(
        f"{n} single queries after 10 warm-ups on {run.device}: {ES} get_query_embedding(q), {ST} encode(q). "
        f"Ratio: {ST} fp32 p50 / this p50 (>1: faster)."
    )
    rep.line()
    rep.table(["backend", "precision", "p50 ms", "p99 ms", f"speed vs {ST} fp32"], rows)
    sec["rows"] = rows


def section_memory(run: Run, sec: dict[str, Any]) -> None:
    rep = run.rep
    if not run.cuda:
        rep.line(f"No CUDA memory statistics on {run.device}: load times only.")
    rows = []
    for label, lib, p, _ in backends(run):
        res = run.results.get(label, {})
        if "load_s" not in res:
            continue
        peak, base = res.get("mem_peak_mb"), res.get("mem_base_mb")
        loaded = res.get("mem_loaded_mb")
        rows.append(
            [
                lib,
                p,
                f"{res['load_s']:.1f}",
                f"{loaded:,.0f}" if loaded is not None else None,
                f"{peak:,.0f}" if peak is not None else None,
                f"{peak - base:,.0f}" if peak is not None and base is not None else None,
            ]
        )
    if not rows:
        raise Skip("no backend measured (see section b)")
    rep.line(
        "torch.cuda.max_memory_allocated over load + throughput + latency of each backend alone "
        "(previous backends freed, peak stats reset); MB = MiB."
    )
    rep.line()
    rep.table(["backend", "precision", "load s", "allocated after load MB", "peak MB", "peak over start MB"], rows)
    sec["rows"] = rows


# -- f. CLIP ------------------------------------------------------------------------------------------------
def build_tiny_clip(path: Path, seed: int = 0) -> Path:
    """A tiny random CLIPModel + CLIPProcessor, built as tests/clip/conftest.py builds its fixture."""
    import string

    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    symbols = list(string.ascii_lowercase + string.digits + string.punctuation)
    tokens = ["<|startoftext|>", "<|endoftext|>"]
    for s in symbols:
        tokens += [s, s + "</w>"]
    merges = [("c", "a"), ("ca", "t</w>"), ("d", "o"), ("do", "g</w>")]
    tokens += ["ca", "cat</w>", "do", "dog</w>"]
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = CLIPTokenizer(vocab=vocab, merges=merges)
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tok,
    )
    tower = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4}
    config = CLIPConfig(
        text_config={
            **tower,
            "vocab_size": len(tok.get_vocab()),
            "max_position_embeddings": 16,
            "bos_token_id": tok.bos_token_id,
            "eos_token_id": tok.eos_token_id,
            "pad_token_id": tok.pad_token_id,
        },
        vision_config={**tower, "image_size": 32, "patch_size": 8},
        projection_dim=24,
    )
    torch.manual_seed(seed)
    CLIPModel(config).eval().save_pretrained(path)
    processor.save_pretrained(path)
    return path


def section_clip(run: Run, sec: dict[str, Any]) -> None:
    from PIL import Image

    from embedstack.providers.clip import ClipEmbedding

    rep = run.rep
    if not run.cuda and run.device.startswith("cuda"):
        raise Skip(f"CUDA is not available on this machine (--device {run.device})")
    path = build_tiny_clip(run.tmpdir("embedstack-tiny-clip-") / "model")
    rng = np.random.default_rng(0)
    images = []
    for i in range(8):
        arr = rng.integers(0, 256, size=(40 + 4 * i, 48, 3), dtype=np.uint8)
        arr[:, : 8 + 4 * i] = (30 * i, 255 - 30 * i, 128)  # a solid band: images differ in structure too
        img = Image.fromarray(arr, "RGB")
        if i % 2:  # every other one as PNG bytes, to run the decode path as well
            buf = io.BytesIO()
            img.save(buf, format="PNG")
            images.append(buf.getvalue())
        else:
            images.append(img)
    texts = ["a cat", "a dog", "cat and dog", "dogs!", "the cat sat on the mat", "123 cats", "d-o-g", "c a t"]
    out: dict[str, dict[str, np.ndarray]] = {}
    placed = {}
    for dev in (run.device, "cpu"):
        model = ClipEmbedding(model_name=str(path), device=dev).load()
        loaded = model._model()
        placed[dev] = f"{next(loaded.model.parameters()).device}/{loaded.model.dtype}"
        out[dev] = {"image": model.embed(images, "image"), "text": model.embed(texts, "text")}
        del model, loaded
    rows = []
    for role in ("image", "text"):
        a, b = out[run.device][role], out["cpu"][role]
        gap = float((1 - row_cos(a, b)).max())
        diff = float(np.abs(a - b).max())
        rows.append([role, len(a), a.shape[1], f"{gap:.2e}", f"{diff:.2e}"])
        sec[role] = {"max_1_minus_cos": gap, "max_abs_diff": diff}
    sec["placed"] = placed
    rep.line(
        f"Tiny random CLIP (as tests/clip/conftest.py); ClipEmbedding(device={run.device!r}) vs device='cpu'; "
        f"weights on {placed}."
    )
    rep.line()
    rep.table(["role", "items", "dim", f"max (1 - cos) {run.device} vs cpu", "max abs diff"], rows)


# -- g. ONNX on CPU -----------------------------------------------------------------------------------------
def section_onnx(run: Run, sec: dict[str, Any]) -> None:
    from embedstack.providers.huggingface import HuggingFaceEmbedding
    from embedstack.providers.huggingface import onnx_encoder as _onnx

    rep, args, torch = run.rep, run.args, run.torch
    threads = args.cpu_threads
    os.environ["EMBEDSTACK_CACHE_DIR"] = str(run.tmpdir("embedstack-onnx-cache-"))
    _onnx.physical_cores = lambda: threads  # the provider passes threads=None → this; same count as torch
    torch.set_num_threads(threads)
    texts = run.texts["text"][: args.onnx_n]
    rows: list[list[Any]] = []
    res: dict[str, Any] = {}
    ref: np.ndarray | None = None
    peers: list[tuple[str, str, Callable[[], Bulk]]] = [
        (f"{ST} (torch cpu)", "fp32", lambda: make_st(run, "cpu", False)[1]),
    ]
    for p in ("fp32", "int8"):

        def factory(p: str = p) -> Bulk:
            model = HuggingFaceEmbedding(model_name=str(run.model_dir), backend="onnx", precision=p).load()
            return lambda items, bs: model.embed(items, "text")

        peers.append((f"{ES} onnx", p, factory))
    for label, p, factory in peers:
        if rep.left() < 15:
            rep.line(f"SKIPPED {label} {p}: {rep.left():.0f} s of budget left")
            continue
        t = time.perf_counter()
        bulk = factory()
        load_s = time.perf_counter() - t
        bulk(texts[:64], 32)  # warm-up
        best, out = best_of(run, lambda bulk=bulk: bulk(texts, 32), args.rounds)
        vecs = np.asarray(out, dtype=np.float32)
        if ref is None:
            ref = vecs
        tp = len(texts) / best
        cos = row_cos(vecs, ref)
        res[f"{label} {p}"] = {"load_s": load_s, "texts_per_s": tp, "min_cos": float(cos.min())}
        base = res.get(f"{ST} (torch cpu) fp32", {}).get("texts_per_s")
        ratio = f"{tp / base:.2f}x" if base else None
        rows.append([label, p, f"{load_s:.1f}", f"{tp:,.1f}", ratio, _cos(cos.min()), _gap(cos)])
        del bulk
        gc.collect()
    sec["results"] = res
    rep.line(
        f"'text' field, first {len(texts)} records, CPU, {threads} threads for torch and ONNX Runtime "
        f"({_onnx.__name__}.physical_cores → {threads}), warm-up then best of {args.rounds}; {ST} batch 32, "
        f"{ES} default embed_batch_size (16; ONNX batches by token budget inside). 'load s' for onnx includes "
        f"building the graph (export / quantisation) into a fresh EMBEDSTACK_CACHE_DIR."
    )
    rep.line()
    rep.table(["backend", "precision", "load s", "texts/s", f"vs {ST} cpu", "min cos vs ST", "mean 1-cos vs ST"], rows)


def section_defaults(run: Run, sec: dict[str, Any]) -> None:
    """Out-of-the-box settings: HuggingFaceEmbedding() picks the device and, on a GPU, 128-text batches."""
    from embedstack.providers.huggingface import HuggingFaceEmbedding

    rep, args = run.rep, run.args
    model = HuggingFaceEmbedding(model_name=str(run.model_dir), backend="torch").load()
    encoder = model._loaded()
    _, st_bulk, _, st_desc = make_st(run, args.device, False)
    rows: list[list[Any]] = []
    res: dict[str, Any] = {"device": str(getattr(encoder, "device", "?")), "embed_batch_size": model.embed_batch_size}
    for kind in ("query", "text"):
        texts = run.texts[kind]
        st_bulk(texts[:64], 32)
        model.embed(texts[:64], kind)
        st_s, _ = best_of(run, lambda texts=texts: st_bulk(texts, 32), args.rounds)
        es_s, _ = best_of(run, lambda texts=texts, kind=kind: model.embed(texts, kind), args.rounds)
        res[kind] = {"st_per_s": len(texts) / st_s, "embedstack_per_s": len(texts) / es_s}
        rows.append([kind, f"{len(texts) / st_s:,.0f}", f"{len(texts) / es_s:,.0f}", f"{st_s / es_s:.2f}x"])
    sec["results"] = res
    rep.line(
        f"Defaults only: HuggingFaceEmbedding(model_name=dir, backend='torch') landed on {res['device']} with "
        f"embed_batch_size={model.embed_batch_size}; {ST} encode(texts) at its default batch 32 ({st_desc})."
    )
    rep.line()
    rep.table(["field", f"{ST} texts/s", f"{ES} texts/s", "ratio"], rows)


# -- main ---------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    ap.add_argument("--model-dir", type=Path, default=Path(".gpu/model"), help="sentence-transformers directory")
    ap.add_argument("--data", type=Path, default=Path(".gpu/data.jsonl"), help="jsonl with 'query' and 'text'")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "out"), help="summary folder")
    ap.add_argument("--device", default="cuda", help="torch device for sections b-f (cpu: a dry run)")
    ap.add_argument("--n", type=int, default=2000, help="records for throughput and recall")
    ap.add_argument("--batch-sizes", type=lambda s: [int(x) for x in s.split(",")], help="default 32,128 (cpu: 32)")
    ap.add_argument("--rounds", type=int, help="timed passes after the warm-up, best counts (default 3; cpu: 1)")
    ap.add_argument("--latency", type=int, help="single queries timed (default 200; cpu: 20)")
    ap.add_argument("--ref-n", type=int, default=2000, help="records embedded on CPU as the fidelity reference")
    ap.add_argument("--ref-max-s", type=float, default=30.0, help="stop the CPU reference after this long")
    ap.add_argument("--half-n", type=int, help="records for fp16/bf16 throughput (default all; cpu: 10)")
    ap.add_argument("--onnx-n", type=int, help="'text' records for the ONNX section (default 500; cpu: 50)")
    ap.add_argument("--cpu-threads", type=int, default=os.cpu_count() or 1, help="torch and ONNX CPU threads")
    ap.add_argument("--budget-s", type=float, default=200.0, help="overall time budget; later sections skip")
    ap.add_argument("--sections", default="abcdefgh", help="which sections to run (a always runs)")
    ap.add_argument("--backend-need-s", type=float, default=12.0, help="budget a device backend needs to start")
    ap.add_argument("--reserve-s", type=float, default=25.0, help="budget section b leaves for sections c and f")
    args = ap.parse_args(argv)
    dry = args.device == "cpu"  # a dry run on a small CPU: every code path, little work
    for name, full, small in (
        ("batch_sizes", [32, 128], [32]),
        ("rounds", 3, 1),
        ("latency", 200, 20),
        ("onnx_n", 500, 50),
        ("half_n", None, 10),
    ):
        if getattr(args, name) is None:
            setattr(args, name, small if dry else full)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rep = Report(args.out, args.budget_s)

    def hard_stop(signum: int, frame: Any) -> None:
        raise TimeoutError(f"hard stop {HARD_GRACE_S} s after the {args.budget_s:.0f} s budget")

    signal.signal(signal.SIGALRM, hard_stop)
    signal.alarm(int(args.budget_s + HARD_GRACE_S))
    logging.getLogger("embedstack").setLevel(logging.ERROR)
    try:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()  # "Loading weights" bars
    except Exception:
        pass
    rep.data["args"] = {k: str(v) for k, v in vars(args).items()}
    rep.line(f"`{' '.join([Path(sys.executable).name, *sys.argv])}`")
    rep.line()
    run = Run(args, rep, load_data(args.data, args.n))
    rep.run("a", "Environment", 0, lambda sec: section_env(run, sec))
    ready = run.torch is not None and run.model_dir is not None
    if not ready:
        rep.line("Environment failed: nothing else can run.")
    else:
        steps: list[tuple[str, str, float, Callable[[dict[str, Any]], None]]] = [
            ("b", f"Throughput on {args.device}", 30, lambda sec: section_throughput(run, sec)),
            ("c", "Fidelity vs sentence-transformers CPU fp32", 15, lambda sec: section_fidelity(run, sec)),
            ("d", f"Single-query latency on {args.device}", NO_NEED, lambda sec: section_latency(run, sec)),
            ("e", f"Peak memory on {args.device}", NO_NEED, lambda sec: section_memory(run, sec)),
            ("f", f"ClipEmbedding {args.device} vs cpu", 10, lambda sec: section_clip(run, sec)),
            ("g", "ONNX backend on CPU", 60, lambda sec: section_onnx(run, sec)),
            ("h", f"Defaults on {args.device}", 15, lambda sec: section_defaults(run, sec)),
        ]
        for key, title, need, fn in steps:
            if key in args.sections:
                rep.run(key, title, need, fn)
    signal.alarm(0)
    for path in run.scratch:
        shutil.rmtree(path, ignore_errors=True)
    status = {k: v.get("status") for k, v in rep.data["sections"].items()}
    rep.data["status"] = status
    rep.line(f"Done in {rep.elapsed():.0f} s: {status}; summary in {args.out}/summary.md and summary.json")
    rep.save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
