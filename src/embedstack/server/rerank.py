"""Reranking routes: `POST /v1/rerank` (Cohere's and Jina's shape) and `POST /rerank` (TEI's), beside embeddings.

A model served as `NAME=rerank:<name or path>` is a `CrossEncoderReranker`; `NAME=cohere:<model>[@<url>]`,
`jina:<model>` or `tei:<url>` a `RemoteReranker` (this server then proxies another). A local reranker's pairs are
tokenised once, on arrival (`Provider.prepare`), and go through the same dynamic batcher as embedding inputs with
their tokens (each pair costs its exact token count against --max-batch-tokens; the batch reuses the tokens; a pair
asked for by two concurrent requests is scored once), with the server's key, limits, error bodies, metrics,
drain and /health. The batcher scores raw logits (the reranker's `with_activation("identity")` twin, so its cache
keys are the logits'); each route then applies its activation: `/v1/rerank` the model's default (what
`CrossEncoderReranker.rank` returns: sentence-transformers' default), `/rerank` TEI's (sigmoid, or the raw
logits with `raw_scores: true`). A remote reranker in Cohere's shape has no logits, only its server's scores:
`/v1/rerank` passes them on and `/rerank` refuses it (400) rather than return numbers of another kind.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, Union

import numpy as np
from fastapi import FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field

from embedstack.errors import InvalidInputError
from embedstack.provider import Prepared
from embedstack.rerank import BaseReranker, activate, is_rerank_spec, resolve_rerank_model
from embedstack.server.batcher import Batcher, QueueFull, Ticket
from embedstack.server.errors import APIError
from embedstack.server.limits import MAX_INPUTS
from embedstack.server.metrics import Metrics
from embedstack.server.serving import inline, queue_full
from embedstack.types import Role


class ServerState(Protocol):
    """What the rerank routes read of the app's state (`embedstack.server.app.ServerState`)."""

    @property
    def models(self) -> Mapping[str, Any]: ...

    @property
    def metrics(self) -> Metrics: ...

    @property
    def draining(self) -> bool: ...


__all__ = [
    "RERANK_ROUTES",
    "CohereRerankRequest",
    "CohereRerankResponse",
    "RerankServed",
    "TEIRank",
    "TEIRerankRequest",
    "install_rerank",
    "split_rerankers",
    "start_rerank",
    "stop_rerank",
]

RERANK_ROUTES = frozenset({"/v1/rerank", "/rerank"})


# -- request and response shapes ---------------------------------------------------------------------------
class _Text(BaseModel):
    text: str


class CohereRerankRequest(BaseModel):
    """POST /v1/rerank: Cohere's (v1/v2) and Jina's request; unknown fields are ignored."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(description="A reranker this server serves (NAME of --model NAME=rerank:<path>).")
    query: str = Field(description="The search query.")
    documents: list[Union[str, _Text]] = Field(
        description="Up to 2,048 documents: strings, or objects with a 'text' field (Jina, Cohere v1)."
    )
    top_n: int | None = Field(default=None, ge=0, description="Results to return, best first (default: all).")
    return_documents: bool = Field(default=False, description="Include each result's document ({'text': ...}).")


class CohereResult(BaseModel):
    """One document's rank: its index in `documents`, its score, and (with return_documents) the document."""

    index: int
    relevance_score: float
    document: _Text | None = None


class CohereRerankResponse(BaseModel):
    """Cohere's and Jina's answer: results best first, with usage (Jina) and billed units (Cohere)."""

    id: str
    model: str
    results: list[CohereResult]
    usage: dict[str, int]
    meta: dict[str, Any]


class TEIRerankRequest(BaseModel):
    """POST /rerank: text-embeddings-inference's request (`model`: an embedstack extension, needed only when
    several rerankers are served)."""

    model_config = ConfigDict(extra="ignore")

    query: str
    texts: list[str] = Field(description="Up to 2,048 texts to rank.")
    raw_scores: bool = Field(default=False, description="Raw logits instead of sigmoid(logits).")
    return_text: bool = Field(default=False, description="Include each text.")
    truncate: bool = Field(default=False, description="Truncate pairs over the model's limit (false: 400).")
    model: str | None = Field(default=None, description="embedstack extension: which reranker (default: the only one).")


class TEIRank(BaseModel):
    """One text's rank, best first."""

    index: int
    score: float
    text: str | None = None


# -- serving -------------------------------------------------------------------------------------------------
@dataclass
class RerankServed:
    """One served reranker: the model, its raw-logit twin, the batcher, and whether it is loaded."""

    name: str
    reranker: BaseReranker
    raw: BaseReranker
    batcher: Batcher
    created: int = field(default_factory=lambda: int(time.time()))
    ready: bool = False
    error: str | None = None
    #: What /v1/models says it serves.
    kind: str = "rerank"


def split_rerankers(
    models: Mapping[str, Any] | Sequence[Any] | Any,
) -> tuple[Mapping[str, Any] | Sequence[Any] | Any, dict[str, BaseReranker]]:
    """The embedding models (as given, without the rerankers) and the rerankers by name
    (reranker specs such as "rerank:<path>" and BaseReranker objects; unnamed ones by their model_name)."""
    rerankers: dict[str, BaseReranker] = {}

    def add(name: str, spec: Any) -> None:
        if name in rerankers:
            raise ValueError(f"two rerankers are served as {name!r}; name them: --model NAME=rerank:<path>")
        rerankers[name] = resolve_rerank_model(spec)

    if isinstance(models, Mapping):
        rest: dict[str, Any] = {}
        for name, spec in models.items():
            if is_rerank_spec(spec):
                add(str(name), spec)
            else:
                rest[str(name)] = spec
        return rest, rerankers
    if isinstance(models, (str, BaseReranker)) or not isinstance(models, Sequence):
        models = [models]
    others = []
    for spec in models:
        if is_rerank_spec(spec):
            reranker = resolve_rerank_model(spec)
            add(reranker.model_name, reranker)
        else:
            others.append(spec)
    return others, rerankers


def install_rerank(
    app: FastAPI,
    state: ServerState,
    rerankers: Mapping[str, BaseReranker],
    *,
    max_batch_tokens: int,
    max_wait_ms: float,
    max_queue: int,
) -> dict[str, RerankServed]:
    """Batchers for `rerankers` and the two routes on `app` (kept in `app.state.embedstack_rerank`)."""
    served: dict[str, RerankServed] = {}
    for name, reranker in rerankers.items():
        if name in state.models:
            raise ValueError(f"{name!r} names an embedding model and a reranker; give them different names")
        # the raw logits, activated per route; a reranker whose logits are unknown serves its own scores
        raw = reranker.with_activation("identity") if reranker.activation is not None else reranker
        batcher = Batcher(  # the pairs through the raw twin's pipeline
            raw.pipeline,
            name,
            state.metrics,
            max_batch_tokens=max_batch_tokens,
            max_wait=max_wait_ms / 1000,
            max_queue=max_queue,
            label="pairs",
        )
        served[name] = RerankServed(name, reranker, raw, batcher)
    app.state.embedstack_rerank = served
    if not served:
        return served

    @app.post("/v1/rerank", response_model=CohereRerankResponse, summary="Rerank documents (Cohere's and Jina's API)")
    async def rerank_cohere(body: CohereRerankRequest, request: Request) -> CohereRerankResponse:
        model = _find(state, served, body.model)
        docs = [d if isinstance(d, str) else d.text for d in body.documents]
        logits, tokens = await _logits(state, model, body.query, docs, "documents", truncate=True)
        activation = model.reranker.activation
        scores = activate(logits, activation) if activation is not None else logits
        order = np.argsort(-scores, kind="stable").tolist()[: body.top_n]
        results = [
            CohereResult(
                index=i,
                relevance_score=float(scores[i]),
                document=_Text(text=docs[i]) if body.return_documents else None,
            )
            for i in order
        ]
        return CohereRerankResponse(
            id=str(uuid.uuid4()),
            model=model.name,
            results=results,
            usage={"total_tokens": tokens},
            meta={"billed_units": {"search_units": 1}, "api_version": {"version": "2"}},
        )

    @app.post("/rerank", response_model=list[TEIRank], summary="Rerank texts (text-embeddings-inference's API)")
    async def rerank_tei(body: TEIRerankRequest, request: Request) -> list[TEIRank]:
        if body.model is None and len(served) > 1:
            raise APIError(
                400,
                f"this server serves several rerankers ({', '.join(map(repr, served))}); send 'model'",
                param="model",
                code="invalid_value",
            )
        model = _find(state, served, body.model or next(iter(served)))
        if model.reranker.activation is None:
            raise APIError(
                400,
                f"the reranker {model.name!r} returns its server's relevance scores, not logits, so it cannot "
                "answer in TEI's shape (sigmoid or raw scores); use POST /v1/rerank",
                param="model",
                code="invalid_value",
            )
        logits, _ = await _logits(state, model, body.query, body.texts, "texts", truncate=body.truncate)
        scores = logits if body.raw_scores else activate(logits, "sigmoid")
        order = np.argsort(-scores, kind="stable").tolist()
        return [
            TEIRank(index=i, score=float(scores[i]), text=body.texts[i] if body.return_text else None) for i in order
        ]

    return served


def _find(state: ServerState, served: Mapping[str, RerankServed], name: str) -> RerankServed:
    if state.draining:
        raise APIError(503, "the server is shutting down", code="server_shutting_down", headers={"retry-after": "1"})
    model = served.get(name)
    if model is None:
        names = ", ".join(repr(n) for n in served)
        raise APIError(
            404,
            f"the reranker {name!r} does not exist on this server; it serves {names}",
            param="model",
            code="model_not_found",
        )
    if not model.ready:
        if model.error:
            raise APIError(503, f"the reranker {name!r} failed to load: {model.error}", code="model_failed")
        raise APIError(503, f"the reranker {name!r} is loading", code="model_loading", headers={"retry-after": "1"})
    return model


def _check(query: str, docs: list[str], label: str) -> list[tuple[str, str]]:
    if not docs:
        raise APIError(400, f"'{label}' is an empty array; send at least one", param=label, code="invalid_value")
    if len(docs) > MAX_INPUTS:
        raise APIError(
            413, f"{len(docs)} {label} in one request; at most {MAX_INPUTS}", param=label, code="too_many_inputs"
        )
    from embedstack.pipeline import check_texts

    for value, name in (([query], "query"), (docs, label)):
        try:
            check_texts(value, name)
        except (TypeError, InvalidInputError) as e:
            message = str(e).replace("query[0]", "query")
            raise APIError(400, message, param=name, code="invalid_value") from None
    return [(query, d) for d in docs]


def _tokenized(model: RerankServed, pairs: list[tuple[str, str]]) -> Prepared:
    """Each pair tokenised once, on arrival: its exact count (the budget, usage, "truncate") and its tokens, which
    the batch reuses (`Provider.prepare`; the pair tokenizer never waits for a running batch)."""
    provider = model.raw.pipeline.provider
    prepared = provider.prepare(pairs, Role.PAIR)
    if prepared is None:  # a provider that only counts
        counted = provider.count_tokens(pairs, Role.PAIR) or (
            # a remote reranker: its own server counts and cuts; the batch budget takes an estimate (4 bytes a token)
            [(len(q.encode()) + len(d.encode())) // 4 + 4 for q, d in pairs],
            [False] * len(pairs),
        )
        return Prepared([None] * len(pairs), list(counted[0]), list(counted[1]))
    return prepared


async def _logits(
    state: ServerState, model: RerankServed, query: str, docs: list[str], label: str, *, truncate: bool
) -> tuple[Any, int]:
    """Each pair's raw logit (cache hits at once, misses through the batcher) and the request's tokens."""
    pairs = _check(query, docs, label)
    batcher = model.batcher
    with batcher.arriving():
        if inline(pairs):
            tokenized = _tokenized(model, pairs)
        else:
            tokenized = await asyncio.to_thread(_tokenized, model, pairs)
        counts, cut = tokenized.token_counts, tokenized.truncated
        if not truncate and any(cut):
            first = cut.index(True)
            raise APIError(
                400,
                f"{label}[{first}] with the query is over {model.name!r}'s limit of "
                f"{model.reranker.max_input_tokens()} tokens; send truncate=true or a shorter text",
                param=label,
                code="input_too_long",
            )
        known = model.raw.pipeline.cached(pairs, Role.PAIR, label=label)
        misses = np.flatnonzero(~known.found).tolist()
        ticket = _submit(model, [pairs[i] for i in misses], tokenized.take(misses)) if misses else None
    hits = len(pairs) - len(misses)
    if hits:
        state.metrics.cache_hits.labels(model.name).inc(hits)
    rows = known.values
    if ticket is not None:
        computed = await _wait(model, ticket)
        if rows is None:
            rows = np.zeros((len(pairs), computed.shape[1]), np.float32)
        rows[misses] = computed
    assert rows is not None
    tokens = int(sum(counts))
    state.metrics.tokens.labels(model.name).inc(tokens)
    return np.asarray(rows[:, 0], dtype=np.float32), tokens


def _submit(model: RerankServed, pairs: list[tuple[str, str]], tokenized: Prepared) -> Ticket:
    values = tokenized.values if any(v is not None for v in tokenized.values) else None
    try:
        return model.batcher.submit(pairs, Role.PAIR, tokenized.token_counts, values)
    except QueueFull as e:
        raise queue_full(model.name, e, "pairs") from None


async def _wait(model: RerankServed, ticket: Ticket) -> Any:
    try:
        await ticket.future
    except asyncio.CancelledError:
        model.batcher.cancel(ticket)
        raise
    except APIError:
        raise
    except (InvalidInputError, TypeError, ValueError) as error:
        raise APIError(400, str(error), code="invalid_value") from error
    except Exception as error:
        raise APIError(500, f"the reranker failed: {type(error).__name__}: {error}", code="model_error") from error
    return ticket.rows()


# -- lifecycle (called from the app's lifespan) ----------------------------------------------------------------
def start_rerank(app: FastAPI, warm_up: bool) -> asyncio.Task[None] | None:
    """Start each reranker's batcher, and load the rerankers in the background (ready once loaded)."""
    served: dict[str, RerankServed] = getattr(app.state, "embedstack_rerank", {})
    for model in served.values():
        model.batcher.start()
        model.ready = model.ready or not warm_up  # nothing to load first: ready from the first request
    if not served:
        return None

    async def load() -> None:
        for model in served.values():
            if warm_up:
                try:
                    await asyncio.to_thread(_warm, model)
                except Exception as e:
                    model.error = f"{type(e).__name__}: {e}"
                    continue
            model.ready = True

    return asyncio.create_task(load(), name="embedstack-load-rerankers")


def _warm(model: RerankServed) -> None:
    model.raw.load()
    if not model.raw.pipeline.provider.capabilities.remote:  # a remote server is not sent a warm-up request
        model.raw.pipeline.with_options(cache=None).embed([("warm-up", "warm-up")], Role.PAIR, label="warm-up")


async def stop_rerank(app: FastAPI, error: BaseException) -> None:
    """Stop each reranker's batcher; waiting requests fail with `error`."""
    served: dict[str, RerankServed] = getattr(app.state, "embedstack_rerank", {})
    for model in served.values():
        await model.batcher.stop(error)
