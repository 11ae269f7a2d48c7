"""Local model throughput against the machine: every path's tokens/s and share of its matmul ceiling, same run.

Every path (sentence-transformers, embedstack torch, ONNX Runtime fp32 / int8, OpenVINO fp32 / bf16 / int8 and
the named fast modes) embeds the short "query" and the long "text" fields of the first N records of
bench/data/packages-retrieval.jsonl with the bundled all-MiniLM-L6-v2, each path in its own process
(bench/onnx_backend.py's workers: loaded once, same threads), interleaved round after round. Each round also
measures the machine's matmul ceilings on the model's own linear shapes (a token-budget block of rows through
the QKV, output and FFN weights): fp32 and bf16 (the best of torch and numpy / ONNX Runtime), int8 (the best of
torch._int_mm and ONNX Runtime's MatMulInteger, the kernel its int8 graphs run). A path's share of its ceiling
is its best arithmetic rate (the model's FLOPs for the real tokens, linear layers plus attention, over the wall
time) over the best matching ceiling of the run: on a shared box a run is only ever slowed down, so the best of
each is the least disturbed (a ceiling measured beside a path in one round can meet other load than the path did).
Ratios to sentence-transformers are medians over rounds of the same round's ratio; tokens/s are medians.
Quality: cosine to sentence-transformers, recall@10 of query->text retrieval and its change against fp32.

    flock /tmp/embedstack-cpu.lock .venv/bin/python bench/local_models.py                  # every path
    flock /tmp/embedstack-cpu.lock .venv/bin/python bench/local_models.py --ceilings-only  # the ceilings
    flock /tmp/embedstack-cpu.lock .venv/bin/python bench/local_models.py --peers          # vs llama-index
    flock /tmp/embedstack-cpu.lock .venv/bin/python bench/local_models.py --sweep   # batch sizes
    .venv/bin/python bench/local_models.py --padding   # padding when sorted by characters vs tokens

`--peers`: embedstack's default against sentence-transformers and llama-index's HuggingFaceEmbedding (package
llama-index-embeddings-huggingface, bench-only, at its defaults: embed_batch_size=10) in one process.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from _common import DATA, FIELDS, bundled_model_dir, columns, median_ratio, recall, row_cosines

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore", message=".*truncated")  # long "text" records: expected

Runner = Callable[[list[str], str], np.ndarray]


def timed(fn: Runner, items: list[str], role: str) -> tuple[float, np.ndarray]:
    fn(items[:64], role)  # warm-up (first-call allocations, thread pools, lazy init)
    t0 = time.perf_counter()
    out = fn(items, role)
    return time.perf_counter() - t0, np.asarray(out, dtype=np.float32)


def runners(model_dir: Path, with_llama: bool) -> dict[str, Runner]:
    from sentence_transformers import SentenceTransformer

    from embedstack import HuggingFaceEmbedding

    st = SentenceTransformer(str(model_dir), device="cpu")
    ours = HuggingFaceEmbedding(device="cpu").load()
    found: dict[str, Runner] = {
        "sentence-transformers encode (bs=32)": lambda items, role: st.encode(items, batch_size=32),
        f"embedstack HuggingFaceEmbedding (bs={ours.embed_batch_size})": lambda items, role: ours.embed(items, role),
    }
    if with_llama:
        try:
            from llama_index.embeddings.huggingface import HuggingFaceEmbedding as LlamaHF
        except ImportError:
            print("llama-index-embeddings-huggingface not installed: skipped")
        else:
            li = LlamaHF(model_name=str(model_dir), device="cpu")
            found[f"llama-index HuggingFaceEmbedding (bs={li.embed_batch_size})"] = lambda items, role: (
                li.get_text_embedding_batch(items)
            )
    return found


def sweep(queries: list[str], texts: list[str], repeats: int) -> None:
    from embedstack import HuggingFaceEmbedding

    model = HuggingFaceEmbedding(device="cpu").load()
    sizes = (4, 8, 16, 32, 64, 128)
    best: dict[tuple[int, int], float] = {}
    for _ in range(repeats):
        for bs in sizes:
            model.embed_batch_size = bs
            for f, items in enumerate((queries, texts)):
                model.embed(items[:8])
                t0 = time.perf_counter()
                model.embed(items)
                rate = len(items) / (time.perf_counter() - t0)
                best[bs, f] = max(best.get((bs, f), 0.0), rate)
    print(f"\n| embed_batch_size | query texts/s ({len(queries)}) | text texts/s ({len(texts)}) |")
    print("|---:|---:|---:|")
    for bs in sizes:
        print(f"| {bs} | {best[bs, 0]:.0f} | {best[bs, 1]:.1f} |")


def padding(queries: list[str], texts: list[str], batch_size: int = 16) -> None:
    """Padding (padded tokens / real tokens - 1) of batches of `batch_size` when the texts are sorted,
    longest first, by characters or by token count (what HuggingFaceEmbedding._plan sorts by)."""
    from embedstack import HuggingFaceEmbedding

    tokenizer = HuggingFaceEmbedding(device="cpu")._text_tokenizer()
    assert tokenizer is not None
    print(f"\n| field (batches of {batch_size}) | sorted by characters | sorted by tokens |")
    print("|---|---:|---:|")
    for field, items in (("query", queries), ("text", texts)):
        lengths = np.array([len(t.ids) for t in tokenizer.tokenize(items)])
        cells = []
        for key in (np.array([len(t) for t in items]), lengths):
            order = np.argsort(-key, kind="stable")
            chunks = [lengths[order[i : i + batch_size]] for i in range(0, len(order), batch_size)]
            padded = sum(int(c.max()) * len(c) for c in chunks)
            cells.append(f"{padded / lengths.sum() - 1:.1%}")
        print(f"| {field} | {cells[0]} | {cells[1]} |")


# -- matmul ceilings ---------------------------------------------------------------------------------
def linear_shapes(model_dir: Path) -> list[tuple[int, int]]:
    """(in, out) of one layer's linear weights: the fused QKV projection, the attention output, the FFN."""
    cfg = json.loads((model_dir / "config.json").read_text())
    h, inner = int(cfg["hidden_size"]), int(cfg["intermediate_size"])
    return [(h, 3 * h), (h, h), (h, inner), (inner, h)]


def _rate(run: Callable[[], object], flop: float, seconds: float = 0.4) -> float:
    """GFLOP/s of `run` (which does `flop` operations): the best of several timed bursts after a warm-up."""
    for _ in range(3):
        run()
    best = float("inf")
    end = time.perf_counter() + seconds
    while True:
        t0 = time.perf_counter()
        for _ in range(5):
            run()
        best = min(best, (time.perf_counter() - t0) / 5)
        if time.perf_counter() > end:
            break
    return flop / best / 1e9


def _ort_matmul(k: int, n: int, rows: int, threads: int, int8: bool) -> Callable[[], object]:
    """A one-node ONNX Runtime graph: fp32 MatMul, or MatMulInteger (u8 activations x s8 weights)."""
    import onnxruntime as ort

    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if int8:
        weight = numpy_helper.from_array(rng.integers(-128, 128, (k, n)).astype(np.int8), "W")
        node = helper.make_node("MatMulInteger", ["A", "W"], ["Y"])
        types = (TensorProto.UINT8, TensorProto.INT32)
        feed = rng.integers(0, 256, (rows, k)).astype(np.uint8)
    else:
        weight = numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32), "W")
        node = helper.make_node("MatMul", ["A", "W"], ["Y"])
        types = (TensorProto.FLOAT, TensorProto.FLOAT)
        feed = rng.standard_normal((rows, k)).astype(np.float32)
    graph = helper.make_graph(
        [node],
        "gemm",
        [helper.make_tensor_value_info("A", types[0], [rows, k])],
        [helper.make_tensor_value_info("Y", types[1], [rows, n])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return lambda: session.run(None, {"A": feed})


def ceilings(shapes: list[tuple[int, int]], rows: int, threads: int) -> dict[str, dict[str, float]]:
    """GFLOP/s (GOP/s for int8) of `rows` x each shape, every shape in turn (a layer's linear work), per kernel:
    {"fp32": {"torch": .., "numpy": .., "onnxruntime": ..}, "bf16": {"torch": ..}, "int8": {...}}."""
    import torch

    torch.set_num_threads(threads)
    flop = float(sum(2 * rows * k * n for k, n in shapes))
    found: dict[str, dict[str, float]] = {"fp32": {}, "bf16": {}, "int8": {}}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        pairs = [(torch.randn(rows, k, dtype=dtype), torch.randn(k, n, dtype=dtype)) for k, n in shapes]
        found[name]["torch"] = _rate(lambda pairs=pairs: [a @ b for a, b in pairs], flop)
    arrays = [(np.random.rand(rows, k).astype(np.float32), np.random.rand(k, n).astype(np.float32)) for k, n in shapes]
    found["fp32"]["numpy"] = _rate(lambda: [a @ b for a, b in arrays], flop)
    q = [
        (torch.randint(-128, 128, (rows, k), dtype=torch.int8), torch.randint(-128, 128, (k, n), dtype=torch.int8))
        for k, n in shapes
    ]
    with contextlib.suppress(RuntimeError, AttributeError):  # _int_mm wants rows > 16 and multiples of 8
        found["int8"]["torch._int_mm"] = _rate(lambda: [torch._int_mm(a, b) for a, b in q], flop)
    with contextlib.suppress(ImportError):
        for precision, int8 in (("fp32", False), ("int8", True)):
            runs = [_ort_matmul(k, n, rows, threads, int8) for k, n in shapes]
            label = "onnxruntime MatMulInteger" if int8 else "onnxruntime"
            found[precision][label] = _rate(lambda runs=runs: [r() for r in runs], flop)
    return found


def ceiling_of(name: str) -> str:
    """The ceiling a path is held to ("onnx-fp32@16": onnx-fp32's)."""
    base = name.partition("@")[0]
    return CEILING_OF.get(base, "int8" if "int8" in base else "bf16" if "bf16" in base else "fp32")


#: Which ceiling each path is held to (int8 paths: the int8 GEMM, though their attention core stays fp32).
CEILING_OF = {
    "st": "fp32",
    "torch": "fp32",
    "onnx-fp32": "fp32",
    "openvino-fp32": "fp32",
    "openvino-bf16": "bf16",
    "onnx-int8": "int8",
    "openvino-int8": "int8",
}


def real_tokens(texts: list[str]) -> int:
    """Tokens of `texts` as the model sees them (special tokens in, truncated at 256, no padding)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(bundled_model_dir() / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(256)
    return sum(len(e.ids) for e in tok.encode_batch(texts))


def every_path(args: argparse.Namespace) -> None:
    """Each path in its own process, interleaved rounds with the ceilings measured in each; the table."""
    import onnx_backend as ob
    from embedstack.providers.huggingface.onnx_encoder import DEFAULT_TOKEN_BUDGET, physical_cores

    threads = args.threads or physical_cores()
    ns = argparse.Namespace(
        n=args.n,
        threads=threads,
        rounds=args.repeats,
        latency=args.latency,
        data=args.data,
        batch_size=0,
        token_budget=0,
    )
    env = dict(os.environ)
    cache = Path(args.cache_dir) if args.cache_dir else Path(tempfile.mkdtemp(prefix="local-models-"))
    env["EMBEDSTACK_CACHE_DIR"] = str(cache)
    env.setdefault("TOKENIZERS_PARALLELISM", "true")
    work = Path(tempfile.mkdtemp(prefix="local-models-out-"))
    names = [n.strip() for n in args.paths.split(",") if n.strip()]
    if "openvino-bf16" in names and not ob._native_bf16():
        names.remove("openvino-bf16")
        print("  (openvino-bf16 skipped: this CPU has no native bfloat16)")
    print(f"{args.n} records, {threads} threads, {args.repeats} interleaved rounds, graph cache {cache}", flush=True)
    subprocess.run(ob._command("prepare", "graphs", ns, work / "prepare.json"), check=True, env=env)
    workers = {name: ob.Worker(name, ns, work / f"{name}.json", env) for name in names}
    data = columns(args.data, args.n)
    tokens = {f: real_tokens(data[f]) for f in FIELDS}
    gflop = {f: ob.field_gflop(data[f]) for f in FIELDS}
    shapes = linear_shapes(bundled_model_dir())
    peaks: list[dict[str, dict[str, float]]] = []
    times: dict[str, dict[str, list[float]]] = {n: {f: [] for f in FIELDS} for n in names}
    for r in range(args.repeats):
        for field in FIELDS:  # the ceilings before each field's runs: the nearest moment to theirs
            peaks.append(ceilings(shapes, DEFAULT_TOKEN_BUDGET, threads))
            for name in names[r % len(names) :] + names[: r % len(names)]:
                times[name][field].append(workers[name].ask(f"run {field}")["seconds"])
        best = {k: max(v.values()) for k, v in peaks[-1].items()}
        print(
            f"  round {r + 1}: ceilings fp32 {best['fp32']:.0f}, bf16 {best['bf16']:.0f}, int8 {best['int8']:.0f}; "
            + ", ".join(f"{n} {tokens['text'] / times[n]['text'][-1]:.0f}" for n in names)
            + " text tokens/s",
            flush=True,
        )
    results: dict[str, dict[str, Any]] = {}
    vecs: dict[str, dict[str, np.ndarray]] = {}
    for name, w in workers.items():
        results[name] = w.ask("latency")
        w.ask("quit")
        w.proc.wait()
        with np.load((work / f"{name}.json").with_suffix(".npz")) as z:
            vecs[name] = {f: z[f] for f in FIELDS}
    ceiling = {k: [max(p[k].values()) for p in peaks] for k in ("fp32", "bf16", "int8")}
    report_paths(args, names, tokens, gflop, times, ceiling, peaks, results, vecs)


def report_paths(
    args: argparse.Namespace,
    names: list[str],
    tokens: dict[str, int],
    gflop: dict[str, float],
    times: dict[str, dict[str, list[float]]],
    ceiling: dict[str, list[float]],
    peaks: list[dict[str, dict[str, float]]],
    results: dict[str, dict[str, Any]],
    vecs: dict[str, dict[str, np.ndarray]],
) -> None:
    import onnx_backend as ob

    med = statistics.median
    print(f"\nMatmul ceilings, best / median of {len(peaks)} measurements (GFLOP/s; int8: GOP/s), per kernel:")
    for kind in ("fp32", "bf16", "int8"):
        kernels = sorted({k for p in peaks for k in p[kind]})
        cells = ", ".join(
            f"{k} {max(p[kind][k] for p in peaks if k in p[kind]):.0f} / "
            f"{med([p[kind][k] for p in peaks if k in p[kind]]):.0f}"
            for k in kernels
        )
        print(f"  {kind}: {max(ceiling[kind]):.0f} / {med(ceiling[kind]):.0f} ({cells})")
    avg = {f: tokens[f] / args.n for f in FIELDS}
    print(
        f"\n### Every path, {args.n} records (query {avg['query']:.1f} tokens, text {avg['text']:.1f} tokens "
        f"on average), median of {args.repeats} rounds\n"
    )
    print(
        "| path | ceiling | query tokens/s | × ST | % of ceiling | text tokens/s | × ST | % of ceiling "
        "| 1-query p50 ms | cos vs ST min | R@10 | ΔR@10 vs fp32 |"
    )
    print("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    ref = vecs.get("st")
    exact = vecs.get("onnx-fp32") or ref
    summary: dict[str, dict[str, float]] = {}
    for name in names:
        kind = ceiling_of(name)
        row: dict[str, float] = {}
        cells = []
        for f in FIELDS:
            secs = times[name][f]
            rate = med([tokens[f] / s for s in secs])
            share = gflop[f] / min(secs) / max(ceiling[kind])  # least disturbed of each: see the docstring
            ratio = median_ratio(times["st"][f], secs) if "st" in times else None
            row[f] = ratio or 0.0
            row[f"{f}_share"] = share
            cells += [f"{rate:,.0f}", "-" if ratio is None else f"{ratio:.2f}x", f"{100 * share:.0f}%"]
        q, t = vecs[name]["query"], vecs[name]["text"]
        r10 = 100 * recall(q, t, 10)
        d10 = "-" if exact is None else f"{r10 - 100 * recall(exact['query'], exact['text'], 10):+.2f}"
        cos = "-" if ref is None else f"{min(float(row_cosines(vecs[name][f], ref[f]).min()) for f in FIELDS):.5f}"
        row["d10"] = 0.0 if d10 == "-" else float(d10)
        row["p50"] = results[name]["p50_ms"]
        summary[name] = row
        print(
            f"| {ob.label(name)} | {kind} | "
            + " | ".join(cells)
            + f" | {results[name]['p50_ms']:.2f} | {cos} | {r10:.2f} | {d10} |"
        )
    print("\nGoals (issue 23):")
    fp32 = [n for n in names if ceiling_of(n) == "fp32" and n not in ("st", "torch")]
    for n in fp32:
        shares = [summary[n][f"{f}_share"] for f in FIELDS]
        verdict = "met" if min(shares) >= 0.9 else "not met"
        print(f"  fp32 >= 90% of its ceiling: {n} {100 * shares[0]:.0f}% / {100 * shares[1]:.0f}% ({verdict})")
    for n in names:
        if ceiling_of(n) == "fp32" or "st" not in times:
            continue
        s = summary[n]
        ok = min(s["query"], s["text"]) >= 6 and abs(s["d10"]) <= 0.5
        print(
            f"  fast mode >= 6x ST within 0.5 recall@10 points: {n} {s['query']:.2f}x / {s['text']:.2f}x, "
            f"recall@10 {s['d10']:+.2f} ({'met' if ok else 'not met'})"
        )
    ours = [n for n in names if n not in ("st", "torch")] or names
    best = min(ours, key=lambda n: summary[n]["p50"])
    print(
        f"  single-query p50 <= 2 ms: best {best} {summary[best]['p50']:.2f} ms "
        f"({'met' if summary[best]['p50'] <= 2 else 'not met'}); "
        + ", ".join(f"{n} {summary[n]['p50']:.2f}" for n in ours)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("-n", type=int, default=2000, help="records to use (default 2000)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds (medians over them)")
    parser.add_argument(
        "--paths",
        default=",".join(CEILING_OF),
        help='comma-separated paths (default: every one); "NAME@N" runs a path at embed_batch_size=N',
    )
    parser.add_argument("--threads", type=int, default=0, help="threads for every path (default: physical cores)")
    parser.add_argument("--latency", type=int, default=200, help="single queries timed for the p50")
    parser.add_argument("--cache-dir", default="", help="ONNX graph cache (default: a fresh temp folder)")
    parser.add_argument("--ceilings-only", action="store_true", help="only measure the matmul ceilings")
    parser.add_argument("--peers", action="store_true", help="embedstack vs sentence-transformers vs llama-index")
    parser.add_argument("--no-llama-index", action="store_true", help="--peers without llama-index")
    parser.add_argument("--sweep", action="store_true", help="only time embedstack at several batch sizes")
    parser.add_argument("--padding", action="store_true", help="only measure padding: texts sorted by chars vs tokens")
    args = parser.parse_args()

    if args.ceilings_only:
        from embedstack.providers.huggingface.onnx_encoder import DEFAULT_TOKEN_BUDGET, physical_cores

        threads = args.threads or physical_cores()
        rounds = [
            ceilings(linear_shapes(bundled_model_dir()), DEFAULT_TOKEN_BUDGET, threads) for _ in range(args.repeats)
        ]
        for kind in ("fp32", "bf16", "int8"):
            cells = ", ".join(
                f"{k} {statistics.median([r[kind][k] for r in rounds]):.0f}" for k in sorted(rounds[0][kind])
            )
            print(f"{kind} ({threads} threads, {DEFAULT_TOKEN_BUDGET} rows, median of {args.repeats}): {cells}")
        return
    if not (args.peers or args.sweep or args.padding):
        every_path(args)
        return

    import torch

    data = columns(args.data, args.n)
    queries, texts = data["query"], data["text"]
    model_dir = bundled_model_dir()
    threads = torch.get_num_threads()
    print(f"{len(queries)} records from {args.data}; torch {torch.__version__}, {threads} threads")
    if args.sweep:
        sweep(queries, texts[:500], args.repeats)
        return
    if args.padding:
        padding(queries, texts)
        return

    found = runners(model_dir, not args.no_llama_index)
    rates: dict[tuple[str, str], float] = {}
    vectors: dict[tuple[str, str], np.ndarray] = {}
    for rnd in range(args.repeats):  # interleaved rounds, best rate kept: the machine is shared
        for name, fn in found.items():
            for field, items, role in (("query", queries, "query"), ("text", texts, "text")):
                secs, vecs = timed(fn, items, role)
                rates[name, field] = max(rates.get((name, field), 0.0), len(items) / secs)
                vectors[name, field] = vecs
                print(f"  round {rnd + 1} {name}: {field} {len(items) / secs:.1f} texts/s", flush=True)

    base = next(iter(found))
    print("\n| implementation | query texts/s | ratio | text texts/s | ratio | min cos vs ST | recall@1 | recall@10 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in found:
        min_cos = min(float(row_cosines(vectors[name, f], vectors[base, f]).min()) for f in ("query", "text"))
        r = {k: recall(vectors[name, "query"], vectors[name, "text"], k) for k in (1, 10)}
        q, t = rates[name, "query"], rates[name, "text"]
        print(
            f"| {name} | {q:.0f} | {q / rates[base, 'query']:.2f}x | {t:.1f} "
            f"| {t / rates[base, 'text']:.2f}x | {min_cos:.6f} | {r[1]:.3f} | {r[10]:.3f} |"
        )


if __name__ == "__main__":
    main()
