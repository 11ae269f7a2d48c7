"""The ONNX Runtime backend: pooled, un-normalised sentence vectors from a local model directory.

Texts are tokenised with the Rust `tokenizers` library (the model's tokenizer.json) by an
OnnxTokenizer, which needs no graph (the provider orders a call's texts with it and hands the same
tokens to `encode`), sorted by length and cut into batches by a token budget, so padding stays
small; the graph (see _onnx_export) is fed only the inputs it declares, right-padded. The model's
sentence-transformers modules after its Transformer (every Pooling mode, Dense, Normalize) run in numpy
(st_modules.Head), pooling by the attention mask; architectures outside FAST_PATH_FAMILIES and modules
it does not compute are refused by name. A trailing Normalize and Matryoshka truncation belong to the provider.

OpenVINO: one Core per process (a second Core loads the CPU plugin again; creating and querying
several has crashed processes), one infer request per compiled model behind a lock, and every
compiled model released at interpreter exit, before module teardown.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import os
import threading
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from embedstack._atomic import atomic_write_bytes
from embedstack._optional import require
from embedstack.pooling import Pooling
from embedstack.providers.catalog import FAST_PATH_FAMILIES
from embedstack.providers.huggingface.onnx_export import (
    ONNX_PRECISIONS,
    Feeds,
    discard,
    pick_output,
    prepare_graph,
)
from embedstack.providers.huggingface.st_modules import (
    Head,
    UnsupportedModule,
    read_head,
    transformer_settings_problem,
)
from embedstack.providers.huggingface.tokens import Tokens, lowercase_normaliser
from embedstack.types import EmbedResult

__all__ = [
    "DEFAULT_TOKEN_BUDGET",
    "FAST_PATH_FAMILIES",
    "ONNX_PRECISIONS",
    "RUNTIMES",
    "OnnxEncoder",
    "OnnxTokenizer",
    "native_bf16",
    "onnx_problem",
    "openvino_core",
    "physical_cores",
    "shape_bucket",
]

logger = logging.getLogger("embedstack")

#: Tokens (padded rows x length) per graph run: small, so activations and attention scores stay cache-sized.
#: Figures and how to measure them: docs/providers/local.md#why-these-defaults.
DEFAULT_TOKEN_BUDGET = 1024
_MAX_ROWS = 256
_PROBE = ["embedstack probes the export with two sentences.", "a short one"]
#: Varied texts (short queries to a truncated paragraph) that decide how much of int8 is quantised.
_CALIBRATION = [
    "how do I resize a partition without losing data",
    "Python library for parsing YAML files",
    "A man is eating a piece of bread.",
    "The quick brown fox jumps over the lazy dog.",
    "error: could not connect to server: Connection refused",
    "Was ist der Unterschied zwischen TCP und UDP?",
    "best pizza near me open late",
    "SELECT name, count(*) FROM users GROUP BY name HAVING count(*) > 1;",
    "The mitochondria is the powerhouse of the cell, producing ATP through respiration.",
    "Le chat dort sur le canapé depuis ce matin.",
    "GPU drivers for NVIDIA cards on Debian",
    "Rain is expected across the north of the country on Thursday, with snow on higher ground.",
    "def fibonacci(n): return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)",
    "terms and conditions apply; see store for details",
    "Emoji 🚀, CJK 日本語 and accents: déjà vu.",
    "a",
    (
        "This package provides a lightweight library for reading and writing configuration files. "
        "It supports nested sections, comments, typed values and round-trip editing that keeps the "
        "original formatting. Command line tools convert between formats, validate files against a "
        "schema and print differences between two configurations. "
    )
    * 4,
    (
        "The committee met on Tuesday to review the budget. After a long discussion about maintenance "
        "costs, staffing and the new building, members agreed to postpone the vote until next month."
    ),
]
_ROBERTA_LIKE = {"roberta", "xlm-roberta", "camembert"}
_KNOWN_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")
#: The files transformers builds a tokenizer from (besides any *.model SentencePiece file).
_TOKENIZER_FILES = {
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "config.json",
    "chat_template.jinja",
}


def physical_cores() -> int:
    """Physical cores this process may run on (hyper-thread siblings counted once)."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS/Windows
        return max(1, (os.cpu_count() or 2) // 2)
    cores = set()
    for cpu in cpus:
        topo = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            package = (topo / "physical_package_id").read_text().strip()
            core = (topo / "core_id").read_text().strip()
        except OSError:
            return max(1, len(cpus))
        cores.add((package, core))
    return max(1, len(cores))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); restore the model's files") from e
    return data if isinstance(data, dict) else {}


class _Layout:
    """Where a sentence-transformers or transformers directory keeps its parts, and its settings."""

    def __init__(self, model_dir: Path) -> None:
        self.root = model_dir
        #: The sentence-transformers modules after the Transformer (None: a plain transformers checkpoint);
        #: `head_problem` says why they cannot run here (then `head` is None too).
        self.head: Head | None = None
        self.head_problem: str | None = None
        try:
            self.transformer, self.head = read_head(model_dir)
        except UnsupportedModule as e:
            self.transformer, self.head_problem = self._first_module(model_dir), str(e)
        self.st_config = _read_json(self.transformer / "sentence_bert_config.json") or _read_json(
            model_dir / "sentence_bert_config.json"
        )
        self.config = _read_json(self.transformer / "config.json")
        self.tokenizer_config = _read_json(self.transformer / "tokenizer_config.json")
        where = str(self.transformer / "sentence_bert_config.json")
        #: A setting no backend applies (refused by the tokenizer, whatever the backend).
        self.settings_problem = transformer_settings_problem(self.st_config, where, fast_path=False)
        if self.head_problem is None and self.settings_problem is None:
            self.head_problem = transformer_settings_problem(self.st_config, where, fast_path=True)

    @staticmethod
    def _first_module(model_dir: Path) -> Path:
        """The first module's folder (where the tokenizer is), even for a pipeline the fast path refuses."""
        try:
            entries = json.loads((model_dir / "modules.json").read_text(encoding="utf-8"))
            return model_dir / str(entries[0].get("path", ""))
        except (OSError, ValueError, IndexError, KeyError, TypeError, AttributeError):
            return model_dir

    @property
    def pooling(self) -> Pooling | None:
        """The model's one declared pooling mode (None: several, or none declared)."""
        if self.head is None or not self.head.declared or len(self.head.modes) != 1:
            return None
        return self.head.modes[0]

    def family_problem(self) -> str | None:
        """Why the fast path does not run this architecture, or None when it does."""
        family = self.config.get("model_type")
        if family in FAST_PATH_FAMILIES:
            return None
        what = f"architecture {family!r}" if family else "an architecture its config.json does not name"
        return (
            f"{self.transformer} is {what}, which the fast path (ONNX Runtime, OpenVINO) does not run; it runs "
            f"{', '.join(FAST_PATH_FAMILIES)}"
        )

    def position_limit(self) -> int | None:
        """Longest input the position embeddings allow (RoBERTa reserves two positions)."""
        value = self.config.get("max_position_embeddings") or self.config.get("n_positions")
        if not value:
            return None
        if self.config.get("model_type") in _ROBERTA_LIKE:
            value -= 2
        return int(value)

    def declared_max_length(self) -> int | None:
        """max_seq_length from sentence_bert_config.json, else the tokenizer's model_max_length."""
        value = self.st_config.get("max_seq_length")
        if not value:
            value = self.tokenizer_config.get("model_max_length")
            if value and value >= 1_000_000:  # transformers' "unset"
                value = None
        return int(value) if value else None


def onnx_problem(model_dir: Path) -> str | None:
    """Why backend='onnx' cannot run `model_dir` as sentence-transformers does (an architecture or a module
    it does not run, a setting it does not compute), or None when it can."""
    try:
        layout = _Layout(Path(model_dir))
    except (ValueError, OSError) as e:
        return str(e)
    return layout.settings_problem or layout.head_problem or layout.family_problem()


class OnnxTokenizer:
    """A model directory's fast tokenizer, truncating to the model's limit: texts → Tokens, no graph needed.

    Safe to call from several threads: its truncation and padding are set once, here, and encoding only
    reads the Rust tokenizer (a server tokenises arrivals while a batch runs)."""

    def __init__(self, model_dir: Path, max_length: int | None = None, cache_dir: Path | None = None) -> None:
        """`cache_dir`: where the tokenizer transformers builds is kept (default: the ONNX graph cache)."""
        tokenizers = require("tokenizers", extra="onnx")
        self._cache_dir = cache_dir
        self.model_dir = Path(model_dir)
        if not self.model_dir.is_dir():
            raise FileNotFoundError(f"model directory {self.model_dir} does not exist")
        self.layout = _Layout(self.model_dir)
        if self.layout.settings_problem:
            raise ValueError(self.layout.settings_problem)
        self.lowercase = bool(self.layout.st_config.get("do_lower_case"))
        self.max_length = self._max_length(max_length)
        self.backend_tokenizer = self._load(tokenizers)
        self.pad_id = self._pad_id()

    def _max_length(self, requested: int | None) -> int:
        limit = self.layout.position_limit()
        declared = self.layout.declared_max_length()
        default = min(x for x in (declared, limit) if x) if (declared or limit) else None
        if requested is None:
            if default is None:
                raise ValueError(f"{self.model_dir} declares no maximum sequence length; pass max_length=")
            return default
        if requested < 2:
            raise ValueError(f"max_length={requested} is too small; it counts special tokens too")
        if limit is not None and requested > limit:
            raise ValueError(f"max_length={requested} exceeds what {self.model_dir} supports ({limit} tokens)")
        return requested

    def _load(self, tokenizers: Any) -> Any:
        tokenizer = self._as_transformers_builds_it(tokenizers)
        if tokenizer is None:
            path = self.layout.transformer / "tokenizer.json"
            if not path.is_file():
                raise ValueError(
                    f"{self.layout.transformer} has no tokenizer.json and its tokenizer has no "
                    f"fast version; use backend='torch'"
                )
            tokenizer = tokenizers.Tokenizer.from_file(str(path))
        tokenizer.no_padding()
        tokenizer.enable_truncation(self.max_length)
        if self.lowercase:  # in the tokenizer, as sentence-transformers does (a literal "[MASK]" stays special)
            lowercase_normaliser(tokenizer)
        return tokenizer

    def _as_transformers_builds_it(self, tokenizers: Any) -> Any:
        """The Rust tokenizer that transformers (so sentence-transformers) runs for this folder, or None where
        transformers cannot make one. Not tokenizer.json as it is: a tokenizer class rebuilds parts of it from
        tokenizer_config.json (BERT's normaliser from do_lower_case and strip_accents, for one), so reading the
        file alone can tokenise differently. Kept in the cache (keyed by the tokenizer's files and the transformers
        version), so a warm start reads one JSON file and imports no transformers."""
        from embedstack.providers.huggingface.onnx_export import _version, default_cache_dir

        folder = self.layout.transformer
        digest = hashlib.sha256(_version("transformers").encode())
        for path in sorted(folder.iterdir()):
            if path.is_file() and (path.name in _TOKENIZER_FILES or path.suffix == ".model"):
                digest.update(path.name.encode() + b"\0" + path.read_bytes())
        root = Path(self._cache_dir) if self._cache_dir is not None else default_cache_dir()
        cached = root / "tokenizers" / f"{digest.hexdigest()}.json"
        if cached.is_file():
            try:
                return tokenizers.Tokenizer.from_str(cached.read_text(encoding="utf-8"))
            except Exception as e:  # a damaged cache entry is built again
                logger.info("onnx: cached tokenizer %s is unreadable (%s); rebuilding", cached, e)
        try:
            transformers = require("transformers", extra="local")
            fast = transformers.AutoTokenizer.from_pretrained(str(folder), use_fast=True, local_files_only=True)
        except Exception as e:  # a tokenizer transformers cannot load: tokenizer.json as it is
            logger.info("onnx: transformers could not load the tokenizer of %s (%s); reading tokenizer.json", folder, e)
            return None
        backend = getattr(fast, "backend_tokenizer", None)
        if backend is None:
            return None
        text = backend.to_str()
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(cached, text.encode("utf-8"))
        except OSError as e:  # a read-only cache costs the next start time, not correctness
            logger.info("onnx: could not cache the tokenizer in %s (%s)", cached, e)
        return tokenizers.Tokenizer.from_str(text)

    def _pad_id(self) -> int:
        value = self.layout.config.get("pad_token_id")
        if isinstance(value, int):
            return value
        for token in ("[PAD]", "<pad>"):
            found = self.backend_tokenizer.token_to_id(token)
            if found is not None:
                return int(found)
        return 0

    def tokenize(self, texts: list[str]) -> list[Tokens]:
        """Token ids (special tokens included, truncated; lower-cased first when the model says so)."""
        fast = getattr(self.backend_tokenizer, "encode_batch_fast", None)  # no offsets: tokenizers >= 0.20
        encodings = fast(texts) if fast is not None else self.backend_tokenizer.encode_batch(texts)
        return [Tokens(np.asarray(e.ids, dtype=np.int64), bool(e.overflowing)) for e in encodings]


#: Which cached graph each runtime runs for a precision (see _onnx_export.GRAPH_KINDS).
RUNTIMES = {
    "onnxruntime": {"fp32": "fp32", "int8": "int8"},
    "openvino": {"fp32": "plain", "bf16": "plain", "int8": "nncf-int8"},
}
#: OpenVINO's INFERENCE_PRECISION_HINT per precision. Always explicit: on a CPU with native bf16 its
#: default is bf16, which would make "fp32" silently approximate (and int8's other ops with it).
_OPENVINO_HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}


def shape_bucket(length: int) -> int:
    """`length` rounded up to a step of 1/8 to 1/16 of it (a power of two): exact up to 16 tokens, then
    at most ~12% padding, so a corpus runs through a few dozen shapes instead of one per length."""
    if length <= 16:
        return length
    step = 1 << ((length - 1).bit_length() - 4)
    return -(-length // step) * step


_core: Any = None
_core_lock = threading.Lock()
_sessions: weakref.WeakSet[_OpenVinoSession] = weakref.WeakSet()


def openvino_core(ov: Any) -> Any:
    """This process's one OpenVINO Core (made on first use, kept until exit)."""
    global _core
    with _core_lock:
        if _core is None:
            _core = ov.Core()
        return _core


def native_bf16(ov: Any) -> bool:
    """Whether OpenVINO can run bf16 natively on this CPU (AVX512_BF16 or AMX)."""
    return "BF16" in openvino_core(ov).get_property("CPU", "OPTIMIZATION_CAPABILITIES")


@atexit.register
def _release_openvino() -> None:
    """Free every compiled model, then the Core, while the interpreter is whole (not during teardown)."""
    global _core
    for session in list(_sessions):
        session.close()
    with _core_lock:
        _core = None


class _Port:
    """An OpenVINO input/output as onnxruntime describes one: a name and a shape."""

    def __init__(self, port: Any) -> None:
        self.name = port.get_any_name()
        self.shape = list(port.get_partial_shape())


class _OpenVinoSession:
    """An OpenVINO compiled model behind the slice of onnxruntime's InferenceSession the encoder uses."""

    def __init__(self, ov: Any, path: Path, threads: int, precision: str) -> None:
        config = {
            "INFERENCE_NUM_THREADS": threads,
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": _OPENVINO_HINTS[precision],
        }
        self.compiled: Any = openvino_core(ov).compile_model(str(path), "CPU", config)
        self.request: Any = self.compiled.create_infer_request()
        self.inputs = [_Port(p) for p in self.compiled.inputs]
        self.outputs = [_Port(p) for p in self.compiled.outputs]
        self._lock = threading.Lock()  # one infer request: calls from several threads take turns
        _sessions.add(self)

    @staticmethod
    def check(ov: Any, precision: str) -> None:
        """Refuse bf16 where the CPU has no native bfloat16 (OpenVINO would quietly run fp32)."""
        if precision == "bf16" and not native_bf16(ov):
            raise ValueError(
                "precision='bf16' needs a CPU with native bfloat16 (AVX512_BF16 or AMX) and this one has "
                "none; use precision='fp32' or 'int8' (the fast mode)"
            )

    def get_inputs(self) -> list[_Port]:
        return self.inputs

    def get_outputs(self) -> list[_Port]:
        return self.outputs

    def run(self, outputs: list[str], feeds: dict[str, Any]) -> list[Any]:
        with self._lock:
            if self.request is None:
                raise RuntimeError("the OpenVINO model was released (the interpreter is exiting)")
            result = self.request.infer(feeds)
            return [np.array(result[self.compiled.output(name)]) for name in outputs]

    def close(self) -> None:
        """Release the infer request, then the compiled model (waits for a running inference)."""
        with self._lock:
            self.request = None
            self.compiled = None


class OnnxEncoder:
    """A model directory run by ONNX Runtime (or OpenVINO): texts → pooled float32 vectors (not normalised).

    Implements `embedstack.providers.huggingface.encoder.Encoder`; both runtimes run on the CPU.
    """

    dim: int
    max_length: int
    device: str
    text_tokenizer: OnnxTokenizer

    def __init__(
        self,
        model_dir: Path,
        precision: str = "fp32",
        max_length: int | None = None,
        pooling: Pooling | None = None,
        threads: int | None = None,
        *,
        cache_dir: Path | None = None,
        token_budget: int = DEFAULT_TOKEN_BUDGET,
        runtime: str = "onnxruntime",
        tokenizer: OnnxTokenizer | None = None,
    ) -> None:
        """`tokenizer` (made for the same directory and max_length) is shared with the caller; one is
        made when not given."""
        if runtime not in RUNTIMES:
            raise ValueError(f"unknown runtime {runtime!r}; use one of {list(RUNTIMES)}")
        self.runtime = runtime
        self.device = "cpu"
        self.ov = require("openvino", extra="openvino") if runtime == "openvino" else None
        if self.ov is None:
            require("onnxruntime", extra="onnx")
        if precision not in RUNTIMES[runtime]:
            backend = "openvino" if runtime == "openvino" else "onnx"
            raise ValueError(
                f"precision {precision!r} is not available with backend={backend!r}; use one of "
                f"{list(RUNTIMES[runtime])} (ONNX Runtime has no bf16 kernels on CPU: backend='openvino' "
                f"runs bf16 on CPUs with native bfloat16; backend='torch' runs fp16/bf16)"
            )
        if self.ov is not None:
            _OpenVinoSession.check(self.ov, precision)
        if token_budget < 1:
            raise ValueError(f"token_budget={token_budget} must be a positive number of tokens")
        self.model_dir = Path(model_dir)
        if tokenizer is None:
            tokenizer = OnnxTokenizer(self.model_dir, max_length, cache_dir)
        elif tokenizer.model_dir != self.model_dir:
            raise ValueError(f"the tokenizer of {tokenizer.model_dir} cannot feed {self.model_dir}")
        self.text_tokenizer = tokenizer
        self.precision = precision
        self.token_budget = token_budget
        self.threads = threads or physical_cores()
        layout = self.layout = tokenizer.layout
        backend = "openvino" if runtime == "openvino" else "onnx"
        problem = layout.family_problem() or (layout.head_problem if pooling is None else None)
        if problem:
            raise ValueError(f"{problem}; use backend='torch' for this model (backend={backend!r} refuses it)")
        if pooling is not None:  # explicit pooling replaces the model's pooling
            if layout.head is not None and layout.head.steps:
                raise ValueError(
                    f"pooling={Pooling(pooling).value!r} would drop the Dense layers after {self.model_dir}'s "
                    f"own pooling; leave pooling unset"
                )
            self.head = Head.of([Pooling(pooling)])
        else:
            self.head = layout.head or Head.of([Pooling.MEAN])
        #: The pooling mode (None when the model's files combine several).
        self.pooling: Pooling | None = self.head.modes[0] if len(self.head.modes) == 1 else None
        self.max_length = tokenizer.max_length
        self.pad_id = tokenizer.pad_id
        self.graph_path = self._prepare(cache_dir)
        try:
            self.session = self._session(self.graph_path)
        except Exception as e:  # a cached graph that will not load is rebuilt once
            logger.warning("onnx: cached graph %s failed to load (%s); rebuilding", self.graph_path, e)
            discard(self.graph_path)
            self.graph_path = self._prepare(cache_dir)
            self.session = self._session(self.graph_path)
        self.inputs = [i.name for i in self.session.get_inputs()]
        unknown = [n for n in self.inputs if n not in _KNOWN_INPUTS]
        if unknown:
            raise ValueError(
                f"{self.graph_path} declares inputs {unknown} that a text encoder cannot provide "
                f"(known: {list(_KNOWN_INPUTS)}); use backend='torch'"
            )
        self.output = pick_output(self.session.get_outputs())
        self.dim = self._dim()

    @property
    def tokenizer(self) -> Any:
        """The underlying `tokenizers` object."""
        return self.text_tokenizer.backend_tokenizer

    # -- setup -----------------------------------------------------------------------------------
    def _session(self, path: Path) -> Any:
        if self.ov is not None:
            return _OpenVinoSession(self.ov, path, self.threads, self.precision)
        ort = require("onnxruntime", extra="onnx")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def _prepare(self, cache_dir: Path | None) -> Path:
        kind = RUNTIMES[self.runtime][self.precision]
        return prepare_graph(
            self.layout.transformer,
            kind,
            self._probe_feeds,
            cache_dir=cache_dir,
            calibration=self._nncf_calibration_feeds if kind == "nncf-int8" else self._calibration_feeds,
        )

    def _nncf_calibration_feeds(self) -> Feeds:
        """The 18 built-in texts plus 200 shipped ones (calibration.txt): NNCF's ranges need more samples."""
        shipped = Path(__file__).with_name("calibration.txt").read_text(encoding="utf-8").splitlines()
        return self._padded([*_CALIBRATION, *filter(None, shipped)])

    def _calibration_feeds(self) -> Feeds:
        return self._padded(_CALIBRATION)

    def _probe_feeds(self) -> Feeds:
        return self._padded(_PROBE)

    def _padded(self, texts: list[str]) -> Feeds:
        tokens = self.text_tokenizer.tokenize(texts)
        return self._feeds(tokens, list(range(len(tokens))))

    def _dim(self) -> int:
        hidden = self.layout.config.get("hidden_size") or self.layout.config.get("dim")
        if isinstance(hidden, int) and hidden > 0:
            return self.head.dim(hidden)
        probe = self.text_tokenizer.tokenize([""])
        feeds = self._feeds(probe, [0])
        out = self.session.run([self.output], {k: feeds[k] for k in self.inputs})[0]
        return self.head.dim(int(out.shape[-1]))

    # -- encoding --------------------------------------------------------------------------------
    def _feeds(self, tokens: Sequence[Tokens], rows: list[int]) -> Feeds:
        """Right-padded int64 arrays for `rows` of `tokens` (all four known input names)."""
        length = self._padded_length(max(len(tokens[i].ids) for i in rows))
        ids = np.full((len(rows), length), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), length), dtype=np.int64)
        for r, i in enumerate(rows):
            row = tokens[i].ids
            ids[r, : len(row)] = row
            mask[r, : len(row)] = 1
        positions = np.broadcast_to(np.arange(length, dtype=np.int64), ids.shape)
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "token_type_ids": np.zeros_like(ids),
            "position_ids": np.ascontiguousarray(positions),
        }

    def _padded_length(self, longest: int) -> int:
        """The length a batch is padded to: exact for ONNX Runtime; for OpenVINO, which compiles and keeps
        kernels per input shape (time and memory each: docs/providers/local.md#why-these-defaults), one of
        ~48 lengths up to 256."""
        if self.ov is None:
            return longest
        return min(shape_bucket(longest), max(longest, self.max_length))

    def _batches(self, lengths: npt.NDArray[np.int64]) -> list[list[int]]:
        """Indices longest first, cut so rows x longest length stays within the token budget."""
        order = np.argsort(-lengths, kind="stable").tolist()
        batches: list[list[int]] = []
        start = 0
        while start < len(order):
            longest = self._padded_length(int(lengths[order[start]]))
            rows = max(1, min(_MAX_ROWS, self.token_budget // max(longest, 1)))
            batches.append(order[start : start + rows])
            start += rows
        return batches

    def encode(self, texts: list[str], tokens: Sequence[Tokens] | None = None) -> EmbedResult:
        """Pooled float32 vectors (not normalised) for `texts`, with token and truncation counts.

        `tokens`: `text_tokenizer`'s tokens for `texts`, when the caller has them already.
        """
        if not texts:
            return EmbedResult(np.zeros((0, self.dim), dtype=np.float32), token_count=0)
        if tokens is None:
            tokens = self.text_tokenizer.tokenize(texts)
        elif len(tokens) != len(texts):
            raise ValueError(f"{len(tokens)} token rows for {len(texts)} texts")
        lengths = np.fromiter((len(t.ids) for t in tokens), dtype=np.int64, count=len(texts))
        truncated = sum(1 for t in tokens if t.truncated)
        vectors = np.empty((len(texts), self.dim), dtype=np.float32)
        for rows in self._batches(lengths):
            feeds = self._feeds(tokens, rows)
            hidden = self.session.run([self.output], {k: feeds[k] for k in self.inputs})[0]
            vectors[rows] = self.head.apply(hidden, feeds["attention_mask"])
        return EmbedResult(vectors, token_count=int(lengths.sum()), truncated=truncated)

    # -- token vectors (late chunking) -----------------------------------------------------------
    def token_vectors(self, tokens: Sequence[Tokens]) -> list[npt.NDArray[np.float32]]:
        """Each row's token vectors, (len(row.ids), hidden) float32: the graph's output, batched by the token budget."""
        lengths = np.fromiter((len(t.ids) for t in tokens), dtype=np.int64, count=len(tokens))
        out: list[npt.NDArray[np.float32]] = [np.zeros((0, 0), dtype=np.float32)] * len(tokens)
        for rows in self._batches(lengths):
            feeds = self._feeds(tokens, rows)
            hidden = self.session.run([self.output], {k: feeds[k] for k in self.inputs})[0]
            for r, i in enumerate(rows):
                out[i] = np.ascontiguousarray(hidden[r, : lengths[i]], dtype=np.float32)
        return out

    def after_pooling(self, pooled: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Mean-pooled token vectors through the model's Dense layers (and inner Normalize steps)."""
        if len(self.head.modes) != 1:
            raise ValueError(
                f"{self.model_dir} concatenates several pooling modes; late chunking computes one (mean) per span, "
                "which its later modules cannot take"
            )
        head = Head(modes=(Pooling.MEAN,), steps=self.head.steps)
        ones = np.ones((len(pooled), 1), dtype=np.int64)
        return head.apply(np.asarray(pooled, dtype=np.float32)[:, None, :], ones)
