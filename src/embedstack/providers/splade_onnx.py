"""SPLADE on ONNX Runtime: a masked-LM graph that outputs logits, exported once and cached (fp32).

The graph is `torch.onnx.export` of AutoModelForMaskedLM returning `logits`, made in fp32 whatever
dtype the checkpoint was saved in, in the same on-disk cache as the dense graphs
(`embedstack.providers.huggingface.onnx_export`: keyed by the model files' sha256, library versions
and `SPLADE_EXPORT_FORMAT`, written atomically, checked against a sha256 sidecar on load). Before
it is published, its SPLADE weights on probe texts must equal torch's (each within 1e-5); otherwise
the export is refused by name. Pooling runs in numpy (`splade_pool`).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from embedstack._optional import require
from embedstack.providers.huggingface import onnx_export as ox

__all__ = [
    "MAX_ABS_DIFF",
    "SPLADE_EXPORT_FORMAT",
    "int8_fidelity",
    "load_mlm",
    "mlm_session",
    "prepare_mlm_graph",
    "splade_pool",
]

#: The largest difference a built graph's SPLADE weights may have from torch's on the probe texts.
MAX_ABS_DIFF = 1e-5
_PROBES = [
    "the quick brown fox jumps over the lazy dog",
    "a",
    "sparse retrieval with learned term weights, expanded over the vocabulary " * 3,
]
#: Bump when the export changes so that older cached graphs (and int8 graphs built from them) are rebuilt
#: (2: a checkpoint saved in fp16/bf16 is exported in fp32; 1 exported it at its saved dtype).
SPLADE_EXPORT_FORMAT = 2
_KIND = "splade-mlm-fp32"
#: The int8 graph's cache kind: the recipe (dynamic, per-channel, the dense path's fidelity bar) is part of it.
_KIND_INT8 = f"splade-mlm-int8-r{ox.INT8_RECIPE}"


def _longest(model_dir: Path, tok: Any, wanted: int) -> int:
    """`wanted` tokens, or fewer where the model's positions or tokenizer end sooner."""
    import json

    config = model_dir / "config.json"
    positions = json.loads(config.read_text()).get("max_position_embeddings") if config.is_file() else None
    limits = [wanted, getattr(tok, "model_max_length", wanted) or wanted]
    if isinstance(positions, int) and positions > 0:
        limits.append(positions)
    return int(min(limits))


def _probe_feeds(model_dir: Path, names: Sequence[str]) -> dict[str, npt.NDArray[np.int64]]:
    transformers = require("transformers", extra="local")
    tok = transformers.AutoTokenizer.from_pretrained(str(model_dir))
    enc = tok(_PROBES, padding=True, truncation=True, max_length=_longest(model_dir, tok, 64), return_tensors="np")
    feeds = {n: np.asarray(enc[n], dtype=np.int64) for n in names if n in enc}
    if "token_type_ids" in names and "token_type_ids" not in feeds:
        feeds["token_type_ids"] = np.zeros_like(feeds["input_ids"])
    return feeds


def splade_pool(
    logits: npt.NDArray[np.float32], mask: npt.NDArray[Any], pooling: str, activation: str
) -> npt.NDArray[np.float32]:
    """SpladePooling in numpy: (batch, tokens, vocab) logits → (batch, vocab) weights."""
    x = np.log1p(np.maximum(logits * mask[:, :, None].astype(np.float32), 0))
    if activation == "log1p_relu":
        x = np.log1p(x)
    return (x.max(axis=1) if pooling == "max" else x.sum(axis=1)).astype(np.float32)  # type: ignore[no-any-return]


def _pooled(logits: npt.NDArray[Any], mask: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
    return splade_pool(np.asarray(logits, dtype=np.float32), mask, "max", "relu")


def load_mlm(path: Path, **kwargs: Any) -> Any:
    """transformers' AutoModelForMaskedLM of `path` in fp32 (a checkpoint saved in fp16/bf16 loads at that dtype
    otherwise: its logits would be half precision's) and eval mode; `kwargs` go to from_pretrained."""
    torch = require("torch", extra="local")
    transformers = require("transformers", extra="local")
    from embedstack.providers.huggingface.torch_encoder import _quiet_loading

    with _quiet_loading():
        model = transformers.AutoModelForMaskedLM.from_pretrained(str(path), dtype=torch.float32, **kwargs)
    return model.eval()


def _export(model_dir: Path, out: Path) -> None:
    model = load_mlm(model_dir, attn_implementation="eager")  # fp32 whatever the checkpoint's saved dtype
    accepted = set(inspect.signature(model.forward).parameters)
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in accepted]
    feeds = _probe_feeds(model_dir, names)

    reference = ox.export_output(model, names, feeds, out, "logits", sequence_output=True)
    got = ox._run_graph(out, feeds, "logits")
    mask = feeds["attention_mask"]
    worst = float(np.abs(_pooled(got, mask) - _pooled(reference, mask)).max())
    if not worst <= MAX_ABS_DIFF:
        raise ox.ExportError(
            f"the ONNX export of {model_dir} does not reproduce the torch model's SPLADE weights (largest "
            f"difference {worst:.2e} > {MAX_ABS_DIFF}); use backend='torch' for this model"
        )


def _cosines(a: npt.NDArray[Any], b: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    a, b = a.astype(np.float64), b.astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.where(norms > 0, (a * b).sum(1) / np.maximum(norms, 1e-30), 1.0)  # type: ignore[no-any-return]


def int8_fidelity(got: npt.NDArray[Any], reference: npt.NDArray[Any], mask: npt.NDArray[Any]) -> tuple[float, float]:
    """(mean, min) cosine of the int8 graph's SPLADE vectors to the fp32 graph's, over the calibration texts."""
    cos = _cosines(_pooled(got, mask), _pooled(reference, mask))
    return float(cos.mean()), float(cos.min())


def _calibration_feeds(model_dir: Path, names: Sequence[str]) -> dict[str, npt.NDArray[np.int64]]:
    from embedstack.providers.huggingface.onnx_encoder import _CALIBRATION

    shipped = (Path(ox.__file__).with_name("calibration.txt")).read_text(encoding="utf-8").splitlines()
    texts = [*_CALIBRATION, *shipped[:48]]
    transformers = require("transformers", extra="local")
    tok = transformers.AutoTokenizer.from_pretrained(str(model_dir))
    enc = tok(texts, padding=True, truncation=True, max_length=_longest(model_dir, tok, 128), return_tensors="np")
    feeds = {n: np.asarray(enc[n], dtype=np.int64) for n in names if n in enc}
    if "token_type_ids" in names and "token_type_ids" not in feeds:
        feeds["token_type_ids"] = np.zeros_like(feeds["input_ids"])
    return feeds


def _build_int8(model_dir: Path, base: Path, dst: Path) -> None:
    """Dynamic int8 of the fp32 logits graph (every MatMul, else the FFN output projections kept fp32), kept only
    when its SPLADE vectors stay within the dense path's int8 bar of fp32's (cosine mean >= 0.99, min >= 0.98)."""
    onnx = require("onnx", extra="onnx")
    ort = require("onnxruntime", extra="onnx")
    names = [i.name for i in ort.InferenceSession(str(base), providers=["CPUExecutionProvider"]).get_inputs()]
    feeds = _calibration_feeds(model_dir, names)
    reference = ox._run_graph(base, feeds, "logits")
    mask = feeds["attention_mask"]
    tried = []
    for keep in ([], ox._sensitive_nodes(onnx.load(str(base)))):
        ox._quantise(base, dst, keep=keep)
        mean, worst = int8_fidelity(ox._run_graph(dst, feeds, "logits"), reference, mask)
        tried.append(f"mean {mean:.4f}, min {worst:.4f}" + (f" with {len(keep)} MatMuls fp32" if keep else ""))
        if mean >= ox.INT8_MIN_MEAN_COSINE and worst >= ox.INT8_MIN_COSINE:
            return
    raise ox.ExportError(
        f"int8 changes {model_dir}'s SPLADE vectors too much (cosine to fp32 {'; '.join(tried)}; needs mean >= "
        f"{ox.INT8_MIN_MEAN_COSINE}, min >= {ox.INT8_MIN_COSINE}); use precision='fp32'"
    )


def prepare_mlm_graph(model_dir: Path, cache_dir: Path | None = None, precision: str = "fp32") -> Path:
    """The cached masked-LM logits graph of `model_dir` ("fp32", or "int8" built from it), built and checked
    when missing."""
    if precision not in ("fp32", "int8"):
        raise ValueError(f"precision {precision!r} is not available for SPLADE on ONNX; use 'fp32' or 'int8'")
    root = Path(cache_dir) if cache_dir is not None else ox.default_cache_dir()
    fingerprint = ox.model_fingerprint(model_dir, root)
    folder = root / f"{ox._slug(model_dir)}-{fingerprint[:16]}"
    kind = _KIND if precision == "fp32" else _KIND_INT8
    final = folder / f"{kind}-{ox.cache_key(fingerprint, f'{kind}-f{SPLADE_EXPORT_FORMAT}')[:16]}.onnx"
    if ox._verified(final):
        return final
    base = prepare_mlm_graph(model_dir, cache_dir, "fp32") if precision == "int8" else None
    with ox._build_lock(folder):
        if ox._verified(final):
            return final
        ox.discard(final)
        tmp = ox._tmp_path(final)
        try:
            if base is None:
                _export(model_dir, tmp)
            else:
                _build_int8(model_dir, base, tmp)
            ox._publish(tmp, final)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
    return final


def mlm_session(model_dir: Path, cache_dir: Path | None = None, precision: str = "fp32") -> Any:
    """An ONNX Runtime session on the model's logits graph (CPU; fp32, or int8 as a fast mode)."""
    ort = require("onnxruntime", extra="onnx")
    path = prepare_mlm_graph(model_dir, cache_dir, precision)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
