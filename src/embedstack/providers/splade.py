"""SPLADE: sparse vectors from a Hugging Face masked-LM checkpoint, as sentence-transformers' `SparseEncoder`.

A text's vector is log(1 + ReLU(logits)) of the masked LM, pooled over its tokens (max, or sum where the
model's `SpladePooling` says so; a second log1p for `log1p_relu`), padding masked out: one weight per
vocabulary entry, most of them zero. A sentence-transformers SparseEncoder directory is read as
sentence-transformers reads it (modules.json, its Router's query and document routes, prompts,
`max_active_dims`); a plain masked-LM checkpoint gets max pooling with ReLU.

Inference-free SPLADE (a Router whose query route is a `SparseStaticEmbedding`) embeds queries with a
lookup table: each distinct token of the query (no special tokens) gets its learned weight; no model runs.

Backends: "torch" (exact), "onnx" (ONNX Runtime fp32 on an exported masked-LM graph that outputs logits,
pooled in numpy; checked against torch when it is built).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import Field, PrivateAttr, field_validator, model_validator

from embedstack._optional import require
from embedstack.errors import EmbedstackError
from embedstack.outputs import SparseVector
from embedstack.provider import BatchOutput, Prepared, TokenCounts
from embedstack.providers.huggingface.st_modules import transformer_settings_problem
from embedstack.providers.huggingface.tokens import (
    Tokens,
    add_lowercase,
    declares_lowercase,
    encode_tokens,
    pad_tokens,
)
from embedstack.sparse import BatchSparseEmbedding, SparseEmbedding
from embedstack.types import Plan, Role

__all__ = ["SpladeEmbedding", "from_spec"]

#: sentence-transformers module classes, by class name (their module paths moved between versions:
#: `sparse_encoder.models` in 5.x, `sparse_encoder.modules` and `base.modules` in 6.x).
_MLM = "MLMTransformer"
_TRANSFORMER = "Transformer"  # 6.x: a masked LM when its sentence_bert_config says transformer_task fill-mask
_POOL = "SpladePooling"
_STATIC = "SparseStaticEmbedding"
_ROUTER = "Router"
_HUGE = 1_000_000  # transformers' "no limit" model_max_length is far above any real one


class SpladeModelError(EmbedstackError, ValueError):
    """The directory is not a SPLADE model embedstack can run exactly; the message says why and what to do."""


@dataclass(frozen=True)
class _Route:
    """One side (query or document) of a SPLADE model: a masked LM and its pooling, or a lookup table."""

    kind: Literal["mlm", "static"]
    path: Path
    pooling: str = "max"
    activation: str = "relu"


def _short(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}  # type: ignore[no-any-return]


def _kind(type_name: str, path: Path) -> str:
    """A module's class name ("MLMTransformer" for 6.x's fill-mask Transformer); "" for non-sentence-transformers."""
    if not type_name.startswith("sentence_transformers."):
        return ""
    name = _short(type_name)
    if name == _TRANSFORMER and _read_json(path / "sentence_bert_config.json").get("transformer_task") == "fill-mask":
        return _MLM
    return name


def _mlm_route(root: Path, chain: list[tuple[str, Path]]) -> _Route:
    """[MLMTransformer, SpladePooling] (the only chain computed exactly) as a route."""
    types = [_short(t) for t, _ in chain]
    kinds = [_kind(t, p) for t, p in chain]
    if kinds == [_STATIC]:
        return _Route("static", chain[0][1])
    if kinds != [_MLM, _POOL]:
        raise SpladeModelError(
            f"{root} has modules {types}; embedstack runs SPLADE models made of [MLMTransformer, SpladePooling] "
            "(or a SparseStaticEmbedding query side); use sentence_transformers.SparseEncoder for this one"
        )
    cfg = _read_json(chain[1][1] / "config.json")
    pooling, activation = cfg.get("pooling_strategy", "max"), cfg.get("activation_function", "relu")
    if pooling not in ("max", "sum") or activation not in ("relu", "log1p_relu"):
        raise SpladeModelError(f"{chain[1][1]}: SpladePooling({pooling!r}, {activation!r}) is not one embedstack runs")
    return _Route("mlm", chain[0][1], pooling, activation)


def read_routes(root: Path) -> tuple[_Route, _Route]:
    """(query route, document route) of the model in `root`."""
    modules_file = root / "modules.json"
    if not modules_file.is_file():  # a plain masked-LM checkpoint
        if not (root / "config.json").is_file():
            raise SpladeModelError(f"{root} has neither modules.json nor config.json; pass a masked-LM model directory")
        route = _Route("mlm", root)
        return route, route
    modules = json.loads(modules_file.read_text())
    chain = [(m["type"], root / m.get("path", "")) for m in modules]
    if len(chain) == 1 and _kind(*chain[0]) == _ROUTER:
        router = _read_json(chain[0][1] / "router_config.json")
        types, structure = router.get("types", {}), router.get("structure", {})
        sides = {}
        for side in ("query", "document"):
            names = structure.get(side)
            if not names:
                raise SpladeModelError(f"{root}: its Router has no {side!r} route")
            sides[side] = _mlm_route(root, [(types[n], chain[0][1] / n) for n in names])
        if sides["document"].kind != "mlm":
            raise SpladeModelError(f"{root}: its document route is a lookup table; expected a masked LM")
        return sides["query"], sides["document"]
    route = _mlm_route(root, chain)
    if route.kind != "mlm":
        raise SpladeModelError(f"{root} is a lookup table only; expected a masked LM with SpladePooling")
    return route, route


class _Tokenizer:
    """A route's tokenizer with sentence-transformers' settings (max length, lowercasing)."""

    def __init__(self, path: Path, special_tokens: bool) -> None:
        transformers = require("transformers", extra="local")
        self.hf = transformers.AutoTokenizer.from_pretrained(str(path))
        st = _read_json(path / "sentence_bert_config.json")
        problem = transformer_settings_problem(st, str(path / "sentence_bert_config.json"), fast_path=True)
        if problem:
            raise SpladeModelError(f"{problem}; use sentence_transformers.SparseEncoder for this model")
        positions = _read_json(path / "config.json").get("max_position_embeddings")
        length = st.get("max_seq_length")
        if not isinstance(length, int):  # sentence-transformers caps the tokenizer's limit at the model's positions
            length = getattr(self.hf, "model_max_length", None)
            if isinstance(positions, int) and positions > 0 and (not isinstance(length, int) or length > positions):
                length = positions
        if not isinstance(length, int) or length > _HUGE:
            length = positions if isinstance(positions, int) and positions > 0 else 512
        self.max_length = int(length)
        if st.get("do_lower_case"):
            add_lowercase(self.hf)
        # Padding on the right whatever tokenizer_config.json says: a left-padded BERT shifts its absolute positions
        # by the row's padding, so a text's vector would depend on the batch it is in (sentence-transformers' does);
        # on the right every row's vector is the one it has alone.
        self.hf.padding_side = "right"
        self.special_tokens = special_tokens
        self._lock = threading.Lock()  # a fast tokenizer is not safe across threads (a server tokenises arrivals)

    def encode(self, texts: list[str]) -> list[Tokens]:
        """Each text's ids, cut to max_length, with whether it was cut: one tokenising pass (the count is their
        length), which the batch pads and runs on."""
        return encode_tokens(
            self.hf,
            [texts],
            self.max_length,
            truncation="longest_first",
            add_special_tokens=self.special_tokens,
            lock=self._lock,
        )

    def pad(self, tokens: Sequence[Tokens]) -> dict[str, npt.NDArray[np.int64]]:
        """The batch's padded input_ids, attention_mask (and token_type_ids), as the tokenizer pads."""
        return pad_tokens(tokens, self.hf)


def top_k(dense: npt.NDArray[np.float32], k: int | None) -> list[SparseVector]:
    """Each row's non-zero entries (its `k` largest by magnitude when `k` is set) as sparse vectors.

    Weights tied at the k-th place are kept lowest index first (deterministic; sentence-transformers'
    torch.topk breaks such ties in an unspecified order)."""
    out = []
    for row in dense:
        idx = np.flatnonzero(row)
        if k is not None and len(idx) > k:
            order = np.lexsort((idx, -np.abs(row[idx])))  # by magnitude, then index
            idx = np.sort(idx[order[:k]])
        out.append(SparseVector(idx.astype(np.int32), row[idx].astype(np.float32)))
    return out


class _Side:
    """One route, loaded: computes (batch, vocab) weights for texts."""

    def __init__(self, route: _Route, backend: str, device: str | None, precision: str = "fp32") -> None:
        self.route = route
        self.tokenizer = _Tokenizer(route.path, special_tokens=route.kind == "mlm")
        self.backend = backend
        if route.kind == "static":
            safetensors = require("safetensors.numpy", extra="local", package="safetensors")
            weights = safetensors.load_file(str(route.path / "model.safetensors"))
            self.table = np.asarray(weights["weight"], dtype=np.float32)
        elif backend == "torch":
            self.device = device or "cpu"
            from embedstack.providers.splade_onnx import load_mlm  # one fp32 loader for torch and the export

            self.model = load_mlm(route.path).to(self.device)
            self.torch = require("torch", extra="local")
        else:
            from embedstack.providers.splade_onnx import mlm_session

            self.session = mlm_session(route.path, precision=precision)

    @property
    def vocab_size(self) -> int:
        if self.route.kind == "static":
            return len(self.table)
        if self.backend == "torch":
            return int(self.model.config.vocab_size)
        return int(self.session.get_outputs()[0].shape[-1])

    def weights(self, tokens: Sequence[Tokens]) -> npt.NDArray[np.float32]:
        """(batch, vocab) weights of tokenised texts (`_Tokenizer.encode`)."""
        enc = self.tokenizer.pad(tokens)
        if self.route.kind == "static":
            out = np.zeros((len(tokens), len(self.table)), dtype=np.float32)
            for r, (ids, mask) in enumerate(zip(enc["input_ids"], enc["attention_mask"])):
                present = np.unique(ids[mask.astype(bool)])
                out[r, present] = self.table[present]
            return out
        if self.backend == "torch":
            torch = self.torch
            feeds = {k: torch.from_numpy(v).to(self.device) for k, v in enc.items()}
            with torch.inference_mode():
                logits = self.model(**feeds).logits.float()
                mask = feeds["attention_mask"].unsqueeze(-1).to(logits.dtype)
                x = torch.log1p(torch.relu(logits * mask))
                if self.route.activation == "log1p_relu":
                    x = torch.log1p(x)
                pooled = x.max(dim=1).values if self.route.pooling == "max" else x.sum(dim=1)
            return pooled.cpu().numpy().astype(np.float32)  # type: ignore[no-any-return]
        feeds = {i.name: enc[i.name].astype(np.int64) for i in self.session.get_inputs() if i.name in enc}
        if "token_type_ids" in {i.name for i in self.session.get_inputs()} and "token_type_ids" not in feeds:
            feeds["token_type_ids"] = np.zeros_like(enc["input_ids"], dtype=np.int64)
        from embedstack.providers.splade_onnx import splade_pool

        logits = self.session.run(None, feeds)[0]
        return splade_pool(
            np.asarray(logits, dtype=np.float32), enc["attention_mask"], self.route.pooling, self.route.activation
        )


@dataclass(frozen=True)
class _Settings:
    """What a SPLADE model's config files say: prompts per role, max_active_dims, the vocabulary size."""

    prompts: dict[Role, str]
    max_active_dims: int | None
    vocab_size: int | None

    @classmethod
    def read(cls, root: Path) -> _Settings:
        st = _read_json(root / "config_sentence_transformers.json")
        prompts = st.get("prompts") or {}
        _, document = read_routes(root)
        vocab = _read_json(document.path / "config.json").get("vocab_size")
        return cls(
            {Role.QUERY: prompts.get("query") or "", Role.TEXT: prompts.get("document") or ""},
            st.get("max_active_dims"),
            int(vocab) if isinstance(vocab, int) and vocab > 0 else None,
        )


class _Loaded:
    def __init__(self, root: Path, backend: str, device: str | None, precision: str = "fp32") -> None:
        query, document = read_routes(root)
        self.document = _Side(document, backend, device, precision)
        self.query = self.document if query == document else _Side(query, backend, device, precision)
        settings = _Settings.read(root)
        self.prompts = settings.prompts
        self.vocab_size = self.document.vocab_size
        if self.query.vocab_size != self.vocab_size or settings.vocab_size not in (None, self.vocab_size):
            raise SpladeModelError(
                f"{root}: the query side has {self.query.vocab_size} dimensions, the document side {self.vocab_size}, "
                f"its config says {settings.vocab_size}; the sides must share one vocabulary"
            )
        vocab = self.document.tokenizer.hf.get_vocab()
        self.tokens = {i: t for t, i in vocab.items()}


class SpladeEmbedding(BatchSparseEmbedding):
    """SPLADE sparse vectors from a masked-LM checkpoint or a sentence-transformers SparseEncoder directory.

    `max_active_dims`: keep each vector's largest weights only (None: the model's own setting, else all).
    `backend`: "torch" or "onnx" (fp32: exact; `precision="int8"`: a fast mode, kept only when its vectors stay
    within cosine 0.99 mean / 0.98 min of fp32's on calibration texts). `device`: torch device ("cpu", "cuda").
    """

    model_name: str = Field(description="A SparseEncoder or masked-LM model directory, or a Hugging Face id.")
    backend: Literal["torch", "onnx"] = "torch"
    max_active_dims: int | None = Field(default=None, gt=0)
    precision: Literal["fp32", "int8"] = Field(
        default="fp32", description="int8: a fast mode on backend='onnx' (dynamic int8, checked against fp32)."
    )
    device: str | None = None
    embed_batch_size: int = Field(default=32, gt=0, le=2048)

    _identity_exclude = frozenset({"device"})
    _derived = frozenset({"_loaded", "_located", "_light"})
    plan_in_thread = True

    _loaded: _Loaded | None = PrivateAttr(default=None)
    _located: Any = PrivateAttr(default=None)
    _light: _Settings | None = PrivateAttr(default=None)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    @field_validator("model_name")
    @classmethod
    def _non_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("model_name must name a model directory or id")
        return v

    @model_validator(mode="after")
    def _int8_on_onnx(self) -> SpladeEmbedding:
        if self.precision == "int8" and self.backend != "onnx":
            raise ValueError("precision='int8' runs on backend='onnx'; use backend='onnx' or precision='fp32'")
        return self

    @classmethod
    def class_name(cls) -> str:
        """Name stored in to_dict()."""
        return "SpladeEmbedding"

    def _source(self) -> Any:
        source = self._located
        if source is None:
            from embedstack.providers.hub import locate_model

            source = self._located = locate_model(self.model_name)
        return source

    def _model(self) -> _Loaded:
        loaded = self._loaded
        if loaded is None:
            with self._lock:
                loaded = self._loaded
                if loaded is None:
                    loaded = self._loaded = _Loaded(self._source().path, self.backend, self.device, self.precision)
        return loaded

    def _identity(self) -> dict[str, Any]:
        from embedstack.providers.hub import stamp_fp32_from, stamp_identity

        data = stamp_identity(super()._identity(), self._source())  # the files' stamp: changed weights, new keys
        if self.precision == "fp32":  # a masked LM saved in fp16/bf16 ran at that dtype before it was cast to fp32
            for path in dict.fromkeys(r.path for r in read_routes(self._source().path) if r.kind == "mlm"):
                stamp_fp32_from(data, path)
        if declares_lowercase(self._source().path):  # older cached vectors miss (see declares_lowercase)
            data["lowercase"] = "normaliser"
        if self.precision == "int8":  # ONNX Runtime's quantiser makes the int8 graph: another version, other numbers
            from embedstack.providers.huggingface.onnx_export import int8_versions

            data["int8_versions"] = int8_versions("onnx")
        return data

    def _settings(self) -> _Settings:
        """The model's prompts, max_active_dims and vocabulary size, read from its config files (no weights)."""
        found = self._light
        if found is None:
            found = self._light = _Settings.read(self._source().path)
        return found

    def _vocab_size(self) -> int | None:
        return self._settings().vocab_size

    def _instruction(self, role: Role) -> str | None:
        return self._settings().prompts.get(role) or None

    def _active_dims(self) -> int | None:
        return self.max_active_dims if self.max_active_dims is not None else self._settings().max_active_dims

    def _warm_up(self) -> None:
        self._model()

    def _side(self, role: Role) -> tuple[_Side, str]:
        """The loaded route for `role` and its prompt."""
        loaded = self._model()
        return (loaded.query if role is Role.QUERY else loaded.document), loaded.prompts.get(role, "")

    def _tokens(self, items: list[Any], role: Role) -> list[Tokens]:
        """Each item tokenised once, with the role's prompt, by the role's side."""
        side, prompt = self._side(role)
        return side.tokenizer.encode([prompt + t for t in items])

    def _prepare(self, items: list[Any], role: Role) -> Prepared:
        """Each text's tokens and exact count, made once (a server's arrival); the batch runs on them."""
        tokens = self._tokens(items, role)
        return Prepared(tokens, [len(t.ids) for t in tokens], [bool(t.truncated) for t in tokens])

    def _plan(self, items: list[Any], role: Role) -> Plan:
        """Most tokens first (each batch pads little), each text's tokens going to its batch: one tokenising pass."""
        if len(items) <= 1:
            return Plan()
        tokens = self._tokens(items, role)
        lengths = np.fromiter((len(t.ids) for t in tokens), dtype=np.int64, count=len(tokens))
        return Plan(order=np.argsort(-lengths, kind="stable").tolist(), prepared=tokens)

    def _count_tokens(self, items: list[Any], role: Role) -> TokenCounts | None:
        prepared = self._prepare(items, role)
        return list(prepared.token_counts), list(prepared.truncated)

    def _vectors(self, texts: list[str], role: Role, prepared: list[Any] | None = None) -> BatchOutput:
        side, _ = self._side(role)
        tokens: list[Tokens] = prepared if prepared is not None else self._tokens(texts, role)
        counts, cut = [len(t.ids) for t in tokens], [bool(t.truncated) for t in tokens]
        return BatchOutput(top_k(side.weights(tokens), self._active_dims()), counts, cut)

    def decode(self, embedding: SparseEmbedding | SparseVector, top_k: int | None = None) -> list[tuple[str, float]]:
        """(token, weight) pairs of a vector, largest weight first (the `top_k` largest when set)."""
        pairs = embedding.to_dict() if isinstance(embedding, SparseVector) else embedding
        tokens = self._model().tokens
        ranked = sorted(pairs.items(), key=lambda kv: (-kv[1], kv[0]))
        if top_k is not None:
            ranked = ranked[:top_k]
        return [(tokens.get(i, f"[{i}]"), float(v)) for i, v in ranked]


def from_spec(arg: str | None) -> SpladeEmbedding:
    """`splade:<model name or path>` (registry factory)."""
    if not arg:
        raise ValueError("splade needs a model: 'splade:<SparseEncoder or masked-LM directory or Hugging Face id>'")
    backend: Literal["torch", "onnx"] = "torch"
    for prefix in ("onnx:", "torch:"):
        if arg.startswith(prefix):
            backend, arg = prefix[:-1], arg[len(prefix) :]  # type: ignore[assignment]
    return SpladeEmbedding(model_name=arg, backend=backend)
