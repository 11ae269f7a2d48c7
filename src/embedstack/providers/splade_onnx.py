"""SPLADE on ONNX Runtime: a masked-LM graph that outputs logits, exported once and cached (fp32).

The graph is `torch.onnx.export` of AutoModelForMaskedLM returning `logits`, in the same on-disk
cache as the dense graphs (`embedstack.providers.huggingface.onnx_export`: keyed by the model files'
sha256 and library versions, written atomically, checked against a sha256 sidecar on load). Before
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

__all__ = ["MAX_ABS_DIFF", "mlm_session", "prepare_mlm_graph", "splade_pool"]

#: The largest difference a built graph's SPLADE weights may have from torch's on the probe texts.
MAX_ABS_DIFF = 1e-5
_PROBES = [
    "the quick brown fox jumps over the lazy dog",
    "a",
    "sparse retrieval with learned term weights, expanded over the vocabulary " * 3,
]
_KIND = "splade-mlm-fp32"


def _probe_feeds(model_dir: Path, names: Sequence[str]) -> dict[str, npt.NDArray[np.int64]]:
    transformers = require("transformers", extra="local")
    tok = transformers.AutoTokenizer.from_pretrained(str(model_dir))
    enc = tok(_PROBES, padding=True, truncation=True, max_length=64, return_tensors="np")
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


def _export(model_dir: Path, out: Path) -> None:
    torch = require("torch", extra="local")
    transformers = require("transformers", extra="local")
    from embedstack.providers.huggingface.torch_encoder import _quiet_loading

    with _quiet_loading():
        model = transformers.AutoModelForMaskedLM.from_pretrained(str(model_dir), attn_implementation="eager")
    model.eval()
    accepted = set(inspect.signature(model.forward).parameters)
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in accepted]
    feeds = _probe_feeds(model_dir, names)

    class _Logits(torch.nn.Module):  # type: ignore[misc,name-defined]
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, *tensors: Any) -> Any:
            return self.inner(**dict(zip(names, tensors))).logits

    args = tuple(torch.from_numpy(feeds[n]) for n in names)
    with torch.inference_mode():
        reference = model(**dict(zip(names, args))).logits.float().numpy()
    axes = {n: {0: "batch", 1: "sequence"} for n in [*names, "logits"]}
    with torch.no_grad(), ox._quiet_export():
        torch.onnx.export(
            _Logits(model),
            args,
            str(out),
            dynamo=False,
            input_names=names,
            output_names=["logits"],
            dynamic_axes=axes,
            opset_version=ox.OPSET,
            do_constant_folding=True,
        )
    got = ox._run_graph(out, feeds, "logits")
    mask = feeds["attention_mask"]
    worst = float(np.abs(_pooled(got, mask) - _pooled(reference, mask)).max())
    if not worst <= MAX_ABS_DIFF:
        raise ox.ExportError(
            f"the ONNX export of {model_dir} does not reproduce the torch model's SPLADE weights (largest "
            f"difference {worst:.2e} > {MAX_ABS_DIFF}); use backend='torch' for this model"
        )


def prepare_mlm_graph(model_dir: Path, cache_dir: Path | None = None) -> Path:
    """The cached masked-LM logits graph of `model_dir`, built and checked when missing."""
    root = Path(cache_dir) if cache_dir is not None else ox.default_cache_dir()
    fingerprint = ox.model_fingerprint(model_dir, root)
    folder = root / f"{ox._slug(model_dir)}-{fingerprint[:16]}"
    final = folder / f"{_KIND}-{ox.cache_key(fingerprint, _KIND)[:16]}.onnx"
    if ox._verified(final):
        return final
    with ox._build_lock(folder):
        if ox._verified(final):
            return final
        ox.discard(final)
        tmp = ox._tmp_path(final)
        try:
            _export(model_dir, tmp)
            ox._publish(tmp, final)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
    return final


def mlm_session(model_dir: Path, cache_dir: Path | None = None) -> Any:
    """An ONNX Runtime session on the model's logits graph (CPU, fp32)."""
    ort = require("onnxruntime", extra="onnx")
    path = prepare_mlm_graph(model_dir, cache_dir)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
