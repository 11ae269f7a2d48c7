"""Cross-encoder reranking: pairs/s of embedstack's CrossEncoderReranker against sentence-transformers' CrossEncoder.

The model is MiniLM-L6 sized, like cross-encoder/ms-marco-MiniLM-L6-v2 (which cannot be downloaded here): the
bundled all-MiniLM-L6-v2 encoder (BERT, 6 layers, 384 hidden) under a seeded one-label classification head,
saved once as a BertForSequenceClassification checkpoint. The pairs: the first --queries "query" fields of
bench/data/packages-retrieval.jsonl, each against --candidates "text" fields (its own and seeded others).

Every backend scores the same pairs, loaded once, interleaved round after round (the machine is shared and its
speed drifts, so a ratio is the median over rounds of that round's ratio; pairs/s is each backend's best round):
sentence-transformers `CrossEncoder.predict` (its default batch size, 32), embedstack torch fp32, ONNX Runtime
fp32 and int8 (a fast mode), OpenVINO fp32 and bf16 (a fast mode, on CPUs with native bfloat16). No cache: every
round computes every pair. Fidelity: the largest score difference to sentence-transformers, and each fast mode's
Spearman correlation to ONNX Runtime fp32 per query (mean and worst).
fastembed's TextCrossEncoder and infinity are not installed here, so they are not compared.

    flock /tmp/embedstack-cpu.lock .venv/bin/python bench/rerank.py
    flock /tmp/embedstack-cpu.lock .venv/bin/python bench/rerank.py --queries 20 --rounds 3  # quick
    flock /tmp/embedstack-cpu.lock .venv/bin/python bench/rerank.py --backends st,onnx-fp32,openvino-fp32,openvino-bf16
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from _common import bundled_model_dir, columns, median_ratio

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore")


def build_cross_encoder(folder: Path, seed: int = 0) -> Path:
    """The bundled MiniLM-L6 encoder under a seeded classification head, as a plain transformers checkpoint."""
    import torch
    import transformers

    source = bundled_model_dir()
    config = transformers.BertConfig.from_pretrained(str(source), num_labels=1)
    config.architectures = ["BertForSequenceClassification"]
    torch.manual_seed(seed)
    model = transformers.BertForSequenceClassification(config)
    encoder = transformers.BertModel.from_pretrained(str(source))
    missing = model.bert.load_state_dict(encoder.state_dict(), strict=True)
    assert not missing.missing_keys
    model.eval().save_pretrained(str(folder))
    transformers.AutoTokenizer.from_pretrained(str(source)).save_pretrained(str(folder))
    return folder


def pairs_for(queries: int, candidates: int, seed: int = 0) -> list[tuple[str, str]]:
    """Each of the first `queries` queries against its own text and `candidates - 1` others (seeded)."""
    cols = columns(n=max(queries, candidates) * 4)
    texts = cols["text"]
    rng = np.random.default_rng(seed)
    pairs = []
    for i in range(queries):
        others = [int(j) for j in rng.choice(len(texts), size=candidates, replace=False) if j != i][: candidates - 1]
        pairs += [(cols["query"][i], texts[j]) for j in [i, *others]]
    return pairs


def spearman(a: Any, b: Any) -> float:
    from embedstack.rerank._onnx import spearman as rho

    return rho(a, b)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--candidates", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--backends",
        default="st,torch,onnx-fp32,onnx-int8,openvino-fp32,openvino-bf16",
        help="comma-separated; NAME:TOKENS sets a token budget",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    import torch
    from sentence_transformers import CrossEncoder

    from embedstack.rerank import CrossEncoderReranker

    work = Path(tempfile.mkdtemp(prefix="bench-rerank-"))
    model_dir = build_cross_encoder(work / "minilm-l6-ce")
    pairs = pairs_for(args.queries, args.candidates)
    print(
        f"{len(pairs)} pairs ({args.queries} queries x {args.candidates} candidates), torch threads "
        f"{torch.get_num_threads()}, model {model_dir}"
    )

    scorers: dict[str, Any] = {}
    build: dict[str, float] = {}
    names = args.backends.split(",")
    if "openvino-bf16" in names:
        import openvino as ov

        from embedstack.providers.huggingface.onnx_encoder import native_bf16

        if not native_bf16(ov):
            names.remove("openvino-bf16")
            print("(openvino-bf16 skipped: this CPU has no native bfloat16)")
    for name in names:
        t0 = time.perf_counter()
        if name == "st":
            ce = CrossEncoder(str(model_dir), local_files_only=True)
            scorers[name] = lambda ce=ce: np.asarray(ce.predict(pairs, show_progress_bar=False))
        else:
            spec, _, budget = name.partition(":")  # "onnx-fp32:1024": another token budget per forward pass
            backend, _, precision = spec.partition("-")
            reranker = CrossEncoderReranker(
                str(model_dir),
                backend=backend,
                precision=precision or "fp32",
                onnx_cache_dir=work / "onnx",
                **({"token_budget": int(budget)} if budget else {}),
            ).load()
            scorers[name] = lambda r=reranker: r.score(pairs)
        build[name] = time.perf_counter() - t0
        scorers[name]()  # warm-up round (first-call allocations), not timed

    seconds: dict[str, list[float]] = {n: [] for n in scorers}
    scores: dict[str, Any] = {}
    for _ in range(args.rounds):
        for name, fn in scorers.items():
            t0 = time.perf_counter()
            scores[name] = fn()
            seconds[name].append(time.perf_counter() - t0)

    results: dict[str, Any] = {"pairs": len(pairs), "rounds": args.rounds, "backends": {}}
    print(f"\n{'backend':<14} {'pairs/s':>9} {'vs st':>7} {'load+build s':>13}  fidelity")
    for name in scorers:
        best = len(pairs) / min(seconds[name])
        ratio = median_ratio(seconds["st"], seconds[name]) if "st" in seconds else None
        fidelity: dict[str, float] = {}
        if "st" in scores and name != "st":
            fidelity["max_abs_diff_vs_st"] = float(np.abs(scores[name] - scores["st"]).max())
        if ("int8" in name or "bf16" in name) and "onnx-fp32" in scores:
            per_query = [
                spearman(scores[name][i : i + args.candidates], scores["onnx-fp32"][i : i + args.candidates])
                for i in range(0, len(pairs), args.candidates)
            ]
            fidelity["spearman_vs_fp32_mean"] = statistics.fmean(per_query)
            fidelity["spearman_vs_fp32_min"] = min(per_query)
            fidelity["spearman_vs_fp32_all"] = spearman(scores[name], scores["onnx-fp32"])
        shown = ", ".join(f"{k} {v:.2e}" if "diff" in k else f"{k} {v:.4f}" for k, v in fidelity.items())
        print(f"{name:<14} {best:>9.1f} {ratio or 1:>6.2f}x {build[name]:>13.1f}  {shown}")
        results["backends"][name] = {
            "pairs_per_s": best,
            "ratio_vs_st": ratio,
            "seconds": seconds[name],
            "load_s": build[name],
            **fidelity,
        }
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
