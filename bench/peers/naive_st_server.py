"""The naive peer of bench/server.py: one FastAPI endpoint calling sentence-transformers' `encode` per request.

What a team writes in ten minutes: no batching across requests, no token-aware batches. The endpoint is a
plain `def`, so FastAPI runs each request's `encode` in its worker thread pool (the event loop never blocks);
concurrent requests run concurrently on torch's intra-op threads. Responses have OpenAI's shape.

    python bench/peers/naive_st_server.py --model-dir DIR --port 8001 [--host 127.0.0.1]
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel
from sentence_transformers import SentenceTransformer


class EmbeddingRequest(BaseModel):
    """OpenAI's request body (the fields this server reads)."""

    input: str | list[str]
    model: str = "naive"
    encoding_format: str = "float"


def build(model_dir: str) -> FastAPI:
    """The app: GET /health, GET /v1/models, POST /v1/embeddings."""
    model = SentenceTransformer(model_dir, device="cpu")
    app = FastAPI()

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    def models() -> dict[str, object]:
        return {"object": "list", "data": [{"id": "naive", "object": "model"}]}

    @app.post("/v1/embeddings")
    def embeddings(req: EmbeddingRequest) -> dict[str, object]:
        texts = [req.input] if isinstance(req.input, str) else req.input
        vectors = model.encode(texts, normalize_embeddings=True)
        tokens = sum(len(ids) for ids in model.tokenizer(texts)["input_ids"])
        return {
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": v.tolist()} for i, v in enumerate(vectors)],
            "model": req.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(build(args.model_dir), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
