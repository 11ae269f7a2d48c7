"""Tokens: one text as a backend's tokenizer made it, shared by every encoder backend; one tokenising pass with
exact truncation flags, and padding, for the transformers tokenizers (local models, SPLADE, cross-encoders)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

__all__ = ["Tokens", "add_lowercase", "declares_lowercase", "encode_tokens", "lowercase_normaliser", "pad_tokens"]


def declares_lowercase(model_dir: Path) -> bool:
    """Whether a sentence-transformers model's sentence_bert_config.json (its own or a module folder's) says
    do_lower_case: since 2026-12-06 its tokenizer's normaliser lower-cases (a word-final Σ and literal special
    tokens tokenise otherwise than before), so cache keys mark it."""
    for config in (model_dir / "sentence_bert_config.json", *model_dir.glob("*/sentence_bert_config.json")):
        try:
            data = json.loads(config.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("do_lower_case"):
            return True
    return False


def lowercase_normaliser(backend: Any) -> None:
    """Put a `Lowercase` normaliser first in a `tokenizers.Tokenizer`'s own normaliser (in place), as
    sentence-transformers does for do_lower_case; nothing when it has one."""
    from tokenizers.normalizers import Lowercase
    from tokenizers.normalizers import Sequence as NormalizerSequence

    normalizer = backend.normalizer
    parts: list[Any] = [normalizer] if normalizer is not None else []
    if isinstance(normalizer, NormalizerSequence):
        parts = list(normalizer)  # type: ignore[call-overload]  # a Sequence iterates its normalizers
    if not any(isinstance(n, Lowercase) for n in parts):
        backend.normalizer = NormalizerSequence([Lowercase(), *parts])


def add_lowercase(hf: Any) -> None:
    """do_lower_case as sentence-transformers applies it to a transformers tokenizer `hf` (in place): a fast one gets a
    `Lowercase` normaliser first in its own normaliser (so a literal "[MASK]" or "[SEP]" in a text stays the special
    token, and a word-final Σ becomes σ), a slow one its `do_lower_case` flag. Texts then go in as they are."""
    if getattr(hf, "is_fast", False):
        lowercase_normaliser(hf.backend_tokenizer)
        return
    try:
        hf.do_lower_case = True
    except AttributeError:
        hf.basic_tokenizer.do_lower_case = True


class Tokens(NamedTuple):
    """One text as a backend's tokenizer made it: ids (special tokens included, truncated), whether it was
    cut, and token type ids where the tokenizer makes them."""

    ids: npt.NDArray[np.int64]
    truncated: bool
    type_ids: npt.NDArray[np.int64] | None = None


def encode_tokens(
    hf: Any,
    sides: list[list[str]],
    max_length: int,
    *,
    truncation: bool | str = True,
    add_special_tokens: bool = True,
    lock: AbstractContextManager[Any] | None = None,
) -> list[Tokens]:
    """Texts (one side) or (first, second) pairs (two sides) through a transformers tokenizer `hf`, cut to
    `max_length` as `truncation` says, each with whether it was cut (a fast tokenizer's overflow, else a second
    look at the rows that filled `max_length`) and its token type ids when the tokenizer makes them.

    One tokenising pass gives the ids a model runs on and the exact truncation flags (the count is the ids'
    length). `lock`: taken around each call into `hf` (a fast tokenizer is not safe across threads)."""
    guard = lock if lock is not None else nullcontext()
    with guard:
        enc = hf(
            *sides, add_special_tokens=add_special_tokens, truncation=truncation, max_length=max_length, verbose=False
        )
    ids = enc["input_ids"]
    types = enc.get("token_type_ids")
    encodings = getattr(enc, "encodings", None)
    if encodings:
        cut = [bool(e.overflowing) for e in encodings]
    else:  # a slow tokenizer: re-tokenise only the rows that filled max_length
        cut = [False] * len(ids)
        full = [i for i, row in enumerate(ids) if len(row) >= max_length]
        if full:
            with guard:
                whole = hf(
                    *[[side[i] for i in full] for side in sides],
                    add_special_tokens=add_special_tokens,
                    truncation=False,
                    verbose=False,
                )
            for i, row in zip(full, whole["input_ids"]):
                cut[i] = len(row) > max_length
    return [
        Tokens(np.asarray(row, dtype=np.int64), cut[i], None if types is None else np.asarray(types[i], dtype=np.int64))
        for i, row in enumerate(ids)
    ]


def pad_tokens(tokens: Sequence[Tokens], hf: Any) -> dict[str, npt.NDArray[np.int64]]:
    """input_ids, attention_mask (and token_type_ids when every row has them) padded with the tokenizer `hf`'s pad
    token and type id, always on the right, whatever its padding side: left padding shifts a BERT's absolute
    positions by each row's padding, so a text's vector would depend on its batch; on the right every row sits
    where it sits alone (a decoder's causal attention never sees the pads after it; pooling reads the mask)."""
    length = max(len(t.ids) for t in tokens)
    pad_id = hf.pad_token_id if hf.pad_token_id is not None else 0
    ids = np.full((len(tokens), length), pad_id, dtype=np.int64)
    mask = np.zeros((len(tokens), length), dtype=np.int64)
    with_types = all(t.type_ids is not None for t in tokens)
    types = np.full((len(tokens), length), getattr(hf, "pad_token_type_id", 0) or 0, dtype=np.int64)
    for r, t in enumerate(tokens):
        cols = slice(0, len(t.ids))
        ids[r, cols] = t.ids
        mask[r, cols] = 1
        if with_types and t.type_ids is not None:
            types[r, cols] = t.type_ids
    out = {"input_ids": ids, "attention_mask": mask}
    if with_types:
        out["token_type_ids"] = types
    return out
