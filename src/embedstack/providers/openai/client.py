"""The openai SDK side: the one HTTP call (sync and async) and classifying the SDK's exceptions.

Credential checks (`embedstack.providers.remote.credentials`) and the per-loop clients
(`embedstack.providers.remote.clients`) are shared with the other remote providers.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any

from embedstack._optional import require
from embedstack.providers.remote.redact import scrub
from embedstack.providers.remote.retry import Failure, status_failure

__all__ = ["apost", "post"]


_RESPONSE_CLASS: list[type] = []


def _response_class(openai: Any) -> type:
    """The httpx Response class of the httpx flavour this openai SDK is built on (httpx, or httpx2 in 3.x)."""
    if not _RESPONSE_CLASS:
        found: type | None = None
        for cls in getattr(openai, "DefaultHttpxClient", object).__mro__:
            root = cls.__module__.split(".")[0]
            if root.startswith("httpx"):
                found = getattr(importlib.import_module(root), "Response", None)
                break
        if found is None:
            found = importlib.import_module("httpx").Response
        _RESPONSE_CLASS.append(found)
    return _RESPONSE_CLASS[0]


def _classify(openai: Any, e: Exception, secrets: Sequence[str | None], timeout: float) -> Failure:
    """Classify an SDK exception (status, timeout, connection); every message is scrubbed."""
    if isinstance(e, openai.APIStatusError):
        response = e.response
        body: Any = getattr(e, "body", None)
        if body is None:
            try:
                body = response.content
            except Exception:
                body = None
        return status_failure(response.status_code, body, dict(response.headers), secrets)
    if isinstance(e, openai.APITimeoutError):
        return Failure("timeout", f"no answer within {timeout:g}s", True)
    if isinstance(e, openai.APIConnectionError):
        cause = e.__cause__ or e.__context__
        detail = f"{type(cause).__name__}: {cause}" if cause else str(e)
        return Failure("connection", scrub(detail, secrets)[:300], True)
    return Failure("error", scrub(f"{type(e).__name__}: {e}", secrets)[:300], False)


# The SDK's generic `post` (its documented way to call an endpoint with a raw response) rather
# than `embeddings.create`, whose typed-dict transform of every input and parsing of the answer
# into models we would only unpack again add client-side time to every request (figures:
# docs/providers/openai.md, "Request path figures").
def post(
    client: Any, body: dict[str, Any], secrets: Callable[[], Sequence[str | None]], timeout: float
) -> bytes | Failure:
    """POST /embeddings with the sync client: the answer's bytes, or the failure (`secrets` scrubbed from it)."""
    openai = require("openai", extra="openai")
    try:
        response = client.post("/embeddings", cast_to=_response_class(openai), body=body)
        content: bytes = response.content
    except openai.APIError as e:
        return _classify(openai, e, secrets(), timeout)
    return content


async def apost(
    client: Any, body: dict[str, Any], secrets: Callable[[], Sequence[str | None]], timeout: float
) -> bytes | Failure:
    """`post` with the async client."""
    openai = require("openai", extra="openai")
    try:
        response = await client.post("/embeddings", cast_to=_response_class(openai), body=body)
        content: bytes = response.content
    except openai.APIError as e:
        return _classify(openai, e, secrets(), timeout)
    return content
