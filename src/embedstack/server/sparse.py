"""TEI's `POST /embed_sparse` for the served sparse models (SPLADE, BM25).

Request: `{"inputs": "text" | ["text", ...], "truncate": false, "model": NAME, "input_type": "document"}`
(`model` may be left out when one sparse model is served; `input_type` "query" embeds with the model's
query side, e.g. inference-free SPLADE's lookup table). Answer, as TEI's: one list per input of
`{"index": i, "value": v}` for its non-zero entries, indices ascending.

Each request takes the path of `/v1/embeddings` (`embedstack.server.serving`): cache hits at once, the
inputs tokenised once on arrival (exact counts for the budget and "truncate": false), the misses
merged with other clients' into the model's dynamic batches, run off the event loop; the server's limits
(body size, 2,048 inputs, the API key, the queue), error bodies, metrics, drain and startup loading apply.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from embedstack.server.errors import APIError
from embedstack.server.limits import MAX_INPUTS
from embedstack.server.serving import Served, gather
from embedstack.types import Role


class ServerState(Protocol):
    """What the sparse route reads of the app's state (`embedstack.server.app.ServerState`)."""

    @property
    def sparse(self) -> dict[str, Served]: ...

    @property
    def metrics(self) -> Any: ...

    @property
    def draining(self) -> bool: ...


__all__ = ["SparseRequest", "add_sparse_routes"]


class SparseRequest(BaseModel):
    """TEI's /embed_sparse request, plus the model's name and which side (query or document) to embed with."""

    model_config = ConfigDict(extra="ignore")

    inputs: str | list[str]
    truncate: bool = Field(default=False, description="Cut inputs over the model's token limit (TEI: refuse them).")
    model: str | None = Field(default=None, description="The sparse model (default: the only one served).")
    input_type: Literal["document", "query"] = "document"


def add_sparse_routes(app: FastAPI, state: ServerState) -> None:
    """Serve `state.sparse` ({name: served sparse model}) at POST /embed_sparse."""
    sparse = state.sparse

    @app.post("/embed_sparse", summary="Sparse vectors (TEI's API): [[{index, value}, ...], ...]")
    async def embed_sparse(body: SparseRequest, request: Request) -> Response:
        if state.draining:
            raise APIError(
                503, "the server is shutting down", code="server_shutting_down", headers={"retry-after": "1"}
            )
        served = _pick(sparse, body.model)
        served.check_ready("sparse model")
        texts = [body.inputs] if isinstance(body.inputs, str) else list(body.inputs)
        if not texts:
            raise APIError(400, "'inputs' is an empty array; send at least one text", param="inputs")
        if len(texts) > MAX_INPUTS:
            raise APIError(
                413, f"'inputs' has {len(texts)} items; at most {MAX_INPUTS} per request", code="too_many_inputs"
            )
        for i, text in enumerate(texts):
            if not text:
                raise APIError(400, f"'inputs[{i}]' is an empty string", param=f"inputs[{i}]", code="invalid_value")
        role = Role.QUERY if body.input_type == "query" else Role.TEXT
        rows, arrival = await gather(served, texts, role, body.truncate, "inputs", request.receive)
        state.metrics.tokens.labels(served.name).inc(int(sum(arrival.counts)))
        cut = sum(arrival.truncated)
        if cut:
            state.metrics.truncated.labels(served.name).inc(cut)
        answer = [[{"index": i, "value": v} for i, v in zip(row.indices.tolist(), row.values.tolist())] for row in rows]
        return Response(orjson.dumps(answer), media_type="application/json")


def _pick(sparse: dict[str, Served], name: str | None) -> Served:
    if not sparse:
        raise APIError(
            404,
            "this server serves no sparse model; serve one with --model NAME=bm25:<stats.json> or NAME=splade:<model>",
            code="model_not_found",
        )
    if name is None:
        if len(sparse) > 1:
            raise APIError(
                400, f"several sparse models are served ({', '.join(sparse)}); name one in 'model'", param="model"
            )
        return next(iter(sparse.values()))
    served = sparse.get(name)
    if served is None:
        names = ", ".join(repr(n) for n in sparse)
        raise APIError(
            404,
            f"the sparse model {name!r} is not served; this server serves {names}",
            param="model",
            code="model_not_found",
        )
    return served
