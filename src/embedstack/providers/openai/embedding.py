"""OpenAIEmbedding, AzureOpenAIEmbedding and OpenAILikeEmbedding: remote models behind /v1/embeddings.

Built on the official `openai` package (extra `openai`) with its own retries turned off: the retry
policy here (embedstack.providers.openai.retry) retries 408/409/429/5xx, timeouts, dropped connections and
malformed answers with jittered exponential backoff honouring Retry-After and retry-after-ms, and
never 400/401/403/404/422. Requests are shaped (embedstack.providers.openai.shaping): at most
2,048 inputs and the per-request token budget, a server's own batch cap learned from its 413/422,
over-long inputs split into windows (or truncated, or rejected). Vectors are mapped by the
response's `index`; an answer whose vectors are not all there, finite and of the model's length is
malformed (retried, then named item by item in the final error).

Credentials: a key HTTP cannot carry in a header (a trailing newline, a non-ASCII character) is a
ValueError at construction, before any request; the key, a password in the base URL and credential
query parameters (`?api-key=`) are scrubbed from every error and log record (`_retry.scrub`).

One batch of the pipeline is one `_flow`: a generator holding all the logic, which yields the
requests and sleeps it needs and is driven by a ten-line sync loop (`_embed_batch`) or async loop
(`_aembed_batch`), the way httpx drives its auth flows.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import contextlib
import json
import logging
import os
import sys
import threading
import time
import unicodedata
import weakref
from collections import deque
from collections.abc import AsyncIterator, Callable, Generator, Sequence
from typing import Any, ClassVar, Literal, NamedTuple, Union
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

import numpy as np
import numpy.typing as npt
from pydantic import Field, PrivateAttr, SecretStr, field_serializer, field_validator

from embedstack._optional import require
from embedstack.base import BaseEmbedding, BatchEmbedding
from embedstack.providers.openai.retry import (
    EmbeddingAPIError,
    Failure,
    RetryPolicy,
    is_sensitive_name,
    protect_logs,
    scrub,
    status_failure,
)
from embedstack.providers.openai.shaping import (
    MAX_INPUTS_PER_REQUEST,
    OPENAI_MAX_INPUT_TOKENS,
    OPENAI_MAX_REQUEST_TOKENS,
    TokenCounter,
    TooLongError,
    UnitPlan,
    combine,
    get_token_counter,
    pack,
    plan_units,
    refine_costs,
    utf8_len,
)
from embedstack.types import Batch, EmbedResult, PartialResult, Role

__all__ = [
    "DEFAULT_OPENAI_MODEL",
    "AzureOpenAIEmbedding",
    "EmbeddingAPIError",
    "OpenAIEmbedding",
    "OpenAILikeEmbedding",
    "from_spec",
]

logger = logging.getLogger("embedstack.openai")

DEFAULT_OPENAI_MODEL = "text-embedding-3-small"
DEFAULT_OPENAI_BASE = "https://api.openai.com/v1"
#: Inputs per pipeline batch: few requests (rate limits count requests too), small enough that a
#: failed batch loses little and the cache fills as the job runs.
DEFAULT_EMBED_BATCH_SIZE = 512
#: Requests in flight at once on the async path when num_workers is not set.
DEFAULT_ASYNC_WORKERS = 8
#: Output sizes of OpenAI's models (used only to shape zero vectors for empty inputs).
KNOWN_DIMENSIONS = {"text-embedding-3-small": 1536, "text-embedding-3-large": 3072, "text-embedding-ada-002": 1536}

#: OpenAILikeEmbedding's stand-in key for servers that want none (not a secret).
_PLACEHOLDER_KEY = "EMPTY"
_client_lock = threading.Lock()


class _Sleep(NamedTuple):
    seconds: float


class _Call(NamedTuple):
    inputs: list[str]


class _Success(NamedTuple):
    vectors: npt.NDArray[np.float32]
    tokens: int | None


_Outcome = Union[_Success, Failure]
_Flow = Generator[Union[_Call, _Sleep], Union[_Outcome, None], EmbedResult]


def _split_query(url: str | None) -> tuple[str | None, dict[str, str]]:
    """A base URL without its query string, and the query's parameters (sent with every request)."""
    if not url or "?" not in url:
        return url, {}
    parts = urlsplit(url)
    return urlunsplit(parts._replace(query="", fragment="")), dict(parse_qsl(parts.query, keep_blank_values=True))


def _url_secrets(url: str | None) -> list[str]:
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


def _check_header_value(value: Any, what: str, fix: str) -> None:
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


def _check_credentials(api_key: Any, what: str, headers: Any = None) -> None:
    """The api_key (when set) and every default header value must be sendable as HTTP headers."""
    if api_key is not None:
        fix = "api_key=key.strip()" if what == "api_key" else f"remove it from the value of {what}"
        _check_header_value(api_key, what, fix)
    if isinstance(headers, dict):
        for name, value in headers.items():
            _check_header_value(value, f"default_headers[{name!r}]", "pass the value .strip()ped")


class _OpenAIBase(BatchEmbedding):
    """What the three OpenAI-style providers share: fields, request shaping, retries, parsing."""

    model_name: str = Field(default=DEFAULT_OPENAI_MODEL, description="The embedding model to use.")
    dimensions: int | None = Field(
        default=None, gt=0, description="Output size, for models that support it (text-embedding-3-*)."
    )
    api_key: SecretStr | None = Field(default=None, description="The API key; never serialised, logged or shown.")
    api_base: str | None = Field(default=None, description="Base URL of the API (.../v1).")
    embed_batch_size: int = Field(
        default=DEFAULT_EMBED_BATCH_SIZE, gt=0, le=2048, description="Inputs per pipeline batch."
    )
    timeout: float = Field(default=60.0, gt=0, description="Seconds before one request times out (then it is retried).")
    max_retries: int = Field(default=8, ge=0, description="Retries per request after the first attempt.")
    retry_backoff: float = Field(default=0.5, ge=0, description="First backoff in seconds; doubles with each retry.")
    retry_max_backoff: float = Field(default=30.0, ge=0, description="Longest backoff between two attempts.")
    retry_max_wait: float = Field(
        default=120.0, ge=0, description="Longest Retry-After honoured; a longer one ends the retries."
    )
    default_headers: dict[str, str] | None = Field(
        default=None, description="Extra HTTP headers (auth-like values are masked when shown)."
    )
    additional_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Extra JSON fields sent with every request."
    )
    encoding_format: Literal["base64", "float"] = Field(
        default="base64", description="How vectors travel (base64 is ~4x smaller)."
    )
    long_inputs: Literal["split", "truncate", "error"] = Field(
        default="split", description="Inputs over max_input_tokens: windows averaged by tokens, truncated, or an error."
    )
    empty_inputs: Literal["error", "zeros"] = Field(
        default="error", description="Empty strings (APIs reject them): an error before any request, or zero vectors."
    )
    max_input_tokens: int | None = Field(
        default=OPENAI_MAX_INPUT_TOKENS, gt=0, description="The model's context in tokens."
    )
    max_request_tokens: int | None = Field(
        default=OPENAI_MAX_REQUEST_TOKENS, gt=0, description="Token budget of one request."
    )
    max_inputs_per_request: int = Field(default=MAX_INPUTS_PER_REQUEST, gt=0, description="Most inputs in one request.")
    token_encoding: str | None = Field(
        default="cl100k_base", description="tiktoken encoding for counting tokens (None: estimate)."
    )
    query_instruction: str | None = Field(
        default=None, description="Prefix for queries (for instruction-tuned models)."
    )
    text_instruction: str | None = Field(default=None, description="Prefix for texts (for instruction-tuned models).")
    http_client: Any = Field(
        default=None, exclude=True, description="An httpx client for the sync SDK client (proxies, TLS)."
    )
    async_http_client: Any = Field(
        default=None, exclude=True, description="An httpx async client for the async SDK client."
    )

    _identity_exclude: ClassVar[frozenset[str]] = frozenset(
        {
            "timeout",
            "max_retries",
            "retry_backoff",
            "retry_max_backoff",
            "retry_max_wait",
            "default_headers",
            "encoding_format",
            "max_request_tokens",
            "max_inputs_per_request",
            "http_client",
            "async_http_client",
        }
    )
    parallel_sync_batches: ClassVar[bool] = True

    _client: Any = PrivateAttr(default=None)
    _aclients: Any = PrivateAttr(default_factory=weakref.WeakKeyDictionary)
    _server_cap: int | None = PrivateAttr(default=None)
    _cooldown_until: float = PrivateAttr(default=0.0)

    def __init__(self, **data: Any) -> None:
        # before pydantic: its ValidationError would quote the key (input_value=...)
        _check_credentials(data.get("api_key"), "api_key", data.get("default_headers"))
        super().__init__(**data)

    def model_post_init(self, __context: Any) -> None:
        """Fail now, with the install hint, if the openai package is missing."""
        super().model_post_init(__context)
        require("openai", extra="openai")

    @field_validator("api_base")
    @classmethod
    def _strip_base(cls, v: str | None) -> str | None:
        return v.rstrip("/") if v else v

    @field_serializer("default_headers")
    def _mask_headers(self, headers: dict[str, str] | None) -> dict[str, str] | None:
        if headers is None:
            return None
        return {k: ("***" if is_sensitive_name(k) else v) for k, v in headers.items()}

    @field_serializer("api_base")
    def _mask_base(self, url: str | None) -> str | None:
        """The base URL as shown: user:password and credential query values (api-key=...) masked."""
        return self._scrub(url) if url else url

    def __getstate__(self) -> dict[Any, Any]:
        """Pickle without live HTTP clients (they are rebuilt on first use)."""
        state = super().__getstate__()
        private = dict(state.get("__pydantic_private__") or {})
        private.update(_client=None, _aclients=None, _memo={})
        state["__pydantic_private__"] = private
        return state

    # -- the pipeline's hooks ------------------------------------------------------------------------
    def _instruction(self, role: Role) -> str | None:
        """The instruction prepended for `role` (part of the cache key)."""
        if role is Role.QUERY:
            return self.query_instruction or None
        if role is Role.TEXT:
            return self.text_instruction or None
        return None

    def _async_workers(self) -> int | None:
        """Requests in flight at once on the async path: num_workers, or DEFAULT_ASYNC_WORKERS (never unbounded)."""
        return self.num_workers if self.num_workers and self.num_workers > 0 else DEFAULT_ASYNC_WORKERS

    def _check_items(self, items: Sequence[Any], role: Role, label: str) -> None:
        """Errors that must come before any request (see _precheck)."""
        self._precheck(items, role, label)

    def _embed(self, batch: Batch) -> Any:
        try:
            return super()._embed(batch)
        except EmbeddingAPIError as e:
            e.locate(batch)
            raise

    async def _aembed(self, batch: Batch) -> Any:
        try:
            return await super()._aembed(batch)
        except EmbeddingAPIError as e:
            e.locate(batch)
            raise

    def _precheck(self, items: Sequence[Any], role: Role, label: str) -> None:
        """Errors that must come before any request: images, empty strings, over-long inputs (when asked)."""
        if role is Role.IMAGE:
            raise TypeError(
                f"{type(self).__name__} embeds text only; use a MultiModalEmbedding such as ClipEmbedding for images"
            )
        items = list(items) if not isinstance(items, list) else items
        if self.empty_inputs == "error" and "" in items:
            bad = [i for i, t in enumerate(items) if isinstance(t, str) and not t]
            shown = ", ".join(f"{label}[{i}]" for i in bad[:10]) + (
                f" and {len(bad) - 10} more" if len(bad) > 10 else ""
            )
            raise ValueError(
                f"{shown} {'is an empty string' if len(bad) == 1 else 'are empty strings'}; "
                f"embedding APIs reject empty "
                f"inputs. Remove them, or pass empty_inputs='zeros' to get zero vectors for them."
            )
        limit = self.max_input_tokens
        if self.long_inputs == "error" and limit is not None:
            prefix = len(self._instruction(role) or "")
            over = []
            for i, t in enumerate(items):
                if isinstance(t, str) and (len(t) + prefix) * 4 > limit:
                    text = (self._instruction(role) or "") + t
                    if utf8_len(text) > limit:
                        n = self._counter().count(text)
                        if n > limit:
                            over.append((i, n))
            if over:
                shown = ", ".join(f"{label}[{i}] ({n} tokens)" for i, n in over[:10])
                raise ValueError(
                    f"{shown} {'is' if len(over) == 1 else 'are'} over {self.model_name}'s limit of {limit} tokens; "
                    f"shorten {'it' if len(over) == 1 else 'them'}, or pass long_inputs='split' (windows averaged) "
                    f"or long_inputs='truncate'."
                )

    def _embed_batch(self, items: list[Any], role: Role) -> EmbedResult:
        """Embed one pipeline batch with blocking requests (a thread pool runs several when num_workers > 1)."""
        flow = self._flow(items, role)
        try:
            step = next(flow)
            while True:
                if isinstance(step, _Sleep):
                    time.sleep(step.seconds)
                    step = flow.send(None)
                else:
                    step = flow.send(self._send_sync(step.inputs))
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]

    async def _aembed_batch(self, items: list[Any], role: Role) -> EmbedResult:
        """Embed one pipeline batch on the event loop with the async client."""
        flow = self._flow(items, role)
        client = await self._async_client()
        try:
            step = next(flow)
            while True:
                if isinstance(step, _Sleep):
                    await asyncio.sleep(step.seconds)
                    step = flow.send(None)
                else:
                    step = flow.send(await self._send_async(client, step.inputs))
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]

    # -- the logic of one batch (no I/O) ----------------------------------------------------------------
    def _policy(self) -> RetryPolicy:
        return RetryPolicy(self.max_retries, self.retry_backoff, self.retry_max_backoff, self.retry_max_wait)

    def _max_inputs(self) -> int:
        cap = self.max_inputs_per_request
        return min(cap, self._server_cap) if self._server_cap else cap

    def _counter(self) -> TokenCounter:
        return get_token_counter(self.token_encoding)

    def _flow(self, items: list[Any], role: Role) -> _Flow:
        """Shape a batch into requests, retry each per the policy, fold the answers into one vector per item."""
        if role is Role.IMAGE:
            raise TypeError(f"{type(self).__name__} embeds text only")
        instruction = self._instruction(role) or ""
        keep = [i for i, t in enumerate(items) if t]
        if len(keep) != len(items) and self.empty_inputs == "error":
            raise ValueError(
                f"{len(items) - len(keep)} empty strings in a batch; "
                "pass empty_inputs='zeros' to embed them as zero vectors"
            )
        texts = [instruction + items[i] for i in keep] if instruction else [items[i] for i in keep]
        try:
            plan = plan_units(texts, self._counter, self.max_input_tokens, self.long_inputs)
        except TooLongError as e:
            raise ValueError(f"{e}; pass long_inputs='split' or 'truncate'") from None
        refine_costs(plan, self._counter, self.max_request_tokens)
        policy = self._policy()
        unit_vectors: npt.NDArray[np.float32] | None = None
        tokens: int | None = 0
        unit_done = np.zeros(len(plan.texts), dtype=bool)
        pending = deque(pack(plan.costs, self._max_inputs(), self.max_request_tokens))
        while pending:
            chunk = pending.popleft()
            if len(chunk) > self._max_inputs():  # a cap was learned since this chunk was planned
                pending.extendleft(
                    reversed(pack(plan.costs, self._max_inputs(), self.max_request_tokens, chunk.start, chunk.stop))
                )
                continue
            inputs = plan.texts[chunk.start : chunk.stop]
            attempts = 0
            outcome: _Outcome | None = None
            while True:
                wait = self._cooldown_until - time.monotonic()
                if wait > 0:
                    yield _Sleep(wait)
                attempts += 1
                outcome = yield _Call(inputs)
                if not isinstance(outcome, Failure):
                    break
                if outcome.batch_cap is not None and len(inputs) > 1:
                    cap = outcome.batch_cap if 0 < outcome.batch_cap < len(inputs) else max(1, len(inputs) // 2)
                    self._learn_cap(cap, outcome)
                    pending.extendleft(
                        reversed(pack(plan.costs, cap, self.max_request_tokens, chunk.start, chunk.stop))
                    )
                    break
                if policy.gives_up(attempts, outcome):
                    units = chunk if outcome.rows is None else [chunk.start + r for r in outcome.rows]
                    failed = list(dict.fromkeys(items[keep[plan.owner[u]]] for u in units))
                    error = self._final_error(outcome, attempts, failed, policy)
                    error.partial = _obtained(plan, keep, unit_vectors, unit_done)
                    raise error
                delay = policy.delay(attempts, outcome.retry_after)
                if outcome.status == 429:  # the limit is shared: pause every worker of this model
                    self._cooldown_until = max(self._cooldown_until, time.monotonic() + delay)
                logger.info(
                    "%s: %s; retry %d/%d in %.2fs (%d inputs)",
                    type(self).__name__,
                    outcome.describe(),
                    attempts,
                    policy.max_retries,
                    delay,
                    len(inputs),
                )
                yield _Sleep(delay)
            if not isinstance(outcome, _Success):
                continue  # re-split after a batch-cap answer
            if unit_vectors is None:  # every answer has the model's one length (checked by _parse)
                unit_vectors = np.empty((len(plan.texts), outcome.vectors.shape[1]), dtype=np.float32)
            unit_vectors[chunk.start : chunk.stop] = outcome.vectors
            unit_done[chunk.start : chunk.stop] = True
            tokens = None if tokens is None or outcome.tokens is None else tokens + outcome.tokens
        vectors = combine(len(texts), plan, unit_vectors) if unit_vectors is not None else None
        if len(keep) != len(items):
            vectors = yield from self._with_zeros(len(items), keep, vectors)
        if vectors is None:  # an empty batch (the pipeline never sends one)
            vectors = np.zeros((0, 0), dtype=np.float32)
        return EmbedResult(vectors, token_count=tokens if texts else 0, truncated=plan.truncated)

    def _with_zeros(
        self, n: int, keep: list[int], vectors: npt.NDArray[np.float32] | None
    ) -> Generator[Any, Any, npt.NDArray[np.float32]]:
        """Zero vectors for empty inputs (empty_inputs='zeros'); one probe learns the size if nothing else did."""
        dim = (
            vectors.shape[1]
            if vectors is not None
            else self.dimensions or self._known_dim()[0] or KNOWN_DIMENSIONS.get(self.model_name)
        )
        if dim is None:
            outcome = None
            for attempt in range(1, self.max_retries + 2):
                outcome = yield _Call([" "])
                if isinstance(outcome, _Success):
                    dim = outcome.vectors.shape[1]
                    break
                if self._policy().gives_up(attempt, outcome):
                    break
                yield _Sleep(self._policy().delay(attempt, outcome.retry_after))
            if dim is None:
                failure = outcome if isinstance(outcome, Failure) else Failure("malformed", "no answer", False)
                raise self._final_error(failure, self.max_retries + 1, [""], self._policy())
        out = np.zeros((n, dim), dtype=np.float32)
        if vectors is not None:
            out[keep] = vectors
        return out

    def _learn_cap(self, cap: int, failure: Failure) -> None:
        if self._server_cap is None or cap < self._server_cap:
            self._server_cap = cap
            logger.warning(
                "%s: the server refused a batch (%s); sending at most %d inputs per request from now on "
                "(set max_inputs_per_request=%d to start there)",
                type(self).__name__,
                failure.describe(),
                cap,
                cap,
            )

    def _final_error(self, failure: Failure, attempts: int, items: list[Any], policy: RetryPolicy) -> EmbeddingAPIError:
        hint = ""
        if failure.status in (401, 403):
            hint = self._auth_hint()
        elif failure.status == 404:
            hint = f"check the model name {self.model_name!r} and the endpoint"
        elif failure.retry_after is not None and failure.retry_after > policy.max_wait:
            hint = f"the server asked to wait {failure.retry_after:.0f}s, more than retry_max_wait={policy.max_wait:g}s"
        return EmbeddingAPIError(
            type(self).__name__, failure, attempts, items, endpoint=self._endpoint(), hint=self._scrub(hint)
        )

    def _auth_hint(self) -> str:
        return "check the API key (api_key=... or OPENAI_API_KEY)"

    def _endpoint(self) -> str:
        return self._scrub(self.api_base or "")

    # -- I/O: the SDK calls -----------------------------------------------------------------------------
    def _secrets(self) -> list[str | None]:
        """Every credential this model holds: the key, URL passwords and query keys, auth-like header values."""
        key = self.api_key.get_secret_value() if self.api_key else None
        found: list[str | None] = [None if key == _PLACEHOLDER_KEY else key]
        found += _url_secrets(self.api_base) + _url_secrets(getattr(self, "azure_endpoint", None))
        for name, value in (self.default_headers or {}).items():
            if is_sensitive_name(name):
                found += [value, value.partition(" ")[2]]  # "Bearer <token>": the token alone too
        return found

    def _scrub(self, text: str) -> str:
        """`text` without this model's credentials (see `_retry.scrub`)."""
        return scrub(text, self._secrets())

    def _body(self, inputs: list[str]) -> dict[str, Any]:
        """The JSON body of one request."""
        body: dict[str, Any] = {"input": inputs, "model": self.model_name, "encoding_format": self.encoding_format}
        if self.dimensions is not None:
            body["dimensions"] = self.dimensions
        if self.additional_kwargs:
            body.update(self.additional_kwargs)
        return body

    def _client_kwargs(self) -> dict[str, Any]:
        """The SDK client's arguments; checks the credentials (they may have been assigned since
        construction) and has every logger that could print them scrub its records."""
        _check_credentials(self.api_key, "api_key", self.default_headers)
        protect_logs(self._secrets())
        base, query = _split_query(self.api_base)  # the SDK would glue the path onto a query string
        kw: dict[str, Any] = {
            "api_key": self.api_key.get_secret_value() if self.api_key else None,
            "base_url": base,
            "timeout": self.timeout,
            "max_retries": 0,
            "default_headers": self.default_headers,
        }
        if query:
            kw["default_query"] = query
        return kw

    def _make_client(self, openai: Any, is_async: bool) -> Any:
        kw = self._client_kwargs()
        http = self.async_http_client if is_async else self.http_client
        if http is not None:
            kw["http_client"] = http
        return (openai.AsyncOpenAI if is_async else openai.OpenAI)(**kw)

    def _sync_client(self) -> Any:
        client = self._client
        if client is None:
            with _client_lock:
                if self._client is None:
                    self._client = self._make_client(require("openai", extra="openai"), is_async=False)
                client = self._client
        return client

    async def _async_client(self) -> Any:
        """The async client of the running event loop (an httpx async pool belongs to the loop that opened it).

        Each loop gets its own client, closed when that loop shuts down (see `_close_with_loop`), so
        asyncio.run() after asyncio.run() neither reuses dead connections nor leaks them.
        """
        loop = asyncio.get_running_loop()
        if self._aclients is None:  # after unpickling
            self._aclients = weakref.WeakKeyDictionary()
        entry = self._aclients.get(loop)
        if entry is None:
            client = self._make_client(require("openai", extra="openai"), is_async=True)
            closer = _close_with_loop(client)
            await closer.__anext__()  # runs to its `yield` at once: this loop now tracks it
            with _client_lock:
                entry = self._aclients.setdefault(loop, (client, closer))  # the closer must stay referenced
        return entry[0]

    # The SDK's generic `post` (its documented way to call an endpoint with a raw response) rather
    # than `embeddings.create`: create() walks every input through its typed-dict transform (~30 µs
    # per input, 60 ms for 2,048) and parses the answer into models we would only unpack again.
    def _send_sync(self, inputs: list[str]) -> _Outcome:
        openai = require("openai", extra="openai")
        try:
            response = self._sync_client().post("/embeddings", cast_to=_response_class(openai), body=self._body(inputs))
            content = response.content
        except openai.APIError as e:
            return self._failure(openai, e)
        return self._parse(content, len(inputs))

    async def _send_async(self, client: Any, inputs: list[str]) -> _Outcome:
        openai = require("openai", extra="openai")
        try:
            response = await client.post("/embeddings", cast_to=_response_class(openai), body=self._body(inputs))
            content = response.content
        except openai.APIError as e:
            return self._failure(openai, e)
        return self._parse(content, len(inputs))

    def _failure(self, openai: Any, e: Exception) -> Failure:
        """Classify an SDK exception (status, timeout, connection); every message is scrubbed."""
        secrets = self._secrets()
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
            return Failure("timeout", f"no answer within {self.timeout:g}s", True)
        if isinstance(e, openai.APIConnectionError):
            cause = e.__cause__ or e.__context__
            detail = f"{type(cause).__name__}: {cause}" if cause else str(e)
            return Failure("connection", scrub(detail, secrets)[:300], True)
        return Failure("error", scrub(f"{type(e).__name__}: {e}", secrets)[:300], False)

    def _expected_length(self) -> tuple[int, str] | None:
        """The length every vector of an answer must have, and why; None before the first answer."""
        if self.dimensions is not None:
            return self.dimensions, (
                f"though dimensions={self.dimensions} was asked (this model or server may not support `dimensions`)"
            )
        known = self._known_dim()[0]  # what this model answered before (the pipeline's record)
        return None if known is None else (known, f"where this model's earlier answers had {known}")

    def _parse(self, content: bytes, n: int) -> _Outcome:
        """The vectors of a 200 answer, placed by their `index`; a retryable failure if the answer is
        unusable: not JSON, vectors missing, extra or repeated, non-numbers, NaN/inf as float32, or a
        length other than the requested `dimensions`, the other vectors' or this model's earlier answers'."""
        try:
            mat, tokens = _decode_answer(content, n, self._expected_length())
            self._learn_dim(mat.shape[1])  # the first answer's length stays (dict.setdefault)
            known = self._known_dim()[0]
            if known != mat.shape[1]:  # another worker's first answer came first
                raise _Malformed({f"{mat.shape[1]} values where this model's earlier answers had {known}": range(n)})
        except _Malformed as bad:
            return Failure("malformed", f"malformed response body: {bad.why(n)}", True, rows=bad.rows)
        return _Success(mat, tokens)

    def close(self) -> None:
        """Close the sync HTTP client (the next call opens a new one)."""
        client, self._client = self._client, None
        if client is not None:
            client.close()


def _obtained(
    plan: UnitPlan, keep: list[int], unit_vectors: npt.NDArray[np.float32] | None, unit_done: npt.NDArray[np.bool_]
) -> PartialResult | None:
    """The items of a failing batch whose every request succeeded (windows included), for the cache."""
    if unit_vectors is None or not unit_done.any():
        return None
    owner = np.asarray(plan.owner)
    complete = np.ones(len(keep), dtype=bool)
    np.logical_and.at(complete, owner, unit_done)
    safe = np.where(unit_done[:, None], unit_vectors, np.float32(0))  # unsent units hold garbage
    rows = np.flatnonzero(complete)
    return PartialResult([keep[t] for t in rows], combine(len(keep), plan, safe)[rows])


def _b64decode(text: str) -> bytes:
    """Strict base64 (invalid characters are an error, not silently skipped)."""
    if sys.version_info >= (3, 11):
        return binascii.a2b_base64(text, strict_mode=True)
    return base64.b64decode(text, validate=True)


class _Malformed(Exception):
    """An unusable answer: what is wrong, with the request positions each problem hits (None: all)."""

    def __init__(self, problems: dict[str, Any], whole: bool = False) -> None:
        super().__init__()
        self.problems = {why: sorted(set(rows)) for why, rows in problems.items()}
        hit = {r for rows in self.problems.values() for r in rows}
        self.rows: tuple[int, ...] | None = None if whole else tuple(sorted(hit))

    def why(self, n: int) -> str:
        if self.rows is None:
            return "; ".join(self.problems)
        return "; ".join(f"{why}: {len(rows)} of {n} inputs" for why, rows in self.problems.items())


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

    Equal-length unpadded base64 strings (the usual answer) are decoded in one call: ~40% faster
    than one decode per vector, which matters at thousands of 1,536-dim vectors per second.
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
        import importlib

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


def _env(*names: str) -> str | None:
    for name in names:
        value = os.environ.get(name)
        if value:
            return value
    return None


class OpenAIEmbedding(_OpenAIBase):
    """OpenAI's embedding models (text-embedding-3-small by default); key from OPENAI_API_KEY.

    Example: `OpenAIEmbedding(model="text-embedding-3-large", dimensions=1024, num_workers=4)`.
    """

    def __init__(
        self,
        model: str | None = None,
        dimensions: int | None = None,
        api_key: str | SecretStr | None = None,
        api_base: str | None = None,
        **kwargs: Any,
    ) -> None:
        model_name = model or kwargs.pop("model_name", None) or DEFAULT_OPENAI_MODEL
        key = api_key if api_key is not None else _env("OPENAI_API_KEY")
        if not key:
            raise ValueError(
                "No OpenAI API key: set the OPENAI_API_KEY environment variable or pass api_key=...; "
                "or use a local model instead: embed_model='local' (pip install 'embedstack[local]')."
            )
        _check_credentials(key, "api_key" if api_key is not None else "OPENAI_API_KEY")
        base = api_base or _env("OPENAI_BASE_URL", "OPENAI_API_BASE") or DEFAULT_OPENAI_BASE
        super().__init__(model_name=model_name, dimensions=dimensions, api_key=key, api_base=base, **kwargs)

    @classmethod
    def class_name(cls) -> str:
        """Name stored in to_dict()."""
        return "OpenAIEmbedding"


class OpenAILikeEmbedding(_OpenAIBase):
    """Any server speaking /v1/embeddings (vLLM, TEI, Ollama, infinity, LM Studio, ...).

    No OpenAI limits are assumed (set max_input_tokens / max_request_tokens if the server has them);
    a server's batch cap is learned from its 413/422. The OpenAI key in the environment is never
    sent to it: pass api_key if the server wants one.
    """

    max_input_tokens: int | None = Field(
        default=None, gt=0, description="The model's context in tokens (None: not checked)."
    )
    max_request_tokens: int | None = Field(default=None, gt=0, description="Token budget of one request (None: none).")
    token_encoding: str | None = Field(
        default=None, description="tiktoken encoding for counting tokens (None: estimate)."
    )

    def __init__(
        self,
        model: str | None = None,
        api_base: str | None = None,
        api_key: str | SecretStr | None = None,
        **kwargs: Any,
    ) -> None:
        model_name = model or kwargs.pop("model_name", None)
        if not model_name:
            raise ValueError("OpenAILikeEmbedding needs model=... (the name the server knows the model by)")
        base = api_base or _env("OPENAI_BASE_URL", "OPENAI_API_BASE")
        if not base:
            raise ValueError(
                "OpenAILikeEmbedding needs api_base=... (e.g. 'http://localhost:8080/v1') or OPENAI_BASE_URL"
            )
        super().__init__(model_name=model_name, api_key=api_key or "EMPTY", api_base=base, **kwargs)

    @classmethod
    def class_name(cls) -> str:
        """Name stored in to_dict()."""
        return "OpenAILikeEmbedding"

    def _auth_hint(self) -> str:
        return "check the api_key this server expects"


class AzureOpenAIEmbedding(_OpenAIBase):
    """OpenAI models deployed on Azure: endpoint, deployment, API version; an API key or an Entra ID token provider."""

    azure_endpoint: str | None = Field(default=None, description="https://<resource>.openai.azure.com")
    azure_deployment: str | None = Field(default=None, description="The deployment name (defaults to the model name).")
    api_version: str | None = Field(default=None, description="The Azure OpenAI API version.")
    azure_ad_token_provider: Callable[[], str] | None = Field(
        default=None, exclude=True, description="Returns an Entra ID token for each request (instead of an API key)."
    )

    def __init__(
        self,
        model: str | None = None,
        azure_endpoint: str | None = None,
        azure_deployment: str | None = None,
        api_version: str | None = None,
        api_key: str | SecretStr | None = None,
        azure_ad_token_provider: Callable[[], str] | None = None,
        **kwargs: Any,
    ) -> None:
        model_name = model or kwargs.pop("model_name", None) or DEFAULT_OPENAI_MODEL
        azure_deployment = azure_deployment or kwargs.pop("deployment_name", None) or model_name
        endpoint = azure_endpoint or kwargs.pop("api_base", None) or _env("AZURE_OPENAI_ENDPOINT")
        if not endpoint:
            raise ValueError(
                "AzureOpenAIEmbedding needs azure_endpoint=... or the AZURE_OPENAI_ENDPOINT environment variable"
            )
        version = api_version or _env("OPENAI_API_VERSION", "AZURE_OPENAI_API_VERSION")
        if not version:
            raise ValueError("AzureOpenAIEmbedding needs api_version=... (e.g. '2024-10-21') or OPENAI_API_VERSION")
        key = api_key if api_key is not None else (None if azure_ad_token_provider else _env("AZURE_OPENAI_API_KEY"))
        if not key and azure_ad_token_provider is None:
            raise ValueError(
                "AzureOpenAIEmbedding needs api_key=..., the AZURE_OPENAI_API_KEY environment variable, "
                "or azure_ad_token_provider=..."
            )
        if key:
            _check_credentials(key, "api_key" if api_key is not None else "AZURE_OPENAI_API_KEY")
        super().__init__(
            model_name=model_name,
            azure_endpoint=endpoint.rstrip("/"),
            azure_deployment=azure_deployment,
            api_version=version,
            api_key=key or None,
            azure_ad_token_provider=azure_ad_token_provider,
            **kwargs,
        )

    @classmethod
    def class_name(cls) -> str:
        """Name stored in to_dict()."""
        return "AzureOpenAIEmbedding"

    def _client_kwargs(self) -> dict[str, Any]:
        kw = super()._client_kwargs()
        del kw["base_url"]
        endpoint, query = _split_query(self.azure_endpoint)
        if query:
            kw["default_query"] = {**kw.get("default_query", {}), **query}
        kw.update(
            azure_endpoint=endpoint,
            azure_deployment=self.azure_deployment,
            api_version=self.api_version,
        )
        if self.azure_ad_token_provider is not None:
            provider = self.azure_ad_token_provider

            def checked_token() -> str:
                """The provider's token, refused (never shown) if HTTP cannot carry it."""
                token = provider()
                _check_header_value(token, "the token from azure_ad_token_provider", "return token.strip()")
                return token

            kw["azure_ad_token_provider"] = checked_token
        return kw

    def _make_client(self, openai: Any, is_async: bool) -> Any:
        kw = self._client_kwargs()
        if is_async and self.azure_ad_token_provider is not None:
            checked = kw["azure_ad_token_provider"]

            async def token() -> str:
                return await asyncio.to_thread(checked)  # type: ignore[no-any-return]

            kw["azure_ad_token_provider"] = token
        http = self.async_http_client if is_async else self.http_client
        if http is not None:
            kw["http_client"] = http
        return (openai.AsyncAzureOpenAI if is_async else openai.AzureOpenAI)(**kw)

    def _auth_hint(self) -> str:
        return "check api_key / AZURE_OPENAI_API_KEY or the token provider, and that the deployment exists"

    def _endpoint(self) -> str:
        return self._scrub(f"{self.azure_endpoint} (deployment {self.azure_deployment!r})")

    @field_serializer("azure_endpoint")
    def _mask_endpoint(self, url: str | None) -> str | None:
        """The endpoint as shown: credentials masked, as for api_base."""
        return self._scrub(url) if url else url


def from_spec(arg: str | None) -> BaseEmbedding:
    """The registry's factory: "default" (OpenAI's default model) and "openai:<model>"."""
    require("openai", extra="openai")
    return OpenAIEmbedding(model=arg or DEFAULT_OPENAI_MODEL)
