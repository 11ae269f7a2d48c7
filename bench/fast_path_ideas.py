"""Ideas for issue 23's speed goals, each against the shipped fast path in one process (A/B in alternating rounds,
with a pause before each timing so the other runtime's spinning threads stop), on the bundled all-MiniLM-L6-v2 and
the first N records of bench/data/packages-retrieval.jsonl, batched as OnnxEncoder batches them (token budget 1,024).

    flock /tmp/bench.lock .venv/bin/python bench/fast_path_ideas.py gelu       # fp32: FastGelu (tanh) vs exact Gelu
    flock /tmp/bench.lock .venv/bin/python bench/fast_path_ideas.py bf16-hint  # OpenVINO int8: other ops in bf16
    flock /tmp/bench.lock .venv/bin/python bench/fast_path_ideas.py streams    # 2 runs x 1 thread vs 1 run x 2

- gelu: ONNX Runtime's fused fp32 graph with `enable_gelu_approximation` (FastGelu) against the shipped graph
  (exact erf Gelu): texts tokens/s and the worst token cosine between the two graphs.
- bf16-hint: the NNCF int8 graph on OpenVINO with INFERENCE_PRECISION_HINT bf16 (the ops left in floating point:
  LayerNorm, GELU, residual adds) against f32: each one's op time by kernel (OpenVINO's PERF_COUNT), tokens/s.
- streams: ONNX Runtime fp32 and OpenVINO int8 with two runs at once of one thread each (two callers of one ORT
  session; OpenVINO NUM_STREAMS=2 and two infer requests) against one run of two threads: queries and texts
  tokens/s, one-query p50.
- int8-limits: the bare graphs, no embedstack around them, against sentence-transformers in the same rounds: the
  shipped NNCF int8 graph; with two streams and the bf16 hint together; an NNCF graph that leaves the attention
  MatMuls in floating point (so OpenVINO runs its attention in bf16); and the OpenVINO fp32 graph. Each one's op
  profile (FullyConnected against the fused attention Subgraph) and its mean cosine to the fp32 graph on the texts:
  how far the fast mode and the fp32 path can go on this machine, whatever runs around the graph.
- budget: the bare NNCF int8 graph fed runs of at most 512, 1,024 (OnnxEncoder's default), 2,048 and 4,096 padded
  tokens: queries and texts tokens/s.
"""

from __future__ import annotations

import argparse
import collections
import os
import queue
import statistics
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from _common import DATA, bundled_model_dir, columns

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore", message=".*truncated")

Feeds = dict[str, np.ndarray]
Run = Callable[[Feeds], Any]


class Field(list):  # type: ignore[type-arg]
    """A field's batches, carrying its texts (for sentence-transformers, which tokenises them itself)."""

    texts: list[str]


def batched(enc: Any, tokens: list[Any], texts: list[str]) -> Field:
    """`texts` (tokenised as `tokens`) in the runs `enc` makes: longest first, within its token budget."""
    lengths = np.array([len(t.ids) for t in tokens])
    batches = Field(enc._feeds(tokens, rows) for rows in enc._batches(lengths))
    batches.texts = texts
    return batches


def prepared(args: argparse.Namespace) -> tuple[dict[str, Path], list[Feeds], list[Feeds], list[Feeds], int, int]:
    """The cached graphs (ORT fp32, OpenVINO plain and NNCF int8), budgeted query and text batches, single queries,
    and the real token counts of the queries and texts."""
    from embedstack.providers.huggingface.onnx_encoder import OnnxEncoder

    cache = (Path(args.cache_dir) if args.cache_dir else Path(tempfile.mkdtemp(prefix="fast-path-ideas-"))) / "onnx"
    encoders = {
        "fp32": OnnxEncoder(bundled_model_dir(), cache_dir=cache),
        "plain": OnnxEncoder(bundled_model_dir(), runtime="openvino", cache_dir=cache),
        "nncf-int8": OnnxEncoder(bundled_model_dir(), precision="int8", runtime="openvino", cache_dir=cache),
    }
    graphs = {k: e.graph_path for k, e in encoders.items()}
    enc = encoders["fp32"]
    data = columns(args.data, args.n)
    out: list[Field] = []
    counts = []
    for field in ("query", "text"):
        tokens = enc.text_tokenizer.tokenize(data[field])
        counts.append(sum(len(t.ids) for t in tokens))
        out.append(batched(enc, tokens, data[field]))
    singles = [enc._feeds(enc.text_tokenizer.tokenize([q]), [0]) for q in data["query"][: args.latency]]
    return graphs, out[0], out[1], singles, counts[0], counts[1]


def ort_session(path: Path, threads: int) -> Run:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return lambda f: session.run(None, {k: f[k] for k in names})


def ov_compiled(path: Path, hint: str, threads: int, streams: int = 1, profile: bool = False) -> Any:
    import openvino as ov

    from embedstack.providers.huggingface.onnx_encoder import openvino_core

    config: dict[str, Any] = {
        "INFERENCE_NUM_THREADS": threads,
        "PERFORMANCE_HINT": "THROUGHPUT" if streams > 1 else "LATENCY",
        "INFERENCE_PRECISION_HINT": hint,
    }
    if streams > 1:
        config["NUM_STREAMS"] = streams
    if profile:
        config["PERF_COUNT"] = True
    return openvino_core(ov).compile_model(str(path), "CPU", config)


def ov_runs(compiled: Any, requests: int) -> Run:
    """A thread-safe run over `requests` infer requests (each caller takes a free one)."""
    idle: queue.SimpleQueue[Any] = queue.SimpleQueue()
    for _ in range(requests):
        idle.put(compiled.create_infer_request())
    names = [p.get_any_name() for p in compiled.inputs]

    def run(f: Feeds) -> Any:
        request = idle.get()
        try:
            return request.infer({k: f[k] for k in names})
        finally:
            idle.put(request)

    return run


def bulk(run: Run, callers: int) -> Callable[[list[Feeds]], None]:
    """Every batch through `run`, from `callers` threads at once (1: here)."""

    def go(batches: list[Feeds]) -> None:
        if callers == 1:
            for f in batches:
                run(f)
            return
        todo: queue.SimpleQueue[Feeds] = queue.SimpleQueue()
        for f in batches:
            todo.put(f)

        def worker() -> None:
            while True:
                try:
                    f = todo.get_nowait()
                except queue.Empty:
                    return
                run(f)

        threads = [threading.Thread(target=worker) for _ in range(callers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    return go


def race(variants: dict[str, tuple[Run, Callable[[list[Feeds]], None]]], work: dict[str, Any], rounds: int) -> None:
    """Alternating rounds of every variant: bulk tokens/s per field (best and median), one-query p50."""
    times: dict[str, dict[str, list[float]]] = {k: collections.defaultdict(list) for k in variants}
    names = list(variants)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            one, many = variants[name]
            for field in ("query", "text"):
                time.sleep(0.3)
                many(work[field][:2])
                t0 = time.perf_counter()
                many(work[field])
                times[name][field].append(time.perf_counter() - t0)
            time.sleep(0.3)
            lat = []
            for f in work["singles"]:
                t0 = time.perf_counter()
                one(f)
                lat.append(time.perf_counter() - t0)
            times[name]["p50"].append(statistics.median(lat[10:]))
    print("\n| variant | query tokens/s best / median | text tokens/s best / median | 1-query p50 ms (best round) |")
    print("|---|--:|--:|--:|")
    for name in names:
        t = times[name]
        cells = [
            f"{work[f + '_tokens'] / min(t[f]):,.0f} / {work[f + '_tokens'] / statistics.median(t[f]):,.0f}"
            for f in ("query", "text")
        ]
        print(f"| {name} | {cells[0]} | {cells[1]} | {1000 * min(t['p50']):.2f} |")


def gelu(graphs: dict[str, Path], work: dict[str, Any], rounds: int, threads: int) -> None:
    import logging

    from onnxruntime.transformers import optimizer
    from onnxruntime.transformers.fusion_options import FusionOptions

    logging.disable(logging.WARNING)
    options = FusionOptions("bert")
    options.enable_gelu_approximation = True
    approx = graphs["fp32"].with_name("fastgelu-experiment.onnx")
    model = optimizer.optimize_model(
        str(graphs["fp32"]), model_type="bert", num_heads=0, hidden_size=0, opt_level=0, optimization_options=options
    )
    model.save_model_to_file(str(approx))
    exact, fast = ort_session(graphs["fp32"], threads), ort_session(approx, threads)
    worst = 1.0
    for f in work["text"]:
        keep = f["attention_mask"].astype(bool)
        a, b = (np.asarray(s(f)[0])[keep].astype(np.float64) for s in (exact, fast))
        cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        worst = min(worst, float(cos.min()))
    approx.unlink()
    print(f"FastGelu vs exact Gelu, worst token cosine over the texts: {worst:.7f} (export bar: 0.99999)")
    race({"exact Gelu (shipped)": (exact, bulk(exact, 1)), "FastGelu": (fast, bulk(fast, 1))}, work, rounds)


def bf16_hint(graphs: dict[str, Path], work: dict[str, Any], rounds: int, threads: int) -> None:
    variants = {}
    for hint in ("f32", "bf16"):
        compiled = ov_compiled(graphs["nncf-int8"], hint, threads, profile=True)
        request = compiled.create_infer_request()
        names = [p.get_any_name() for p in compiled.inputs]
        best: tuple[float, collections.Counter[str]] | None = None
        for _ in range(5):
            for f in work["text"][:4]:
                request.infer({k: f[k] for k in names})
            ops: collections.Counter[str] = collections.Counter()
            for f in work["text"][:4]:
                request.infer({k: f[k] for k in names})
                for info in request.profiling_info:
                    ops[f"{info.node_type} ({info.exec_type})"] += info.real_time.total_seconds() * 1e3
            total = sum(ops.values())
            if best is None or total < best[0]:
                best = (total, ops)
        assert best is not None
        print(f"\nint8 graph, hint {hint}: op time of 4 text batches {best[0]:.1f} ms (least of 5), by kernel:")
        for op, ms in best[1].most_common(8):
            print(f"  {op}: {ms:.1f} ms ({ms / best[0]:.0%})")
        run = ov_runs(ov_compiled(graphs["nncf-int8"], hint, threads), 1)
        variants[f"openvino int8, hint {hint}" + (" (shipped)" if hint == "f32" else "")] = (run, bulk(run, 1))
    race(variants, work, rounds)


def streams(graphs: dict[str, Path], work: dict[str, Any], rounds: int, threads: int) -> None:
    one_ort = ort_session(graphs["fp32"], threads)
    single_ort = ort_session(graphs["fp32"], max(1, threads // 2))
    one_ov = ov_runs(ov_compiled(graphs["nncf-int8"], "f32", threads), 1)
    two_ov = ov_runs(ov_compiled(graphs["nncf-int8"], "f32", threads, streams=2), 2)
    race(
        {
            f"onnx fp32, 1 run x {threads} threads (shipped)": (one_ort, bulk(one_ort, 1)),
            f"onnx fp32, 2 runs x {max(1, threads // 2)} thread": (single_ort, bulk(single_ort, 2)),
            f"openvino int8, 1 run x {threads} threads (shipped)": (one_ov, bulk(one_ov, 1)),
            "openvino int8, 2 streams": (two_ov, bulk(two_ov, 2)),
        },
        work,
        rounds,
    )


def _attention_matmuls(path: Path) -> list[str]:
    """The MatMuls of two activations (scores and context: attention), not of an activation and a weight."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    consts = {i.name for i in model.graph.initializer}
    consts |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and not consts.intersection(n.input)]


def _op_profile(compiled: Any, batches: list[Feeds]) -> str:
    """Each kernel kind's share of the op time over `batches` (the least of 3 passes)."""
    request = compiled.create_infer_request()
    names = [p.get_any_name() for p in compiled.inputs]
    best: tuple[float, collections.Counter[str]] | None = None
    for _ in range(3):
        ops: collections.Counter[str] = collections.Counter()
        for f in batches:
            request.infer({k: f[k] for k in names})
            for info in request.profiling_info:
                ops[str(info.node_type)] += info.real_time.total_seconds()
        if best is None or sum(ops.values()) < best[0]:
            best = (sum(ops.values()), ops)
    assert best is not None
    return ", ".join(f"{op} {t / best[0]:.0%}" for op, t in best[1].most_common(4))


def int8_limits(graphs: dict[str, Path], work: dict[str, Any], rounds: int, threads: int) -> None:
    from sentence_transformers import SentenceTransformer

    from embedstack.providers.huggingface import onnx_export as ox
    from embedstack.providers.huggingface.onnx_encoder import OnnxEncoder

    plain = graphs["plain"]
    loose = plain.with_name("int8-attention-fp-experiment.onnx")
    if not loose.exists():
        encoder = OnnxEncoder(bundled_model_dir(), precision="int8", runtime="openvino", cache_dir=plain.parent.parent)
        ox._build_nncf(plain, loose, encoder._nncf_calibration_feeds(), _attention_matmuls(plain))
    st = SentenceTransformer(str(bundled_model_dir()), device="cpu")
    texts = {id(work[f]): work[f].texts for f in ("query", "text")}

    def st_many(batches: list[Feeds]) -> None:
        st.encode(texts.get(id(batches), work["query"].texts[:8]), batch_size=32)

    def st_one(f: Feeds) -> None:
        st.encode(work["query"].texts[:1])

    builds = {
        "openvino int8, shipped graph and settings": (graphs["nncf-int8"], "f32", 1),
        "openvino int8, 2 streams + bf16 hint": (graphs["nncf-int8"], "bf16", 2),
        "openvino int8, attention left in floating point, 2 streams + bf16 hint": (loose, "bf16", 2),
        "openvino fp32": (plain, "f32", 1),
    }
    reference = ov_runs(ov_compiled(plain, "f32", threads), 1)
    variants: dict[str, tuple[Run, Callable[[list[Feeds]], None]]] = {
        "sentence-transformers encode (the 1x; p50 of one query text)": (st_one, st_many)
    }
    print("\nop profiles (share of op time, 4 text batches) and mean cosine to fp32 on the texts:")
    for name, (path, hint, streams) in builds.items():
        run = ov_runs(ov_compiled(path, hint, threads, streams), streams)
        variants[name] = (run, bulk(run, streams))
        cos = []
        for f in work["text"]:
            keep = f["attention_mask"][:, :, None]
            a, b = (((np.asarray(r(f)[0]) * keep).sum(1) / keep.sum(1)) for r in (reference, run))
            cos.append((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1))
        profile = _op_profile(ov_compiled(path, hint, threads, profile=True), work["text"][:4])
        print(f"  {name}: {profile}; cosine {np.concatenate(cos).mean():.5f}")
    race(variants, work, rounds)
    print(
        "\n6x sentence-transformers needs 6 x its tokens/s above; 90% of the fp32 ceiling needs the fp32 graph's "
        "attention Subgraph (~4% of its FLOPs) to run as fast as its FullyConnected kernels."
    )


def budget(graphs: dict[str, Path], work: dict[str, Any], rounds: int, threads: int) -> None:
    from embedstack.providers.huggingface.onnx_encoder import OnnxEncoder

    enc = OnnxEncoder(bundled_model_dir(), cache_dir=graphs["fp32"].parent.parent)
    tokens = {f: enc.text_tokenizer.tokenize(work[f].texts) for f in ("query", "text")}
    feeds: dict[int, dict[str, Field]] = {}
    for size in (512, 1024, 2048, 4096):
        enc.token_budget = size
        feeds[size] = {f: batched(enc, tokens[f], work[f].texts) for f in tokens}
    many = bulk(ov_runs(ov_compiled(graphs["nncf-int8"], "f32", threads), 1), 1)
    times: dict[tuple[int, str], list[float]] = collections.defaultdict(list)
    for _ in range(rounds):
        for size, fields in feeds.items():
            for field, batches in fields.items():
                time.sleep(0.3)
                many(batches[:2])
                t0 = time.perf_counter()
                many(batches)
                times[size, field].append(time.perf_counter() - t0)
    print("\n| token budget (padded tokens per run) | query tokens/s best / median | text tokens/s best / median |")
    print("|--:|--:|--:|")
    for size in feeds:
        rates = {f: [work[f + "_tokens"] / t for t in times[size, f]] for f in ("query", "text")}
        cells = [f"{max(v):,.0f} / {statistics.median(v):,.0f}" for v in rates.values()]
        print(f"| {size:,}{' (default)' if size == 1024 else ''} | {cells[0]} | {cells[1]} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("idea", choices=["gelu", "bf16-hint", "streams", "int8-limits", "budget"])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("-n", type=int, default=300, help="records (default 300)")
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds (default 4)")
    parser.add_argument("--latency", type=int, default=100, help="single queries timed per round")
    parser.add_argument("--cache-dir", default="", help="as EMBEDSTACK_CACHE_DIR (default: a temp folder)")
    args = parser.parse_args()
    from embedstack.providers.huggingface.onnx_encoder import physical_cores

    threads = physical_cores()
    graphs, queries, texts, singles, nq, nt = prepared(args)
    work = {"query": queries, "text": texts, "singles": singles, "query_tokens": nq, "text_tokens": nt}
    print(f"{args.n} records ({nq} query and {nt} text tokens), {threads} threads, {args.rounds} rounds")
    ideas = {"gelu": gelu, "bf16-hint": bf16_hint, "streams": streams, "int8-limits": int8_limits, "budget": budget}
    ideas[args.idea](graphs, work, args.rounds, threads)


if __name__ == "__main__":
    main()
