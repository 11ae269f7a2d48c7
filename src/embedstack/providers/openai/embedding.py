"""OpenAIEmbedding, AzureOpenAIEmbedding and OpenAILikeEmbedding: remote models behind /v1/embeddings.

Built on the official `openai` package (extra `openai`) with its own retries turned off. One
pipeline batch is one `_flow`: shaped into requests (`shaping`: at most 2,048 inputs and the
per-request token budget, a server's own batch cap learned from its 413/422, over-long inputs split
into windows, truncated or rejected), each sent through the one retry loop (`retry.request`),
its answer read by `answers` (vectors mapped by `index`, all there, finite and of the model's
length, else malformed: retried, then named item by item in the final error). The flow does no
I/O: `retry.drive_sync` / `retry.drive_async` drive it with the calls of `client`.

Credentials: a key HTTP cannot carry in a header (a trailing newline, a non-ASCII character) is a
ValueError at construction, before any request; the key, a password in the base URL and credential
query parameters (`?api-key=`) are scrubbed from every error and log record (`redact.scrub`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Literal

import numpy as np
import numpy.typing as npt
from pydantic import Field, PrivateAttr, SecretStr, field_serializer, field_validator

from embedstack._optional import require
from embedstack.base import BaseEmbedding, BatchEmbedding
from embedstack.errors import EmbeddingAPIError
from embedstack.providers.catalog import find
from embedstack.providers.openai.answers import malformed, read_answer
from embedstack.providers.openai.client import apost, post
from embedstack.providers.openai.shaping import (
    MAX_INPUTS_PER_REQUEST,
    OPENAI_MAX_INPUT_TOKENS,
    OPENAI_MAX_REQUEST_TOKENS,
    TokenCounter,
    TooLongError,
    combine,
    get_token_counter,
    obtained,
    pack,
    plan_units,
    refine_costs,
    utf8_len,
)
from embedstack.providers.remote.clients import Clients
from embedstack.providers.remote.credentials import (
    check_credentials,
    check_header_value,
    env,
    split_query,
    url_secrets,
)
from embedstack.providers.remote.redact import header_identity, is_sensitive_name, protect_logs, scrub
from embedstack.providers.remote.retry import (
    Cooldown,
    Failure,
    Flow,
    GiveUp,
    Outcome,
    RetryPolicy,
    Split,
    Success,
    drive_async,
    drive_sync,
    request,
)
from embedstack.types import Batch, EmbedResult, Role

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

#: OpenAILikeEmbedding's stand-in key for servers that want none (not a secret).
_PLACEHOLDER_KEY = "EMPTY"
#: The request field, and its value per role, that `send_input_type=True` adds (what `embedstack serve` reads
#: to apply a model's query or document instruction).
_INPUT_TYPES = {Role.QUERY: {"input_type": "query"}, Role.TEXT: {"input_type": "document"}}


class _OpenAIBase(BatchEmbedding):
    """What the three OpenAI-style providers share: fields, the pipeline hooks, one batch's flow of requests."""

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
    is_remote: ClassVar[bool] = True
    #: Requests in flight at once on the async path when num_workers is unset (never unbounded).
    default_async_workers: ClassVar[int | None] = DEFAULT_ASYNC_WORKERS
    catalog_name: ClassVar[str | None] = "openai"

    #: Fields the SDK clients are built from: a change means new clients.
    _client_fields: ClassVar[frozenset[str]] = frozenset(
        {"api_key", "api_base", "timeout", "default_headers", "http_client", "async_http_client"}
    )
    #: Fields naming the server, model and account: a change forgets what was learned about them.
    _server_fields: ClassVar[frozenset[str]] = frozenset({"model_name", "api_key", "api_base"})
    #: Per-process state, never pickled: the SDK clients, the batch cap learned from the server's
    #: 413/422 (learned again if needed), and the pause after a 429 (a time.monotonic() deadline).
    _derived: ClassVar[frozenset[str]] = frozenset({"_clients", "_server_cap", "_cooldown"})

    _clients: Clients = PrivateAttr(default_factory=Clients)
    _server_cap: int | None = PrivateAttr(default=None)
    _cooldown: Cooldown = PrivateAttr(default_factory=Cooldown)

    def __init__(self, **data: Any) -> None:
        # before pydantic: its ValidationError would quote the key (input_value=...)
        check_credentials(data.get("api_key"), "api_key", data.get("default_headers"))
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

    def _refresh(self, changed: frozenset[str], fresh: bool) -> None:
        """New clients (made on next use) after a field they are built from changes; no learned batch
        cap and no cooldown after the server, model or key changes. A new model starts with none."""
        super()._refresh(changed, fresh)
        if fresh:
            return
        if changed & self._client_fields:
            self._clients = Clients()
        if changed & self._server_fields:
            self._server_cap = None
            self._cooldown = Cooldown()

    # -- the pipeline's hooks ------------------------------------------------------------------------
    def _identity(self) -> dict[str, Any]:
        """The fields that change vectors, plus the extra headers that can (see `header_identity`)."""
        data = super()._identity()
        headers = header_identity(self.default_headers)
        if headers:  # none (or only credentials and tracing): the keys stay as they were
            data["default_headers"] = headers
        return data

    def _instruction(self, role: Role) -> str | None:
        """The instruction prepended for `role` (part of the cache key)."""
        if role is Role.QUERY:
            return self.query_instruction or None
        if role is Role.TEXT:
            return self.text_instruction or None
        return None

    def _count_tokens(self, items: list[Any], role: Role) -> tuple[list[int], list[bool]] | None:
        """What the API will count for each text (tiktoken when it knows the model, else an estimate)."""
        if role is Role.IMAGE:
            return None
        counter, prefix = self._counter(), self._instruction(role) or ""
        return [counter.count(prefix + t) for t in items], [False] * len(items)

    def _check_items(self, items: Sequence[Any], role: Role, label: str, offset: int = 0) -> None:
        """Errors that must come before any request (see _precheck)."""
        self._precheck(items, role, label, offset)

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

    def _precheck(self, items: Sequence[Any], role: Role, label: str, offset: int = 0) -> None:
        """Errors that must come before any request: images, empty strings, over-long inputs (when asked)."""
        if role is Role.IMAGE:
            raise TypeError(
                f"{type(self).__name__} embeds text only; use a MultiModalEmbedding such as ClipEmbedding for images"
            )
        items = list(items) if not isinstance(items, list) else items
        if self.empty_inputs == "error" and "" in items:
            bad = [i for i, t in enumerate(items, offset) if isinstance(t, str) and not t]
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
            for i, t in enumerate(items, offset):
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
        return drive_sync(self._flow(items, role), self._send_sync)

    async def _aembed_batch(self, items: list[Any], role: Role) -> EmbedResult:
        """Embed one pipeline batch on the event loop with the async client."""
        flow = self._flow(items, role)
        client = await self._async_client()
        return await drive_async(flow, functools.partial(self._send_async, client))

    # -- the logic of one batch (no I/O) ----------------------------------------------------------------
    def _policy(self) -> RetryPolicy:
        return RetryPolicy(self.max_retries, self.retry_backoff, self.retry_max_backoff, self.retry_max_wait)

    def _max_inputs(self) -> int:
        cap = self.max_inputs_per_request
        return min(cap, self._server_cap) if self._server_cap else cap

    def _counter(self) -> TokenCounter:
        return get_token_counter(self.token_encoding)

    def _flow(self, items: list[Any], role: Role) -> Flow[EmbedResult]:
        """Shape a batch into requests, send each through the retry loop, fold the answers into one vector per item."""
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
            cap = self._max_inputs()
            if len(chunk) > cap:  # a cap was learned since this chunk was planned
                pending.extendleft(reversed(pack(plan.costs, cap, self.max_request_tokens, chunk.start, chunk.stop)))
                continue
            inputs = plan.texts[chunk.start : chunk.stop]
            result = yield from request(inputs, policy, self._cooldown, type(self).__name__, logger)
            if isinstance(result, Split):
                self._learn_cap(result.cap, result.failure)
                pending.extendleft(
                    reversed(pack(plan.costs, result.cap, self.max_request_tokens, chunk.start, chunk.stop))
                )
                continue
            if isinstance(result, GiveUp):
                rows = result.failure.rows
                units = chunk if rows is None else [chunk.start + r for r in rows]
                failed = list(dict.fromkeys(items[keep[plan.owner[u]]] for u in units))
                error = self._final_error(result.failure, result.attempts, failed, policy)
                error.partial = obtained(plan, keep, unit_vectors, unit_done)
                raise error
            if unit_vectors is None:  # every answer has the model's one length (checked by _read)
                unit_vectors = np.empty((len(plan.texts), result.vectors.shape[1]), dtype=np.float32)
            unit_vectors[chunk.start : chunk.stop] = result.vectors
            unit_done[chunk.start : chunk.stop] = True
            tokens = None if tokens is None or result.tokens is None else tokens + result.tokens
        vectors = combine(len(texts), plan, unit_vectors) if unit_vectors is not None else None
        if len(keep) != len(items):
            vectors = yield from self._with_zeros(len(items), keep, vectors)
        if vectors is None:  # an empty batch (the pipeline never sends one)
            vectors = np.zeros((0, 0), dtype=np.float32)
        return EmbedResult(vectors, token_count=tokens if texts else 0, truncated=plan.truncated)

    def _with_zeros(
        self, n: int, keep: list[int], vectors: npt.NDArray[np.float32] | None
    ) -> Flow[npt.NDArray[np.float32]]:
        """Zero vectors for empty inputs (empty_inputs='zeros'); one probe learns the size if nothing else did."""
        facts = find("openai", self.model_name)  # the catalog's length of OpenAI's own models
        dim = (
            vectors.shape[1]
            if vectors is not None
            else self.dimensions or self.pipeline.known_size()[0] or (facts.dimensions if facts else None)
        )
        if dim is None:
            policy = self._policy()
            probe = yield from request([" "], policy, self._cooldown, type(self).__name__, logger)
            if not isinstance(probe, Success):  # a GiveUp (one input is never split)
                raise self._final_error(probe.failure, probe.attempts, [""], policy)
            dim = probe.vectors.shape[1]
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
        found += url_secrets(self.api_base) + url_secrets(getattr(self, "azure_endpoint", None))
        for name, value in (self.default_headers or {}).items():
            if is_sensitive_name(name):
                found += [value, value.partition(" ")[2]]  # "Bearer <token>": the token alone too
        return found

    def _scrub(self, text: str) -> str:
        """`text` without this model's credentials (see `redact.scrub`)."""
        return scrub(text, self._secrets())

    def _body(self, inputs: list[str], extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """The JSON body of one request (`extra`: fields for this server only, e.g. embedstack's input_type)."""
        body: dict[str, Any] = {"input": inputs, "model": self.model_name, "encoding_format": self.encoding_format}
        if self.dimensions is not None:
            body["dimensions"] = self.dimensions
        if extra:
            body.update(extra)
        if self.additional_kwargs:
            body.update(self.additional_kwargs)
        return body

    def _client_kwargs(self) -> dict[str, Any]:
        """The SDK client's arguments; checks the credentials (they may have been assigned since
        construction) and has every logger that could print them scrub its records."""
        check_credentials(self.api_key, "api_key", self.default_headers)
        protect_logs(self._secrets())
        base, query = split_query(self.api_base)  # the SDK would glue the path onto a query string
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
        """The sync SDK client (made on first use: the credentials are checked then)."""
        return self._clients.sync(lambda: self._make_client(require("openai", extra="openai"), is_async=False))

    async def _async_client(self) -> Any:
        """The async SDK client of the running event loop (see `client.Clients`)."""
        return await self._clients.of_running_loop(
            lambda: self._make_client(require("openai", extra="openai"), is_async=True)
        )

    def _send_sync(self, inputs: list[str], extra: dict[str, Any] | None = None) -> Outcome:
        """One request with the sync client, and its outcome."""
        body = self._body(inputs, extra)
        return self._read(post(self._sync_client(), body, self._secrets, self.timeout), len(inputs))

    async def _send_async(self, client: Any, inputs: list[str], extra: dict[str, Any] | None = None) -> Outcome:
        """One request with the async client of the running loop, and its outcome."""
        body = self._body(inputs, extra)
        return self._read(await apost(client, body, self._secrets, self.timeout), len(inputs))

    def _expected_length(self) -> tuple[int, str] | None:
        """The length every vector of an answer must have, and why; None before the first answer."""
        if self.dimensions is not None:
            return self.dimensions, (
                f"though dimensions={self.dimensions} was asked (this model or server may not support `dimensions`)"
            )
        known = self.pipeline.known_size()[0]  # what this model answered before (the pipeline's record)
        return None if known is None else (known, f"where this model's earlier answers had {known}")

    def _read(self, answer: bytes | Failure, n: int) -> Outcome:
        """A request's outcome: its failure, or its answer's vectors (`answers.read_answer`), which must
        also have the length of this model's first answer (another worker's may have come first)."""
        if isinstance(answer, Failure):
            return answer
        outcome = read_answer(answer, n, self._expected_length())
        if isinstance(outcome, Success):
            dim = outcome.vectors.shape[1]
            self.pipeline.learn_size(dim)  # the first answer's length stays
            known = self.pipeline.known_size()[0]
            if known != dim:
                return malformed({f"{dim} values where this model's earlier answers had {known}": range(n)}, n)
        return outcome

    def close(self) -> None:
        """Close the sync HTTP client (the next call opens a new one)."""
        self._clients.close()


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
        key = api_key if api_key is not None else env("OPENAI_API_KEY")
        if not key:
            raise ValueError(
                "No OpenAI API key: set the OPENAI_API_KEY environment variable or pass api_key=...; "
                "or use a local model instead: embed_model='local' (pip install 'embedstack[local]')."
            )
        check_credentials(key, "api_key" if api_key is not None else "OPENAI_API_KEY")
        # base_url: the OpenAI SDK's name for api_base (once ignored: requests went to api.openai.com)
        api_base = api_base or kwargs.pop("base_url", None)
        base = api_base or env("OPENAI_BASE_URL", "OPENAI_API_BASE") or DEFAULT_OPENAI_BASE
        super().__init__(model_name=model_name, dimensions=dimensions, api_key=key, api_base=base, **kwargs)

    @classmethod
    def class_name(cls) -> str:
        """Name stored in to_dict()."""
        return "OpenAIEmbedding"


class OpenAILikeEmbedding(_OpenAIBase):
    """Any server speaking /v1/embeddings (vLLM, TEI, Ollama, infinity, LM Studio, ...).

    No OpenAI limits are assumed (set max_input_tokens / max_request_tokens if the server has them);
    a server's batch cap is learned from its 413/422. The OpenAI key in the environment is never
    sent to it: pass api_key if the server wants one. Against `embedstack serve`, pass
    `send_input_type=True` so queries get the served model's query instruction (nothing is probed).
    """

    max_input_tokens: int | None = Field(
        default=None, gt=0, description="The model's context in tokens (None: not checked)."
    )
    max_request_tokens: int | None = Field(default=None, gt=0, description="Token budget of one request (None: none).")
    token_encoding: str | None = Field(
        default=None, description="tiktoken encoding for counting tokens (None: estimate)."
    )
    send_input_type: bool = Field(
        default=False,
        description='Send each batch\'s role as "input_type" ("query" or "document"): `embedstack serve` then applies '
        "the model's query or document instruction, as the model does in-process. Off by default: other servers "
        "may refuse the field.",
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
        api_base = api_base or kwargs.pop("base_url", None)  # the OpenAI SDK's name for it
        base = api_base or env("OPENAI_BASE_URL", "OPENAI_API_BASE")
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

    # -- the role on the wire (send_input_type) -----------------------------------------------------------
    # `embedstack serve` (and servers like it) applies a model's query or document instruction when a request
    # says input_type, so a query round-trips to the vector it has in-process. Whether to send the field is the
    # user's setting: no request is made to find out what the server is, and a server that refuses unknown
    # fields never sees it unless asked.
    def _embed_batch(self, items: list[Any], role: Role) -> EmbedResult:
        extra = _INPUT_TYPES.get(role) if self.send_input_type else None
        if extra is None:
            return super()._embed_batch(items, role)
        return drive_sync(self._flow(items, role), functools.partial(self._send_sync, extra=extra))

    async def _aembed_batch(self, items: list[Any], role: Role) -> EmbedResult:
        extra = _INPUT_TYPES.get(role) if self.send_input_type else None
        if extra is None:
            return await super()._aembed_batch(items, role)
        client = await self._async_client()
        return await drive_async(self._flow(items, role), functools.partial(self._send_async, client, extra=extra))


class AzureOpenAIEmbedding(_OpenAIBase):
    """OpenAI models deployed on Azure: endpoint, deployment, API version; an API key or an Entra ID token provider."""

    azure_endpoint: str | None = Field(default=None, description="https://<resource>.openai.azure.com")
    azure_deployment: str | None = Field(default=None, description="The deployment name (defaults to the model name).")
    api_version: str | None = Field(default=None, description="The Azure OpenAI API version.")
    azure_ad_token_provider: Callable[[], str] | None = Field(
        default=None, exclude=True, description="Returns an Entra ID token for each request (instead of an API key)."
    )

    _client_fields: ClassVar[frozenset[str]] = _OpenAIBase._client_fields | {
        "azure_endpoint",
        "azure_deployment",
        "api_version",
        "azure_ad_token_provider",
    }
    _server_fields: ClassVar[frozenset[str]] = _OpenAIBase._server_fields | {
        "azure_endpoint",
        "azure_deployment",
        "azure_ad_token_provider",
    }

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
        endpoint = azure_endpoint or kwargs.pop("api_base", None) or env("AZURE_OPENAI_ENDPOINT")
        if not endpoint:
            raise ValueError(
                "AzureOpenAIEmbedding needs azure_endpoint=... or the AZURE_OPENAI_ENDPOINT environment variable"
            )
        version = api_version or env("OPENAI_API_VERSION", "AZURE_OPENAI_API_VERSION")
        if not version:
            raise ValueError("AzureOpenAIEmbedding needs api_version=... (e.g. '2024-10-21') or OPENAI_API_VERSION")
        key = api_key if api_key is not None else (None if azure_ad_token_provider else env("AZURE_OPENAI_API_KEY"))
        if not key and azure_ad_token_provider is None:
            raise ValueError(
                "AzureOpenAIEmbedding needs api_key=..., the AZURE_OPENAI_API_KEY environment variable, "
                "or azure_ad_token_provider=..."
            )
        if key:
            check_credentials(key, "api_key" if api_key is not None else "AZURE_OPENAI_API_KEY")
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
        endpoint, query = split_query(self.azure_endpoint)
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
                check_header_value(token, "the token from azure_ad_token_provider", "return token.strip()")
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
