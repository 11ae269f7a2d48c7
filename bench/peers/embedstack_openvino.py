"""embedstack's server on the OpenVINO backend, for bench/server.py.

`embedstack serve --model local` picks ONNX Runtime and no spec names a backend, so this launcher builds
`HuggingFaceEmbedding(backend="openvino", precision="fp32")` itself and serves it through
`embedstack.server.create_app` under uvicorn, as `embedstack serve` does (no cache, no access log, each
answer in one write).

    python bench/peers/embedstack_openvino.py --port 8002 [--name minilm] [--max-batch-tokens N] [--max-wait-ms M]
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import uvicorn

from embedstack.providers.huggingface import HuggingFaceEmbedding
from embedstack.server import DEFAULT_MAX_BATCH_TOKENS, DEFAULT_MAX_WAIT_MS, create_app
from embedstack.server.protocol import one_write_protocol


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="minilm", help="the model name clients send")
    parser.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--max-batch-tokens", type=int, default=DEFAULT_MAX_BATCH_TOKENS)
    parser.add_argument("--max-wait-ms", type=float, default=DEFAULT_MAX_WAIT_MS)
    parser.add_argument("--no-cache", action="store_true", help="accepted for symmetry: this launcher never caches")
    args = parser.parse_args()
    model = HuggingFaceEmbedding(args.model, backend="openvino", precision=args.precision)
    app = create_app({args.name: model}, max_batch_tokens=args.max_batch_tokens, max_wait_ms=args.max_wait_ms)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        http=one_write_protocol(),
        log_level="warning",
        access_log=False,
        lifespan="on",
    )


if __name__ == "__main__":
    main()
