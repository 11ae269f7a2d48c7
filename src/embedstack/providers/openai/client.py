"""The openai SDK side: credential and URL checks, building the clients, and the one HTTP call (sync and async)."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import threading
import unicodedata
import weakref
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

from pydantic import SecretStr

from embedstack._optional import require
from embedstack.providers.openai.redact import is_sensitive_name, scrub
from embedstack.providers.openai.retry import Failure, status_failure

__all__ = [
    "Clients",
    "apost",
    "check_credentials",
    "check_header_value",
    "env",
    "post",
    "split_query",
    "url_secrets",
]


def env(*names: str) -> str | None:
    """The first of these environment variables that is set and not empty."""
    for name in names:
        value = os.environ.get(name)
        if value:
            return value
    return None


def split_query(url: str | None) -> tuple[str | None, dict[str, str]]:
    """A base URL without its query string, and the query's parameters (sent with every request)."""
    if not url or "?" not in url:
        return url, {}
    parts = urlsplit(url)
    return urlunsplit(parts._replace(query="", fragment="")), dict(parse_qsl(parts.query, keep_blank_values=True))


def url_secrets(url: str | None) -> list[str]:
    """The credentials in a URL: the password, and the values of credential query parameters."""
    if not url:
        return []
    parts = urlsplit(url)
    found = [parts.password, unquote(parts.password)] if parts.password else []
    found += [v for k, v in parse_qsl(parts.query, keep_blank_values=True) if v and is_sensitive_name(k)]
    return found


_WHITESPACE_NAMES = {"\n": "a newline", "\r": "a newline", "\t": "a tab", " ": "a space"}
_CONTROL_NAMES = {"\x00": "NUL", "\t": "TAB", "\n": "LINE FEED", "\r": "CARRIAGE RETURN", "\x7f": "DELETE"}


def _char(ch: str) -> str:
    """'U+00E9 LATIN SMALL LETTER E WITH ACUTE': a character named without printing it."""
    name = _CONTROL_NAMES.get(ch) or unicodedata.name(ch, "")
    return f"U+{ord(ch):04X} {name}".strip()


def check_header_value(value: Any, what: str, fix: str) -> None:
    """Raise if HTTP cannot send `value` in a header; the message says what is wrong, never the value.

    httpx refuses non-ASCII and h11 refuses control characters and surrounding whitespace; the
    request would fail only after the retries, quoting the value in its error and DEBUG logs.
    """
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if isinstance(value, (bytes, bytearray)):
        raise TypeError(f"{what} is bytes; decode it: {what}=value.decode().strip()")
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, not {type(value).__name__}")
    if value != value.strip():
        at_end = value[-1] != value[-1].strip()
        ch = value[-1] if at_end else value[0]
        kind = _WHITESPACE_NAMES.get(ch) or f"whitespace ({_char(ch)})"
        raise ValueError(
            f"{what} {'ends' if at_end else 'starts'} with {kind} (as a key read from a file or pasted often does); "
            f"strip it: {fix}"
        )
    for i, ch in enumerate(value):
        if not " " <= ch <= "~":
            kind = "a non-ASCII character" if ord(ch) > 0x7F else "a control character"
            raise ValueError(
                f"{what} contains {kind} ({_char(ch)}) at position {i}, which an HTTP header cannot carry; "
                "copy the key again from its source"
            )


def check_credentials(api_key: Any, what: str, headers: Any = None) -> None:
    """The api_key (when set) and every default header value must be sendable as HTTP headers."""
    if api_key is not None:
        fix = "api_key=key.strip()" if what == "api_key" else f"remove it from the value of {what}"
        check_header_value(api_key, what, fix)
    if isinstance(headers, dict):
        for name, value in headers.items():
            check_header_value(value, f"default_headers[{name!r}]", "pass the value .strip()ped")


async def _close_with_loop(client: Any) -> AsyncIterator[None]:
    """Closes `client` when its event loop shuts down: asyncio.run() finalises unfinished async
    generators (loop.shutdown_asyncgens) while the loop still runs, which is exactly when the
    connections can still be closed properly."""
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            await client.close()


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


class Clients:
    """One model's SDK clients in this process: a sync client, and an async client per event loop.

    An httpx async pool belongs to the loop that opened it, so each loop gets its own client,
    closed when that loop shuts down (see `_close_with_loop`): asyncio.run() after asyncio.run()
    neither reuses dead connections nor leaks them.
    """

    def __init__(self) -> None:
        self._sync: Any = None
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[Any, Any]] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def sync(self, make: Callable[[], Any]) -> Any:
        """The sync client, made by `make` on first use."""
        client = self._sync
        if client is None:
            with self._lock:
                if self._sync is None:
                    self._sync = make()
                client = self._sync
        return client

    async def of_running_loop(self, make: Callable[[], Any]) -> Any:
        """The async client of the running event loop, made by `make` on first use in that loop."""
        loop = asyncio.get_running_loop()
        entry = self._loops.get(loop)
        if entry is None:
            client = make()
            closer = _close_with_loop(client)
            await closer.__anext__()  # runs to its `yield` at once: this loop now tracks it
            with self._lock:
                entry = self._loops.setdefault(loop, (client, closer))  # the closer must stay referenced
        return entry[0]

    def close(self) -> None:
        """Close the sync client (the next call opens a new one)."""
        with self._lock:
            client, self._sync = self._sync, None
        if client is not None:
            client.close()


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
