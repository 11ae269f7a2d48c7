"""The FastAPI app: routes, the gate every request passes (size, key, metrics, server header) and the lifespan.

`POST /v1/embeddings` answers cache hits at once (`Pipeline.cached`), tokenises each input once on arrival
(`Provider.prepare`: exact counts for the budget and usage, the tokens queued with the input), hands the
misses to the model's `Batcher` (`embedstack.server.serving`), and writes the answer as bytes (orjson).
The route is a raw ASGI endpoint in the router (the request parsed by pydantic from the raw body, the
answer sent as two ASGI messages), without FastAPI's dependency layer; `_openapi` documents it for /docs.
Models (dense, sparse and rerankers) load in the background after start: `/health` says 503 until every
one is ready and again while draining. `POST /tokenize` answers each input's tokens in TEI's shape. With
`cors_allow_origins`, Starlette's CORS middleware wraps everything (preflight OPTIONS requests are
answered before the API key is asked for).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Route

from embedstack import __version__
from embedstack.base import BaseEmbedding, MultiModalEmbedding
from embedstack.providers.catalog import truncation_note
from embedstack.server.chunks import ROUTE as CHUNKS_ROUTE
from embedstack.server.chunks import add_chunk_routes
from embedstack.server.errors import APIError, error_body, install_handlers, invalid_request
from embedstack.server.limits import (
    DEFAULT_MAX_BATCH_TOKENS,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_QUEUE,
    DEFAULT_MAX_WAIT_MS,
    MAX_INPUTS,
    SERVER_HEADER,
)
from embedstack.server.metrics import CONTENT_TYPE, Metrics
from embedstack.server.rerank import RERANK_ROUTES, install_rerank, split_rerankers, start_rerank, stop_rerank
from embedstack.server.schemas import (
    EmbeddingRequest,
    EmbeddingResponse,
    ErrorBody,
    ModelCard,
    ModelList,
    SimpleToken,
    TokenizeRequest,
)
from embedstack.server.serving import Served, gather, inline, load, make_served
from embedstack.server.sparse import add_sparse_routes
from embedstack.sparse import BaseSparseEmbedding
from embedstack.types import Role
from embedstack.vectors import truncate_dimensions

__all__ = ["ServerState", "create_app"]

logger = logging.getLogger("embedstack.server")

_ROUTES = (
    frozenset(
        {"/v1/embeddings", "/v1/models", "/tokenize", "/embed_sparse", "/health", "/metrics", "/docs", "/openapi.json"}
    )
    | RERANK_ROUTES
    | {CHUNKS_ROUTE}
)
#: Routes the API key guards: the OpenAI API, the tokenizer, the sparse, late-chunking and rerank routes.
_GUARDED = ("/v1/", "/tokenize", "/embed_sparse", CHUNKS_ROUTE, *sorted(RERANK_ROUTES))
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in {
        400: "Invalid request",
        401: "Missing or wrong API key",
        404: "Unknown model",
        413: "Body too large, or more than 2,048 inputs",
        429: "Queue full (see Retry-After)",
        503: "Loading or draining (see Retry-After)",
    }.items()
}

Matrix = npt.NDArray[np.float32]


@dataclass
class ServerState:
    """What the routes share: the served models (dense, sparse, rerankers), the key, limits, metrics, and
    loading/draining."""

    models: dict[str, Served]
    metrics: Metrics
    api_key: str | None
    max_body_bytes: int
    warm_up: bool = True
    draining: bool = False
    loaded: asyncio.Event | None = None
    #: The sparse models, answered at /embed_sparse.
    sparse: dict[str, Served] = field(default_factory=dict)
    #: The rerankers ({name: RerankServed}), answered at /v1/rerank and /rerank (set by `install_rerank`).
    rerankers: Mapping[str, Any] = field(default_factory=dict)

    def entries(self) -> list[Any]:
        """Every served model of every kind (each has `name`, `ready`, `error` and `batcher`)."""
        return [*self.models.values(), *self.sparse.values(), *self.rerankers.values()]

    @property
    def ready(self) -> bool:
        """Every model (dense, sparse, reranker) loaded and not draining."""
        return not self.draining and all(m.ready for m in self.entries())


def _named(
    models: Mapping[str, Any] | Sequence[Any] | BaseEmbedding | BaseSparseEmbedding | str,
) -> tuple[dict[str, BaseEmbedding], dict[str, BaseSparseEmbedding]]:
    """The dense models ({name: model}) and the sparse ones (served at /embed_sparse)."""
    from embedstack.registry import resolve_embed_model

    if isinstance(models, (BaseEmbedding, BaseSparseEmbedding, str)):
        models = [models]
    if isinstance(models, Mapping):
        pairs = [(str(k), resolve_embed_model(v)) for k, v in models.items()]
    else:
        resolved = [resolve_embed_model(m) for m in models]
        pairs = [(m.model_name, m) for m in resolved]
    named: dict[str, BaseEmbedding] = {}
    sparse: dict[str, BaseSparseEmbedding] = {}
    for name, model in pairs:
        if name in named or name in sparse:
            raise ValueError(f"two models are served as {name!r}; name them: --model NAME=SPEC")
        if isinstance(model, BaseSparseEmbedding):
            sparse[name] = model
        else:
            named[name] = model
    if not named and not sparse:
        raise ValueError("no model to serve")
    return named, sparse


def create_app(
    models: Mapping[str, Any] | Sequence[Any] | BaseEmbedding | BaseSparseEmbedding | str,
    *,
    api_key: str | None = None,
    max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
    max_wait_ms: float = DEFAULT_MAX_WAIT_MS,
    max_queue: int = DEFAULT_MAX_QUEUE,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    warm_up: bool = True,
    cors_allow_origins: Sequence[str] | None = None,
) -> FastAPI:
    """The ASGI app serving `models` ({name: model or spec}, a list named by model_name, or one model); sparse
    models ("splade:...", "bm25:<stats.json>", a BaseSparseEmbedding) are served at TEI's POST /embed_sparse.

    `api_key`: the bearer key /v1/* requires (None: none). Batching: at most `max_batch_tokens` tokens
    per model call, an idle model waits up to `max_wait_ms` for requests already arriving, at most
    `max_queue` inputs wait per model (then 429). `warm_up`: load each model and run it once before /health says ready.
    `cors_allow_origins`: origins whose browser pages may call the API ("*": any; None or empty: no CORS headers,
    the default); preflight OPTIONS requests are answered for them.
    """
    for name, value in (("max_batch_tokens", max_batch_tokens), ("max_queue", max_queue)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    if max_wait_ms < 0:
        raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
    if max_body_bytes < 1024:
        raise ValueError(f"max_body_bytes must be at least 1024, got {max_body_bytes}")
    metrics = Metrics()
    models, rerankers = split_rerankers(models)  # "rerank:<path>" models: server/rerank.py
    dense, sparse = _named(models) if models or not rerankers else ({}, {})
    limits: dict[str, Any] = {"max_batch_tokens": max_batch_tokens, "max_wait_ms": max_wait_ms, "max_queue": max_queue}
    state = ServerState(
        {name: make_served(name, model, metrics, "dense", **limits) for name, model in dense.items()},
        metrics,
        api_key or None,
        max_body_bytes,
        warm_up,
        sparse={name: make_served(name, model, metrics, "sparse", **limits) for name, model in sparse.items()},
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.loaded = asyncio.Event()
        for m in (*state.models.values(), *state.sparse.values()):
            m.batcher.start()
            m.ready = m.ready or not state.warm_up  # nothing to load first: ready from the first request
        loader = asyncio.create_task(_load_all(state), name="embedstack-load-models")
        rerank_loader = start_rerank(app, state.warm_up)
        try:
            yield
        finally:
            state.draining = True
            for task in (loader, rerank_loader):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            await stop_rerank(app, APIError(503, "the server is shutting down", code="server_shutting_down"))
            for m in (*state.models.values(), *state.sparse.values()):
                await m.batcher.stop(APIError(503, "the server is shutting down", code="server_shutting_down"))

    app = FastAPI(
        title="embedstack",
        version=__version__,
        summary="OpenAI-compatible embeddings from embedstack models, with dynamic batching.",
        lifespan=lifespan,
    )
    app.state.embedstack = state
    install_handlers(app)
    _routes(app, state)
    add_sparse_routes(app, state)
    add_chunk_routes(app, state)  # late chunking: server/chunks.py
    state.rerankers = install_rerank(
        app, state, rerankers, max_batch_tokens=max_batch_tokens, max_wait_ms=max_wait_ms, max_queue=max_queue
    )
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    app.add_middleware(_Gate, state=state)
    origins = _check_origins(cors_allow_origins)
    if origins:  # added last: the outermost layer, so a preflight never meets the key check
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["*"],
            expose_headers=[SERVER_HEADER, "retry-after"],
            max_age=600,
        )
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema of its routes, plus POST /v1/embeddings (a raw ASGI endpoint FastAPI does not see)."""
    if app.openapi_schema:
        return app.openapi_schema
    from fastapi.openapi.utils import get_openapi

    schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    template = "#/components/schemas/{model}"
    for model in (EmbeddingRequest, EmbeddingResponse, ErrorBody):
        body = model.model_json_schema(ref_template=template)
        components.update(body.pop("$defs", {}))
        components[model.__name__] = body

    def content(name: str) -> dict[str, Any]:
        return {"application/json": {"schema": {"$ref": template.format(model=name)}}}

    responses: dict[str, Any] = {"200": {"description": "The embeddings", "content": content("EmbeddingResponse")}}
    for code, info in _ERRORS.items():
        responses[str(code)] = {"description": info["description"], "content": content("ErrorBody")}
    schema["paths"]["/v1/embeddings"] = {
        "post": {
            "summary": "Create embeddings (OpenAI's API, plus input_type and truncate)",
            "operationId": "embeddings_v1_embeddings_post",
            "requestBody": {"required": True, "content": content("EmbeddingRequest")},
            "responses": responses,
        }
    }
    app.openapi_schema = schema
    return schema


def _check_origins(origins: Sequence[str] | None) -> list[str]:
    """The CORS origins, each "*" or scheme://host[:port] (no path, no trailing slash: browsers send none)."""
    if isinstance(origins, str):
        origins = [origins]
    checked: list[str] = []
    for origin in origins or ():
        scheme, sep, rest = origin.partition("://")
        if origin != "*" and (not sep or scheme not in ("http", "https") or not rest or "/" in rest):
            raise ValueError(
                f"CORS origin {origin!r} is not '*' or scheme://host[:port] (e.g. https://app.example.com, "
                "no path or trailing slash)"
            )
        checked.append(origin)
    return checked


# -- loading -------------------------------------------------------------------------------------------
async def _load_all(state: ServerState) -> None:
    """Load and warm the dense and sparse models (the rerankers load in a task of their own)."""
    await load([*state.models.values(), *state.sparse.values()], state.warm_up)
    assert state.loaded is not None
    state.loaded.set()


# -- the gate: body size, key, metrics, server header ---------------------------------------------------
def _too_large(limit: int) -> str:
    return f"the request body is over the server's limit of {limit} bytes (--max-body-bytes)"


class _TooLarge(StarletteHTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, _too_large(limit))


Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class _Gate:
    """Pure ASGI middleware: 413 on a body over the limit, 401 without the key on /v1/*, the server header
    and route/status/latency metrics on every answer."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], state: ServerState) -> None:
        self.app = app
        self.state = state
        self.header = (SERVER_HEADER.encode(), __version__.encode())
        self.key = state.api_key.encode() if state.api_key else None
        self._observers: dict[tuple[str, int], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        path = scope["path"]
        root = scope.get("root_path", "")
        if root and path.startswith(root):  # mounted under a prefix (Starlette keeps it in the path)
            path = path[len(root) :] or "/"
        route = path if path in _ROUTES else ("/v1/models/{id}" if path.startswith("/v1/models/") else "other")
        status = 500
        header = self.header

        async def send_with_header(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        try:
            refusal = self._refusal(scope, path)
            if refusal is not None:
                await _send_json(send_with_header, refusal)
            else:
                await self.app(scope, self._limited(receive), send_with_header)
        finally:
            observers = self._observers.get((route, status))
            if observers is None:
                metrics = self.state.metrics
                observers = metrics.requests.labels(route, str(status)), metrics.latency.labels(route)
                self._observers[(route, status)] = observers
            observers[0].inc()
            observers[1].observe(time.perf_counter() - t0)

    def _refusal(self, scope: Scope, path: str) -> APIError | None:
        headers = dict(scope.get("headers") or ())
        length = headers.get(b"content-length")
        limit = self.state.max_body_bytes
        if length is not None and length.isdigit() and int(length) > limit:
            return APIError(413, _too_large(limit), code="request_too_large")
        if self.key is not None and path.startswith(_GUARDED):
            auth = headers.get(b"authorization", b"")
            scheme, _, given = auth.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(), self.key):
                return APIError(
                    401,
                    "missing or wrong API key: send 'Authorization: Bearer <key>'",
                    code="invalid_api_key",
                    headers={"www-authenticate": "Bearer"},
                )
        return None

    def _limited(self, receive: Receive) -> Receive:
        limit = self.state.max_body_bytes
        seen = 0

        async def receive_limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _TooLarge(limit)
            return message

        return receive_limited


class _EmbeddingsEndpoint:
    """POST /v1/embeddings as a raw ASGI endpoint of the router."""

    def __init__(self, state: ServerState) -> None:
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _serve_embeddings(self.state, receive, send)


async def _serve_embeddings(state: ServerState, receive: Receive, send: Send) -> None:
    """POST /v1/embeddings: the raw body validated by the request model, the answer (or the OpenAI error body)
    sent as bytes."""
    try:
        raw = await _read_body(receive, state.max_body_bytes)
        try:
            body = EmbeddingRequest.model_validate_json(raw)
        except ValidationError as e:
            raise invalid_request(e.errors(include_url=False)) from None
        out = await _embeddings(state, body, receive)
    except APIError as e:
        await _send_json(send, e)
        return
    except _TooLarge:  # the gate's byte count on the way in
        await _send_json(send, APIError(413, _too_large(state.max_body_bytes), code="request_too_large"))
        return
    except Exception as e:  # a bug: the same answer as FastAPI's handler gives
        logger.exception("internal error on POST /v1/embeddings")
        await _send_json(send, APIError(500, f"internal server error ({type(e).__name__}); see the server log"))
        return
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(out)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": out})


async def _read_body(receive: Receive, limit: int) -> bytes:
    """The whole request body; 413 past `limit` bytes, 499 if the client leaves first."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise APIError(499, "the client closed the request", code="client_closed_request")
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise APIError(413, _too_large(limit), code="request_too_large")
            chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _send_json(send: Send, error: APIError) -> None:
    body = orjson.dumps(error_body(error.status, error.message, error.param, error.code))
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.encode(), v.encode()) for k, v in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# -- routes ----------------------------------------------------------------------------------------------
def _routes(app: FastAPI, state: ServerState) -> None:
    # POST /v1/embeddings: a raw ASGI endpoint in the router (the body parsed by pydantic from the raw bytes, the
    # answer written as bytes), documented in the OpenAPI schema by `_openapi`.
    app.router.routes.insert(0, Route("/v1/embeddings", endpoint=_EmbeddingsEndpoint(state), methods=["POST"]))

    @app.get("/v1/models", response_model=ModelList, summary="The served models")
    async def list_models() -> ModelList:
        return ModelList(data=[_card(m) for m in state.entries()])

    @app.get("/v1/models/{model_id:path}", response_model=ModelCard, responses={404: _ERRORS[404]})
    async def get_model(model_id: str) -> ModelCard:
        for served in state.entries():
            if served.name == model_id:
                return _card(served)
        raise _unknown_model(state, model_id)

    @app.post(
        "/tokenize",
        response_model=list[list[SimpleToken]],
        responses={k: _ERRORS[k] for k in (400, 401, 404, 413)},
        summary="The tokens of each input, as the model's tokenizer makes them (TEI's /tokenize)",
    )
    async def tokenize(body: TokenizeRequest) -> Response:
        served = _tokenizing_model(state, body.model)
        texts = [body.inputs] if isinstance(body.inputs, str) else body.inputs
        if not texts:
            raise APIError(400, "'inputs' is an empty array", param="inputs", code="invalid_value")
        if len(texts) > MAX_INPUTS:
            message = f"'inputs' has {len(texts)} items; at most {MAX_INPUTS} per request"
            raise APIError(413, message, param="inputs", code="too_many_inputs")
        count = served.counter.tokens
        if inline(texts):
            found = count(texts, body.add_special_tokens)
        else:  # a large request tokenises in a worker thread, never on the loop
            found = await asyncio.to_thread(count, texts, body.add_special_tokens)
        if found is None:
            raise APIError(
                400,
                f"the model {served.name!r} has no tokenizer this server can show (a local model with a fast "
                "tokenizer has one)",
                param="model",
                code="tokenizer_unavailable",
            )
        return Response(orjson.dumps(found), media_type="application/json")

    @app.get(
        "/health",
        summary="200 when every model (embedding, sparse, reranker) is ready; 503 while loading, after a model "
        "failed to load, or while draining",
    )
    async def health() -> JSONResponse:
        entries = state.entries()
        models = {m.name: ("ready" if m.ready else "failed: " + m.error if m.error else "loading") for m in entries}
        if state.draining:
            status = "draining"
        elif any(m.error for m in entries):
            status = "failed"
        else:
            status = "ok" if state.ready else "loading"
        code = 200 if status == "ok" else 503
        headers = {"retry-after": "1"} if status == "loading" else None
        return JSONResponse({"status": status, "models": models}, status_code=code, headers=headers)

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def metrics() -> Response:
        for m in state.entries():
            state.metrics.queue_depth.labels(m.name).set(m.batcher.depth)
        return Response(state.metrics.render(), media_type=CONTENT_TYPE)


def _tokenizing_model(state: ServerState, name: str | None) -> Served:
    """The model whose tokenizer /tokenize uses: the named one, or the only one served."""
    if state.draining:
        raise APIError(503, "the server is shutting down", code="server_shutting_down", headers={"retry-after": "1"})
    if name is None:
        if len(state.models) == 1:
            return next(iter(state.models.values()))
        served = ", ".join(repr(n) for n in state.models)
        raise APIError(400, f"this server serves {served}: name one in 'model'", param="model", code="invalid_value")
    found = state.models.get(name)
    if found is None:
        raise _unknown_model(state, name)
    return found


def _card(served: Any) -> ModelCard:
    """A served model of any kind (dense, sparse, reranker) as /v1/models lists it."""
    return ModelCard(id=served.name, created=served.created, kind=served.kind)


def _unknown_model(state: ServerState, name: str) -> APIError:
    served = ", ".join(repr(n) for n in state.models)
    return APIError(
        404,
        f"the model {name!r} does not exist on this server; it serves {served}",
        param="model",
        code="model_not_found",
    )


def _inputs(body: EmbeddingRequest) -> list[str]:
    raw = body.input
    if isinstance(raw, str):
        raw = [raw]
    if not raw:
        raise APIError(400, "'input' is an empty array; send at least one text", param="input", code="invalid_value")
    if not isinstance(raw[0], str):
        raise APIError(
            400,
            "token-id arrays are not supported: send texts (LangChain: OpenAIEmbeddings(..., "
            "check_embedding_ctx_length=False))",
            param="input",
            code="unsupported_input",
        )
    texts: list[str] = raw  # type: ignore[assignment]
    if len(texts) > MAX_INPUTS:
        raise APIError(
            413,
            f"'input' has {len(texts)} items; at most {MAX_INPUTS} per request",
            param="input",
            code="too_many_inputs",
        )
    for i, t in enumerate(texts):
        if not t:
            raise APIError(400, f"'input[{i}]' is an empty string", param=f"input[{i}]", code="invalid_value")
    return texts


_ROLES = {"query": Role.QUERY, "document": Role.TEXT, "image": Role.IMAGE}


def _check_images(texts: list[str], served: Served) -> None:
    if not isinstance(served.model, MultiModalEmbedding):
        raise APIError(
            400, f"the model {served.name!r} does not embed images", param="input_type", code="unsupported_input"
        )
    for i, t in enumerate(texts):
        head = t[:256].lower()
        if not head.startswith("data:image/") or ";base64," not in head:
            raise APIError(
                400,
                f"'input[{i}]' is not a data:image/...;base64, URI; images travel inline (URLs are never fetched)",
                param=f"input[{i}]",
                code="invalid_value",
            )


async def _embeddings(state: ServerState, body: EmbeddingRequest, receive: Receive) -> bytes:
    """The answer's body for a validated request (APIError for anything refused)."""
    if state.draining:
        raise APIError(503, "the server is shutting down", code="server_shutting_down", headers={"retry-after": "1"})
    served = state.models.get(body.model)
    if served is None:
        raise _unknown_model(state, body.model)
    served.check_ready()
    texts = _inputs(body)
    role = _ROLES[body.input_type]
    if role is Role.IMAGE:
        _check_images(texts, served)
    if body.dimensions is not None and (body.dimensions < 1 or (served.dim and body.dimensions > served.dim)):
        raise APIError(
            400,
            f"'dimensions' must be between 1 and {served.dim or 'the model dimension'}, got {body.dimensions}",
            param="dimensions",
            code="invalid_value",
        )
    rows, arrival = await gather(served, texts, role, body.truncate, "input", receive)
    if body.dimensions is not None:
        _note_truncation(served, body.dimensions, rows.shape[1])
        rows = _shorten(rows, body.dimensions)
    metrics = state.metrics
    tokens = int(sum(arrival.counts)) if role is not Role.IMAGE else 0
    metrics.tokens.labels(served.name).inc(tokens)
    cut = sum(arrival.truncated)
    if cut:
        metrics.truncated.labels(served.name).inc(cut)
    return _encode(rows, served.name, tokens, body.encoding_format)


def _note_truncation(served: Served, dimensions: int, source_dim: int) -> None:
    """Log once per served model that `dimensions` cuts a model not known to be Matryoshka-trained (as the embed
    job warns): the answer is what OpenAI's `dimensions` means, but its retrieval quality may drop."""
    if served.truncation_noted:
        return
    catalog = served.model.provider.capabilities.catalog
    note = truncation_note(catalog, getattr(served.model, "model_name", None), dimensions, source_dim)
    if note is not None:
        served.truncation_noted = True
        logger.warning("model %r: 'dimensions': %s", served.name, note)


def _shorten(rows: Matrix, dimensions: int) -> Matrix:
    """The first `dimensions` values of each vector, re-normalised to unit length."""
    if dimensions > rows.shape[1]:
        raise APIError(
            400,
            f"'dimensions' must be between 1 and {rows.shape[1]}, got {dimensions}",
            param="dimensions",
            code="invalid_value",
        )
    return truncate_dimensions(rows, dimensions)


def _encode(rows: Matrix, model: str, tokens: int, encoding_format: str) -> bytes:
    """The response body: OpenAI's shape, floats as float32's shortest form, or base64 of little-endian float32."""
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    if encoding_format == "base64":
        raw = rows.astype("<f4", copy=False).tobytes()
        width = rows.shape[1] * 4
        data: list[dict[str, Any]] = [
            {
                "object": "embedding",
                "index": i,
                "embedding": base64.b64encode(raw[i * width : (i + 1) * width]).decode(),
            }
            for i in range(rows.shape[0])
        ]
    else:
        data = [{"object": "embedding", "index": i, "embedding": rows[i]} for i in range(rows.shape[0])]
    return orjson.dumps(
        {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        },
        option=orjson.OPT_SERIALIZE_NUMPY,
    )
