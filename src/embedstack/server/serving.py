"""One served model (dense or sparse) and what every request to it does: checks and cache hits, its inputs
tokenised once on arrival, the misses queued with their tokens, the wait for the batcher, and the warm-up.

The routes (`/v1/embeddings` in `app`, `/embed_sparse` in `sparse`) differ only in how they read the request
and write the answer; the path in between is this module's, through the model's public pipeline and provider.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from embedstack.base import EmbeddingModel
from embedstack.errors import BadVectorsError, InvalidInputError
from embedstack.server.batcher import Batcher, QueueFull, Ticket
from embedstack.server.errors import APIError
from embedstack.server.metrics import Metrics
from embedstack.server.tokens import Arrival, UsageCounter, counter_for
from embedstack.types import Role

__all__ = [
    "Known",
    "Served",
    "gather",
    "inline",
    "load",
    "make_served",
    "prepare",
    "queue_full",
    "refuse_truncated",
    "submit",
    "wait",
]

logger = logging.getLogger("embedstack.server")

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
#: A request with at most this many characters in all is tokenised and looked up on the loop (about 0.1 ms
#: with MiniLM's tokenizer, less than a thread hop costs under load); a larger one in a worker thread, so the
#: loop is never held (16 texts of 400 characters take ~1.9 ms to tokenise).
INLINE_CHARS = 256


def inline(items: Sequence[Any]) -> bool:
    """Whether a request's texts (or (query, document) pairs) are few enough characters to tokenise on the event
    loop (see `INLINE_CHARS`); images and anything else go to a thread."""
    total = 0
    for item in items:
        if isinstance(item, str):
            total += len(item)
        elif isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str) and isinstance(item[1], str):
            total += len(item[0]) + len(item[1])
        else:
            return False
        if total > INLINE_CHARS:
            return False
    return True


@dataclass
class Served:
    """One served model (`kind`: "dense" at /v1/embeddings, "sparse" at /embed_sparse): the model, its batcher
    and arrival tokeniser, and whether it is ready."""

    name: str
    model: EmbeddingModel
    batcher: Batcher
    counter: UsageCounter
    kind: str = "dense"
    created: int = field(default_factory=lambda: int(time.time()))
    ready: bool = False
    error: str | None = None
    dim: int | None = None
    #: The log already said that 'dimensions' cuts this model, which is not known to be Matryoshka-trained.
    truncation_noted: bool = False

    def check_ready(self, what: str = "model") -> None:
        """503 while loading or after a failed load."""
        if self.ready:
            return
        if self.error:
            raise APIError(503, f"the {what} {self.name!r} failed to load: {self.error}", code="model_failed")
        raise APIError(503, f"the {what} {self.name!r} is loading", code="model_loading", headers={"retry-after": "1"})


def make_served(
    name: str,
    model: EmbeddingModel,
    metrics: Metrics,
    kind: str,
    *,
    max_batch_tokens: int,
    max_wait_ms: float,
    max_queue: int,
) -> Served:
    """A served model with its batcher (through the model's pipeline) and arrival tokeniser."""
    batcher = Batcher(
        model.pipeline,
        name,
        metrics,
        max_batch_tokens=max_batch_tokens,
        max_wait=max_wait_ms / 1000,
        max_queue=max_queue,
        label="inputs" if kind == "sparse" else "input",
    )
    return Served(name, model, batcher, counter_for(model.provider), kind)


# -- loading ---------------------------------------------------------------------------------------------
async def load(models: list[Served], warm_up: bool) -> None:
    """Load and warm each model in a worker thread, in turn; each is ready (or failed) once done."""
    for served in models:
        if not warm_up:
            served.ready = True
            continue
        try:
            served.dim = await asyncio.to_thread(_warm_up, served)
        except Exception as e:
            served.error = f"{type(e).__name__}: {e}"
            logger.error("model %r failed to load: %s", served.name, served.error)
            continue
        served.ready = True
        logger.info("model %r ready (%s)", served.name, served.model.pipeline.output)


def _warm_up(served: Served) -> int | None:
    """Load the weights and the tokenizer and run the model once the way requests run it (tokenised on arrival,
    outside the cache), so the first request pays none of it; returns the vector length, which the model's
    pipeline then knows (cache hits are trusted from then on). A remote model sends no request before a
    client asks."""
    provider, pipeline = served.model.provider, served.model.pipeline
    provider.warm_up()
    arrival = served.counter.arrive(["warm-up"], Role.TEXT)
    if not provider.capabilities.remote:
        pipeline.with_options(cache=None).embed(["warm-up"], label="warm-up", prepared=arrival.prepared)
    return pipeline.known_size()[0]


# -- a request -------------------------------------------------------------------------------------------
@dataclass
class Known:
    """A request's inputs as known before the queue: the cache's rows and which inputs it had, and every
    input's tokens (exact where the model counts, its encoded form where it prepares)."""

    rows: Any
    found: npt.NDArray[np.bool_]
    arrival: Arrival

    @property
    def misses(self) -> list[int]:
        """Positions of the inputs the model must compute."""
        return np.flatnonzero(~self.found).tolist()  # type: ignore[no-any-return]


def prepare(served: Served, texts: list[str], role: Role, truncate: bool, label: str = "input") -> Known:
    """The request's CPU work before the queue: input checks, cache hits and each input tokenised once
    (hits too: usage counts them); with `truncate` false an over-long input is refused here."""
    pipeline = served.model.pipeline
    try:
        if pipeline.cache is None and role is not Role.IMAGE:
            pipeline.validate(texts, role, label)  # what cached() checks first
            rows, found = None, np.zeros(len(texts), dtype=bool)
        else:
            rows, found = pipeline.cached(texts, role, label)
        arrival = served.counter.arrive(texts, role)
    except (InvalidInputError, TypeError, ValueError) as e:
        index = getattr(e, "index", None)
        raise APIError(
            400, str(e), param=f"{label}[{index}]" if index is not None else label, code="invalid_value"
        ) from None
    if not truncate:
        refuse_truncated(arrival.truncated, label)
    return Known(rows, found, arrival)


def refuse_truncated(truncated: list[bool], label: str = "input") -> None:
    """400 naming the inputs over the model's token limit (a request that says "truncate": false)."""
    if not any(truncated):
        return
    over = [i for i, t in enumerate(truncated) if t]
    shown = ", ".join(f"{label}[{i}]" for i in over[:5]) + (f" and {len(over) - 5} more" if len(over) > 5 else "")
    raise APIError(
        400,
        f'{shown} {"is" if len(over) == 1 else "are"} over the model\'s token limit and "truncate" is false',
        param=f"{label}[{over[0]}]",
        code="context_length_exceeded",
    )


async def gather(served: Served, texts: list[str], role: Role, truncate: bool, label: str, receive: Receive) -> Any:
    """Every input's row in input order (cache hits at once, misses through the batcher) and the request's
    arrival tokens; counts the hits on /metrics."""
    batcher = served.batcher
    with batcher.arriving():  # an idle model waits (at most --max-wait-ms) for requests on their way
        if inline(texts):
            known = prepare(served, texts, role, truncate, label)
        else:
            known = await asyncio.to_thread(prepare, served, texts, role, truncate, label)
        misses = known.misses
        ticket = submit(served, texts, role, known, misses) if misses else None
    hits = len(texts) - len(misses)
    if hits:
        batcher.metrics.cache_hits.labels(served.name).inc(hits)
    rows = known.rows
    if ticket is not None:
        computed = await wait(served, receive, ticket)
        if rows is None and len(misses) == len(texts):
            rows = computed
        else:
            if rows is None:
                rows = served.model.pipeline.output.empty(len(texts), computed)
            rows[misses] = computed
    return rows, known.arrival


def submit(served: Served, texts: list[str], role: Role, known: Known, misses: list[int]) -> Ticket:
    """Queue the misses with their arrival tokens; 429 when the model's queue is full."""
    arrival = known.arrival
    prepared = arrival.prepared
    try:
        return served.batcher.submit(
            [texts[i] for i in misses],
            role,
            [arrival.counts[i] for i in misses],
            [prepared.values[i] for i in misses] if prepared is not None else None,
        )
    except QueueFull as e:
        raise queue_full(served.name, e, "inputs") from None


def queue_full(name: str, e: QueueFull, waiting: str) -> APIError:
    """The 429 for a model whose queue is full (`waiting`: what its queue holds, "inputs" or "pairs")."""
    return APIError(
        429,
        f"the queue of {name!r} is full ({e.depth} {waiting} waiting); retry after {e.retry_after}s",
        code="queue_full",
        headers={"retry-after": str(e.retry_after)},
    )


class _ClientGone(Exception):
    """The client disconnected while its request waited for the model."""


async def wait(served: Served, receive: Receive | None, ticket: Ticket) -> Any:
    """The model's rows for the misses. While some of them are still queued, a client that goes away
    cancels the request, so they are dropped before the model (once all run, nothing is left to save)."""
    gone: asyncio.Future[None] | None = None
    if ticket.waiting and receive is not None:
        gone = asyncio.ensure_future(_disconnected(receive))
        gone.add_done_callback(lambda g: _on_gone(g, ticket))
    try:
        await ticket.future
    except asyncio.CancelledError:
        served.batcher.cancel(ticket)
        raise
    except _ClientGone:
        served.batcher.cancel(ticket)
        raise APIError(499, "the client closed the request", code="client_closed_request") from None
    except APIError:
        raise
    except BadVectorsError as error:  # the model's fault, not the request's
        logger.error("model %r failed: %s", served.name, error)
        raise APIError(500, f"the model failed: {error}", code="model_error") from error
    except (InvalidInputError, TypeError, ValueError) as error:
        raise APIError(400, str(error), param="input", code="invalid_value") from error
    except Exception as error:
        logger.error("model %r failed: %s: %s", served.name, type(error).__name__, error)
        raise APIError(500, f"the model failed: {type(error).__name__}: {error}", code="model_error") from error
    finally:
        if gone is not None and not gone.done():
            gone.cancel()
    return ticket.rows()


def _on_gone(gone: asyncio.Future[None], ticket: Ticket) -> None:
    if not gone.cancelled() and gone.exception() is None and not ticket.future.done():
        ticket.future.set_exception(_ClientGone())


async def _disconnected(receive: Receive) -> None:
    """Returns when the client disconnects (the body was read already, so nothing else arrives)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
