"""Cross-encoder reranking: pairs/s of embedstack's CrossEncoderReranker against sentence-transformers' CrossEncoder
and fastembed's TextCrossEncoder.

The model is MiniLM-L6 sized, like cross-encoder/ms-marco-MiniLM-L6-v2 (which cannot be downloaded here): the
bundled all-MiniLM-L6-v2 encoder (BERT, 6 layers, 384 hidden) under a seeded one-label classification head,
saved once as a BertForSequenceClassification checkpoint. The pairs: the first --queries "query" fields of
bench/data/packages-retrieval.jsonl, each against --candidates "text" fields (its own and seeded others).

Every backend scores the same pairs, loaded once, interleaved round after round (the machine is shared and its
speed drifts, so a ratio is the median over rounds of that round's ratio; pairs/s is each backend's best round):
sentence-transformers `CrossEncoder.predict` (its default batch size, 32), fastembed's `TextCrossEncoder.rerank_pairs`
(batch size 64, ONNX Runtime) on the same weights (the plain fp32 ONNX export embedstack checks against torch,
registered with `TextCrossEncoder.add_custom_model` and loaded from its folder with `specific_model_path`; its raw
logits put through the same sigmoid), embedstack torch fp32, ONNX Runtime fp32 and int8, OpenVINO fp32 and int8
(the fast modes; `openvino-bf16` on CPUs with native bfloat16 is another). No cache: every round computes every
pair. Fidelity: the largest score difference to sentence-transformers, and the Spearman correlation of each fast
mode (int8, bf16) to its runtime's fp32 per query (mean and worst). `--graphs DIR` keeps the built ONNX graphs
for later runs (the NNCF int8 build takes a minute or two).

fastembed 0.9 caps huggingface-hub below 2 while transformers 5 needs 2.4 or later, so pip cannot resolve both
into one environment and fastembed is not in the `bench` extra; it runs here installed beside them without its
dependency pins (only the local-folder path is used, which needs no hub):

    .venv/bin/pip install --no-deps fastembed loguru mmh3 py_rust_stemmers

    flock /tmp/embedstack-cpu.lock .venv/bin/python bench/rerank.py
    flock /tmp/embedstack-cpu.lock .venv/bin/python bench/rerank.py --queries 20 --rounds 3  # quick
    flock /tmp/embedstack-cpu.lock .venv/bin/python bench/rerank.py --queries 4 --candidates 50 --rounds 3 \
        --backends st,onnx-fp32,onnx-int8,openvino-fp32,openvino-bf16,openvino-int8  # the docs' table

The servers (`embedstack serve`'s /v1/rerank against infinity's, 16 concurrent clients): bench/rerank_server.py.
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


def sigmoid(x: Any) -> Any:
    return (1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))).astype(np.float32)


def fastembed_model(model_dir: Path, work: Path) -> Any:
    """fastembed's TextCrossEncoder on the same weights: the plain fp32 ONNX export (checked against torch when
    built) with the tokenizer files, registered as a custom model and loaded from its folder."""
    import shutil

    from fastembed.common.model_description import ModelSource
    from fastembed.rerank.cross_encoder import TextCrossEncoder

    from embedstack.rerank._model import PairTokenizer
    from embedstack.rerank._onnx import _calibration_pairs, _feeds, prepare_classifier_graph

    tokenizer = PairTokenizer(model_dir)
    probe = _calibration_pairs(tokenizer)
    graph = prepare_classifier_graph(
        model_dir, "plain", lambda: _feeds(tokenizer, probe[:24]), lambda: _feeds(tokenizer, probe), work / "onnx"
    )
    folder = work / "fastembed"
    folder.mkdir(exist_ok=True)
    shutil.copy(graph, folder / "model.onnx")
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        if (model_dir / f).exists():
            shutil.copy(model_dir / f, folder / f)
    name = "embedstack-bench/minilm-l6-ce"
    TextCrossEncoder.add_custom_model(name, sources=ModelSource(hf=name), model_file="model.onnx")
    return TextCrossEncoder(name, specific_model_path=str(folder), cache_dir=str(work / "fastembed-cache"))


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
        default="st,fastembed,torch,onnx-fp32,onnx-int8,openvino-fp32,openvino-int8",
        help="comma-separated; NAME:TOKENS sets a token budget",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--graphs", type=Path, help="keep the built ONNX graphs here (reused by later runs)")
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
    for name in args.backends.split(","):
        t0 = time.perf_counter()
        if name == "st":
            ce = CrossEncoder(str(model_dir), local_files_only=True)
            scorers[name] = lambda ce=ce: np.asarray(ce.predict(pairs, show_progress_bar=False))
        elif name == "fastembed":
            fe = fastembed_model(model_dir, work)
            scorers[name] = lambda fe=fe: sigmoid(np.fromiter(fe.rerank_pairs(pairs, batch_size=64), np.float64))
        else:
            spec, _, budget = name.partition(":")  # "onnx-fp32:1024": another token budget per forward pass
            backend, _, precision = spec.partition("-")
            reranker = CrossEncoderReranker(
                str(model_dir),
                backend=backend,
                precision=precision or "fp32",
                onnx_cache_dir=args.graphs or work / "onnx",
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
        fast = next((p for p in ("-int8", "-bf16") if p in name), None)  # a fast mode: its ranking against fp32
        fp32 = name.split(":")[0].replace(fast or "-fp32", "-fp32")
        if fast and fp32 in scores:
            per_query = [
                spearman(scores[name][i : i + args.candidates], scores[fp32][i : i + args.candidates])
                for i in range(0, len(pairs), args.candidates)
            ]
            fidelity["spearman_vs_fp32_mean"] = statistics.fmean(per_query)
            fidelity["spearman_vs_fp32_min"] = min(per_query)
            fidelity["spearman_vs_fp32_all"] = spearman(scores[name], scores[fp32])
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
