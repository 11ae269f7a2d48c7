"""CrossEncoderReranker: a cross-encoder (query, document) scorer over the one embedding pipeline.

Pairs travel `embedstack.pipeline.Pipeline` as `Role.PAIR` items with `Scores` rows (one float per pair;
`Dense(num_labels)` for a checkpoint of several labels), so the cache (keyed by the model's identity,
the query and the document), dedupe, events, async and errors naming the item are the embedding
models'. The provider orders a call's pairs by token count (tokenised once, in `plan`) and cuts each
batch into forward passes of at most `token_budget` padded tokens.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import numpy.typing as npt

from embedstack._pipeline import check_texts
from embedstack.outputs import Dense, OutputKind, Scores
from embedstack.pipeline import Pipeline
from embedstack.provider import BatchOutput, Capabilities, ProviderBase, TokenCounts
from embedstack.providers.hub import ModelSource, locate_model, stamp_identity
from embedstack.providers.huggingface.tokens import Tokens
from embedstack.rerank._model import (
    ACTIVATIONS,
    CheckpointInfo,
    PairTokenizer,
    Scorer,
    activate,
    read_checkpoint,
)
from embedstack.types import Batch, Plan, Role

if TYPE_CHECKING:
    from embedstack.callbacks.manager import CallbackManager
    from embedstack.kvstore.base import BaseKVStore

__all__ = [
    "BACKENDS",
    "DEFAULT_TOKEN_BUDGET",
    "PRECISIONS",
    "CrossEncoderReranker",
    "RerankResult",
    "resolve_rerank_model",
]

BACKENDS = ("torch", "onnx", "openvino")
#: The precisions each backend runs (int8 and OpenVINO's bf16: fast modes that keep the ranking).
PRECISIONS = {"torch": ("fp32", "fp16", "bf16"), "onnx": ("fp32", "int8"), "openvino": ("fp32", "bf16")}
#: Padded tokens per forward pass (rows x longest pair), per backend: small, so activations and attention scores
#: stay cache-sized on a CPU (bench/rerank.py: ONNX Runtime at 1,024 ran 1.5x its speed at 8,192; torch at 2,048 1.3x).
DEFAULT_TOKEN_BUDGET = {"torch": 2048, "onnx": 1024, "openvino": 1024}
#: The torch budget on an accelerator (cuda, mps), where larger passes pay off (not measured here: no GPU).
ACCELERATOR_TOKEN_BUDGET = 32768
#: Pairs per provider call (the pipeline's batch); each is cut further by the token budget.
DEFAULT_RERANK_BATCH_SIZE = 64


@dataclass(frozen=True)
class RerankResult:
    """One document's place in a ranking: its index in the documents passed, its score, and the document."""

    index: int
    score: float
    document: str


def _locate(model_name: str, cache_folder: str | None, revision: str | None) -> ModelSource:
    """A path as it is; a bare name under cross-encoder/ first (sentence-transformers' CrossEncoder does so)."""
    if "/" not in model_name and not Path(model_name).expanduser().exists():
        try:
            return locate_model(f"cross-encoder/{model_name}", cache_folder, revision)
        except FileNotFoundError:
            pass
    return locate_model(model_name, cache_folder, revision)


class _Prepared(NamedTuple):
    """A pair's tokens as `plan` made them, with the tokenizer that made them."""

    tokenizer: PairTokenizer
    tokens: Tokens


class _Weights:
    """What a reranker loads (the pair tokenizers and the backend), shared by its `with_activation` twins."""

    def __init__(self) -> None:
        self.tokenizer: PairTokenizer | None = None
        self.counting: PairTokenizer | None = None
        self.scorer: Scorer | None = None


class _CrossEncoderProvider(ProviderBase):
    """The reranker as the pipeline sees it: Role.PAIR items in, one score (or num_labels logits) out."""

    capabilities = Capabilities(counts_tokens=True, max_concurrency=1, plan_in_thread=True)

    def __init__(self, model: CrossEncoderReranker) -> None:
        self.model = model  # the pipeline names the provider by `model`'s class

    @property
    def output(self) -> OutputKind:
        labels = self.model.info.num_labels
        return Scores() if labels == 1 else Dense(labels)

    @property
    def preferred_batch_size(self) -> int:
        return self.model.batch_size

    def identity(self) -> Mapping[str, Any]:
        return self.model.identity()

    def model_identity(self) -> Mapping[str, Any]:
        return {k: v for k, v in self.model.identity().items() if k not in ("precision", "int8_runtime")}

    def descriptor(self) -> Mapping[str, Any]:
        m = self.model
        return {
            "class_name": "CrossEncoderReranker",
            "model_name": m.model_name,
            "backend": m.backend,
            "precision": m.precision,
            "activation": m.activation,
        }

    def check(self, items: Sequence[Any], role: Role, label: str, offset: int) -> None:
        if role is not Role.PAIR:
            raise TypeError(f"CrossEncoderReranker scores (query, document) pairs (Role.PAIR), not {role.value} items")

    def plan(self, items: list[Any], role: Role) -> Plan:
        if len(items) <= 1:
            return Plan()
        tokenizer = self.model.tokenizer()
        with self.model.lock:  # a transformers tokenizer is not safe to call from two threads at once
            tokens = tokenizer.tokenize(items)
        counts = np.fromiter((len(t.ids) for t in tokens), dtype=np.int64, count=len(tokens))
        order: list[int] = np.argsort(-counts, kind="stable").tolist()
        return Plan(order=order, prepared=[_Prepared(tokenizer, t) for t in tokens])

    def embed(self, batch: Batch) -> Any:
        return self.model.score_batch(batch.items, batch.prepared)

    def count_tokens(self, items: list[Any], role: Role) -> TokenCounts | None:
        tokens = self.model.tokenize(items)
        return [len(t.ids) for t in tokens], [t.truncated for t in tokens]

    def warm_up(self) -> None:
        self.model.load()


class CrossEncoderReranker:
    """A Hugging Face sequence-classification checkpoint (BERT, XLM-RoBERTa, ...) as a reranker.

    Scores are what sentence-transformers' `CrossEncoder.predict` returns on the same weights: the model's
    default activation (the one its files save, else sigmoid for one label and raw logits for more);
    `activation="identity"` gives raw logits, `"sigmoid"` probabilities. `backend`: "torch" (fp32, fp16,
    bf16), "onnx" (ONNX Runtime on the CPU: fp32, checked against torch when built, or int8, a fast mode
    that keeps the ranking) or "openvino" (fp32, or bf16 on CPUs with native bfloat16: a fast mode).
    `cache`: a `BaseKVStore` keyed by (model identity, query, document).
    """

    def __init__(
        self,
        model_name: str,
        *,
        backend: str = "torch",
        precision: str = "fp32",
        device: str | None = None,
        max_length: int | None = None,
        activation: str | None = None,
        batch_size: int = DEFAULT_RERANK_BATCH_SIZE,
        token_budget: int | None = None,
        cache: BaseKVStore | None = None,
        callback_manager: CallbackManager | None = None,
        cache_folder: str | None = None,
        revision: str | None = None,
        trust_remote_code: bool = False,
        onnx_cache_dir: str | Path | None = None,
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; use one of {list(BACKENDS)}")
        allowed = PRECISIONS[backend]
        if precision not in allowed:
            raise ValueError(
                f"precision {precision!r} is not available with backend={backend!r}; use one of {list(allowed)}"
                + (" (int8 needs backend='onnx')" if precision == "int8" else "")
            )
        if activation is not None and activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; use one of {list(ACTIVATIONS)} or None (the model's)")
        for name, value in (("batch_size", batch_size), ("token_budget", token_budget), ("max_length", max_length)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.model_name = model_name
        self.backend = backend
        self.precision = precision
        self.device = device
        self.max_length = max_length
        self.batch_size = batch_size
        #: Padded tokens per forward pass (None: DEFAULT_TOKEN_BUDGET of the backend).
        self.token_budget = token_budget or DEFAULT_TOKEN_BUDGET[backend]
        self._budget_given = token_budget is not None
        self.trust_remote_code = trust_remote_code
        self.onnx_cache_dir = Path(onnx_cache_dir) if onnx_cache_dir is not None else None
        self.source = _locate(model_name, cache_folder, revision)
        self.info: CheckpointInfo = read_checkpoint(self.source.path)
        #: The activation applied to the logits (the model's default unless one was passed).
        self.activation = activation or self.info.activation
        self.lock = threading.RLock()
        self._counting_lock = threading.Lock()
        #: The tokenizers and the backend, loaded once and shared with `with_activation` twins.
        self._weights = _Weights()
        self._identity: dict[str, Any] | None = None
        self.pipeline = Pipeline(_CrossEncoderProvider(self), cache, callback_manager=callback_manager)

    def __repr__(self) -> str:
        return (
            f"CrossEncoderReranker({self.model_name!r}, backend={self.backend!r}, precision={self.precision!r}, "
            f"activation={self.activation!r})"
        )

    # -- the model -----------------------------------------------------------------------------
    @property
    def num_labels(self) -> int:
        """Outputs of the classifier: 1 for a relevance score."""
        return self.info.num_labels

    def with_activation(self, activation: str) -> CrossEncoderReranker:
        """A twin applying another activation ("identity": raw logits) to the same loaded weights, with its own
        pipeline (the same cache, other keys): the server scores raw logits once and activates per request."""
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; use one of {list(ACTIVATIONS)}")
        twin = copy.copy(self)  # shares the lock and the loaded weights
        twin.activation = activation
        twin._identity = None
        twin.pipeline = Pipeline(
            _CrossEncoderProvider(twin), self.pipeline.cache, callback_manager=self.pipeline.callback_manager
        )
        return twin

    def identity(self) -> dict[str, Any]:
        """What makes the scores what they are (the cache key hashes it): the model's files, token limit,
        activation and precision (and the runtime for int8, whose graphs differ)."""
        if self._identity is None:
            data: dict[str, Any] = {
                "py_class": "embedstack.rerank.CrossEncoderReranker",
                "model_name": self.model_name,
                "max_length": self.tokenizer().max_length,
                "activation": self.activation,
                "precision": self.precision,
            }
            if self.precision == "int8":
                data["int8_runtime"] = self.backend
            if self.precision == "bf16" and self.backend != "torch":  # another runtime's bf16, other scores
                data["bf16_runtime"] = self.backend
            self._identity = stamp_identity(data, self.source)
        return self._identity

    def tokenizer(self) -> PairTokenizer:
        """The pair tokenizer (its files only, no weights), made once."""
        with self.lock:
            if self._weights.tokenizer is None:
                self._weights.tokenizer = PairTokenizer(
                    self.source.path, max_length=self.max_length, trust_remote_code=self.trust_remote_code
                )
            return self._weights.tokenizer

    def tokenize(self, pairs: Sequence[tuple[str, str]]) -> list[Tokens]:
        """Each pair's tokens as the model sees them (with a tokenizer of its own: never waits for a batch)."""
        with self._counting_lock:
            if self._weights.counting is None:
                self._weights.counting = PairTokenizer(
                    self.source.path, max_length=self.max_length, trust_remote_code=self.trust_remote_code
                )
            return self._weights.counting.tokenize(list(pairs))

    def _make_scorer(self) -> Scorer:
        if self.backend == "torch":
            from embedstack.rerank._model import TorchScorer

            return TorchScorer(
                self.source.path, device=self.device, precision=self.precision, trust_remote_code=self.trust_remote_code
            )
        from embedstack.rerank._onnx import OnnxScorer

        return OnnxScorer(
            self.source.path,
            self.tokenizer(),
            precision=self.precision,
            cache_dir=self.onnx_cache_dir,
            runtime="openvino" if self.backend == "openvino" else "onnxruntime",
        )

    def load(self) -> CrossEncoderReranker:
        """Load the tokenizer and weights now rather than on the first call; returns self."""
        self.tokenizer()
        with self.lock:
            if self._weights.scorer is None:
                self._weights.scorer = self._make_scorer()
            if not self._budget_given and self._weights.scorer.device != "cpu":
                self.token_budget = ACCELERATOR_TOKEN_BUDGET
        return self

    def _chunks(self, lengths: list[int]) -> list[slice]:
        """Consecutive rows (longest first) cut so rows x longest length stays within the token budget."""
        out: list[slice] = []
        start = 0
        while start < len(lengths):
            longest = max(lengths[start : start + 1] or [1])
            end = start + 1
            while end < len(lengths) and (end - start + 1) * max(longest, lengths[end]) <= self.token_budget:
                longest = max(longest, lengths[end])
                end += 1
            out.append(slice(start, end))
            start = end
        return out

    def score_batch(self, pairs: list[tuple[str, str]], prepared: list[Any] | None = None) -> BatchOutput:
        """One pipeline batch: activated scores, (n, 1) (or (n, num_labels)), with each pair's token count."""
        tokenizer = self.tokenizer()
        if (
            prepared is not None
            and len(prepared) == len(pairs)
            and all(isinstance(p, _Prepared) and p.tokenizer is tokenizer for p in prepared)
        ):
            tokens = [p.tokens for p in prepared]
        else:
            with self.lock:
                tokens = tokenizer.tokenize(pairs)
        self.load()
        lengths = [len(t.ids) for t in tokens]
        order = sorted(range(len(tokens)), key=lambda i: -lengths[i])
        sorted_lengths = [lengths[i] for i in order]
        out = np.empty((len(tokens), self.num_labels), dtype=np.float32)
        with self.lock:
            scorer = self._weights.scorer
            assert scorer is not None
            for part in self._chunks(sorted_lengths):
                rows = order[part]
                logits = scorer.logits(tokenizer.pad([tokens[i] for i in rows]))
                if logits.ndim == 1:
                    logits = logits[:, None]
                out[rows] = activate(logits, self.activation)
        return BatchOutput(out, lengths, [t.truncated for t in tokens])

    # -- scoring -------------------------------------------------------------------------------
    def _values(self, rows: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        return np.asarray(rows[:, 0] if self.num_labels == 1 else rows, dtype=np.float32)

    def score(self, pairs: Sequence[tuple[str, str]], *, show_progress: bool = False) -> npt.NDArray[np.float32]:
        """Each (query, document) pair's score, in input order: shape (n,), or (n, num_labels) for several
        labels (as `CrossEncoder.predict`); cached scores are reused, repeated pairs scored once."""
        rows = self.pipeline.embed(pairs, Role.PAIR, label="pairs", show_progress=show_progress).values
        return self._values(rows)

    async def ascore(self, pairs: Sequence[tuple[str, str]]) -> npt.NDArray[np.float32]:
        """Async `score`: the tokenizer and the model run in worker threads, never on the event loop."""
        rows = (await self.pipeline.aembed(pairs, Role.PAIR, label="pairs")).values
        return self._values(rows)

    def _pairs(self, query: Any, documents: Any) -> list[tuple[str, str]]:
        if not isinstance(query, str):
            raise TypeError(f"query is {type(query).__name__}, expected str")
        if isinstance(documents, (str, bytes, bytearray)):
            raise TypeError(
                f"documents must be a list of texts, not a single {type(documents).__name__}; wrap it in a list"
            )
        if self.num_labels != 1:
            raise ValueError(
                f"rank() needs one score per document, but {self.model_name!r} has num_labels={self.num_labels}; "
                "use score(pairs) for its logits"
            )
        docs = list(documents)
        check_texts(docs, "documents")
        return [(query, d) for d in docs]

    @staticmethod
    def _ranked(scores: npt.NDArray[np.float32], documents: list[str], top_n: int | None) -> list[RerankResult]:
        if top_n is not None and (not isinstance(top_n, int) or isinstance(top_n, bool) or top_n < 0):
            raise ValueError(f"top_n must be a non-negative int or None, got {top_n!r}")
        order = np.argsort(-scores, kind="stable").tolist()
        return [RerankResult(i, float(scores[i]), documents[i]) for i in order[:top_n]]

    def rank(self, query: str, documents: Sequence[str], top_n: int | None = None) -> list[RerankResult]:
        """`documents` by relevance to `query`, best first (ties keep input order): the first `top_n`, or all."""
        pairs = self._pairs(query, documents)
        if not pairs:
            return []
        return self._ranked(self.score(pairs), [d for _, d in pairs], top_n)

    async def arank(self, query: str, documents: Sequence[str], top_n: int | None = None) -> list[RerankResult]:
        """Async `rank`; never blocks the event loop."""
        pairs = self._pairs(query, documents)
        if not pairs:
            return []
        return self._ranked(await self.ascore(pairs), [d for _, d in pairs], top_n)


def resolve_rerank_model(spec: Any, **kwargs: Any) -> CrossEncoderReranker:
    """A reranker from "rerank:<name or path>" (a CrossEncoderReranker is returned as it is); `kwargs` go
    to `CrossEncoderReranker` (backend, precision, cache, ...)."""
    if isinstance(spec, CrossEncoderReranker):
        return spec
    if not isinstance(spec, str) or not spec.startswith("rerank:") or not spec[len("rerank:") :].strip():
        raise ValueError(
            f"cannot resolve reranker {spec!r}; pass 'rerank:<model name or path>' (e.g. "
            "'rerank:cross-encoder/ms-marco-MiniLM-L6-v2') or a CrossEncoderReranker"
        )
    return CrossEncoderReranker(spec[len("rerank:") :].strip(), **kwargs)
