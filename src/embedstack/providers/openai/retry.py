"""Retry policy for remote embedding APIs: what to retry, how long to wait, and the final error.

Pure logic, no I/O: a failed attempt is classified into a `Failure`, `RetryPolicy.delay` says how
long to wait before the next one, and `EmbeddingAPIError` is what the caller finally sees. Retried:
408, 409, 429, 5xx, timeouts, dropped connections and malformed answers; never 400, 401, 403, 404,
422 (a 413/422 that says the batch is too big is split by the caller instead, not retried as is).

Secrets: `scrub` is the one function that removes them from text (every form a key takes in a
message, and credentials in any URL); `protect_logs` registers a model's secrets and puts
`ScrubFilter` on the loggers of embedstack, the openai SDK and the HTTP stack (httpx logs full
URLs at INFO), so no record they emit carries one.
"""

from __future__ import annotations

import email.utils
import json
import logging
import random
import re
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

from embedstack.errors import EmbedstackError
from embedstack.types import Batch, PartialResult

__all__ = [
    "EmbeddingAPIError",
    "Failure",
    "RetryPolicy",
    "ScrubFilter",
    "is_retryable_status",
    "is_sensitive_name",
    "parse_batch_cap",
    "parse_retry_after",
    "protect_logs",
    "scrub",
    "server_message",
]

#: Statuses worth another try: the request may succeed unchanged.
RETRYABLE_STATUSES = frozenset({408, 409, 429})
#: OpenAI answers 429 with these codes when retrying cannot help (billing, not rate).
NON_RETRYABLE_429_CODES = frozenset({"insufficient_quota", "billing_hard_limit_reached", "account_deactivated"})

_CAP_PATTERNS = (
    # TEI, SiliconFlow and friends: "batch size 64 > maximum allowed batch size 32"
    re.compile(r"maximum allowed batch size\D{0,5}(\d+)", re.I),
    re.compile(r"max(?:imum)?[ _-]?(?:client[ _-])?batch[ _-]?size\D{0,12}(\d+)", re.I),
    re.compile(r"batch size\D{0,12}(?:is|of|must be|<=|at most|limit(?:ed)? to)\D{0,6}(\d+)", re.I),
)


def is_retryable_status(status: int) -> bool:
    """Whether an HTTP status is worth retrying unchanged (408, 409, 429, 5xx)."""
    return status in RETRYABLE_STATUSES or 500 <= status <= 599


def parse_retry_after(headers: Mapping[str, str] | None, now: float | None = None) -> float | None:
    """Seconds the server asked us to wait: retry-after-ms, else Retry-After (seconds or HTTP date)."""
    if not headers:
        return None
    lower = {k.lower(): v for k, v in headers.items()}
    ms = lower.get("retry-after-ms")
    if ms is not None:
        try:
            value = float(ms) / 1000.0
            if value >= 0:
                return value
        except ValueError:
            pass
    ra = lower.get("retry-after")
    if ra is None:
        return None
    try:
        value = float(ra)
        return value if value >= 0 else None
    except ValueError:
        pass
    try:
        parsed = email.utils.parsedate_to_datetime(ra)
    except (TypeError, ValueError, IndexError):
        return None
    if parsed is None:
        return None
    return max(0.0, parsed.timestamp() - (time.time() if now is None else now))


def server_message(body: Any, limit: int = 500) -> str:
    """The human message in an error body: OpenAI's error.message, TEI's error, vLLM's message, FastAPI's detail."""
    if isinstance(body, (bytes, bytearray)):
        try:
            body = json.loads(body)
        except ValueError:
            body = body.decode("utf-8", "replace")
    if isinstance(body, str):
        try:
            body = json.loads(body)
        except ValueError:
            return str(body).strip()[:limit]
    if isinstance(body, Mapping):
        for key in ("error", "message", "detail"):
            value = body.get(key)
            if isinstance(value, Mapping):
                inner = value.get("message") or value.get("msg")
                if inner:
                    return str(inner)[:limit]
            elif isinstance(value, str) and value:
                return value[:limit]
            elif isinstance(value, list) and value:
                return "; ".join(str(v.get("msg", v)) if isinstance(v, Mapping) else str(v) for v in value)[:limit]
        return json.dumps(body)[:limit]
    return "" if body is None else str(body)[:limit]


def error_code(body: Any) -> str | None:
    """OpenAI's error.code (or error.type) from an error body, if there is one."""
    if isinstance(body, Mapping):
        inner = body.get("error", body)
        if isinstance(inner, Mapping):
            code = inner.get("code") or inner.get("type")
            return str(code) if code is not None else None
    return None


def parse_batch_cap(message: str) -> int | None:
    """The per-request input cap a server states in a 'batch too big' message, or None."""
    for pattern in _CAP_PATTERNS:
        m = pattern.search(message)
        if m:
            cap = int(m.group(1))
            return cap if cap > 0 else None
    return None


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


@dataclass(frozen=True)
class Failure:
    """One failed attempt, classified.

    kind: "status" (an HTTP error), "timeout", "connection" or "malformed" (a 200 we cannot use).
    batch_cap: set when the server said the batch is too big (split, don't retry as is).
    rows: for a malformed answer, the positions in the request of the inputs whose vectors were
    wrong (None: the whole answer is unusable).
    """

    kind: str
    message: str
    retryable: bool
    status: int | None = None
    retry_after: float | None = None
    batch_cap: int | None = None
    rows: tuple[int, ...] | None = None

    def describe(self) -> str:
        """A short line for logs and errors: 'HTTP 500: message' or 'timeout: message'."""
        head = f"HTTP {self.status}" if self.status is not None else self.kind
        return f"{head}: {self.message}" if self.message else head


def status_failure(status: int, body: Any, headers: Mapping[str, str] | None, secrets: Sequence[str | None]) -> Failure:
    """Classify an HTTP error answer."""
    message = scrub(server_message(body), secrets)
    retry_after = parse_retry_after(headers)
    lower = {k.lower(): v for k, v in (headers or {}).items()}
    if status in (400, 413, 422):
        cap = parse_batch_cap(message)
        if cap is not None:
            return Failure("status", message, False, status, retry_after, batch_cap=cap)
        if status == 413:
            # Payload too large with no stated cap: the caller halves the batch.
            return Failure("status", message, False, status, retry_after, batch_cap=0)
    retryable = is_retryable_status(status)
    if status == 429 and error_code(_as_json(body)) in NON_RETRYABLE_429_CODES:
        retryable = False
    should = lower.get("x-should-retry")
    if should == "false":
        retryable = False
    elif should == "true" and status not in (400, 401, 403, 404, 422):
        retryable = True
    return Failure("status", message, retryable, status, retry_after)


def _as_json(body: Any) -> Any:
    if isinstance(body, (bytes, bytearray, str)):
        try:
            return json.loads(body)
        except ValueError:
            return None
    return body


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter: wait ≈ backoff·2^(n-1), capped, never less than Retry-After.

    max_wait bounds how long a server's Retry-After is honoured; a longer request ends the retries
    (waiting an hour inside an embedding call is never what the caller wants).
    """

    max_retries: int = 8
    backoff: float = 0.5
    max_backoff: float = 30.0
    max_wait: float = 120.0

    def delay(self, retry_number: int, retry_after: float | None = None, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number `retry_number` (1-based)."""
        base = min(self.max_backoff, self.backoff * (2 ** max(0, retry_number - 1)))
        jittered = float(base * (0.5 + 0.5 * (rng or random).random()))
        if retry_after is not None and retry_after > 0:
            # At least what the server asked, plus up to 10% so waiting workers do not return in lockstep.
            return float(retry_after * (1.0 + 0.1 * (rng or random).random()))
        return jittered

    def gives_up(self, attempts: int, failure: Failure) -> bool:
        """Whether to stop after `attempts` tries ended with `failure`."""
        if not failure.retryable or attempts > self.max_retries:
            return True
        return failure.retry_after is not None and failure.retry_after > self.max_wait


class EmbeddingAPIError(EmbedstackError, RuntimeError):
    """A request failed for good: which items, after how many attempts, and what the server said.

    `first` and `last` index the failed items in the caller's input when known (`label[first:last+1]`);
    the message never contains the API key.
    """

    def __init__(
        self,
        provider: str,
        failure: Failure,
        attempts: int,
        items: Sequence[Any],
        endpoint: str = "",
        hint: str = "",
    ) -> None:
        self.provider = provider
        self.failure = failure
        #: What the failed batch did obtain (earlier requests of it); the pipeline caches it.
        self.partial: PartialResult | None = None
        self.status_code = failure.status
        self.attempts = attempts
        self.endpoint = endpoint
        self.hint = hint
        self.items = list(items)
        self.label = "items"
        self.indexes: list[int] | None = None
        super().__init__(self._message())

    def locate(self, batch: Batch) -> None:
        """Name the failed items by every place they have in the caller's input."""
        wanted = set(self.items)
        found = sorted(
            p for i, x in enumerate(batch.items) if isinstance(x, str) and x in wanted for p in batch.where(i)
        )
        label = batch.label
        if found:
            self.indexes = found
            self.label = label
            self.args = (self._message(),)

    def _where(self) -> str:
        n = len(self.items)
        if self.indexes is None:
            return f"{n} item{'s' if n != 1 else ''} of one batch"
        idx = self.indexes
        if idx == list(range(idx[0], idx[-1] + 1)):
            return f"{self.label}[{idx[0]}:{idx[-1] + 1}] ({len(idx)} item{'s' if len(idx) != 1 else ''})"
        shown = ", ".join(map(str, idx[:8])) + (", ..." if len(idx) > 8 else "")
        return f"{self.label}[{shown}] ({len(idx)} items, indexes {idx[0]}..{idx[-1]})"

    def _message(self) -> str:
        tries = f"{self.attempts} attempt{'s' if self.attempts != 1 else ''}"
        retried = "" if self.failure.retryable or self.attempts > 1 else " (not retryable)"
        where = f" from {self.endpoint}" if self.endpoint else ""
        hint = f"; {self.hint}" if self.hint else ""
        what = self.failure.describe()
        return f"{self.provider}: embedding {self._where()} failed after {tries}{retried}: {what}{where}{hint}"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_error, (self.args[0], self.status_code, self.attempts))


class _PickledEmbeddingAPIError(EmbeddingAPIError):
    def __init__(self, message: str, status_code: int | None, attempts: int) -> None:
        RuntimeError.__init__(self, message)
        self.status_code = status_code
        self.attempts = attempts
        self.items = []
        self.indexes = None


def _rebuild_error(message: str, status_code: int | None, attempts: int) -> EmbeddingAPIError:
    return _PickledEmbeddingAPIError(message, status_code, attempts)
