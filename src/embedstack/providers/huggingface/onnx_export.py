"""Building the ONNX graph for a local text model, once, and keeping it in an on-disk cache.

The fp32 graph comes from the model's own ONNX file when it ships one and that file reproduces the
model's torch weights, else from `torch.onnx.export` of a wrapper that returns `last_hidden_state`;
every graph is checked against torch on probe texts, token vector by token vector (so any pooling of
them agrees); ONNX Runtime's transformer fusions (attention, GELU, LayerNorm) are applied when they
pass the same check; the int8 graph is dynamically quantised from it. Cached files are keyed by the
model files' sha256 and the library versions, written atomically (temp file + os.replace) and
checked against a sha256 sidecar on every load, so a half-written or corrupt file is rebuilt rather than used.
A graph over protobuf's 2 GB limit (bge-m3, multilingual-e5-large, Qwen3-Embedding-0.6B in fp32) keeps its
weights in one file of its own beside it (`<graph>.onnx.data`), which the sidecar checks too.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import inspect
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from embedstack._atomic import atomic_write_bytes, publish
from embedstack._file_hashes import cache_root, file_sha256
from embedstack._file_hashes import sha256_file as _sha256_file
from embedstack._optional import require
from embedstack.errors import EmbedstackError

__all__ = [
    "EXPORT_FORMAT",
    "GRAPH_KINDS",
    "INT8_MIN_COSINE",
    "INT8_MIN_MEAN_COSINE",
    "INT8_RECIPE",
    "NNCF_RECIPE",
    "ONNX_PRECISIONS",
    "ExportError",
    "Feeds",
    "cache_key",
    "default_cache_dir",
    "discard",
    "export_output",
    "has_external_data",
    "int8_fidelity",
    "int8_versions",
    "model_fingerprint",
    "pick_output",
    "prepare_graph",
    "save_model",
    "shipped_onnx",
]

logger = logging.getLogger("embedstack")

#: Bump when the export recipe changes so that older cached graphs are not reused (2: a graph's external
#: weights live in one `.data` file of its own, checked by the sidecar; format 1 left them loose and unchecked;
#: 3: a checkpoint saved in fp16/bf16 is exported in fp32, format 2 exported it at its saved dtype).
EXPORT_FORMAT = 3
OPSET = 17
#: What the ONNX backend runs: fp32, or int8 (dynamic, per-channel; sensitive layers fp32 if needed).
ONNX_PRECISIONS = ("fp32", "int8")
#: Graphs the cache holds: ONNX Runtime's fused fp32 and dynamic int8; for OpenVINO the plain (unfused,
#: standard-ops) fp32 export and its NNCF int8 quantisation (one QDQ file).
GRAPH_KINDS = (*ONNX_PRECISIONS, "plain", "nncf-int8")
_BASE_OF = {"int8": "fp32", "nncf-int8": "plain"}
#: Version of the int8 recipe (part of int8 cache keys only, so fp32 graphs stay valid).
INT8_RECIPE = 3
#: int8 quantises every MatMul when the calibration texts keep these cosines to fp32 (mean: the issue's
#: quality bar for the fast mode; what models get: docs/providers/local.md#why-these-defaults).
INT8_MIN_MEAN_COSINE = 0.99
INT8_MIN_COSINE = 0.98
#: Version of the NNCF recipe (calibration texts, options); part of nncf-int8 cache keys.
NNCF_RECIPE = 2
#: Every (unpadded) token vector of a built fp32 graph must match torch's at least this closely: a check per
#: token, stricter than comparing pooled vectors, and the same for mean, CLS or any other pooling.
_EXPORT_MIN_COSINE = 0.99999
_VERSIONED = ("torch", "transformers", "onnx", "onnxruntime")
_WEIGHT_GLOBS = ("*.safetensors", "pytorch_model*.bin", "*.pt")
_SHIPPED = ("onnx/model.onnx", "model.onnx")

#: A batch the graph is fed: input name → int64 array (batch, seq).
Feeds = dict[str, npt.NDArray[np.int64]]


class ExportError(EmbedstackError, RuntimeError):
    """The model could not be turned into an ONNX graph that reproduces it."""


# -- cache location and keys ---------------------------------------------------------------------
def default_cache_dir() -> Path:
    """$EMBEDSTACK_CACHE_DIR/onnx, else the user cache directory's embedstack/onnx."""
    return cache_root() / "onnx"


def shipped_onnx(model_dir: Path) -> Path | None:
    """The fp32 ONNX file the model directory already ships (onnx/model.onnx), if any."""
    for rel in _SHIPPED:
        path = model_dir / rel
        if path.is_file():
            return path
    return None


def _weight_files(model_dir: Path) -> list[Path]:
    return sorted({p for g in _WEIGHT_GLOBS for p in model_dir.glob(g) if p.is_file()})


def _graph_files(model_dir: Path) -> list[Path]:
    """The files a cached graph depends on: config and weights, and a shipped ONNX file (checked
    against those weights)."""
    files = _weight_files(model_dir)
    onnx_file = shipped_onnx(model_dir)
    if onnx_file is not None:
        files += [onnx_file, *sorted(onnx_file.parent.glob(onnx_file.name + "_data"))]
    if not files:
        raise ExportError(
            f"no weights found in {model_dir} (looked for {', '.join(_WEIGHT_GLOBS)} and "
            f"{', '.join(_SHIPPED)}); pass the directory of a saved transformers model"
        )
    config = model_dir / "config.json"
    return sorted({*files, config} if config.is_file() else set(files))  # sorted: keys stay as before


def model_fingerprint(model_dir: Path, cache_dir: Path) -> str:
    """sha256 over the graph's source files' names and contents (each hashed once per version of the file: see
    `embedstack._file_hashes`, whose memo lives in `cache_dir`)."""
    digest = hashlib.sha256()
    for path in _graph_files(model_dir):
        digest.update(f"{path.name}\0{file_sha256(path, cache_dir)}\n".encode())
    return digest.hexdigest()


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "none"


#: What makes an int8 graph's numbers on each runtime, beyond the fp32 graph it quantises: ONNX Runtime's quantiser
#: (and its int8 kernels); NNCF, the ONNX Runtime its calibration runs on, and OpenVINO, which compiles the
#: quantised graph into its int8 kernels.
_INT8_TOOLS = {"onnx": ("onnxruntime",), "openvino": ("nncf", "onnxruntime", "openvino")}


def int8_versions(runtime: str) -> dict[str, str]:
    """The versions of the tools that quantise and run `runtime`'s ("onnx", "openvino") int8 graphs: part of int8
    outputs' cache identity, so an upgrade that quantises otherwise never serves the old quantisation's outputs."""
    return {dist: _version(dist) for dist in _INT8_TOOLS[runtime]}


def cache_key(fingerprint: str, precision: str) -> str:
    """Key of one cached graph: model files, exporter/runtime versions, recipe and precision."""
    parts = {
        "format": EXPORT_FORMAT,
        "opset": OPSET,
        "model": fingerprint,
        "precision": precision,
        "versions": {name: _version(name) for name in _VERSIONED},
    }
    if precision == "int8":
        parts["int8_recipe"] = [INT8_RECIPE, INT8_MIN_MEAN_COSINE, INT8_MIN_COSINE]
    if precision == "nncf-int8":
        parts["nncf"] = [_version("nncf"), NNCF_RECIPE]
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


# -- atomic files and checksums --------------------------------------------------------------------
def _atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temp file in the same folder and os.replace."""
    atomic_write_bytes(path, data)


#: Graphs at least this large are saved with their weights in a separate file (protobuf's limit is 2 GiB).
_EXTERNAL_DATA_BYTES = 1 << 30


def _data_path(graph: Path) -> Path:
    """Where a published graph's external weights live: one file of its own beside it."""
    return graph.with_name(graph.name + ".data")


def has_external_data(path: Path) -> bool:
    """Whether the ONNX file at `path` keeps tensors in other files (read without loading them)."""
    onnx = require("onnx", extra="onnx")
    model = onnx.load(str(path), load_external_data=False)
    external = onnx.TensorProto.EXTERNAL
    return any(t.data_location == external for t in model.graph.initializer)


def _weight_bytes(model: Any) -> int:
    """Bytes of a ModelProto's initializers (ByteSize() itself fails past 2 GiB)."""
    total = 0
    for t in model.graph.initializer:
        total += len(t.raw_data) or 4 * max(len(t.float_data), len(t.int32_data)) or 8 * len(t.int64_data)
    return total


def save_model(model: Any, path: Path, data_name: str | None = None) -> None:
    """Save an onnx ModelProto to `path`; one over `_EXTERNAL_DATA_BYTES` with its weights in `data_name`
    (default `<path name>.data`) beside it."""
    onnx = require("onnx", extra="onnx")
    if _weight_bytes(model) < _EXTERNAL_DATA_BYTES:
        onnx.save(model, str(path))
        return
    data = path.with_name(data_name or path.name + ".data")
    with contextlib.suppress(FileNotFoundError):
        data.unlink()  # onnx appends to an existing data file
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=data.name)


def _publish(tmp: Path, final: Path) -> None:
    """Move a finished graph into place, then write its sha256 sidecar (the commit mark). A graph with external
    weights is saved again first, its weights into `final`'s own `.data` file, which the sidecar records too."""
    sidecar = final.with_name(final.name + ".sha256")
    with contextlib.suppress(FileNotFoundError):
        sidecar.unlink()  # a graph without its sidecar is never trusted
    data = _data_path(final)
    with contextlib.suppress(FileNotFoundError):
        data.unlink()
    if has_external_data(tmp):
        onnx = require("onnx", extra="onnx")
        single = _tmp_path(final)
        save_model(onnx.load(str(tmp)), single, data.name)  # whole, if it is small enough after all
        tmp = single
    meta: dict[str, Any] = {"sha256": _sha256_file(tmp), "size": tmp.stat().st_size}
    if data.is_file():
        meta["data"] = {"sha256": _sha256_file(data), "size": data.stat().st_size}
        os.chmod(data, 0o666 & ~_umask())
    publish(tmp, final, mode=0o666 & ~_umask())  # mkstemp makes 0600; a shared cache is readable
    _atomic_write(sidecar, json.dumps(meta).encode())


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _verified(path: Path) -> bool:
    """True when `path` (and its external weights, if any) exist and match the sizes and sha256 its sidecar
    recorded."""
    sidecar = path.with_name(path.name + ".sha256")
    try:
        meta = json.loads(sidecar.read_text())
        files = [(path, meta)]
        if "data" in meta:
            files.append((_data_path(path), meta["data"]))
        for file, want in files:
            if file.stat().st_size != int(want["size"]) or _sha256_file(file) != want["sha256"]:
                return False
        return True
    except (OSError, ValueError, KeyError, TypeError):
        return False


def discard(path: Path) -> None:
    """Remove a cached graph and its sidecar (after it failed to load)."""
    for p in (path.with_name(path.name + ".sha256"), path, _data_path(path)):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


@contextlib.contextmanager
def _build_lock(folder: Path) -> Iterator[None]:
    """An advisory lock so concurrent processes build one graph once (no-op without fcntl)."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: atomic replace alone keeps files whole
        yield
        return
    with open(folder / ".lock", "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


@contextlib.contextmanager
def _work_dir(final: Path) -> Iterator[Path]:
    """A private folder beside `final` for a build's intermediate graphs (and any weights an exporter writes
    beside them), removed afterwards."""
    with tempfile.TemporaryDirectory(dir=final.parent, prefix=f".{final.stem}.build-") as work:
        yield Path(work)


def _tmp_path(final: Path) -> Path:
    fd, name = tempfile.mkstemp(dir=final.parent, prefix=f".{final.stem}.", suffix=".onnx.tmp")
    os.close(fd)
    return Path(name)


# -- building graphs -------------------------------------------------------------------------------
def _cosines(a: npt.NDArray[Any], b: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    num = (a * b).sum(1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.asarray(num / np.maximum(den, 1e-30))


def _worst_token_cosine(got: npt.NDArray[Any], reference: npt.NDArray[Any], mask: npt.NDArray[Any]) -> float:
    """The lowest cosine between matching token vectors (padding excluded): pooling-agnostic."""
    keep = mask.astype(bool)
    if got.shape != reference.shape:
        return float("-inf")
    return float(_cosines(got[keep], reference[keep]).min())


def pick_output(outputs: list[Any]) -> str:
    """The graph output holding token vectors: last_hidden_state, token_embeddings or rank 3."""
    names = [o.name for o in outputs]
    for wanted in ("last_hidden_state", "token_embeddings"):
        if wanted in names:
            return wanted
    for o in outputs:
        if len(getattr(o, "shape", []) or []) == 3:
            return str(o.name)
    raise ExportError(f"the ONNX graph has no token-vector output (outputs: {names})")


def export_output(
    model: Any, names: Sequence[str], feeds: Mapping[str, Any], out: Path, output: str, sequence_output: bool
) -> npt.NDArray[np.float32]:
    """torch.onnx.export of one output of a transformers model (`last_hidden_state`, a masked LM's `logits` per
    token when `sequence_output`, a classifier's `logits` per row), fed the keyword tensors `names` (transformers 5
    rejects positional ones); returns torch's own values of it for `feeds`, to check the graph against."""
    torch = require("torch", extra="local")

    class _Output(torch.nn.Module):  # type: ignore[misc,name-defined]
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, *tensors: Any) -> Any:
            return getattr(self.inner(**dict(zip(names, tensors))), output)

    args = tuple(torch.from_numpy(feeds[n]) for n in names)
    with torch.inference_mode():
        reference = getattr(model(**dict(zip(names, args))), output).float().numpy()
    axes: dict[str, dict[int, str]] = {n: {0: "batch", 1: "sequence"} for n in names}
    axes[output] = {0: "batch", 1: "sequence"} if sequence_output else {0: "batch"}
    with torch.no_grad(), _quiet_export():
        torch.onnx.export(
            _Output(model),
            args,
            str(out),
            dynamo=False,
            input_names=list(names),
            output_names=[output],
            dynamic_axes=axes,
            opset_version=OPSET,
            do_constant_folding=True,
        )
    return np.asarray(reference, dtype=np.float32)


def _run_graph(path: Path, feeds: Feeds, output: str | None = None) -> npt.NDArray[Any]:
    ort = require("onnxruntime", extra="onnx")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    declared = [i.name for i in session.get_inputs()]
    missing = [n for n in declared if n not in feeds]
    if missing:
        raise ExportError(f"{path} needs inputs {missing} that a text encoder does not provide")
    name = output or pick_output(session.get_outputs())
    return np.asarray(session.run([name], {k: feeds[k] for k in declared})[0])


def _torch_model(model_dir: Path) -> tuple[Any, list[str]]:
    """AutoModel of `model_dir` (eager attention where it can) and the text inputs its forward takes."""
    transformers = require("transformers", extra="local")
    tlog = transformers.utils.logging
    was_on = tlog.is_progress_bar_enabled()
    tlog.disable_progress_bar()
    try:
        try:  # eager attention exports the pattern ONNX Runtime fuses into one Attention op
            model = transformers.AutoModel.from_pretrained(
                str(model_dir), local_files_only=True, attn_implementation="eager"
            )
        except (ValueError, TypeError):
            model = transformers.AutoModel.from_pretrained(str(model_dir), local_files_only=True)
    finally:
        if was_on:
            tlog.enable_progress_bar()
    model.float().eval()  # a checkpoint saved in fp16/bf16 loads so (dtype "auto"): the graphs are fp32
    accepted = set(inspect.signature(model.forward).parameters)
    return model, [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in accepted]


def _torch_hidden(model_dir: Path, feeds: Feeds) -> npt.NDArray[Any]:
    """torch's last_hidden_state for `feeds`: the reference a shipped ONNX file must reproduce."""
    torch = require("torch", extra="local")
    model, names = _torch_model(model_dir)
    with torch.inference_mode():
        hidden = model(**{n: torch.from_numpy(feeds[n]) for n in names}).last_hidden_state
    return np.asarray(hidden.float().numpy())


def _export_torch(model_dir: Path, out: Path, feeds: Feeds) -> npt.NDArray[Any]:
    """torch.onnx.export of AutoModel's last_hidden_state; returns torch's output for `feeds`."""
    model, names = _torch_model(model_dir)
    return export_output(model, names, feeds, out, "last_hidden_state", sequence_output=True)


@contextlib.contextmanager
def _quiet_loggers(*names: str, level: int = logging.WARNING) -> Iterator[None]:
    """ONNX Runtime's optimiser logs every step at INFO; keep that out of the user's logs."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(level)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


@contextlib.contextmanager
def _quiet_export() -> Iterator[None]:
    """The legacy exporter warns about tracing; those warnings are expected here."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _attention_shape(model_dir: Path) -> tuple[int, int]:
    """(num_heads, hidden_size) from config.json; 0 lets the optimiser detect them."""
    try:
        cfg = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError):
        return 0, 0
    heads = cfg.get("num_attention_heads") or cfg.get("n_heads") or 0
    hidden = cfg.get("hidden_size") or cfg.get("dim") or 0
    return int(heads), int(hidden)


def _optimise(src: Path, dst: Path, model_dir: Path) -> dict[str, int]:
    """ONNX Runtime's BERT fusions (Attention, SkipLayerNorm, BiasGelu, EmbedLayerNorm)."""
    optimizer = require("onnxruntime.transformers.optimizer", extra="onnx", package="onnxruntime")
    heads, hidden = _attention_shape(model_dir)
    with _quiet_loggers("onnx_model", "onnx_model_bert", "fusion_base", "fusion_utils"):
        model = optimizer.optimize_model(str(src), model_type="bert", num_heads=heads, hidden_size=hidden, opt_level=0)
        model.save_model_to_file(str(dst), use_external_data_format=_weight_bytes(model.model) >= _EXTERNAL_DATA_BYTES)
    stats = model.get_fused_operator_statistics()
    return {k: int(v) for k, v in stats.items() if v}


def _sensitive_nodes(model: Any) -> list[str]:
    """MatMuls kept in fp32 under int8: each layer's FFN output projection (post-GELU outliers)."""
    gelu_outputs = {
        out
        for node in model.graph.node
        if node.op_type in ("BiasGelu", "Gelu", "FastGelu", "QuickGelu")
        for out in node.output
    }
    return [
        node.name
        for node in model.graph.node
        if node.op_type == "MatMul" and node.input and node.input[0] in gelu_outputs
    ]


def _quantise(src: Path, dst: Path, keep: list[str]) -> None:
    """Dynamic int8 with per-channel s8 weights (VNNI-friendly); MatMuls named in `keep` stay fp32."""
    onnx = require("onnx", extra="onnx")
    quant = require("onnxruntime.quantization", extra="onnx", package="onnxruntime")
    # It logs every tensor at INFO on the root logger, and a pre-processing hint at WARNING.
    with _quiet_loggers("", "onnxruntime.quantization", level=logging.ERROR):
        quant.quantize_dynamic(
            str(src),
            str(dst),
            per_channel=True,
            weight_type=quant.QuantType.QInt8,
            op_types_to_quantize=["MatMul", "Attention"],
            use_external_data_format=has_external_data(src),
            nodes_to_exclude=keep,
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT, "MatMulConstBOnly": True},
        )


def int8_fidelity(got: npt.NDArray[Any], reference: npt.NDArray[Any], mask: npt.NDArray[Any]) -> tuple[float, float]:
    """(mean, min) cosine of mean-pooled, first-token and last-real-token vectors: what mean, CLS and
    last-token pooling see."""
    weights = mask[..., None].astype(np.float64)
    pooled = [(x * weights).sum(1) / np.maximum(weights.sum(1), 1) for x in (got, reference)]
    rows = np.arange(mask.shape[0])
    last = mask.shape[1] - 1 - mask.astype(bool)[:, ::-1].argmax(1)
    cos = np.concatenate(
        [_cosines(*pooled), _cosines(got[:, 0], reference[:, 0]), _cosines(got[rows, last], reference[rows, last])]
    )
    return float(cos.mean()), float(cos.min())


def _build_int8(base: Path, dst: Path, calibration: Feeds) -> None:
    """Every MatMul in int8 when that keeps the calibration texts close to fp32, else the FFN
    output projections (post-GELU outliers, the layers int8 hurts most) stay fp32."""
    onnx = require("onnx", extra="onnx")
    reference = _run_graph(base, calibration)
    mask = calibration["attention_mask"]
    _quantise(base, dst, keep=[])
    mean, worst = int8_fidelity(_run_graph(dst, calibration), reference, mask)
    if mean >= INT8_MIN_MEAN_COSINE and worst >= INT8_MIN_COSINE:
        logger.info("onnx: int8 for every MatMul (calibration cosine mean %.5f, min %.5f)", mean, worst)
        return
    keep = _sensitive_nodes(onnx.load(str(base), load_external_data=False))
    _quantise(base, dst, keep=keep)
    mean2, worst2 = int8_fidelity(_run_graph(dst, calibration), reference, mask)
    logger.info(
        "onnx: all-int8 drifted (cosine mean %.5f, min %.5f); kept %d FFN output MatMuls fp32 (mean %.5f, min %.5f)",
        mean,
        worst,
        len(keep),
        mean2,
        worst2,
    )


def _build_nncf(base: Path, dst: Path, calibration: Feeds, ignored: list[str] | None = None) -> None:
    """NNCF post-training int8 (SmoothQuant, bias correction) of the plain graph: one QDQ .onnx file.

    Each calibration text is its own unpadded sample, so padding does not skew the activation ranges;
    the nodes named in `ignored` stay fp32.
    """
    onnx = require("onnx", extra="onnx")
    nncf = require("nncf", extra="openvino")
    mask = calibration["attention_mask"]
    samples = []
    for row in range(mask.shape[0]):
        n = int(mask[row].sum())
        samples.append({k: np.ascontiguousarray(v[row : row + 1, :n]) for k, v in calibration.items()})
    external = has_external_data(base)
    model = onnx.load(str(base), load_external_data=not external)
    declared = [i.name for i in model.graph.input]
    dataset = nncf.Dataset([{k: s[k] for k in declared} for s in samples])
    options: dict[str, Any] = {}
    if ignored:
        options["ignored_scope"] = nncf.IgnoredScope(names=ignored, validate=False)
    if external:  # past 2 GB NNCF reads the weights from their file (it refuses them loaded)
        advanced = require("nncf.quantization.advanced_parameters", extra="openvino", package="nncf")
        backend = require("nncf.onnx.quantization.backend_parameters", extra="openvino", package="nncf")
        options["advanced_parameters"] = advanced.AdvancedQuantizationParameters(
            backend_params={backend.BackendParameters.EXTERNAL_DATA_DIR: str(base.parent.resolve())}
        )
    with _quiet_loggers("nncf", level=logging.ERROR):
        quantised = nncf.quantize(
            model, dataset, model_type=nncf.ModelType.TRANSFORMER, subset_size=len(samples), **options
        )
    if external:  # the weights NNCF left in base's file: into memory, then saved with dst's own
        onnx.external_data_helper.load_external_data_for_model(quantised, str(base.parent))
    save_model(quantised, dst)


def _fuse(source: Path, fused: Path, model_dir: Path, feeds: Feeds, reference: npt.NDArray[Any]) -> bool:
    """Write ONNX Runtime's fused graph to `fused`; True when it still reproduces `reference`."""
    try:
        stats = _optimise(source, fused, model_dir)
        worst = _worst_token_cosine(_run_graph(fused, feeds), reference, feeds["attention_mask"])
    except Exception as e:  # any optimiser failure leaves the plain graph
        logger.info("onnx: transformer fusions skipped for %s: %s", model_dir, e)
        return False
    if worst >= _EXPORT_MIN_COSINE:
        logger.info("onnx: fused %s for %s", stats, model_dir)
        return True
    if stats:
        logger.info("onnx: fusions changed the output (cos %.6f); kept plain", worst)
    return False


def _exported(model_dir: Path, raw: Path, feeds: Feeds) -> npt.NDArray[Any]:
    """Export torch's graph to `raw`; its output for `feeds`, once checked against torch's own."""
    expected = _export_torch(model_dir, raw, feeds)
    got = _run_graph(raw, feeds)
    worst = _worst_token_cosine(got, expected, feeds["attention_mask"])
    if not worst >= _EXPORT_MIN_COSINE:
        raise ExportError(
            f"the ONNX export of {model_dir} does not reproduce the torch model (worst token "
            f"cosine {worst:.6f}); use backend='torch' for this model"
        )
    return got


def _checked_shipped(model_dir: Path, shipped: Path, feeds: Feeds) -> npt.NDArray[Any] | None:
    """The shipped graph's output for `feeds` when it reproduces the model's torch weights (or there are
    none to compare with), else None."""
    got = _run_graph(shipped, feeds)
    if not _weight_files(model_dir):
        logger.warning(
            "onnx: %s has no torch weights, so its ONNX file %s cannot be checked; using it as shipped",
            model_dir,
            shipped,
        )
        return got
    worst = _worst_token_cosine(got, _torch_hidden(model_dir, feeds), feeds["attention_mask"])
    if worst >= _EXPORT_MIN_COSINE:
        return got
    logger.warning(
        "onnx: the ONNX file %s does not reproduce %s's torch weights (worst token cosine %.6f); "
        "exporting the weights instead",
        shipped,
        model_dir,
        worst,
    )
    return None


def _build_fp32(model_dir: Path, final: Path, feeds: Feeds, fuse: bool = True) -> None:
    """Take the shipped graph if it reproduces torch, else export (and check) one; fuse (unless `fuse`
    is off: OpenVINO reads only standard ops), check again, publish."""
    shipped = shipped_onnx(model_dir)
    with _work_dir(final) as work:
        raw, fused = work / "raw.onnx", work / "fused.onnx"
        reference = None if shipped is None else _checked_shipped(model_dir, shipped, feeds)
        if reference is None:
            reference = _exported(model_dir, raw, feeds)
            source = raw
        else:
            source = shipped  # type: ignore[assignment]
        if fuse and _fuse(source, fused, model_dir, feeds, reference):
            _publish(fused, final)
            return
        if source is shipped:  # re-save: folds any external-data file into the graph (or its own .data)
            onnx = require("onnx", extra="onnx")
            save_model(onnx.load(str(shipped)), raw)
        _publish(raw, final)


def prepare_graph(
    model_dir: Path,
    precision: str,
    feeds: Callable[[], Feeds],
    cache_dir: Path | None = None,
    calibration: Callable[[], Feeds] | None = None,
) -> Path:
    """The cached ONNX graph for `model_dir` at `precision`, built (and verified) when missing.

    `feeds` makes a small padded probe batch: the export traces it, and every fp32 graph (exported,
    shipped, fused) must reproduce torch's token vectors on it (each unpadded token to cosine 0.99999).
    `calibration` (default: `feeds`) makes the varied batch that decides how much of the int8 graph is quantised.
    """
    if precision not in GRAPH_KINDS:
        raise ValueError(
            f"precision {precision!r} is not available with backend='onnx'; use one of "
            f"{list(ONNX_PRECISIONS)} (ONNX Runtime has no bf16 kernels on CPU; "
            f"backend='torch' runs fp16/bf16)"
        )
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    fingerprint = model_fingerprint(model_dir, root)
    folder = root / f"{_slug(model_dir)}-{fingerprint[:16]}"
    final = folder / f"model-{precision}-{cache_key(fingerprint, precision)[:16]}.onnx"
    if _verified(final):
        return final
    base_kind = _BASE_OF.get(precision)
    base = None if base_kind is None else prepare_graph(model_dir, base_kind, feeds, root)
    with _build_lock(folder):
        if _verified(final):  # another process built it while we waited
            return final
        discard(final)
        if base is None:
            _build_fp32(model_dir, final, feeds(), fuse=precision == "fp32")
        else:
            with _work_dir(final) as work:
                build = _build_int8 if precision == "int8" else _build_nncf
                build(base, work / "int8.onnx", (calibration or feeds)())
                _publish(work / "int8.onnx", final)
    return final


def _slug(model_dir: Path) -> str:
    name = model_dir.resolve().name or "model"
    if name == "model" and model_dir.resolve().parent.name:
        name = model_dir.resolve().parent.name
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:48]
