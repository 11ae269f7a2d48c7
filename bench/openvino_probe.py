"""Probe: would OpenVINO (with NNCF int8) beat ONNX Runtime as the fast mode? Not a dependency.

Same texts, same 2 threads, one process, interleaved rounds (median per-round ratios): sentence-
transformers encode, embedstack's ONNX Runtime fp32 and int8 graphs, and OpenVINO running the plain
(unfused) export in fp32 and after NNCF post-training int8 (SmoothQuant, bias correction; calibrated on
records 2,500-2,699 of the benchmark file, which the timed/evaluated first N records do not include).
OpenVINO runs inside embedstack's OnnxEncoder (same tokenisation, token-budget batches and pooling), so
only the graph runtime differs. Quality: cosine to ONNX Runtime fp32 and recall@1/@10 query→text.

    .venv/bin/pip install --target /tmp/ov openvino nncf
    PYTHONPATH=/tmp/ov flock /tmp/embedstack-cpu.lock .venv/bin/python bench/openvino_probe.py --n 1000
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from onnx_backend import recall, unit  # bench/ is on sys.path when run as a script

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "packages-retrieval.jsonl"
FIELDS = ("query", "text")


class OpenVinoSession:
    """Looks like an onnxruntime InferenceSession to OnnxEncoder: run(outputs, feeds) → [hidden]."""

    def __init__(self, compiled: Any) -> None:
        self.request = compiled.create_infer_request()
        self.names = [i.get_any_name() for i in compiled.inputs]

    def run(self, outputs: Any, feeds: dict[str, Any]) -> list[Any]:
        result = self.request.infer({n: feeds[n] for n in self.names})
        return [next(iter(result.values()))]


def main(args: argparse.Namespace) -> None:
    import nncf
    import openvino as ov
    import torch
    from sentence_transformers import SentenceTransformer

    from embedstack.providers._hf_source import DEFAULT_MODEL, locate_model
    from embedstack.providers._onnx import OnnxEncoder
    from embedstack.providers._onnx_export import _export_torch

    torch.set_num_threads(args.threads)
    rows = [json.loads(line) for line in args.data.open()]
    data = {f: [r[f] for r in rows[: args.n]] for f in FIELDS}
    calibration = [r[f] for r in rows[2500:2700] for f in FIELDS]
    model_dir = locate_model(DEFAULT_MODEL).path
    cache = Path(tempfile.mkdtemp(prefix="ov-probe-"))
    fp32 = OnnxEncoder(model_dir, threads=args.threads, cache_dir=cache)
    int8 = OnnxEncoder(model_dir, precision="int8", threads=args.threads, cache_dir=cache)
    raw = cache / "plain.onnx"
    _export_torch(model_dir, raw, fp32._probe_feeds())  # OpenVINO reads standard ops, not ORT's fused ones

    core = ov.Core()
    plain = core.read_model(str(raw))
    names = [i.get_any_name() for i in plain.inputs]

    def feeds(texts: list[str]) -> dict[str, Any]:
        enc = fp32._encode_batch(texts)
        f = fp32._feeds(enc, list(range(len(enc))))
        return {n: f[n] for n in names}

    t = time.perf_counter()
    batches = [feeds(calibration[i : i + 8]) for i in range(0, len(calibration), 8)]
    quantised = nncf.quantize(
        plain, nncf.Dataset(batches), model_type=nncf.ModelType.TRANSFORMER, subset_size=len(batches)
    )
    quantise_s = time.perf_counter() - t
    config = {"INFERENCE_NUM_THREADS": args.threads, "PERFORMANCE_HINT": "LATENCY"}
    backends: dict[str, Any] = {"onnxruntime fp32": fp32.encode, "onnxruntime int8": int8.encode}
    for label, graph in (("openvino fp32", plain), ("openvino int8 (nncf)", quantised)):
        enc = OnnxEncoder(model_dir, threads=args.threads, cache_dir=cache)
        enc.session = OpenVinoSession(core.compile_model(graph, "CPU", config))
        backends[label] = enc.encode
    st = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)
    backends = {"sentence-transformers": lambda texts: st.encode(texts, batch_size=32), **backends}

    times: dict[str, dict[str, list[float]]] = {b: {f: [] for f in FIELDS} for b in backends}
    vectors: dict[str, dict[str, Any]] = {b: {} for b in backends}
    for fn in backends.values():
        fn(data["query"][:32])
    for r in range(args.rounds):
        for field in FIELDS:
            for name, fn in backends.items():
                time.sleep(0.3)  # idle thread pools stop spinning before the next backend runs
                t = time.perf_counter()
                out = fn(data[field])
                times[name][field].append(time.perf_counter() - t)
                vectors[name][field] = np.asarray(getattr(out, "vectors", out), dtype=np.float32)
        print(f"round {r + 1} done", flush=True)

    ref = vectors["onnxruntime fp32"]
    base = times["sentence-transformers"]
    print(f"\n### OpenVINO probe, {args.n} records, {args.threads} threads, {args.rounds} interleaved rounds\n")
    print("| backend | query texts/s | × ST | text texts/s | × ST | cos vs ORT fp32 min / mean | R@1 | R@10 |")
    print("|---|--:|--:|--:|--:|--:|--:|--:|")
    for name in backends:
        ratio = {f: statistics.median(b / t for b, t in zip(base[f], times[name][f])) for f in FIELDS}
        cos = np.concatenate([(unit(vectors[name][f]) * unit(ref[f])).sum(1) for f in FIELDS])
        q, tx = vectors[name]["query"], vectors[name]["text"]
        print(
            f"| {name} | {args.n / min(times[name]['query']):.0f} | {ratio['query']:.2f}x | "
            f"{args.n / min(times[name]['text']):.1f} | {ratio['text']:.2f}x | {cos.min():.5f} / {cos.mean():.5f} | "
            f"{recall(q, tx, 1):.2f} | {recall(q, tx, 10):.2f} |"
        )
    print(f"\nNNCF quantisation took {quantise_s:.1f} s ({len(calibration)} calibration texts).")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data", type=Path, default=DATA)
    main(p.parse_args())
