"""`POST /embed_chunks`: late chunking over HTTP, for the served local models.

Request: `{"model": NAME, "input": "the document", "spans": [[start, end], ...]}` (character offsets into the
document; `model` may be left out when one model is served). Answer, in OpenAI's list shape: one
`{"object": "embedding", "index": i, "span": [start, end], "embedding": [...]}` per span, each the mean of the
span's token vectors with the whole document encoded once (`HuggingFaceEmbedding.embed_chunks`), and `usage`
with the document's tokens. The document runs off the event loop, one at a time per model beside its batches;
it is not cached. The server's key, body limit, error bodies and route metrics apply as on /v1/embeddings.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from fastapi import FastAPI
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from embedstack.errors import InvalidInputError
from embedstack.server.errors import APIError
from embedstack.types import Role

__all__ = ["ROUTE", "ChunksRequest", "add_chunk_routes"]

ROUTE = "/embed_chunks"


class ChunksRequest(BaseModel):
    """A document and the character spans of its chunks."""

    model_config = ConfigDict(extra="ignore")

    input: str = Field(description="The whole document.")
    spans: list[tuple[int, int]] = Field(description="(start, end) character offsets of each chunk in the document.")
    model: str | None = Field(default=None, description="The served model (default: the only one served).")


def add_chunk_routes(app: FastAPI, state: Any) -> None:
    """Serve late chunking at POST /embed_chunks for `state.models` ({name: served model}) that can do it."""

    @app.post(ROUTE, summary="Late chunking: a vector per span of one document, the document encoded once")
    async def embed_chunks(body: ChunksRequest) -> Response:
        name, served = _pick(state, body.model)
        model = served.model
        late = getattr(model, "aembed_chunks", None)
        if late is None:
            raise APIError(
                400,
                f"the model {name!r} ({type(model).__name__}) does not do late chunking; serve a local model "
                "(local, local:<name or path>)",
                param="model",
                code="invalid_value",
            )
        if not served.ready:
            raise APIError(503, f"the model {name!r} is loading", code="model_loading", headers={"retry-after": "1"})
        if not body.input:
            raise APIError(400, "'input' is an empty string; send the document", param="input", code="invalid_value")
        try:
            vectors = await late(body.input, body.spans)
        except (ValueError, TypeError, InvalidInputError) as e:
            message = str(e)
            param = message.split(" ", 1)[0] if message.startswith("spans[") else "input"
            raise APIError(400, message, param=param, code="invalid_value") from None
        # a long document: counted in a worker thread, never on the loop
        counted = await asyncio.to_thread(model.provider.count_tokens, [body.input], Role.TEXT)
        tokens = int(counted[0][0]) if counted is not None else 0
        answer = {
            "object": "list",
            "model": name,
            "data": [
                {"object": "embedding", "index": i, "span": list(span), "embedding": row}
                for i, (span, row) in enumerate(zip(body.spans, vectors.tolist()))
            ],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return Response(orjson.dumps(answer), media_type="application/json")


def _pick(state: Any, name: str | None) -> tuple[str, Any]:
    if state.draining:
        raise APIError(503, "the server is shutting down", code="server_shutting_down", headers={"retry-after": "1"})
    models = state.models
    if name is None:
        if len(models) == 1:
            return next(iter(models.items()))  # type: ignore[no-any-return]
        served = ", ".join(repr(n) for n in models) or "no dense model"
        raise APIError(400, f"this server serves {served}: name one in 'model'", param="model", code="invalid_value")
    found = models.get(name)
    if found is None:
        served = ", ".join(repr(n) for n in models) or "no dense model"
        raise APIError(
            404,
            f"the model {name!r} does not exist on this server; it serves {served}",
            param="model",
            code="model_not_found",
        )
    return name, found
