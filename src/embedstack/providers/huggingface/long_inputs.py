"""Texts past a model's token limit, for every local backend: split into pieces (`long_inputs="chunk"`), or
encoded once for late chunking (`embed_chunks`).

Written once, above the encoders: a `WholeTokenizer` tokenises a text without truncation (the model's own
fast tokenizer, its special tokens and the role's prompt), and `pieces` cuts the text's own tokens into
windows that fit the limit, each carrying the special tokens (CLS/SEP, BOS/EOS) and the prompt the model
puts around any text. Cuts fall on word starts where a window holds more than one word, so each piece's
tokens are exactly what the tokenizer makes of the piece's text (`Piece.text`): a chunked vector is the
token-weighted mean of the pieces' vectors, each what embedding `Piece.text` on its own gives.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from embedstack.providers.huggingface.tokens import Tokens

__all__ = [
    "DEFAULT_CHUNK_OVERLAP",
    "LONG_INPUTS",
    "Piece",
    "Whole",
    "WholeTokenizer",
    "late_chunk",
    "pieces",
    "pool_pieces",
    "span_masks",
    "windows",
]

#: What `HuggingFaceEmbedding(long_inputs=...)` accepts.
LONG_INPUTS = ("truncate", "chunk")
#: Tokens two neighbouring pieces share (and late chunking's macro windows) when `chunk_overlap` is None: an
#: eighth of a piece, at most this many, so no sentence is seen only cut.
DEFAULT_CHUNK_OVERLAP = 32


@dataclass(frozen=True)
class Whole:
    """One text tokenised whole: the special tokens before and after it, the prompt's tokens, and the
    text's own tokens with their character offsets into the text (not the prompt) and word starts."""

    lead: npt.NDArray[np.int64]
    prompt: npt.NDArray[np.int64]
    content: npt.NDArray[np.int64]
    trail: npt.NDArray[np.int64]
    offsets: npt.NDArray[np.int64]  # (len(content), 2)
    word_start: npt.NDArray[np.bool_]
    #: The string offsets index (the prompt and the text, lower-cased when the model lower-cases).
    source: str
    prefix_len: int
    #: Token type ids of lead, prompt, content and trail (None: the tokenizer makes none).
    types: tuple[npt.NDArray[np.int64], ...] | None

    @property
    def total(self) -> int:
        """Tokens of the whole text as the model sees it (special tokens and prompt once)."""
        return len(self.lead) + len(self.prompt) + len(self.content) + len(self.trail)

    @property
    def room(self) -> int:
        """Tokens every piece spends on the special tokens and the prompt."""
        return len(self.lead) + len(self.prompt) + len(self.trail)


class Piece(NamedTuple):
    """One piece of a long text: the tokens the model is fed, the text they are, and its weight (its text tokens)."""

    tokens: Tokens
    text: str
    weight: int


class WholeTokenizer:
    """A backend's tokenizer without truncation, with offsets and special tokens (a fast tokenizer's copy)."""

    def __init__(self, tokenizer: Any) -> None:
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise ValueError(
                "long_inputs='chunk' and embed_chunks need the model's fast tokenizer (a tokenizer.json), which "
                "this model lacks; use long_inputs='truncate' or split the texts yourself"
            )
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_str(backend.to_str())
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        self.max_length = int(tokenizer.max_length)
        probe = tokenizer.tokenize(["a"])[0]
        self.with_types = probe.type_ids is not None

    def whole(self, texts: Sequence[str], prefix: str | None) -> list[Whole]:
        """Each text (with `prefix` in front) tokenised whole."""
        prefix = prefix or ""
        combined = [prefix + t for t in texts]  # lower-casing is the tokenizer's normaliser: offsets index these
        encodings = self.tokenizer.encode_batch(combined)
        return [_whole(enc, c, len(prefix), self.with_types) for enc, c in zip(encodings, combined)]


def _whole(enc: Any, source: str, prefix_len: int, with_types: bool) -> Whole:
    ids = np.asarray(enc.ids, dtype=np.int64)
    special = np.asarray(enc.special_tokens_mask, dtype=bool)
    offsets = np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2)
    real = np.flatnonzero(~special)
    first, last = (int(real[0]), int(real[-1]) + 1) if len(real) else (len(ids), len(ids))
    body = np.arange(first, last)
    words = enc.word_ids
    # A prompt token's whole word ends inside the prompt: a word that also takes the text's first characters is the
    # text's (byte-level BPE joins the prompt's trailing space to the first word, " the"; SentencePiece may make it
    # a lone "▁" before the word's other tokens), or every piece would repeat its first tokens.
    ends = offsets[body, 1].copy()
    word_end: dict[int, int] = {}
    for k, i in enumerate(body):
        if words[i] is not None:
            word_end[words[i]] = max(word_end.get(words[i], 0), int(ends[k]))
    for k, i in enumerate(body):
        if words[i] is not None:
            ends[k] = word_end[words[i]]
    in_prompt = ends <= prefix_len
    n_prompt = int(np.argmin(in_prompt)) if not in_prompt.all() else len(body)
    content = body[n_prompt:]
    word = np.asarray([-1 if words[i] is None else words[i] for i in content], dtype=np.int64)
    starts = np.ones(len(content), dtype=bool)
    if len(content) > 1:
        starts[1:] = word[1:] != word[:-1]
    types = None
    if with_types:
        t = np.asarray(enc.type_ids, dtype=np.int64)
        types = (t[:first], t[first : first + n_prompt], t[content], t[last:])
    return Whole(
        lead=ids[:first],
        prompt=ids[first : first + n_prompt],
        content=ids[content],
        trail=ids[last:],
        offsets=offsets[content] - prefix_len,
        word_start=starts,
        source=source,
        prefix_len=prefix_len,
        types=types,
    )


def windows(whole: Whole, max_length: int, overlap: int | None, what: str = "a piece") -> list[tuple[int, int]]:
    """(start, stop) ranges of the text's tokens, each fitting `max_length` with the special tokens and the
    prompt, neighbours sharing about `overlap` tokens (None: an eighth of a piece, at most
    DEFAULT_CHUNK_OVERLAP), cut at word starts where it can."""
    size = max_length - whole.room
    if size < 1:
        raise ValueError(
            f"the prompt and special tokens take {whole.room} of the model's {max_length} tokens, leaving none for "
            f"the text of {what}; use a shorter instruction"
        )
    if overlap is None:
        overlap = min(DEFAULT_CHUNK_OVERLAP, size // 8)
    elif overlap >= size:
        raise ValueError(
            f"chunk_overlap={overlap} is not less than the {size} text tokens {what} holds with this model and "
            f"prompt; use a chunk_overlap below {size}, or None (an eighth of a piece)"
        )
    n = len(whole.content)
    if n <= size:
        return [(0, n)]
    starts = whole.word_start
    out: list[tuple[int, int]] = []
    start = 0
    while True:
        stop = start + size
        if stop >= n:
            out.append((start, n))
            return out
        cut = _word_start_at_or_before(starts, stop, start + size // 2 + 1)
        stop = cut if cut is not None else stop
        out.append((start, stop))
        nxt = _word_start_at_or_before(starts, stop - overlap, start + 1)
        start = nxt if nxt is not None else max(start + 1, stop - overlap)


def _word_start_at_or_before(starts: npt.NDArray[np.bool_], at: int, lowest: int) -> int | None:
    """The last word start in [lowest, at], or None."""
    if at < lowest:
        return None
    hits = np.flatnonzero(starts[lowest : at + 1])
    return int(hits[-1]) + lowest if len(hits) else None


def pieces(whole: Whole, max_length: int, overlap: int | None, what: str = "a piece") -> list[Piece]:
    """The pieces a long text is embedded as (one, the whole text, when it fits)."""
    out: list[Piece] = []
    for a, b in windows(whole, max_length, overlap, what):
        ids = np.concatenate([whole.lead, whole.prompt, whole.content[a:b], whole.trail])
        types = None
        if whole.types is not None:
            lead, prompt, content, trail = whole.types
            types = np.concatenate([lead, prompt, content[a:b], trail])
        start, stop = int(whole.offsets[a, 0]), int(whole.offsets[b - 1, 1])
        p = whole.prefix_len
        head, body = whole.source[: p + min(start, 0)], whole.source[p + start : p + stop]
        if start > 0 and head[-1:].isspace() and body[:1].isspace():  # the window's token brings its own space
            head = head[:-1]
        text = head + body
        out.append(Piece(Tokens(ids, False, types), text, b - a))
    return out


def pool_pieces(
    vectors: npt.NDArray[np.float32], owners: Sequence[int], weights: Sequence[int], n: int
) -> npt.NDArray[np.float32]:
    """(n, dim): each text's pieces' vectors averaged, weighted by their tokens."""
    w = np.asarray(weights, dtype=np.float64)
    sums = np.zeros((n, vectors.shape[1]), dtype=np.float64)
    np.add.at(sums, np.asarray(owners, dtype=np.intp), vectors.astype(np.float64) * w[:, None])
    totals = np.bincount(np.asarray(owners, dtype=np.intp), weights=w, minlength=n)
    return np.asarray(sums / np.maximum(totals, 1e-12)[:, None], dtype=np.float32)


def span_masks(whole: Whole, spans: Sequence[tuple[int, int]], label: str = "spans") -> npt.NDArray[np.bool_]:
    """(len(spans), tokens): which of the document's tokens each character span covers (any overlap)."""
    starts, stops = whole.offsets[:, 0], whole.offsets[:, 1]
    masks = np.zeros((len(spans), len(whole.content)), dtype=bool)
    for i, (s, e) in enumerate(spans):
        masks[i] = (starts < e) & (stops > s) & (stops > starts)
        if not masks[i].any():
            raise ValueError(
                f"{label}[{i}] = ({s}, {e}) covers no token of the document (only whitespace or characters the "
                "tokenizer drops); remove it or widen it to cover some text"
            )
    return masks


def check_spans(spans: Any, length: int, label: str = "spans") -> list[tuple[int, int]]:
    """Spans as (start, end) int pairs with 0 <= start < end <= length; errors name `label[i]` and the fix."""
    if isinstance(spans, (str, bytes)) or not isinstance(spans, Sequence):
        raise TypeError(f"{label} must be a list of (start, end) character offsets, not {type(spans).__name__}")
    out: list[tuple[int, int]] = []
    for i, span in enumerate(spans):
        ok = isinstance(span, (tuple, list)) and len(span) == 2
        ok = ok and all(isinstance(x, (int, np.integer)) and not isinstance(x, bool) for x in span)
        if not ok:
            raise TypeError(f"{label}[{i}] is {span!r}; expected a (start, end) pair of character offsets")
        s, e = int(span[0]), int(span[1])
        if not 0 <= s < e <= length:
            raise ValueError(
                f"{label}[{i}] = ({s}, {e}) is not a span of the document: it needs 0 <= start < end <= {length} "
                "(the document's length in characters)"
            )
        out.append((s, e))
    return out


def late_chunk(
    encoder: Any, whole: Whole, masks: npt.NDArray[np.bool_], max_length: int, overlap: int | None, what: str
) -> npt.NDArray[np.float32]:
    """(spans, hidden): the mean of each span's token vectors, the document encoded once (in overlapping macro
    windows when it is past the limit: each token's vector from the window where it sits furthest from an
    edge, the overlap split at its middle)."""
    ranges = windows(whole, max_length, overlap, what)
    rows = [
        Tokens(
            np.concatenate([whole.lead, whole.prompt, whole.content[a:b], whole.trail]),
            False,
            None
            if whole.types is None
            else np.concatenate([whole.types[0], whole.types[1], whole.types[2][a:b], whole.types[3]]),
        )
        for a, b in ranges
    ]
    vectors = encoder.token_vectors(rows)
    skip = len(whole.lead) + len(whole.prompt)
    parts: list[npt.NDArray[np.float32]] = []
    for k, ((a, b), row) in enumerate(zip(ranges, vectors)):
        lo = a if k == 0 else (ranges[k - 1][1] + a) // 2
        hi = b if k == len(ranges) - 1 else (b + ranges[k + 1][0]) // 2
        parts.append(np.asarray(row[skip + lo - a : skip + hi - a], dtype=np.float32))
    tokens = np.concatenate(parts) if len(parts) > 1 else parts[0]
    if len(tokens) != len(whole.content):
        raise RuntimeError(
            f"internal error: {len(tokens)} token vectors for {len(whole.content)} tokens; please report"
        )
    weights = masks.astype(np.float32)
    return np.asarray((weights @ tokens) / weights.sum(1, keepdims=True), dtype=np.float32)
