"""Retries for remote APIs (embeddings, rerankers): classify a failed attempt, the policy, and the one retry loop.

A failed attempt is classified into a `Failure`; `RetryPolicy` says how long to wait and when to
stop; `request` is the one place that decides, for one request, whether to retry, wait, split or
give up. Retried: 408, 409, 429, 5xx, timeouts, dropped connections and malformed answers; never
400, 401, 403, 404, 422 (a 413/422 that says the batch is too big is split instead, not retried as
is). The logic is a generator of `Call`s and `Sleep`s (no I/O), driven by `drive_sync` (blocking
calls) or `drive_async` (the event loop), the way httpx drives its auth flows.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar, Union, cast

import numpy as np
import numpy.typing as npt

from embedstack.errors import EmbeddingAPIError
from embedstack.providers.remote.redact import scrub

__all__ = [
    "Call",
    "Cooldown",
    "EmbeddingAPIError",
    "Failure",
    "Flow",
    "GiveUp",
    "Outcome",
    "RetryPolicy",
    "Sleep",
    "Split",
    "Success",
    "drive_async",
    "drive_sync",
    "is_retryable_status",
    "malformed",
    "parse_batch_cap",
    "parse_retry_after",
    "request",
    "server_message",
    "status_failure",
]

logger = logging.getLogger("embedstack.remote")

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


class Cooldown:
    """A pause every worker of one model observes: a 429 means the limit they share is reached."""

    def __init__(self) -> None:
        self.until = 0.0  # time.monotonic(): meaningful in this process only

    def remaining(self) -> float:
        """Seconds left to wait (0 or less: none)."""
        return self.until - time.monotonic()

    def extend(self, seconds: float) -> None:
        """Make every worker wait at least `seconds` from now."""
        self.until = max(self.until, time.monotonic() + seconds)


# -- the steps of a flow, and what a request comes to -------------------------------------------------
class Sleep(NamedTuple):
    """Wait this long (the driver sends back None)."""

    seconds: float


class Call(NamedTuple):
    """Send one request with these inputs (texts, or (query, document) pairs; the driver sends back its `Outcome`)."""

    inputs: list[Any]


class Success(NamedTuple):
    """A usable answer: one vector (or score) per input, in input order, and the tokens the server counted."""

    vectors: npt.NDArray[np.float32]
    tokens: int | None


class Split(NamedTuple):
    """The server refused the request as too big: send its inputs again in requests of at most `cap`."""

    cap: int
    failure: Failure
    attempts: int


class GiveUp(NamedTuple):
    """The request failed for good (not retryable, or out of retries)."""

    failure: Failure
    attempts: int


Outcome = Union[Success, Failure]


class _Malformed(Exception):
    """An unusable 200 answer: what is wrong, with the request positions each problem hits (whole: all)."""

    def __init__(self, problems: Mapping[str, Any], whole: bool = False) -> None:
        super().__init__()
        self.problems = {why: sorted(set(rows)) for why, rows in problems.items()}
        hit = {r for rows in self.problems.values() for r in rows}
        self.rows: tuple[int, ...] | None = None if whole else tuple(sorted(hit))

    def failure(self, n: int) -> Failure:
        """The retryable failure it is, in an answer to `n` inputs."""
        if self.rows is None:
            why = "; ".join(self.problems)
        else:
            why = "; ".join(f"{why}: {len(rows)} of {n} inputs" for why, rows in self.problems.items())
        return Failure("malformed", f"malformed response body: {why}", True, rows=self.rows)


def malformed(problems: Mapping[str, Any], n: int, whole: bool = False) -> Failure:
    """The retryable failure of an unusable answer to `n` inputs: what is wrong → the request positions it hits."""
    return _Malformed(problems, whole).failure(n)


_T = TypeVar("_T")
#: A flow yields calls and sleeps, is sent each call's outcome (None after a sleep) and returns its result.
Flow = Generator[Union[Call, Sleep], Union[Outcome, None], _T]


def request(
    inputs: list[Any], policy: RetryPolicy, cooldown: Cooldown, who: str, log: logging.Logger | None = None
) -> Flow[Union[Success, Split, GiveUp]]:
    """Send `inputs` until they succeed, the server asks for smaller requests, or the policy gives up.

    The one place that decides retry, backoff and failure (use it with `yield from`): waits out the
    model's cooldown before each attempt, backs off per `policy` (a 429 pauses every worker of the
    model), and logs each retry under `who` (on `log`, by default the "embedstack.remote" logger).
    """
    attempts = 0
    while True:
        wait = cooldown.remaining()
        if wait > 0:
            yield Sleep(wait)
        attempts += 1
        outcome = cast(Outcome, (yield Call(inputs)))
        if isinstance(outcome, Success):
            return outcome
        if outcome.batch_cap is not None and len(inputs) > 1:
            cap = outcome.batch_cap if 0 < outcome.batch_cap < len(inputs) else max(1, len(inputs) // 2)
            return Split(cap, outcome, attempts)
        if policy.gives_up(attempts, outcome):
            return GiveUp(outcome, attempts)
        delay = policy.delay(attempts, outcome.retry_after)
        if outcome.status == 429:  # the limit is shared: pause every worker of this model
            cooldown.extend(delay)
        (log or logger).info(
            "%s: %s; retry %d/%d in %.2fs (%d inputs)",
            who,
            outcome.describe(),
            attempts,
            policy.max_retries,
            delay,
            len(inputs),
        )
        yield Sleep(delay)


def drive_sync(flow: Flow[_T], send: Callable[[list[Any]], Outcome]) -> _T:
    """Drive `flow` with blocking requests (`send`) and time.sleep."""
    try:
        step = next(flow)
        while True:
            if isinstance(step, Sleep):
                time.sleep(step.seconds)
                step = flow.send(None)
            else:
                step = flow.send(send(step.inputs))
    except StopIteration as stop:
        return cast(_T, stop.value)


async def drive_async(flow: Flow[_T], send: Callable[[list[Any]], Awaitable[Outcome]]) -> _T:
    """Drive `flow` on the event loop with async requests (`send`) and asyncio.sleep."""
    try:
        step = next(flow)
        while True:
            if isinstance(step, Sleep):
                await asyncio.sleep(step.seconds)
                step = flow.send(None)
            else:
                step = flow.send(await send(step.inputs))
    except StopIteration as stop:
        return cast(_T, stop.value)
