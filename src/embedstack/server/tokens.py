"""Token counts per input, for `usage` and the batcher's token budget, by the served model's own tokenizer.

A local model's inputs are tokenised once, by the model itself in the worker thread: its `_plan`
tokenises a batch (`Plan.prepared` carries each item's tokens to the encoder) and a lone item's
count comes with its batch result, so `TokenCounter.embed` returns the vectors and the counts of
one model call together (instructions and special tokens included, after truncation). On arrival
such a model's inputs only get an estimate for the batch budget (`estimate`); cache hits, which
never reach the model, are counted with a second tokenizer instance, kept apart from the model's so
that counting never waits for a running batch. OpenAI-style models count with their tiktoken
counter on arrival; anything else is estimated (UTF-8 bytes / 4).

With `"truncate": false` a local model's inputs are counted exactly on arrival too (`count`, by that second
tokenizer), so an over-long input is refused before it is queued and costs no model time. `tokens` answers
`POST /tokenize` (TEI's shape) with a copy of that tokenizer that never truncates.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import numpy.typing as npt

from embedstack._pipeline import EmbedJob, run_sync
from embedstack.base import BaseEmbedding
from embedstack.types import EmbedResult, Plan, Role

__all__ = ["IMAGE_COST", "Counts", "SimpleTokens", "TokenCounter", "counter_for"]

#: What one image weighs in a batch's token budget (a ViT-B/32 sees 50 patches, each dearer than a text token).
IMAGE_COST = 256

#: (tokens per input, whether each input was truncated to the model's limit).
Counts = tuple[list[int], list[bool]]


Matrix = npt.NDArray[np.float32]
#: One input's tokens as TEI's /tokenize gives them: {"id", "text", "special", "start", "stop"} each.
SimpleTokens = list[dict[str, Any]]


class TokenCounter:
    """Estimated counts: UTF-8 bytes / 4, never truncated (the base of the exact counters)."""

    exact = False
    #: The model's own call counts the inputs it computes (`embed`); on arrival only hits need `count`.
    in_worker = False

    def __init__(self, model: BaseEmbedding) -> None:
        self.model = model

    def estimate(self, items: list[Any], role: Role) -> list[int]:
        """Each item's weight in the batch budget before the model has seen it (an exact count when cheap)."""
        return self.count(items, role)[0]

    def embed(self, values: list[Any], role: Role) -> tuple[Matrix, Counts | None]:
        """One model call through its pipeline (cache, dedupe, events), in the worker thread; no counts
        (this counter counts on arrival)."""
        return self.model.embed(values, role), None

    def count(self, items: list[Any], role: Role) -> Counts:
        """Tokens of each item as the model sees it, and whether it was truncated; images weigh IMAGE_COST."""
        if role is Role.IMAGE:
            return [IMAGE_COST] * len(items), [False] * len(items)
        return self._count_texts(items, role)

    def _count_texts(self, texts: list[str], role: Role) -> Counts:
        prefix = self.model._instruction(role) or ""
        return [max(1, len((prefix + t).encode("utf-8", "surrogatepass")) // 4) for t in texts], [False] * len(texts)

    def tokens(self, texts: list[str], add_special_tokens: bool = True) -> list[SimpleTokens] | None:
        """Each text's tokens as the model's tokenizer makes them, untruncated (None: no tokenizer to show)."""
        return None


class _LocalCounter(TokenCounter):
    """A local model: the counts of the model's own tokenisation in `embed`; a tokenizer of its own
    (one thread at a time) for cache hits."""

    exact = True
    in_worker = True

    def __init__(self, model: BaseEmbedding) -> None:
        super().__init__(model)
        self._lock = threading.Lock()
        self._tokenizer: Any = None
        self._made = False
        self._untruncated: Any = None  # for /tokenize: the same tokenizer without truncation

    def _count_texts(self, texts: list[str], role: Role) -> Counts:
        from embedstack.providers.huggingface import HuggingFaceEmbedding

        model = self.model
        assert isinstance(model, HuggingFaceEmbedding)
        with self._lock:
            if not self._made:
                self._tokenizer, self._made = model._make_tokenizer(), True
            if self._tokenizer is None:  # a model whose texts no tokenizer of ours reads
                return super()._count_texts(texts, role)
            tokens = self._tokenizer.tokenize(model._texts(texts, role))
        return [len(t.ids) for t in tokens], [bool(t.truncated) for t in tokens]

    def tokens(self, texts: list[str], add_special_tokens: bool = True) -> list[SimpleTokens] | None:
        """TEI's /tokenize: ids, token texts (a special token's own text; else the input's characters
        `start:stop`), never truncated, lower-cased first when the model's tokenizer does that."""
        with self._lock:
            if not self._made:
                self._tokenizer, self._made = self.model._make_tokenizer(), True  # type: ignore[attr-defined]
            if self._untruncated is None:
                backend = getattr(self._tokenizer, "backend_tokenizer", None)
                if backend is None:  # no fast tokenizer (a slow one, or a model without text tokens)
                    return None
                from tokenizers import Tokenizer

                untruncated = Tokenizer.from_str(backend.to_str())
                untruncated.no_truncation()
                untruncated.no_padding()
                self._untruncated = untruncated
            lower = bool(getattr(self._tokenizer, "lowercase", False))
            seen = [t.lower() for t in texts] if lower else texts
            encodings = self._untruncated.encode_batch(seen, add_special_tokens=add_special_tokens)
        out: list[SimpleTokens] = []
        for text, shown, enc in zip(texts, seen, encodings):
            source = text if len(shown) == len(text) else shown  # offsets index the text the tokenizer saw
            out.append(
                [
                    {"id": int(i), "text": tok, "special": True, "start": None, "stop": None}
                    if special
                    else {"id": int(i), "text": source[a:b], "special": False, "start": int(a), "stop": int(b)}
                    for i, tok, special, (a, b) in zip(enc.ids, enc.tokens, enc.special_tokens_mask, enc.offsets)
                ]
            )
        return out

    def estimate(self, items: list[Any], role: Role) -> list[int]:
        """UTF-8 bytes / 4 plus the instruction and two special tokens, at most the model's limit."""
        counts = super()._count_texts(items, role)[0]
        limit = self._limit()
        return [min(limit, c + 2) for c in counts]

    def _limit(self) -> int:
        with self._lock:
            if not self._made:
                self._tokenizer, self._made = self.model._make_tokenizer(), True  # type: ignore[attr-defined]
        return int(getattr(self._tokenizer, "max_length", None) or 512)

    def embed(self, values: list[Any], role: Role) -> tuple[Matrix, Counts | None]:
        """The model's pipeline on `values`, and each value's token count as the model tokenised it."""
        recording = _Recording(self.model)
        matrix = run_sync(EmbedJob(recording, values, role, "input"))  # type: ignore[arg-type]
        seen = recording.seen
        missing = [v for v in values if v not in seen]
        if missing:  # found in the model's cache meanwhile (never tokenised) or a model without a tokenizer
            counts, truncated = self.count(missing, role)
            seen.update(zip(missing, zip(counts, truncated)))
        pairs = [seen[v] for v in values]
        return matrix, ([c for c, _ in pairs], [t for _, t in pairs])


class _Recording:
    """The model as the pipeline sees it in one server call: itself, except that the tokens its `_plan`
    makes for a batch (`Plan.prepared`) and a lone item's count (its batch result) are kept for usage."""

    def __init__(self, model: BaseEmbedding) -> None:
        self._model = model
        self.seen: dict[Any, tuple[int, bool]] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def _plan(self, items: list[Any], role: Role) -> Plan:
        plan = self._model._plan(items, role)
        for item, prepared in zip(items, plan.prepared or ()):
            tokens = getattr(prepared, "tokens", None)
            ids = getattr(tokens, "ids", None)
            if ids is not None:
                self.seen[item] = (len(ids), bool(getattr(tokens, "truncated", False)))
        return plan

    def _embed(self, batch: Any) -> Any:
        raw = self._model._embed(batch)
        if len(batch.items) == 1 and isinstance(raw, EmbedResult) and raw.token_count is not None:
            self.seen.setdefault(batch.items[0], (int(raw.token_count), bool(raw.truncated)))
        return raw


class _TiktokenCounter(TokenCounter):
    """An OpenAI-style model's counter (tiktoken when it has one): what its API will count."""

    def __init__(self, model: BaseEmbedding) -> None:
        super().__init__(model)
        self._counter: Any = model._counter()  # type: ignore[attr-defined]
        self.exact = bool(getattr(self._counter, "exact", False))

    def _count_texts(self, texts: list[str], role: Role) -> Counts:
        prefix = self.model._instruction(role) or ""
        return [self._counter.count(prefix + t) for t in texts], [False] * len(texts)


def counter_for(model: BaseEmbedding) -> TokenCounter:
    """The most exact counter this server has for `model`."""
    module = type(model).__module__
    if module.startswith("embedstack.providers.huggingface"):
        return _LocalCounter(model)
    if module.startswith("embedstack.providers.openai") and hasattr(model, "_counter"):
        return _TiktokenCounter(model)
    return TokenCounter(model)
