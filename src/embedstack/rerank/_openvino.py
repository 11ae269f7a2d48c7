"""The OpenVINO backend of `CrossEncoderReranker`: the plain classifier graph (fp32, bf16) or its NNCF int8.

As the dense models' OpenVINO path (`embedstack.providers.huggingface.onnx_encoder`): OpenVINO reads the plain
export (standard ops, no ONNX Runtime fusions), checked against torch when built (every logit within
`FP32_MAX_ERROR`), and runs it with an explicit precision hint (f32 for fp32: never a silent bf16). The fast
modes: `precision="bf16"` (the plain graph in bf16, on CPUs with native bfloat16) and `precision="int8"`,
NNCF's post-training quantisation of that graph (SmoothQuant, bias correction; each calibration pair its own
unpadded sample; the classifier head kept, and more layers kept by recipe), whose unquantised ops run in bf16
where the CPU has it natively. int8 is kept only when OpenVINO's int8 scores rank every calibration query's
documents as the fp32 graph does (Spearman >= `INT8_MIN_SPEARMAN` for the worst query), else refused by name.
Every precision runs batches at `shape_bucket` lengths (OpenVINO reuses compiled shapes) and a batch's forward
passes on two OpenVINO streams at once. Graphs share the ONNX cache (`prepare_classifier_graph`: kinds "plain" and
"nncf-int8").
"""

from __future__ import annotations

import functools
import logging
import re
import threading
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from embedstack._optional import require
from embedstack.providers.huggingface import onnx_export as ox
from embedstack.providers.huggingface.onnx_encoder import (
    _OPENVINO_HINTS,
    _OpenVinoSession,
    _Port,
    _sessions,
    native_bf16,
    openvino_core,
    physical_cores,
    shape_bucket,
)
from embedstack.rerank._model import Feeds, PairTokenizer
from embedstack.rerank._onnx import (
    INT8_MIN_SPEARMAN,
    GraphScorer,
    _calibration_pairs,
    _feeds,
    calibration_groups,
    per_query_spearman,
    prepare_classifier_graph,
)

__all__ = ["OPENVINO_PRECISIONS", "OpenVinoScorer", "build_nncf_int8", "int8_compute"]

logger = logging.getLogger("embedstack")

#: precision → the cached graph kind OpenVINO runs for it.
OPENVINO_PRECISIONS = {"fp32": "plain", "bf16": "plain", "int8": "nncf-int8"}
_CHECK_ROWS = 16
#: Version of the reranker's NNCF recipes and their check (part of the int8 graph's cache key).
NNCF_RERANK_RECIPE = 2


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


_LAYER = re.compile(r"layers?\.(\d+)[./]")


def _head_and_last_layer(model: Any) -> tuple[list[str], list[str]]:
    """The classifier head's MatMuls / Gemms (those after the encoder's last LayerNormalization: they see one
    row per pair, cost nothing, and set every score) and the last encoder layer's (named `layer.N`)."""
    nodes = list(model.graph.node)  # ONNX graphs are topologically sorted
    norms = [i for i, n in enumerate(nodes) if n.op_type == "LayerNormalization"]
    linear = [(i, n) for i, n in enumerate(nodes) if n.op_type in ("MatMul", "Gemm")]
    head = [n.name for i, n in linear if norms and i > norms[-1]]
    layers = {n.name: int(m.group(1)) for _, n in linear if (m := _LAYER.search(n.name))}
    last = [name for name, layer in layers.items() if layer == max(layers.values())] if layers else []
    return head, [name for name in last if name not in head]


def _score_pairs(
    path: Path, tokenizer: PairTokenizer, pairs: list[tuple[str, str]], precision: str
) -> npt.NDArray[np.float32]:
    """OpenVINO's first logit of each pair at `precision`, a few rows of similar length at a time."""
    tokens = tokenizer.tokenize(pairs)
    order = np.argsort([-len(t.ids) for t in tokens], kind="stable")
    ov = require("openvino", extra="openvino")
    session = _OpenVinoSession(ov, path, physical_cores(), precision)
    out = np.empty(len(tokens), dtype=np.float32)
    try:
        names = [p.name for p in session.get_inputs()]
        for i in range(0, len(order), _CHECK_ROWS):
            rows = order[i : i + _CHECK_ROWS]
            feeds = tokenizer.pad([tokens[r] for r in rows])
            out[rows] = session.run(["logits"], {n: feeds[n] for n in names})[0][:, 0]
    finally:
        session.close()
    return out


def build_nncf_int8(
    base: Path, dst: Path, calibration: Feeds, *, tokenizer: PairTokenizer, precision: str = "fp32"
) -> float:
    """NNCF int8 of the plain graph `base` into `dst`, the most quantised recipe whose OpenVINO scores (run at
    `precision`: "bf16" runs the ops left unquantised in bf16) rank every calibration query's documents as fp32
    does (Spearman >= `INT8_MIN_SPEARMAN` for the worst query); returns that worst query's Spearman. Recipes,
    each keeping the classifier head fp32: every encoder MatMul; the FFN output projections kept (post-GELU
    outliers); and the last layer; attention only (every FFN MatMul kept). ExportError when none holds."""
    onnx = require("onnx", extra="onnx")
    groups = calibration_groups(tokenizer)
    pairs = [pair for group in groups for pair in group]
    sizes = [len(group) for group in groups]
    reference = _score_pairs(base, tokenizer, pairs, "fp32")
    model = onnx.load(str(base), load_external_data=False)
    into, after = _ffn_matmuls(model)
    head, last = _head_and_last_layer(model)
    recipes: list[tuple[str, list[str]]] = [("every encoder MatMul", head)]
    if after:
        recipes.append((f"FFN output MatMuls kept ({len(after)})", head + after))
        if last:
            name = f"FFN output MatMuls and the last layer kept ({len(after)}+{len(last)})"
            recipes.append((name, head + after + last))
    if into:
        recipes.append((f"attention only ({len(into) + len(after)} FFN MatMuls kept)", head + into + after))
    kept = "bf16" if precision == "bf16" else "fp32"
    tried: list[str] = []
    for name, ignored in recipes:
        ox._build_nncf(base, dst, calibration, sorted(set(ignored)))
        rhos = per_query_spearman(_score_pairs(dst, tokenizer, pairs, precision), reference, sizes)
        worst = min(rhos)
        tried.append(f"{name}: worst query {worst:.4f}, mean {float(np.mean(rhos)):.4f}")
        if worst >= INT8_MIN_SPEARMAN:
            logger.info(
                "rerank openvino: NNCF int8 with %s, the rest %s (calibration Spearman to fp32: worst query %.5f)",
                name,
                kept,
                worst,
            )
            return worst
    raise ox.ExportError(
        f"OpenVINO int8 (NNCF, unquantised ops in {kept}) changes this model's rankings (Spearman to fp32 per "
        f"calibration query, below {INT8_MIN_SPEARMAN} for the worst: {'; '.join(tried)}); use precision='fp32'"
        + (" or 'bf16'" if precision == "bf16" else "")
        + ", or backend='onnx' with precision='int8'"
    )


#: OpenVINO streams (each its own infer request and share of the threads) that run a batch's forward passes at once.
STREAMS = 2


class _StreamSession(_OpenVinoSession):
    """The graph compiled for `STREAMS` streams (OpenVINO's THROUGHPUT hint): `run_many` runs several padded
    batches at once, one per stream (1.04x to 1.13x one stream of every thread, measured on 2 cores)."""

    def __init__(self, ov: Any, path: Path, threads: int, precision: str) -> None:
        streams = max(1, min(STREAMS, threads))
        config = {
            "INFERENCE_NUM_THREADS": threads,
            "PERFORMANCE_HINT": "THROUGHPUT",
            "NUM_STREAMS": streams,
            "INFERENCE_PRECISION_HINT": _OPENVINO_HINTS[precision],
        }
        self.compiled = openvino_core(ov).compile_model(str(path), "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.queue: Any = ov.AsyncInferQueue(self.compiled, streams)
        self.inputs = [_Port(p) for p in self.compiled.inputs]
        self.outputs = [_Port(p) for p in self.compiled.outputs]
        self._lock = threading.Lock()
        _sessions.add(self)

    def run_many(self, output: str, feeds: list[dict[str, Any]]) -> list[npt.NDArray[Any]]:
        """`output` of each of `feeds`, run on the streams at once (in the order given)."""
        results: list[Any] = [None] * len(feeds)

        def done(request: Any, index: int) -> None:
            results[index] = np.array(request.get_tensor(output).data)

        with self._lock:
            if self.queue is None:
                raise RuntimeError("the OpenVINO model was released (the interpreter is exiting)")
            self.queue.set_callback(done)
            for index, feed in enumerate(feeds):
                self.queue.start_async(feed, index)
            self.queue.wait_all()
        return results

    def close(self) -> None:
        with self._lock:
            self.queue = None
            self.request = None
            self.compiled = None


def int8_compute(ov: Any) -> str:
    """The precision OpenVINO's int8 runs its unquantised ops at here: bf16 where the CPU has it natively."""
    return "bf16" if native_bf16(ov) else "fp32"


class OpenVinoScorer(GraphScorer):
    """A checkpoint's classifier graph on OpenVINO (CPU): padded pairs → raw float32 logits.

    Batches are padded further to one of a few dozen lengths (`shape_bucket`: at most ~12% more tokens, masked,
    so no logit changes), so OpenVINO reuses the kernels it compiled for a shape instead of reshaping per batch.
    """

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
        #: The precision the graph runs at: int8's unquantised ops in bf16 where the CPU has it natively.
        self.compute = int8_compute(ov) if precision == "int8" else precision
        self.pad_id, self.pad_type_id = tokenizer.pad_id, tokenizer.pad_type_id
        self.max_length = tokenizer.max_length
        pairs = _calibration_pairs(tokenizer)
        recipe = {"nncf_rerank": NNCF_RERANK_RECIPE, "check": self.compute} if precision == "int8" else None
        self.graph_path = prepare_classifier_graph(
            Path(model_dir),
            OPENVINO_PRECISIONS[precision],
            lambda: _feeds(tokenizer, pairs[:24]),
            lambda: _feeds(tokenizer, pairs),
            cache_dir,
            build_int8=functools.partial(build_nncf_int8, tokenizer=tokenizer, precision=self.compute),
            recipe=recipe,
        )
        self.session: _StreamSession = _StreamSession(ov, self.graph_path, threads or physical_cores(), self.compute)
        self._take_inputs()

    def _bucketed(self, feeds: Feeds) -> Feeds:
        """`feeds` padded to the next `shape_bucket` length (within the model's limit) with masked pad tokens."""
        length = feeds["input_ids"].shape[1]
        target = min(shape_bucket(length), max(length, self.max_length))
        if target == length:
            return feeds
        extra = ((0, 0), (0, target - length))
        return {
            "input_ids": np.pad(feeds["input_ids"], extra, constant_values=self.pad_id),
            "attention_mask": np.pad(feeds["attention_mask"], extra, constant_values=0),
            "token_type_ids": np.pad(feeds["token_type_ids"], extra, constant_values=self.pad_type_id),
        }

    def logits(self, feeds: Feeds) -> npt.NDArray[np.float32]:
        """Raw logits for one padded batch, run at its bucket's length."""
        return super().logits(self._bucketed(feeds))

    def logits_many(self, batches: list[Feeds]) -> list[npt.NDArray[np.float32]]:
        """Raw logits of several padded batches, run on OpenVINO's streams at once (each at its bucket's length)."""
        feeds = [{n: b[n] for n in self.inputs} for b in map(self._bucketed, batches)]
        return [np.asarray(out, dtype=np.float32) for out in self.session.run_many("logits", feeds)]
