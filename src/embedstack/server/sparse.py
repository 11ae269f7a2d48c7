"""TEI's `POST /embed_sparse` for the served sparse models (SPLADE, BM25).

Request: `{"inputs": "text" | ["text", ...], "truncate": false, "model": NAME, "input_type": "document"}`
(`model` may be left out when one sparse model is served; `input_type` "query" embeds with the model's
query side, e.g. inference-free SPLADE's lookup table). Answer, as TEI's: one list per input of
`{"index": i, "value": v}` for its non-zero entries, indices ascending.

Each request goes through the model's pipeline (its cache, dedupe, batches of the model's batch size,
run off the event loop); the server's limits (body size, 2,048 inputs, the API key), error bodies and
route metrics apply as on `/v1/embeddings`. Requests are not merged into shared batches across clients
as `/v1/embeddings` requests are.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import orjson
from fastapi import FastAPI
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from embedstack.errors import BadVectorsError, EmbedstackError, InvalidInputError
from embedstack.server.errors import APIError
from embedstack.server.limits import MAX_INPUTS
from embedstack.sparse import BaseSparseEmbedding
from embedstack.types import Role

__all__ = ["SparseRequest", "add_sparse_routes"]


class SparseRequest(BaseModel):
    """TEI's /embed_sparse request, plus the model's name and which side (query or document) to embed with."""

    model_config = ConfigDict(extra="ignore")

    inputs: str | list[str]
    truncate: bool = Field(default=False, description="Cut inputs over the model's token limit (TEI: refuse them).")
    model: str | None = Field(default=None, description="The sparse model (default: the only one served).")
    input_type: Literal["document", "query"] = "document"


def add_sparse_routes(app: FastAPI, sparse: Mapping[str, BaseSparseEmbedding], metrics: Any) -> None:
    """Serve `sparse` ({name: model}) at POST /embed_sparse."""

    @app.post("/embed_sparse", summary="Sparse vectors (TEI's API): [[{index, value}, ...], ...]")
    async def embed_sparse(body: SparseRequest) -> Response:
        name, model = _pick(sparse, body.model)
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
        pipeline = model.pipeline
        try:
            if not body.truncate:
                counted = pipeline.provider.count_tokens(texts, role)
                if counted is not None and any(counted[1]):
                    over = [i for i, cut in enumerate(counted[1]) if cut]
                    raise APIError(
                        400,
                        f"'inputs[{over[0]}]' is over the model's token limit and \"truncate\" is false",
                        param=f"inputs[{over[0]}]",
                        code="context_length_exceeded",
                    )
            out = await pipeline.aembed(texts, role, label="inputs")
        except APIError:
            raise
        except (InvalidInputError, TypeError) as e:
            raise APIError(400, str(e), param="inputs", code="invalid_value") from None
        except BadVectorsError as e:
            raise APIError(500, f"the model failed: {e}", code="model_error") from None
        except (ValueError, EmbedstackError) as e:  # a model that cannot run yet (BM25 without statistics)
            raise APIError(500, f"the model {name!r} cannot embed: {e}", code="model_error") from None
        if out.usage.tokens:
            metrics.tokens.labels(name).inc(out.usage.tokens)
        if out.usage.cached:
            metrics.cache_hits.labels(name).inc(out.usage.cached)
        answer = [
            [{"index": i, "value": v} for i, v in zip(row.indices.tolist(), row.values.tolist())] for row in out.values
        ]
        return Response(orjson.dumps(answer), media_type="application/json")


def _pick(sparse: Mapping[str, BaseSparseEmbedding], name: str | None) -> tuple[str, BaseSparseEmbedding]:
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
        return next(iter(sparse.items()))
    model = sparse.get(name)
    if model is None:
        served = ", ".join(repr(n) for n in sparse)
        raise APIError(
            404,
            f"the sparse model {name!r} is not served; this server serves {served}",
            param="model",
            code="model_not_found",
        )
    return name, model
