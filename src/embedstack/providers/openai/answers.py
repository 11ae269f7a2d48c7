"""Decoding a 200 answer of /v1/embeddings: vectors placed by `index`, checked, or `_Malformed` saying what is wrong."""

from __future__ import annotations

import base64
import binascii
import collections
import json
import sys
from typing import Any

import numpy as np
import numpy.typing as npt

from embedstack.providers.remote.retry import Outcome, Success, _Malformed, malformed

__all__ = ["malformed", "read_answer"]


def _b64decode(text: str) -> bytes:
    """Strict base64 (invalid characters are an error, not silently skipped)."""
    if sys.version_info >= (3, 11):
        return binascii.a2b_base64(text, strict_mode=True)
    return base64.b64decode(text, validate=True)


def read_answer(content: bytes, n: int, want: tuple[int, str] | None) -> Outcome:
    """The vectors of a 200 answer to `n` inputs, placed by their `index`; a retryable failure if the
    answer is unusable: not JSON, vectors missing, extra or repeated, non-numbers, NaN/inf as float32,
    or a length other than `want` (see _decode_answer) or the other vectors'."""
    try:
        mat, tokens = _decode_answer(content, n, want)
    except _Malformed as bad:
        return bad.failure(n)
    return Success(mat, tokens)


_JSON_KINDS = {bool: "true/false", str: "strings", type(None): "null", list: "nested lists", dict: "objects"}


def _decode_answer(content: bytes, n: int, want: tuple[int, str] | None) -> tuple[npt.NDArray[np.float32], int | None]:
    """An answer's (n, dim) float32 vectors in input order, and its token count; raises _Malformed.

    `want`: the length every vector must have and why (the requested `dimensions`, or the model's
    earlier answers); without it the vectors must agree with each other.
    """
    try:
        body = json.loads(content)
    except (ValueError, RecursionError):
        raise _Malformed({f"not JSON ({len(content)} bytes)": ()}, whole=True) from None
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list):
        raise _Malformed({"no 'data' list": ()}, whole=True)
    raw: list[Any] = [_ABSENT] * n
    whole: dict[str, Any] = {f"{len(data)} vectors for {n} inputs": ()} if len(data) > n else {}
    repeated: list[int] = []
    for pos, entry in enumerate(data):
        idx = entry.get("index") if isinstance(entry, dict) else None
        if type(idx) is not int or not 0 <= idx < n:
            whole.setdefault(f"vector {pos} has index {idx!r}, not one of 0..{n - 1}", ())
        elif raw[idx] is not _ABSENT:
            repeated.append(idx)
        else:
            raw[idx] = entry.get("embedding", _NO_FIELD)
    if whole:
        raise _Malformed(whole, whole=True)
    problems: dict[str, list[int]] = {}
    if repeated:
        problems["the same index on two vectors"] = repeated
    missing = [i for i, r in enumerate(raw) if r is _ABSENT]
    if missing:
        problems["no vector in the answer"] = missing
    if problems:
        raise _Malformed(problems)
    mat = _decode_vectors(raw, want, problems)
    if mat is None:
        raise _Malformed(problems)
    usage = body.get("usage")
    tokens = None
    if isinstance(usage, dict):
        total = usage.get("total_tokens", usage.get("prompt_tokens"))
        tokens = total if type(total) is int else None
    return mat, tokens


_ABSENT = object()
_NON_FINITE = "NaN or infinite values (as float32)"
_NO_FIELD = object()


def _decode_vectors(
    raw: list[Any], want: tuple[int, str] | None, problems: dict[str, list[int]]
) -> npt.NDArray[np.float32] | None:
    """Vectors as sent (base64 float32 strings or number lists) → one (n, dim) float32 matrix, or None
    with `problems` filled in (what is wrong → rows).

    Equal-length unpadded base64 strings (the usual answer) are decoded in one call, much faster than
    one decode per vector (figures: docs/providers/openai.md, "Request path figures").
    """
    first = raw[0]
    if isinstance(first, str) and all(type(r) is str and len(r) == len(first) for r in raw):
        if first and len(first) % 4 == 0 and not any(r.endswith("=") for r in raw):
            try:
                flat = np.frombuffer(_b64decode("".join(raw)), dtype="<f4")
            except (binascii.Error, ValueError):
                flat = None  # find the bad ones below
            if flat is not None and flat.size % len(raw) == 0:
                mat = flat.reshape(len(raw), -1)
                if (want is None or mat.shape[1] == want[0]) and np.isfinite(mat).all():
                    return mat
    rows: list[npt.NDArray[np.float32] | None] = []
    for i, r in enumerate(raw):
        vec, why = _decode_one(r)
        rows.append(vec)
        if why:
            problems.setdefault(why, []).append(i)
    sizes = [len(v) for v in rows if v is not None]
    if not sizes:
        return None
    if want is not None:
        size, reason = want
    else:
        counts = collections.Counter(sizes)
        size = max(counts, key=lambda k: (counts[k], -sizes.index(k)))  # the most common; ties: the first
        reason = f"where the other vectors have {size}"
    for i, v in enumerate(rows):
        if v is not None and len(v) != size:
            problems.setdefault(f"{len(v)} values {reason}", []).append(i)
        elif v is not None and not np.isfinite(v).all():
            problems.setdefault(_NON_FINITE, []).append(i)
    if size == 0:
        problems.setdefault("empty vectors", []).extend(i for i, v in enumerate(rows) if v is not None and not len(v))
    if problems:
        return None
    return np.stack([v for v in rows if v is not None])


def _decode_one(r: Any) -> tuple[npt.NDArray[np.float32] | None, str | None]:
    """One vector: a base64 float32 string or a list of JSON numbers (never true/false or numeric strings)."""
    if type(r) is str:
        try:
            data = _b64decode(r)
        except (binascii.Error, ValueError):
            return None, "not valid base64"
        if len(data) % 4:
            return None, "base64 that is not a whole number of float32 values"
        return np.frombuffer(data, dtype="<f4"), None
    if type(r) is list:
        kinds = set(map(type, r)) - {float, int}
        if kinds:
            shown = ", ".join(sorted(_JSON_KINDS.get(k, k.__name__) for k in kinds))
            return None, f"values that are not numbers ({shown})"
        try:
            with np.errstate(over="ignore", invalid="ignore"):
                return np.asarray(r, dtype=np.float32), None
        except OverflowError:  # an integer beyond float64
            return None, _NON_FINITE
    if r is _NO_FIELD:
        return None, "no 'embedding' field"
    kind = "null" if r is None else _JSON_KINDS.get(type(r), "a number" if type(r) in (int, float) else "an object")
    return None, f"the embedding is {kind}"
