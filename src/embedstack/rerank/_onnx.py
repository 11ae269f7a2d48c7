"""The ONNX Runtime backend of `CrossEncoderReranker`: a sequence-classification graph, built once and cached.

The fp32 graph is `torch.onnx.export` of the checkpoint's *ForSequenceClassification logits, checked
against torch on probe pairs (every logit within `FP32_MAX_ERROR`), then ONNX Runtime's transformer
fusions when they pass the same check. The int8 graph is dynamically quantised from it (the same recipe
as the embedding models', `onnx_export._quantise`) and kept only when its scores rank calibration pairs
as fp32 does (Spearman >= `INT8_MIN_SPEARMAN`; otherwise the FFN output projections stay fp32, and if
that is not enough the build is refused). Graphs live beside the embedding graphs in the same cache,
under their own names, written and checked the same way (`onnx_export`'s atomic publish, sha256
sidecars and build locks).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from embedstack._optional import require
from embedstack.providers.huggingface import onnx_export as ox
from embedstack.providers.huggingface.onnx_encoder import _CALIBRATION, physical_cores
from embedstack.rerank._model import Feeds, PairTokenizer, load_classifier

__all__ = [
    "FP32_MAX_ERROR",
    "INT8_MIN_SPEARMAN",
    "GraphScorer",
    "OnnxScorer",
    "calibration_groups",
    "per_query_spearman",
    "prepare_classifier_graph",
    "spearman",
]

logger = logging.getLogger("embedstack")

#: Bump when the recipe changes, so older cached graphs are not reused (3: a checkpoint saved in fp16/bf16 is
#: exported in fp32; 2 exported it at its saved dtype).
RERANK_EXPORT_FORMAT = 3
#: A built fp32 graph's logits may differ from torch's by at most this (relative to the logits' scale, at least 1).
FP32_MAX_ERROR = 1e-5
#: int8 is kept when it ranks the calibration pairs as fp32 does to at least this Spearman correlation.
INT8_MIN_SPEARMAN = 0.99
_KNOWN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
#: Rows per graph run while checking a build.
_CHECK_ROWS = 16


def spearman(a: npt.ArrayLike, b: npt.ArrayLike) -> float:
    """Spearman's rank correlation of two score vectors (average ranks for ties)."""

    def ranks(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        order = np.argsort(x, kind="stable")
        r = np.empty(len(x), dtype=np.float64)
        r[order] = np.arange(len(x), dtype=np.float64)
        for value in np.unique(x):  # ties share their average rank
            tied = x == value
            if tied.sum() > 1:
                r[tied] = r[tied].mean()
        return r

    ra = ranks(np.asarray(a, dtype=np.float64).ravel())
    rb = ranks(np.asarray(b, dtype=np.float64).ravel())
    if ra.std() == 0 or rb.std() == 0:
        return 1.0 if ra.std() == rb.std() else 0.0
    return float(np.corrcoef(ra, rb)[0, 1])


def calibration_groups(tokenizer: PairTokenizer) -> list[list[tuple[str, str]]]:
    """Calibration queries, each with its documents: the embedding calibration texts against each other, and
    texts of words drawn (seeded) from the model's own vocabulary (so a model of any vocabulary gets pairs it can
    tell apart); every third text is a query, against every other text."""
    texts = list(_CALIBRATION)
    rng = np.random.default_rng(0)
    vocab = [t for t, _ in sorted(tokenizer.hf.get_vocab().items(), key=lambda kv: kv[1])]
    specials = set(getattr(tokenizer.hf, "all_special_tokens", []))
    words = [w for w in vocab if w not in specials and w.strip("▁Ġ#") and w.replace("▁", "").isalpha()]
    if words:
        for n in (2, 3, 5, 8, 12, 20):
            texts += [
                " ".join(w.replace("▁", "").replace("Ġ", "") for w in rng.choice(words, size=n)) for _ in range(4)
            ]
    return [[(q, d) for d in texts if d != q] for q in texts[::3]]


def _calibration_pairs(tokenizer: PairTokenizer) -> list[tuple[str, str]]:
    """The first 160 calibration pairs (the first few queries' groups): int8 calibration and build checks."""
    return [pair for group in calibration_groups(tokenizer) for pair in group][:160]


def per_query_spearman(scores: npt.ArrayLike, reference: npt.ArrayLike, sizes: list[int]) -> list[float]:
    """Spearman of `scores` to `reference` within each query's consecutive `sizes` rows: how a reranker is read."""
    a = np.asarray(scores, dtype=np.float64).ravel()
    b = np.asarray(reference, dtype=np.float64).ravel()
    bounds = np.cumsum([0, *sizes])
    return [spearman(a[lo:hi], b[lo:hi]) for lo, hi in itertools.pairwise(bounds)]


def _feeds(tokenizer: PairTokenizer, pairs: list[tuple[str, str]]) -> Feeds:
    return tokenizer.pad(tokenizer.tokenize(pairs))


def _run(path: Path, feeds: Feeds) -> npt.NDArray[np.float32]:
    ort = require("onnxruntime", extra="onnx")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    rows = len(feeds["input_ids"])
    parts = [  # a few rows at a time: attention over long padded rows is rows x heads x length^2 floats
        session.run(["logits"], {n: feeds[n][i : i + _CHECK_ROWS] for n in names})[0]
        for i in range(0, rows, _CHECK_ROWS)
    ]
    return np.asarray(np.concatenate(parts), dtype=np.float32)


def _error(got: npt.NDArray[np.float32], reference: npt.NDArray[np.float32]) -> float:
    """The largest logit difference, relative to the logits' scale (at least 1)."""
    if got.shape != reference.shape:
        return float("inf")
    scale = max(1.0, float(np.abs(reference).max()))
    return float(np.abs(got.astype(np.float64) - reference).max() / scale)


def _export(model_dir: Path, out: Path, feeds: Feeds) -> npt.NDArray[np.float32]:
    """torch.onnx.export of the classifier's logits (fp32, whatever the saved dtype); returns torch's logits for
    `feeds`."""
    model, names = load_classifier(model_dir, eager=True)
    return ox.export_output(model, names, feeds, out, "logits", sequence_output=False)


def _build_fp32(model_dir: Path, final: Path, feeds: Feeds, fuse: bool = True) -> None:
    """The checked export, fused for ONNX Runtime when the fusions pass the same check (`fuse` off: the plain
    graph of standard ops, which OpenVINO reads)."""
    raw, fused = ox._tmp_path(final), ox._tmp_path(final)
    try:
        reference = _export(model_dir, raw, feeds)
        error = _error(_run(raw, feeds), reference)
        if not error <= FP32_MAX_ERROR:
            raise ox.ExportError(
                f"the ONNX export of {model_dir} does not reproduce the torch model (logits differ by {error:.2e}); "
                "use backend='torch' for this model"
            )
        if not fuse:
            ox._publish(raw, final)
            return
        try:
            stats = ox._optimise(raw, fused, model_dir)
            fused_error = _error(_run(fused, feeds), reference)
        except Exception as e:  # any optimiser failure leaves the plain graph
            logger.info("rerank onnx: fusions skipped for %s: %s", model_dir, e)
            fused_error = float("inf")
            stats = {}
        if fused_error <= FP32_MAX_ERROR:
            logger.info("rerank onnx: fused %s for %s", stats, model_dir)
            ox._publish(fused, final)
        else:
            ox._publish(raw, final)
    finally:
        for tmp in (raw, fused):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


def _quantise(src: Path, dst: Path, keep: list[str], ops: list[str]) -> None:
    """Dynamic int8 of the `ops` nodes (per-channel s8 weights, as `onnx_export._quantise`); `keep` stay fp32."""
    onnx = require("onnx", extra="onnx")
    quant = require("onnxruntime.quantization", extra="onnx", package="onnxruntime")
    with ox._quiet_loggers("", "onnxruntime.quantization", level=logging.ERROR):
        quant.quantize_dynamic(
            str(src),
            str(dst),
            per_channel=True,
            weight_type=quant.QuantType.QInt8,
            op_types_to_quantize=ops,
            nodes_to_exclude=keep,
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT, "MatMulConstBOnly": True},
        )


def _build_int8(base: Path, dst: Path, calibration: Feeds) -> float:
    """int8 of `base` into `dst`, the most quantised of three recipes that ranks the calibration pairs as fp32
    does (every MatMul and attention; the FFN output projections kept fp32; the attention projections only);
    returns its Spearman correlation to fp32. ExportError when none does."""
    onnx = require("onnx", extra="onnx")
    reference = _run(base, calibration)[:, 0]
    sensitive = ox._sensitive_nodes(onnx.load(str(base)))
    tried: list[str] = []
    for name, keep, ops in (
        ("every MatMul and attention", [], ["MatMul", "Attention"]),
        (f"FFN output MatMuls kept fp32 ({len(sensitive)})", sensitive, ["MatMul", "Attention"]),
        ("attention projections only", [], ["Attention"]),
    ):
        _quantise(base, dst, keep, ops)
        rho = spearman(_run(dst, calibration)[:, 0], reference)
        tried.append(f"{name}: {rho:.4f}")
        if rho >= INT8_MIN_SPEARMAN:
            logger.info("rerank onnx: int8 with %s (calibration Spearman to fp32 %.5f)", name, rho)
            return rho
    raise ox.ExportError(
        f"int8 changes this model's rankings (Spearman to fp32 on calibration pairs, below {INT8_MIN_SPEARMAN}: "
        + "; ".join(tried)
        + "); use precision='fp32'"
    )


def _key(fingerprint: str, precision: str, recipe: Mapping[str, Any] | None = None) -> str:
    parts = {
        "rerank_format": RERANK_EXPORT_FORMAT,
        "graph": ox.cache_key(fingerprint, precision),
        "fp32_max_error": FP32_MAX_ERROR,
        "int8_min_spearman": INT8_MIN_SPEARMAN if precision in ("int8", "nncf-int8") else None,
    }
    if recipe:  # what else decides the graph (OpenVINO's int8 recipe, the precision its check ran at)
        parts["recipe"] = dict(recipe)
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def prepare_classifier_graph(
    model_dir: Path,
    precision: str,
    feeds: Callable[[], Feeds],
    calibration: Callable[[], Feeds],
    cache_dir: Path | None,
    build_int8: Callable[[Path, Path, Feeds], object] | None = None,
    recipe: Mapping[str, Any] | None = None,
) -> Path:
    """The cached classifier graph of `model_dir` of one kind, built and checked when missing: ONNX Runtime's
    "fp32" (fused) and "int8", or OpenVINO's "plain" (unfused fp32) and "nncf-int8" (built by `build_int8`:
    `embedstack.rerank._openvino.build_nncf_int8`; ONNX Runtime's int8 recipe by default). `recipe`: what
    else decides the built graph, part of its cache key."""
    if precision not in ox.GRAPH_KINDS:
        raise ValueError(
            f"precision {precision!r} is not available with backend='onnx'; use one of {ox.ONNX_PRECISIONS}"
        )
    root = Path(cache_dir) if cache_dir is not None else ox.default_cache_dir()
    fingerprint = ox.model_fingerprint(model_dir, root)
    folder = root / f"rerank-{ox._slug(model_dir)}-{fingerprint[:16]}"
    final = folder / f"classifier-{precision}-{_key(fingerprint, precision, recipe)[:16]}.onnx"
    if ox._verified(final):
        return final
    base_kind = ox._BASE_OF.get(precision)
    base = None if base_kind is None else prepare_classifier_graph(model_dir, base_kind, feeds, calibration, root)
    with ox._build_lock(folder):
        if ox._verified(final):  # another process built it while we waited
            return final
        ox.discard(final)
        if base is None:
            _build_fp32(model_dir, final, feeds(), fuse=precision == "fp32")
        else:
            tmp = ox._tmp_path(final)
            try:
                (build_int8 or _build_int8)(base, tmp, calibration())
                ox._publish(tmp, final)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
    return final


class GraphScorer:
    """What every runtime's classifier graph shares: its inputs (checked once) and raw float32 logits per batch."""

    graph_path: Path
    session: Any  # a runtime session with ONNX Runtime's get_inputs() / run(outputs, feeds)
    inputs: list[str]

    def _take_inputs(self) -> None:
        """The graph's inputs; refused by name when pairs cannot provide one."""
        self.inputs = [i.name for i in self.session.get_inputs()]
        unknown = [n for n in self.inputs if n not in _KNOWN_INPUTS]
        if unknown:
            raise ValueError(
                f"{self.graph_path} declares inputs {unknown} that pairs cannot provide; use backend='torch'"
            )

    def logits(self, feeds: Feeds) -> npt.NDArray[np.float32]:
        """Raw logits for one padded batch."""
        out = self.session.run(["logits"], {n: feeds[n] for n in self.inputs})[0]
        return np.asarray(out, dtype=np.float32)


class OnnxScorer(GraphScorer):
    """A checkpoint's classifier graph on ONNX Runtime (CPU): padded pairs → raw float32 logits."""

    def __init__(
        self,
        model_dir: Path,
        tokenizer: PairTokenizer,
        *,
        precision: str = "fp32",
        cache_dir: Path | None = None,
        threads: int | None = None,
    ) -> None:
        ort = require("onnxruntime", extra="onnx")
        self.device = "cpu"
        self.precision = precision
        pairs = _calibration_pairs(tokenizer)
        self.graph_path = prepare_classifier_graph(
            Path(model_dir),
            precision,
            lambda: _feeds(tokenizer, pairs[:24]),
            lambda: _feeds(tokenizer, pairs),
            cache_dir,
        )
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or physical_cores()
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(self.graph_path), options, providers=["CPUExecutionProvider"])
        self._take_inputs()
