"""`embedstack serve`: the OpenAI-compatible server (embedstack.server) under uvicorn.

SIGTERM (and Ctrl-C) drain: /health and new requests get 503 at once, uvicorn stops accepting
connections and finishes the requests in flight (at most --drain-timeout seconds), and the process
exits 0.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import signal
import sys
from types import FrameType
from typing import Any

from embedstack.cli._args import Parents, non_negative_int, positive_int

__all__ = ["add_parser", "cmd_serve", "parse_models"]

DEFAULT_PORT = 8000
DEFAULT_DRAIN_TIMEOUT = 30.0


def add_parser(sub: Any, parents: Parents) -> argparse.ArgumentParser:
    """Register `serve` on the command line's subparsers (argparse only: the server loads when it runs)."""
    from embedstack.server.limits import (  # no dependencies: --help stays fast without the extra
        DEFAULT_MAX_BATCH_TOKENS,
        DEFAULT_MAX_BODY_BYTES,
        DEFAULT_MAX_QUEUE,
        DEFAULT_MAX_WAIT_MS,
    )

    serve = _add(
        sub,
        [parents.common, parents.cache],
        DEFAULT_MAX_BATCH_TOKENS,
        DEFAULT_MAX_WAIT_MS,
        DEFAULT_MAX_QUEUE,
        DEFAULT_MAX_BODY_BYTES,
    )
    serve.set_defaults(handler=cmd_serve)
    return serve


def _add(
    sub: Any,
    parents: list[argparse.ArgumentParser],
    max_batch_tokens: int,
    max_wait_ms: float,
    max_queue: int,
    max_body_bytes: int,
) -> argparse.ArgumentParser:
    serve = sub.add_parser(
        "serve",
        parents=parents,
        help="serve models over OpenAI's /v1/embeddings API (dynamic batching; extra 'server')",
        description=(
            "An OpenAI-compatible embedding server: POST /v1/embeddings, GET /v1/models, POST /tokenize, /health, "
            "/metrics, /docs. Concurrent requests are batched; cache hits are answered at once. See docs/server.md."
        ),
    )
    serve.add_argument(
        "--model",
        dest="models",
        action="append",
        metavar="[NAME=]SPEC",
        help="a model to serve, repeatable: SPEC as --model of embed (local, local:<path>, clip:<path>, "
        "openai:<model>, or a reranker at /v1/rerank and /rerank: rerank:<path> (a cross-encoder), "
        "cohere:<model>[@<url>], jina:<model> or tei:<url> (a reranking API, proxied)); NAME is what clients "
        "send as 'model' (default: the model's own name). Default: local",
    )
    serve.add_argument(
        "--long-inputs",
        choices=["truncate", "chunk"],
        help="texts past a local model's token limit: truncate (the default) or chunk (embedded whole: overlapping "
        "pieces averaged by token count); applies to every local model served",
    )
    serve.add_argument(
        "--chunk-overlap",
        type=non_negative_int,
        metavar="N",
        help="with --long-inputs chunk, and for POST /embed_chunks' long documents: tokens neighbouring pieces share "
        "(default: an eighth of a piece, at most 32)",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default: {DEFAULT_PORT})")
    serve.add_argument(
        "--api-key",
        default=None,
        help="bearer key required on /v1/* (default: EMBEDSTACK_API_KEY, else none)",
    )
    serve.add_argument(
        "--max-batch-tokens",
        type=positive_int,
        default=max_batch_tokens,
        metavar="N",
        help=f"tokens per model call (default: {max_batch_tokens})",
    )
    serve.add_argument(
        "--max-wait-ms",
        type=float,
        default=max_wait_ms,
        metavar="M",
        help=f"how long an idle model waits for requests already arriving (default: {max_wait_ms:g})",
    )
    serve.add_argument(
        "--max-queue",
        type=positive_int,
        default=max_queue,
        metavar="N",
        help=f"inputs waiting per model before requests get 429 (default: {max_queue})",
    )
    serve.add_argument(
        "--max-body-bytes",
        type=positive_int,
        default=max_body_bytes,
        metavar="B",
        help=f"largest request body; larger ones get 413 (default: {max_body_bytes})",
    )
    serve.add_argument(
        "--drain-timeout",
        type=float,
        default=DEFAULT_DRAIN_TIMEOUT,
        metavar="S",
        help=f"on SIGTERM, seconds to finish requests in flight (default: {DEFAULT_DRAIN_TIMEOUT:g})",
    )
    serve.add_argument(
        "--cors-allow-origin",
        action="append",
        dest="cors_allow_origins",
        default=None,
        metavar="ORIGIN",
        help="let browser pages from ORIGIN (scheme://host[:port], or '*' for any) call the server; repeatable "
        "(default: no CORS headers, so browsers refuse cross-origin calls)",
    )
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    assert isinstance(serve, argparse.ArgumentParser)
    return serve


def parse_models(values: list[str] | None) -> list[tuple[str | None, str]]:
    """--model values as (name or None, spec); `local` when none. A '=' before any ':' names the model."""
    pairs: list[tuple[str | None, str]] = []
    for value in values or ["local"]:
        head, eq, tail = value.partition("=")
        if eq and ":" not in head and head.strip():
            if not tail.strip():
                raise ValueError(f"--model {value} names no model spec (e.g. --model {head.strip()}=local)")
            pairs.append((head.strip(), tail.strip()))
        else:
            pairs.append((None, value.strip()))
    return pairs


def _is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def cmd_serve(args: argparse.Namespace) -> int:
    """embedstack serve [--model NAME=SPEC]... [--host H] [--port P] ..."""
    from embedstack._optional import require

    uvicorn = require("uvicorn", extra="server")
    from embedstack.jobs import DEFAULT_CACHE, default_cache_path
    from embedstack.kvstore.sqlite import SQLiteKVStore
    from embedstack.registry import resolve_embed_model
    from embedstack.server import create_app
    from embedstack.server.protocol import one_write_protocol

    if args.max_wait_ms < 0:
        raise ValueError(f"--max-wait-ms must be >= 0, got {args.max_wait_ms:g}")
    if args.drain_timeout < 0:
        raise ValueError(f"--drain-timeout must be >= 0, got {args.drain_timeout:g}")
    api_key = args.api_key or os.environ.get("EMBEDSTACK_API_KEY") or None
    if not _is_loopback(args.host) and not api_key:
        logging.getLogger("embedstack").warning(
            "serving on %s without an API key: anyone who can reach this address can use the models; "
            "set --api-key or EMBEDSTACK_API_KEY",
            args.host,
        )
    cache: Any = None if args.no_cache else (SQLiteKVStore(args.cache) if args.cache else DEFAULT_CACHE)
    if cache is DEFAULT_CACHE:
        cache = SQLiteKVStore(default_cache_path())
    from embedstack.rerank.resolve import is_rerank_spec

    models: dict[str, Any] = {}
    options_used = False
    options = {
        k: v for k, v in (("long_inputs", args.long_inputs), ("chunk_overlap", args.chunk_overlap)) if v is not None
    }
    for name, spec in parse_models(args.models):
        if is_rerank_spec(spec):  # a reranker, served at /v1/rerank and /rerank
            from embedstack.rerank import resolve_rerank_model

            reranker = resolve_rerank_model(spec, cache=cache)
            key = name or reranker.model_name
            if key in models:
                raise ValueError(f"two models would be served as {key!r}; name them: --model NAME=SPEC")
            models[key] = reranker
            continue
        model = resolve_embed_model(spec)  # sparse ones ("splade:...", "bm25:<stats.json>") at /embed_sparse
        if options and all(k in type(model).model_fields for k in options):  # local models: --long-inputs
            from embedstack.jobs import with_model_options

            model = with_model_options(model, options)  # type: ignore[arg-type]
            options_used = True
        model.embeddings_cache = cache
        key = name or model.model_name
        if key in models:
            raise ValueError(f"two models would be served as {key!r}; name them: --model NAME=SPEC")
        models[key] = model
    if options and not options_used:
        flags = " and ".join("--" + k.replace("_", "-") for k in options)
        raise ValueError(f"{flags} applies to local models (local, local:<name or path>), and none is served")
    app = create_app(
        models,
        api_key=api_key,
        max_batch_tokens=args.max_batch_tokens,
        max_wait_ms=args.max_wait_ms,
        max_queue=args.max_queue,
        max_body_bytes=args.max_body_bytes,
        cors_allow_origins=args.cors_allow_origins,
    )
    state = app.state.embedstack
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        http=one_write_protocol(),  # httptools, each answer in one write; uvloop when installed ("auto")
        access_log=args.log_level == "debug",
        timeout_graceful_shutdown=args.drain_timeout,
        lifespan="on",
    )

    class Server(uvicorn.Server):  # type: ignore[misc,name-defined]
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            state.draining = True  # new requests and /health: 503 from now on
            super().handle_exit(sig, frame)

    server = Server(config)
    names = ", ".join(models)
    print(f"embedstack serve: {names} on http://{args.host}:{args.port} (docs: /docs)", file=sys.stderr, flush=True)
    # uvicorn re-raises the signal it drained on once it is done: make that a no-op, so the exit is 0
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _ignore)
    server.run()
    return 0


def _ignore(signum: int, frame: FrameType | None) -> None:
    return None
