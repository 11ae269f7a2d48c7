"""The OpenVINO backend of `CrossEncoderReranker`: the plain classifier graph (fp32, bf16) or its NNCF int8.

As the dense models' OpenVINO path (`embedstack.providers.huggingface.onnx_encoder`): OpenVINO reads the plain
export (standard ops, no ONNX Runtime fusions), checked against torch when built (every logit within
`FP32_MAX_ERROR`), and runs it with an explicit precision hint (f32 for fp32: never a silent bf16). The fast
mode, `precision="int8"`, is NNCF's post-training quantisation of that graph (SmoothQuant, bias correction;
each calibration pair its own unpadded sample), kept only when OpenVINO's int8 scores rank the calibration
pairs as the fp32 graph does (Spearman >= `INT8_MIN_SPEARMAN`), else refused. Graphs share the ONNX cache
(`prepare_classifier_graph`: kinds "plain" and "nncf-int8").
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from embedstack._optional import require
from embedstack.providers.huggingface import onnx_export as ox
from embedstack.providers.huggingface.onnx_encoder import _OpenVinoSession, physical_cores
from embedstack.rerank._model import Feeds, PairTokenizer
from embedstack.rerank._onnx import (
    INT8_MIN_SPEARMAN,
    GraphScorer,
    _calibration_pairs,
    _feeds,
    prepare_classifier_graph,
    spearman,
)

__all__ = ["OPENVINO_PRECISIONS", "OpenVinoScorer", "build_nncf_int8"]

logger = logging.getLogger("embedstack")

#: precision → the cached graph kind OpenVINO runs for it.
OPENVINO_PRECISIONS = {"fp32": "plain", "bf16": "plain", "int8": "nncf-int8"}
_CHECK_ROWS = 16


def _run_openvino(path: Path, feeds: Feeds, precision: str = "fp32") -> npt.NDArray[np.float32]:
    """OpenVINO's logits of the graph at `path` for `feeds`, a few rows at a time."""
    ov = require("openvino", extra="openvino")
    session = _OpenVinoSession(ov, path, physical_cores(), precision)
    try:
        names = [p.name for p in session.get_inputs()]
        rows = len(feeds["input_ids"])
        parts = [
            session.run(["logits"], {n: feeds[n][i : i + _CHECK_ROWS] for n in names})[0]
            for i in range(0, rows, _CHECK_ROWS)
        ]
    finally:
        session.close()
    return np.asarray(np.concatenate(parts), dtype=np.float32)


_GELU_OPS = ("Erf", "Gelu", "BiasGelu", "FastGelu", "QuickGelu")
_ELEMENTWISE = ("Mul", "Add", "Div", "Cast")


def _ffn_matmuls(model: Any) -> tuple[list[str], list[str]]:
    """Each layer's FFN MatMuls: those whose output reaches a GELU, and those that read one (where post-GELU
    outliers live). In the plain graph GELU is a few standard ops (Erf, Mul, Add), a few hops away."""
    producer = {out: node for node in model.graph.node for out in node.output}
    consumers: dict[str, list[Any]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    into, after = [], []
    for node in model.graph.node:
        if node.op_type != "MatMul" or not node.input:
            continue
        frontier = [node.input[0]]
        for _ in range(4):
            parents = [producer[name] for name in frontier if name in producer]
            if any(p.op_type in _GELU_OPS for p in parents):
                after.append(node.name)
                break
            frontier = [i for p in parents if p.op_type in _ELEMENTWISE for i in p.input]
        outputs = list(node.output)
        for _ in range(3):
            children = [c for name in outputs for c in consumers.get(name, [])]
            if any(c.op_type in _GELU_OPS for c in children):
                into.append(node.name)
                break
            outputs = [o for c in children if c.op_type in _ELEMENTWISE for o in c.output]
    return into, after


def build_nncf_int8(base: Path, dst: Path, calibration: Feeds) -> float:
    """NNCF int8 of the plain graph `base` into `dst`, the most quantised of three recipes whose OpenVINO scores
    rank the calibration pairs as fp32 does (every layer; the FFN output projections kept fp32; the attention
    only, every FFN MatMul fp32); returns its Spearman correlation to fp32. ExportError when none does."""
    onnx = require("onnx", extra="onnx")
    reference = _run_openvino(base, calibration)[:, 0]
    into, after = _ffn_matmuls(onnx.load(str(base), load_external_data=False))
    recipes: list[tuple[str, list[str] | None]] = [("every layer", None)]
    if after:
        recipes.append((f"FFN output MatMuls kept fp32 ({len(after)})", after))
    if into:
        recipes.append((f"attention only ({len(into) + len(after)} FFN MatMuls kept fp32)", into + after))
    tried: list[str] = []
    for name, ignored in recipes:
        ox._build_nncf(base, dst, calibration, ignored)
        rho = spearman(_run_openvino(dst, calibration)[:, 0], reference)
        tried.append(f"{name}: {rho:.4f}")
        if rho >= INT8_MIN_SPEARMAN:
            logger.info("rerank openvino: NNCF int8 with %s (calibration Spearman to fp32 %.5f)", name, rho)
            return rho
    raise ox.ExportError(
        f"OpenVINO int8 (NNCF) changes this model's rankings (Spearman to fp32 on calibration pairs, below "
        f"{INT8_MIN_SPEARMAN}: {'; '.join(tried)}); use precision='fp32', or backend='onnx' with precision='int8'"
    )


class OpenVinoScorer(GraphScorer):
    """A checkpoint's classifier graph on OpenVINO (CPU): padded pairs → raw float32 logits."""

    def __init__(
        self,
        model_dir: Path,
        tokenizer: PairTokenizer,
        *,
        precision: str = "fp32",
        cache_dir: Path | None = None,
        threads: int | None = None,
    ) -> None:
        if precision not in OPENVINO_PRECISIONS:
            raise ValueError(
                f"precision {precision!r} is not available with backend='openvino'; use one of "
                f"{list(OPENVINO_PRECISIONS)}"
            )
        ov = require("openvino", extra="openvino")
        _OpenVinoSession.check(ov, precision)  # bf16 only where the CPU runs it natively
        self.device = "cpu"
        self.precision = precision
        pairs = _calibration_pairs(tokenizer)
        self.graph_path = prepare_classifier_graph(
            Path(model_dir),
            OPENVINO_PRECISIONS[precision],
            lambda: _feeds(tokenizer, pairs[:24]),
            lambda: _feeds(tokenizer, pairs),
            cache_dir,
            build_int8=build_nncf_int8,
        )
        self.session = _OpenVinoSession(ov, self.graph_path, threads or physical_cores(), precision)
        self._take_inputs()
