"""`embedstack serve`: an OpenAI-compatible embedding server with dynamic batching (extra `server`).

from embedstack.server import create_app
app = create_app({"minilm": "local"})   # an ASGI app: run it with uvicorn, or mount it in another app

Modules: `app` (routes, the request gate, lifespan), `serving` (one served model and a request's path:
cache hits, tokens, queue, wait, warm-up), `batcher` (dynamic batching), `schemas` (the request/response
models, i.e. the OpenAPI docs), `errors` (OpenAI error bodies), `metrics` (Prometheus), `tokens` (each
input tokenised once on arrival by the model's tokenizer), `sparse` (/embed_sparse), `rerank` (/v1/rerank,
/rerank), `limits` (defaults, no dependencies).
`create_app` is imported on first use, so `embedstack.server.limits` needs neither FastAPI nor uvicorn.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from embedstack.server.limits import (
    DEFAULT_MAX_BATCH_TOKENS,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_QUEUE,
    DEFAULT_MAX_WAIT_MS,
    MAX_INPUTS,
    SERVER_HEADER,
)

if TYPE_CHECKING:
    from embedstack.server.app import create_app

__all__ = [
    "DEFAULT_MAX_BATCH_TOKENS",
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MAX_QUEUE",
    "DEFAULT_MAX_WAIT_MS",
    "MAX_INPUTS",
    "SERVER_HEADER",
    "create_app",
]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from embedstack._optional import require

        for module, package in (("fastapi", None), ("orjson", None), ("prometheus_client", "prometheus-client")):
            require(module, extra="server", package=package)
        from embedstack.server.app import create_app

        return create_app
    raise AttributeError(f"module 'embedstack.server' has no attribute {name!r}")
