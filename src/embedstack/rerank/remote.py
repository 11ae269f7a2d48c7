"""RemoteReranker: a reranking API behind the reranker API, with the OpenAI client's retries, limits and key handling.

Two request shapes cover the common servers:

- `protocol="cohere"`: Cohere's and Jina's `POST .../rerank` `{model, query, documents, top_n}` →
  `{results: [{index, relevance_score}]}` (also vLLM, infinity and `embedstack serve`'s `/v1/rerank`);
  the scores are the server's own (`activation` is None: its logits are not known).
- `protocol="tei"`: text-embeddings-inference's `POST /rerank` `{query, texts, raw_scores: true}` →
  `[{index, score}]` (also `embedstack serve`'s `/rerank`); the raw logits come back and `activation`
  ("sigmoid" by default, as TEI's own) is applied here, as `CrossEncoderReranker` applies it.

One pipeline batch is grouped by query and cut into requests of at most `max_documents_per_request` documents;
each goes through the one retry loop (`embedstack.providers.remote.retry.request`: 408/409/429/5xx, timeouts,
dropped connections and malformed answers retried with backoff, Retry-After honoured, a 429 pausing every
worker; 400/401/403/404/422 never retried; a server's batch cap stated in a 413/422 learned). An answer is
used only when it scores every document sent exactly once with a finite number; otherwise it is retried and
finally refused, naming the pairs. Every request has a deadline (`timeout`, the whole answer included), so no
call hangs. The key (`api_key`, a password or credential parameter in the URL, auth-like headers) is never in
repr, identity, descriptor, events, logs or errors (`embedstack.providers.remote.redact`). Needs httpx
(`pip install 'embedstack[remote]'`).
"""

from __future__ import annotations

import asyncio
import copy
import functools
import json
import logging
import math
import time
from collections import deque
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import SecretStr

from embedstack._optional import require
from embedstack.errors import EmbeddingAPIError
from embedstack.outputs import OutputKind, Scores
from embedstack.pipeline import Pipeline
from embedstack.provider import BatchOutput, Capabilities, ProviderBase
from embedstack.providers.remote.clients import Clients
from embedstack.providers.remote.credentials import check_credentials, url_secrets
from embedstack.providers.remote.redact import is_sensitive_name, protect_logs, scrub
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
    malformed,
    request,
    status_failure,
)
from embedstack.rerank._model import ACTIVATIONS, activate
from embedstack.rerank.base import BaseReranker
from embedstack.types import Batch, PartialResult, Role

if TYPE_CHECKING:
    from embedstack.callbacks.manager import CallbackManager
    from embedstack.kvstore.base import BaseKVStore

__all__ = ["DEFAULT_MAX_DOCUMENTS", "PROTOCOLS", "RemoteReranker"]

logger = logging.getLogger("embedstack.rerank")

PROTOCOLS = ("cohere", "tei")
#: Documents per request unless set: Cohere's documented cap is 1,000; TEI's default --max-client-batch-size
#: is 32 (a larger cap a server states in a 413/422 is learned either way).
DEFAULT_MAX_DOCUMENTS = {"cohere": 1000, "tei": 32}
#: Pairs per pipeline batch (a failed batch loses little; the cache fills as a long job runs).
DEFAULT_REMOTE_BATCH_SIZE = 256
#: Requests in flight at once on the async path.
DEFAULT_ASYNC_WORKERS = 8
_SCORE_FIELD = {"cohere": "relevance_score", "tei": "score"}


class _RemoteProvider(ProviderBase):
    """The remote reranker as the pipeline sees it: Role.PAIR items in, one score each out."""

    capabilities = Capabilities(
        remote=True, parallel_sync_batches=True, default_async_workers=DEFAULT_ASYNC_WORKERS, max_concurrency=None
    )

    def __init__(self, model: RemoteReranker) -> None:
        self.model = model

    @property
    def output(self) -> OutputKind:
        return Scores()

    @property
    def preferred_batch_size(self) -> int:
        return self.model.batch_size

    def identity(self) -> Mapping[str, Any]:
        return self.model.identity()

    def descriptor(self) -> Mapping[str, Any]:
        return self.model.descriptor()

    def check(self, items: Sequence[Any], role: Role, label: str, offset: int) -> None:
        if role is not Role.PAIR:
            raise TypeError(f"RemoteReranker scores (query, document) pairs (Role.PAIR), not {role.value} items")

    def embed(self, batch: Batch) -> Any:
        try:
            return drive_sync(self.model._flow(batch.items), self.model._send_sync)
        except EmbeddingAPIError as e:
            e.locate(batch)
            raise

    async def aembed(self, batch: Batch) -> Any:
        model = self.model
        client = await model._clients.of_running_loop(functools.partial(model._make_client, True))
        try:
            return await drive_async(model._flow(batch.items), functools.partial(model._send_async, client))
        except EmbeddingAPIError as e:
            e.locate(batch)
            raise


class RemoteReranker(BaseReranker):
    """A reranking API: `url` is the endpoint that is POSTed to (e.g. `https://api.cohere.com/v2/rerank`,
    `http://127.0.0.1:8080/rerank`); `protocol` its request shape, "cohere" (Cohere, Jina, vLLM, infinity,
    `embedstack serve`'s /v1/rerank; needs `model`) or "tei" (text-embeddings-inference's /rerank).

    `resolve_rerank_model("cohere:<model>")`, `"jina:<model>"`, `"cohere:<model>@<url>"` or `"tei:<url>"` makes
    one with the right URL and key (see `embedstack.rerank.resolve`). `api_key` is sent as a Bearer token;
    `activation` (tei only) is applied to the raw logits the server returns.
    """

    def __init__(
        self,
        url: str,
        *,
        protocol: str = "cohere",
        model: str | None = None,
        api_key: str | SecretStr | None = None,
        activation: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 8,
        retry_backoff: float = 0.5,
        retry_max_backoff: float = 30.0,
        retry_max_wait: float = 120.0,
        max_documents_per_request: int | None = None,
        batch_size: int = DEFAULT_REMOTE_BATCH_SIZE,
        default_headers: Mapping[str, str] | None = None,
        cache: BaseKVStore | None = None,
        callback_manager: CallbackManager | None = None,
        key_hint: str = "api_key=...",
    ) -> None:
        check_credentials(api_key, "api_key", dict(default_headers) if default_headers else None)  # never quoted
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {protocol!r}; use one of {list(PROTOCOLS)}")
        if not isinstance(url, str) or not url.lower().startswith(("http://", "https://")):
            shown = scrub(str(url), url_secrets(url) if isinstance(url, str) else [])
            raise ValueError(f"url must be an http:// or https:// endpoint, got {shown!r}")
        if protocol == "cohere" and not model:
            raise ValueError(
                "protocol='cohere' needs model=... (the name the server knows the reranker by): Cohere's and "
                "Jina's shape sends it with every request"
            )
        if protocol == "cohere" and activation is not None:
            raise ValueError(
                f"activation={activation!r} cannot apply with protocol='cohere': its servers return their own "
                "relevance_score, not the logits; use protocol='tei' (raw logits) for another activation"
            )
        if protocol == "tei":
            activation = activation or "sigmoid"
            if activation not in ACTIVATIONS:
                raise ValueError(f"unknown activation {activation!r}; use one of {list(ACTIVATIONS)}")
        for name, value in (
            ("max_retries", max_retries),
            ("batch_size", batch_size),
            ("max_documents_per_request", max_documents_per_request),
        ):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise ValueError(f"{name} must be a non-negative int, got {value!r}")
        if batch_size < 1 or (max_documents_per_request is not None and max_documents_per_request < 1):
            raise ValueError("batch_size and max_documents_per_request must be at least 1")
        for name, number in (
            ("timeout", timeout),
            ("retry_backoff", retry_backoff),
            ("retry_max_backoff", retry_max_backoff),
            ("retry_max_wait", retry_max_wait),
        ):
            if not isinstance(number, (int, float)) or isinstance(number, bool) or not number >= 0:
                raise ValueError(f"{name} must be a non-negative number of seconds, got {number!r}")
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, got {timeout!r}")
        self.url = url
        self.protocol = protocol
        self.model = model
        self.model_name = model or self._scrub_with(url, api_key, default_headers)
        self.api_key = SecretStr(api_key) if isinstance(api_key, str) else api_key
        self.activation = activation
        self.timeout = float(timeout)
        self.max_retries = max_retries
        self.retry_backoff = float(retry_backoff)
        self.retry_max_backoff = float(retry_max_backoff)
        self.retry_max_wait = float(retry_max_wait)
        self.max_documents_per_request = max_documents_per_request or DEFAULT_MAX_DOCUMENTS[protocol]
        self.batch_size = batch_size
        self.default_headers = dict(default_headers or {})
        self.key_hint = key_hint
        #: Per-process state shared with `with_activation` twins: the HTTP clients, the pause after a 429,
        #: and the documents-per-request cap the server stated in a 413/422 (learned again if needed).
        self._clients = Clients()
        self._cooldown = Cooldown()
        self._server_cap: list[int] = []
        self.pipeline = Pipeline(_RemoteProvider(self), cache, callback_manager=callback_manager)

    @staticmethod
    def _scrub_with(text: str, api_key: Any, headers: Mapping[str, str] | None) -> str:
        key = api_key.get_secret_value() if isinstance(api_key, SecretStr) else api_key
        return scrub(text, [key, *url_secrets(text), *(headers or {}).values()])

    def __repr__(self) -> str:
        return f"RemoteReranker({self.model_name!r}, protocol={self.protocol!r}, url={self.endpoint()!r})"

    # -- what it is ------------------------------------------------------------------------------
    def endpoint(self) -> str:
        """The URL as shown: credentials masked."""
        return self._scrub(self.url)

    def identity(self) -> dict[str, Any]:
        """The server (URL, credentials masked), the request shape, the model and the activation."""
        return {
            "py_class": "embedstack.rerank.RemoteReranker",
            "protocol": self.protocol,
            "url": self.endpoint(),
            "model": self.model,
            "activation": self.activation,
        }

    def descriptor(self) -> dict[str, Any]:
        """The reranker as events, logs and adapters' to_dict show it: never a secret."""
        return {
            "class_name": "RemoteReranker",
            "model_name": self.model_name,
            "protocol": self.protocol,
            "url": self.endpoint(),
            "activation": self.activation,
        }

    def with_activation(self, activation: str) -> RemoteReranker:
        """A twin applying another activation to the server's raw logits (protocol 'tei' only), sharing the
        clients and the cooldown, with its own pipeline (the same cache, other keys)."""
        if self.protocol != "tei":
            raise ValueError(
                f"{self.model_name!r} returns its server's relevance scores (protocol='cohere'), not logits; "
                "another activation needs protocol='tei'"
            )
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; use one of {list(ACTIVATIONS)}")
        twin = copy.copy(self)
        twin.activation = activation
        twin.pipeline = Pipeline(
            _RemoteProvider(twin), self.pipeline.cache, callback_manager=self.pipeline.callback_manager
        )
        return twin

    def close(self) -> None:
        """Close the sync HTTP client (the next call opens a new one)."""
        self._clients.close()

    # -- credentials -----------------------------------------------------------------------------
    def _secrets(self) -> list[str | None]:
        """Every credential this reranker holds: the key, URL passwords and query keys, auth-like header values."""
        found: list[str | None] = [self.api_key.get_secret_value() if self.api_key else None]
        found += url_secrets(self.url)
        for name, value in self.default_headers.items():
            if is_sensitive_name(name):
                found += [value, value.partition(" ")[2]]  # "Bearer <token>": the token alone too
        return found

    def _scrub(self, text: str) -> str:
        return scrub(text, self._secrets())

    def _headers(self) -> dict[str, str]:
        headers = {"accept": "application/json", "content-type": "application/json"}
        if self.api_key is not None:
            headers["authorization"] = f"Bearer {self.api_key.get_secret_value()}"
        headers.update(self.default_headers)
        return headers

    def _make_client(self, is_async: bool) -> Any:
        """An httpx client: every credential checked again (fields may have been assigned) and registered with
        the log scrubber before any request (httpx logs URLs)."""
        httpx = require("httpx", extra="remote")
        check_credentials(self.api_key, "api_key", self.default_headers)
        protect_logs(self._secrets())
        kw: dict[str, Any] = {"timeout": httpx.Timeout(self.timeout), "headers": self._headers()}
        return httpx.AsyncClient(**kw) if is_async else httpx.Client(**kw)

    # -- one batch's requests (no I/O) -----------------------------------------------------------
    def _policy(self) -> RetryPolicy:
        return RetryPolicy(self.max_retries, self.retry_backoff, self.retry_max_backoff, self.retry_max_wait)

    def _cap(self) -> int:
        cap = self.max_documents_per_request
        return min(cap, *self._server_cap) if self._server_cap else cap

    def _flow(self, pairs: list[tuple[str, str]]) -> Flow[BatchOutput]:
        """Requests of one query's documents each (at most the cap), through the retry loop; the scores in order."""
        policy = self._policy()
        scores = np.zeros((len(pairs), 1), dtype=np.float32)
        done = np.zeros(len(pairs), dtype=bool)
        groups: dict[str, list[int]] = {}
        for i, (query, _) in enumerate(pairs):
            groups.setdefault(query, []).append(i)
        pending = deque(rows[s : s + self._cap()] for rows in groups.values() for s in range(0, len(rows), self._cap()))
        while pending:
            rows = pending.popleft()
            cap = self._cap()
            if len(rows) > cap:  # a cap was learned since these were planned
                pending.extendleft(reversed([rows[s : s + cap] for s in range(0, len(rows), cap)]))
                continue
            result = yield from request([pairs[i] for i in rows], policy, self._cooldown, "RemoteReranker", logger)
            if isinstance(result, Split):
                self._learn_cap(result.cap, result.failure)
                pending.extendleft(reversed([rows[s : s + result.cap] for s in range(0, len(rows), result.cap)]))
                continue
            if isinstance(result, GiveUp):
                bad = rows if result.failure.rows is None else [rows[r] for r in result.failure.rows]
                error = self._final_error(result.failure, result.attempts, [pairs[i] for i in bad], policy)
                if done.any():
                    error.partial = PartialResult(np.flatnonzero(done).tolist(), scores[done])
                raise error
            values = result.vectors[:, 0]
            if self.activation is not None:
                values = activate(values, self.activation)
            scores[rows, 0] = values
            done[rows] = True
        return BatchOutput(scores)

    def _learn_cap(self, cap: int, failure: Failure) -> None:
        if not self._server_cap or cap < min(self._server_cap):
            self._server_cap[:] = [cap]
            logger.warning(
                "RemoteReranker: the server refused a request (%s); sending at most %d documents per request "
                "from now on (set max_documents_per_request=%d to start there)",
                failure.describe(),
                cap,
                cap,
            )

    def _final_error(
        self, failure: Failure, attempts: int, pairs: list[tuple[str, str]], policy: RetryPolicy
    ) -> EmbeddingAPIError:
        hint = ""
        if failure.status in (401, 403):
            hint = f"the server refused the credentials: check the API key ({self.key_hint})"
        elif failure.status == 404:
            hint = f"check the URL and the model name {self.model!r}" if self.model else "check the URL"
        elif failure.retry_after is not None and failure.retry_after > policy.max_wait:
            hint = f"the server asked to wait {failure.retry_after:.0f}s, more than retry_max_wait={policy.max_wait:g}s"
        elif failure.kind == "timeout":
            hint = f"raise timeout= (now {self.timeout:g}s) if the server is slow"
        return EmbeddingAPIError(
            "RemoteReranker",
            failure,
            attempts,
            pairs,
            endpoint=self.endpoint(),
            hint=self._scrub(hint),
            action="reranking",
        )

    # -- I/O -----------------------------------------------------------------------------------
    def _body(self, pairs: list[tuple[str, str]]) -> bytes:
        documents = [d for _, d in pairs]
        body: dict[str, Any]
        if self.protocol == "cohere":
            body = {"model": self.model, "query": pairs[0][0], "documents": documents, "top_n": len(documents)}
            body["return_documents"] = False
        else:
            # truncate: pairs over the model's limit are cut, as a local cross-encoder cuts them
            body = {"query": pairs[0][0], "texts": documents, "raw_scores": True, "truncate": True}
            if self.model:
                body["model"] = self.model
        return json.dumps(body).encode("utf-8")

    def _failure(self, httpx: Any, e: Exception) -> Failure:
        if isinstance(e, httpx.TimeoutException):
            return Failure("timeout", f"no answer within {self.timeout:g}s", True)
        if isinstance(e, httpx.TransportError):
            return Failure("connection", self._scrub(f"{type(e).__name__}: {e}")[:300], True)
        return Failure("error", self._scrub(f"{type(e).__name__}: {e}")[:300], False)

    def _send_sync(self, pairs: list[tuple[str, str]]) -> Outcome:
        """One request with the sync client; the whole answer must come within `timeout`."""
        httpx = require("httpx", extra="remote")
        client = self._clients.sync(functools.partial(self._make_client, False))
        deadline = time.monotonic() + self.timeout
        try:
            with client.stream("POST", self.url, content=self._body(pairs)) as response:
                chunks = []
                for chunk in response.iter_bytes():
                    chunks.append(chunk)
                    if time.monotonic() > deadline:  # a server that trickles bytes never holds a call
                        return Failure("timeout", f"no whole answer within {self.timeout:g}s", True)
                return self._read(response.status_code, response.headers, b"".join(chunks), len(pairs))
        except httpx.HTTPError as e:
            return self._failure(httpx, e)

    async def _send_async(self, client: Any, pairs: list[tuple[str, str]]) -> Outcome:
        """One request with the async client of the running loop, within `timeout` in all."""
        httpx = require("httpx", extra="remote")

        async def send() -> Outcome:
            response = await client.post(self.url, content=self._body(pairs))
            return self._read(response.status_code, response.headers, response.content, len(pairs))

        try:
            return await asyncio.wait_for(send(), self.timeout)
        except asyncio.TimeoutError:
            return Failure("timeout", f"no whole answer within {self.timeout:g}s", True)
        except httpx.HTTPError as e:
            return self._failure(httpx, e)

    def _read(self, status: int, headers: Any, content: bytes, n: int) -> Outcome:
        """A request's outcome: the failure an error status is, or the scores of a 200 answer."""
        if not 200 <= status < 300:
            return status_failure(status, content, dict(headers), self._secrets())
        return read_scores(content, n, self.protocol)


def read_scores(content: bytes, n: int, protocol: str) -> Outcome:
    """The (n, 1) float32 scores of a 200 answer to `n` documents, placed by `index`, and the tokens it counts;
    a retryable failure when the answer is unusable: not JSON, not the shape, a document scored twice or not
    at all, an index out of range, a score that is not a finite number (as float32)."""
    try:
        body = json.loads(content)
    except (ValueError, RecursionError):
        return malformed({f"not JSON ({len(content)} bytes)": ()}, n, whole=True)
    if protocol == "cohere":
        results = body.get("results") if isinstance(body, dict) else None
        if not isinstance(results, list):
            return malformed({"no 'results' list": ()}, n, whole=True)
    else:
        results = body
        if not isinstance(results, list):
            return malformed({f"a JSON {type(body).__name__}, not a list of ranks": ()}, n, whole=True)
    field = _SCORE_FIELD[protocol]
    scores = np.zeros((n, 1), dtype=np.float32)
    seen = np.zeros(n, dtype=bool)
    problems: dict[str, list[int]] = {}
    for pos, entry in enumerate(results):
        index = entry.get("index") if isinstance(entry, dict) else None
        if type(index) is not int or not 0 <= index < n:
            return malformed({f"result {pos} has index {index!r}, not one of 0..{n - 1}": ()}, n, whole=True)
        if seen[index]:
            problems.setdefault("the same index on two results", []).append(index)
            continue
        seen[index] = True
        value = entry.get(field)
        if type(value) not in (int, float):
            kind = "missing" if field not in entry else f"{type(value).__name__} {value!r}"[:40]
            problems.setdefault(f"'{field}' is not a number", []).append(index)
            logger.debug("rerank answer: %s at index %d is %s", field, index, kind)
            continue
        try:
            number = float(value)
        except OverflowError:  # an integer beyond float64
            number = math.inf
        with np.errstate(over="ignore", invalid="ignore"):
            as32 = np.float32(number)
        if not np.isfinite(as32):
            problems.setdefault("NaN or infinite scores (as float32)", []).append(index)
            continue
        scores[index, 0] = as32
    missing = np.flatnonzero(~seen).tolist()
    if missing:
        problems["no score in the answer"] = missing
    if problems:
        return malformed(problems, n)
    tokens = None
    usage = body.get("usage") if isinstance(body, dict) else None
    if isinstance(usage, dict) and type(usage.get("total_tokens")) is int:
        tokens = usage["total_tokens"]
    return Success(scores, tokens)
