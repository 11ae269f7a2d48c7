"""Benchmark: the client-side cost of one 2,048-input request, and of decoding its base64 vectors.

Two choices in embedstack.providers.openai rest on these figures (docs/providers/openai.md,
"Request path figures"):

- requests go through the SDK's generic `client.post("/embeddings", cast_to=Response)` rather than
  `client.embeddings.create(...)`, which transforms every input through its typed-dict machinery
  and parses the answer into pydantic models that would only be unpacked again;
- equal-length base64 vectors are decoded in one call (joined), not one decode per vector.

No server and no network: an httpx MockTransport answers every request with the same canned
OpenAI answer (base64 vectors), so the figures are the client side alone. `create()` decodes the
vectors too (the SDK does it for base64), so both rows include the decoding.

    flock /tmp/embedstack-cpu.lock .venv/bin/python bench/openai_request_path.py [--n 2048] [--repeats 21]
"""

from __future__ import annotations

import argparse
import base64
import importlib
import json
from collections.abc import Callable
from typing import Any

import numpy as np

from _common import best_of

KEY = "sk-bench-not-a-real-key"
DIM = 1536
MODEL = "text-embedding-3-small"


def best_ms(fn: Callable[[], Any], repeats: int) -> float:
    """Best wall time of `fn()` in milliseconds, as timeit reports (the least disturbed by other load)."""
    return best_of(fn, repeats)[0] * 1000


def canned_answer(n: int) -> bytes:
    """What OpenAI answers to n inputs with encoding_format="base64": n vectors of DIM float32 values."""
    rng = np.random.default_rng(1)
    data = [
        {"object": "embedding", "index": i, "embedding": base64.b64encode(v.astype("<f4").tobytes()).decode()}
        for i, v in enumerate(rng.standard_normal((n, DIM)))
    ]
    usage = {"prompt_tokens": 12 * n, "total_tokens": 12 * n}
    return json.dumps({"object": "list", "data": data, "model": MODEL, "usage": usage}).encode()


def request_path(texts: list[str], repeats: int) -> dict[str, float]:
    """One request of len(texts) inputs: embeddings.create() vs post() + embedstack's answer decoding."""
    import openai
    from embedstack.providers.openai.answers import read_answer
    from embedstack.providers.openai.client import _response_class
    from embedstack.providers.remote.retry import Success

    # The httpx flavour this SDK is built on (httpx, or httpx2 for openai 3.x), as embedstack finds it.
    httpx: Any = importlib.import_module(_response_class(openai).__module__.split(".")[0])
    answer = canned_answer(len(texts))

    def handler(request: Any) -> Any:
        assert len(json.loads(request.content)["input"]) == len(texts)
        return httpx.Response(200, content=answer, headers={"content-type": "application/json"})

    http = httpx.Client(transport=httpx.MockTransport(handler))
    client = openai.OpenAI(api_key=KEY, base_url="http://bench.invalid/v1", max_retries=0, http_client=http)
    body = {"input": texts, "model": MODEL, "encoding_format": "base64"}

    def create() -> Any:
        return client.embeddings.create(input=texts, model=MODEL, encoding_format="base64")

    def post() -> Any:
        content = client.post("/embeddings", cast_to=httpx.Response, body=body).content
        outcome = read_answer(content, len(texts), None)
        assert isinstance(outcome, Success) and outcome.vectors.shape == (len(texts), DIM)
        return outcome

    post(), create()  # untimed: imports and first-call set-up
    return {"create": best_ms(create, repeats), "post": best_ms(post, repeats)}


def decoding(n: int, repeats: int) -> dict[str, float]:
    """n base64 float32 vectors of DIM values: embedstack's joined decode vs one decode per vector.

    "each" is what the per-vector path of `answers._decode_vectors` does for a well-formed answer
    (decode, length and finiteness checks per row, then stack); "joined" is its fast path.
    """
    from embedstack.providers.openai.answers import _decode_one, _decode_vectors

    rng = np.random.default_rng(0)
    raw = [base64.b64encode(v.astype("<f4").tobytes()).decode() for v in rng.standard_normal((n, DIM))]

    def joined() -> Any:
        return _decode_vectors(raw, None, {})

    def each() -> Any:
        rows = []
        for r in raw:
            v = _decode_one(r)[0]
            assert v is not None and len(v) == DIM and np.isfinite(v).all()
            rows.append(v)
        return np.stack(rows)

    np.testing.assert_array_equal(joined(), each())
    return {"joined": best_ms(joined, repeats), "each": best_ms(each, repeats)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=2048, help="inputs in the request (OpenAI's maximum: 2,048)")
    p.add_argument("--repeats", type=int, default=21)
    args = p.parse_args()
    texts = [f"document {i}: retrieval augmented generation embeds every chunk once" for i in range(args.n)]
    req = request_path(texts, args.repeats)
    dec = decoding(args.n, args.repeats)
    extra_us = (req["create"] - req["post"]) * 1000 / args.n
    print(f"\n{args.n} inputs, {DIM}-dim base64 vectors, best of {args.repeats}\n")
    print("| what | time (ms) |")
    print("|---|---:|")
    print(f"| one request, `embeddings.create()` | {req['create']:.1f} |")
    print(f"| one request, `post()` + embedstack's decoding | {req['post']:.1f} |")
    print(f"| create() extra per input | {extra_us:.1f} µs |")
    print(f"| decode + checks, one call for all vectors (embedstack) | {dec['joined']:.2f} |")
    print(f"| decode + checks, one call per vector | {dec['each']:.2f} |")
    print(json.dumps({"request": req, "decode": dec, "create_extra_us_per_input": extra_us}))


if __name__ == "__main__":
    main()
