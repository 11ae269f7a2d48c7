"""Secrets out of text: `scrub` for errors and URLs, `protect_logs` for every logger that could print one.

`scrub` is the one function that removes secrets from text (every form a key takes in a message,
and credentials in any URL); `protect_logs` registers a model's secrets and puts `ScrubFilter` on
the loggers of embedstack, the openai SDK and the HTTP stack (httpx logs full URLs at INFO), so no
record they emit carries one.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from collections.abc import Iterable, Mapping
from urllib.parse import quote, unquote

__all__ = ["ScrubFilter", "header_identity", "is_sensitive_name", "protect_logs", "scrub"]

#: Parts of a header or query-parameter name that mark its value as a credential.
_SENSITIVE_PARTS = ("key", "token", "secret", "passw", "auth", "cookie", "credential", "session")
#: Short names that are credentials only as a whole word (Azure SAS `sig`, Azure Functions `code`).
_SENSITIVE_WORD = re.compile(r"(?:^|[-_.])(?:sig|signature|code|pwd)(?:$|[-_.])")
_USERINFO = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://)[^/\s@'\"<>?#]+@")
_QUERY_PARAM = re.compile(r"([?&;])([^=&;\s#?'\"<>]+)=([^&;\s#'\"<>]*)")


def is_sensitive_name(name: str) -> bool:
    """Whether a header or query parameter called `name` carries a credential (api-key, token, sig, ...)."""
    lower = name.lower()
    return any(p in lower for p in _SENSITIVE_PARTS) or _SENSITIVE_WORD.search(lower) is not None


#: Extra headers that only trace or label a request: never part of a cache identity.
_UNKEYED_HEADERS = frozenset({"user-agent", "x-request-id", "x-correlation-id", "traceparent", "tracestate", "baggage"})


def header_identity(headers: Mapping[str, str] | None) -> dict[str, str]:
    """Extra HTTP headers as a cache identity holds them: a header may select a model version or deployment on a
    compatible server, so each one's lower-cased name with the sha256 of its value; credentials
    (`is_sensitive_name`) and tracing headers are left out, and no value ever appears as is."""
    return {
        name.lower(): "sha256:" + hashlib.sha256(str(value).encode("utf-8", "surrogatepass")).hexdigest()
        for name, value in sorted((headers or {}).items())
        if isinstance(name, str) and name.lower() not in _UNKEYED_HEADERS and not is_sensitive_name(name)
    }


def _mask_param(m: re.Match[str]) -> str:
    return f"{m.group(1)}{m.group(2)}=***" if m.group(3) and is_sensitive_name(unquote(m.group(2))) else m.group(0)


def _forms(secret: str) -> set[str]:
    """The ways `secret` shows up in text: as is, stripped, escaped by repr (str or bytes), percent-encoded."""
    forms = {secret, secret.strip(), repr(secret)[1:-1], quote(secret, safe=""), quote(secret), unquote(secret)}
    forms.add(repr(secret.encode("utf-8", "surrogatepass"))[2:-1])
    return forms


def scrub(text: str, secrets: Iterable[str | None]) -> str:
    """`text` with every form of every secret, and credentials in any URL, replaced by '***'.

    The one scrubbing function: errors, log lines and URLs shown to users all go through it.
    Servers sometimes echo keys back, and HTTP libraries quote them escaped (b'Bearer sk-...\\n').
    Secrets shorter than 4 characters are left alone (replacing them would garble the text).
    """
    forms = {f for s in secrets if s for f in _forms(s) if len(f) >= 4}
    for form in sorted(forms, key=len, reverse=True):
        text = text.replace(form, "***")
    if "://" in text:
        text = _USERINFO.sub(r"\1***@", text)
    if "=" in text:
        text = _QUERY_PARAM.sub(_mask_param, text)
    return text


_LOG_SECRETS: set[str] = set()
_LOG_SECRETS_LOCK = threading.Lock()
#: Loggers whose records can carry a URL or a header: ours, the openai SDK's, the HTTP stack's.
_PROTECTED_PREFIXES = ("embedstack", "openai", "httpx", "httpx2", "httpcore", "httpcore2")
_KNOWN_CHILDREN = ("connection", "http11", "http2", "proxy", "socks")


class ScrubFilter(logging.Filter):
    """Rewrites a log record whose message or traceback holds a registered secret or a URL credential."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Scrub the record in place; never drops it."""
        secrets = tuple(_LOG_SECRETS)
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is the logging module's to report
            return True
        clean = scrub(message, secrets)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
            rendered = logging.Formatter().formatException(record.exc_info)
            clean = scrub(rendered, secrets)
            if clean != rendered:
                record.exc_text = clean
        return True


_FILTER = ScrubFilter()


def protect_logs(secrets: Iterable[str | None]) -> None:
    """Register `secrets` and make sure every logger that might print them scrubs its records.

    A logger's filters see only the records logged on it (not its children's), so the filter goes
    on every existing logger under the protected names, and on the HTTP stack's known ones.
    """
    with _LOG_SECRETS_LOCK:
        _LOG_SECRETS.update(s for s in secrets if s)
        names = set(_PROTECTED_PREFIXES)
        names.update(f"{p}.{c}" for p in ("httpcore", "httpcore2") for c in _KNOWN_CHILDREN)
        names.add("openai._base_client")
        for name, obj in list(logging.root.manager.loggerDict.items()):
            if isinstance(obj, logging.Logger) and name.split(".", 1)[0] in _PROTECTED_PREFIXES:
                names.add(name)
        for name in names:
            logger = logging.getLogger(name)
            if _FILTER not in logger.filters:
                logger.addFilter(_FILTER)
