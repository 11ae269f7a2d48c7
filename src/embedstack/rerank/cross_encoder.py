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
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from embedstack.outputs import Dense, OutputKind, Scores
from embedstack.pipeline import Pipeline
from embedstack.provider import ARITHMETIC_FIELDS, BatchOutput, Capabilities, Prepared, ProviderBase, TokenCounts
from embedstack.providers.hub import ModelSource, locate_model, stamp_identity
from embedstack.providers.huggingface.tokens import Tokens, declares_lowercase
from embedstack.rerank._model import (
    ACTIVATIONS,
    CheckpointInfo,
    PairTokenizer,
    Scorer,
    activate,
    read_checkpoint,
)
from embedstack.rerank.base import BaseReranker, RerankResult
from embedstack.types import Batch, Plan, Role

if TYPE_CHECKING:
    from embedstack.callbacks.manager import CallbackManager
    from embedstack.kvstore.base import BaseKVStore

__all__ = [
    "BACKENDS",
    "DEFAULT_TOKEN_BUDGET",
    "CrossEncoderReranker",
    "RerankResult",
]

BACKENDS = ("torch", "onnx", "openvino")
#: Precisions per backend (int8: the fast modes, ONNX Runtime dynamic or OpenVINO NNCF).
PRECISIONS = {"torch": ("fp32", "fp16", "bf16"), "onnx": ("fp32", "int8"), "openvino": ("fp32", "bf16", "int8")}
#: Padded tokens per forward pass (rows x longest pair), per backend: small, so activations and attention scores
#: stay cache-sized on a CPU (bench/rerank.py: ONNX Runtime at 1,024 ran 1.5x its speed at 8,192; torch at 2,048 1.3x).
DEFAULT_TOKEN_BUDGET = {"torch": 2048, "onnx": 1024, "openvino": 1024}
#: The torch budget on an accelerator (cuda, mps), where larger passes pay off (not measured here: no GPU).
ACCELERATOR_TOKEN_BUDGET = 32768
#: Pairs per provider call (the pipeline's batch); each is cut further by the token budget.
DEFAULT_RERANK_BATCH_SIZE = 64


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

    capabilities = Capabilities(counts_tokens=True, max_concurrency=1, plan_in_thread=True, prepares=True)

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
        return {k: v for k, v in self.model.identity().items() if k not in ARITHMETIC_FIELDS}

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
        tokens = tokenizer.tokenize(items)  # the tokenizer takes turns on its own lock, never the model's
        counts = np.fromiter((len(t.ids) for t in tokens), dtype=np.int64, count=len(tokens))
        order: list[int] = np.argsort(-counts, kind="stable").tolist()
        return Plan(order=order, prepared=[_Prepared(tokenizer, t) for t in tokens])

    def prepare(self, items: list[Any], role: Role) -> Prepared | None:
        """Each pair's tokens as `plan` makes them and their exact counts, without waiting for a running batch."""
        tokenizer = self.model.tokenizer()
        tokens = tokenizer.tokenize(items)
        return Prepared(
            [_Prepared(tokenizer, t) for t in tokens], [len(t.ids) for t in tokens], [t.truncated for t in tokens]
        )

    def embed(self, batch: Batch) -> Any:
        return self.model.score_batch(batch.items, batch.prepared)

    def count_tokens(self, items: list[Any], role: Role) -> TokenCounts | None:
        tokens = self.model.tokenize(items)
        return [len(t.ids) for t in tokens], [t.truncated for t in tokens]

    def warm_up(self) -> None:
        self.model.load()


class CrossEncoderReranker(BaseReranker):
    """A Hugging Face sequence-classification checkpoint (BERT, XLM-RoBERTa, ...) as a reranker.

    Scores are what sentence-transformers' `CrossEncoder.predict` returns on the same weights: the model's
    default activation (the one its files save, else sigmoid for one label and raw logits for more);
    `activation="identity"` gives raw logits, `"sigmoid"` probabilities. `backend`: "torch" (fp32, fp16,
    bf16), "onnx" (ONNX Runtime on the CPU: fp32, checked against torch when built, or int8, a fast mode
    that keeps the ranking) or "openvino" (OpenVINO on the CPU: fp32; the fast modes bf16, where the CPU has it
    natively, and NNCF int8, the fastest, kept only when it ranks every calibration query's documents as fp32
    does, else refused by name). `cache`: a `BaseKVStore` keyed by (model identity, query,
    document).
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
                + (" (int8 needs backend='onnx' or 'openvino')" if precision == "int8" else "")
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
        self.activation: str = activation or self.info.activation
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
        activation and precision (and the runtime for int8, whose graphs differ, and on OpenVINO the precision of its
        unquantised ops)."""
        if self._identity is None:
            data: dict[str, Any] = {
                "py_class": "embedstack.rerank.CrossEncoderReranker",
                "model_name": self.model_name,
                "max_length": self.tokenizer().max_length,
                "activation": self.activation,
                "precision": self.precision,
            }
            if self.precision == "int8":
                from embedstack.providers.huggingface.onnx_export import int8_versions

                data["int8_runtime"] = self.backend
                data["int8_versions"] = int8_versions(self.backend)  # another quantiser version: other scores
                if self.backend == "openvino":  # its unquantised ops: bf16 where the CPU has it natively
                    from embedstack._optional import require
                    from embedstack.rerank._openvino import NNCF_RERANK_RECIPE, int8_compute

                    data["int8_compute"] = int8_compute(require("openvino", extra="openvino"))
                    data["int8_recipe"] = NNCF_RERANK_RECIPE  # another recipe quantises other nodes: other scores
                else:
                    from embedstack.rerank._onnx import RERANK_EXPORT_FORMAT

                    data["int8_recipe"] = RERANK_EXPORT_FORMAT
            if declares_lowercase(self.source.path):  # older cached scores miss (see declares_lowercase)
                data["lowercase"] = "normaliser"
            self._identity = stamp_identity(data, self.source)
        return self._identity

    def tokenizer(self) -> PairTokenizer:
        """The pair tokenizer (its files only, no weights), made once; safe to call from any thread (once made,
        handed out without the model's lock, which a running batch holds)."""
        made = self._weights.tokenizer
        if made is not None:
            return made
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
        if self.backend == "openvino":
            from embedstack.rerank._openvino import OpenVinoScorer

            return OpenVinoScorer(
                self.source.path, self.tokenizer(), precision=self.precision, cache_dir=self.onnx_cache_dir
            )
        from embedstack.rerank._onnx import OnnxScorer

        return OnnxScorer(self.source.path, self.tokenizer(), precision=self.precision, cache_dir=self.onnx_cache_dir)

    def max_input_tokens(self) -> int | None:
        """The most tokens a pair may have before it is cut (the tokenizer's limit)."""
        return self.tokenizer().max_length

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
            tokens = tokenizer.tokenize(pairs)
        self.load()
        lengths = [len(t.ids) for t in tokens]
        order = sorted(range(len(tokens)), key=lambda i: -lengths[i])
        sorted_lengths = [lengths[i] for i in order]
        out = np.empty((len(tokens), self.num_labels), dtype=np.float32)
        with self.lock:
            scorer = self._weights.scorer
            assert scorer is not None
            parts = [order[part] for part in self._chunks(sorted_lengths)]
            batches = [tokenizer.pad([tokens[i] for i in rows]) for rows in parts]
            many = getattr(scorer, "logits_many", None)  # OpenVINO: the forward passes on its streams at once
            results = many(batches) if many is not None else [scorer.logits(b) for b in batches]
            for rows, logits in zip(parts, results):
                if logits.ndim == 1:
                    logits = logits[:, None]
                out[rows] = activate(logits, self.activation)
        return BatchOutput(out, lengths, [t.truncated for t in tokens])
