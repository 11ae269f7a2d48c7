"""Credentials of remote APIs: environment variables, keys HTTP can carry, secrets in URLs."""

from __future__ import annotations

import os
import unicodedata
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

from pydantic import SecretStr

from embedstack.providers.remote.redact import is_sensitive_name

__all__ = ["check_credentials", "check_header_value", "env", "split_query", "url_secrets"]


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
