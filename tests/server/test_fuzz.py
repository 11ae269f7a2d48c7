"""A hypothesis fuzz of POST /v1/embeddings: any JSON body, any field values, never a 5xx."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from embedstack.registry import resolve_embed_model
from embedstack.server import create_app

from .conftest import serving

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
texts = st.text(min_size=0, max_size=30)
inputs = st.one_of(
    texts,
    st.lists(texts, max_size=6),
    st.lists(st.integers(min_value=-5, max_value=2**40), max_size=4),
    st.lists(st.lists(st.integers(min_value=0, max_value=100), max_size=3), max_size=3),
    json_values,
)
bodies = st.fixed_dictionaries(
    {},
    optional={
        "input": inputs,
        "model": st.one_of(st.just("m"), st.just("other"), json_values),
        "encoding_format": st.one_of(st.sampled_from(["float", "base64", "hex", ""]), json_values),
        "dimensions": st.one_of(st.integers(min_value=-3, max_value=20), json_values),
        "input_type": st.one_of(st.sampled_from(["query", "document", "image", "passage"]), json_values),
        "truncate": st.one_of(st.booleans(), json_values),
        "user": json_values,
    },
)


def test_no_request_body_makes_a_5xx() -> None:
    app = create_app({"m": resolve_embed_model("fake:8")})
    seen: list[int] = []

    async def run() -> None:
        async with serving(app) as client:

            @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
            @given(body=st.one_of(bodies, json_values))
            @example(body={"input": ["a", "b"], "model": "m", "encoding_format": "base64", "dimensions": 4})
            @example(body={"input": "a", "model": "m", "input_type": "query", "user": None})
            def check(body: Any) -> None:
                raw = json.dumps(body).encode() if not isinstance(body, bytes) else body
                r = asyncio.run_coroutine_threadsafe(
                    client.post("/v1/embeddings", content=raw, headers={"content-type": "application/json"}), loop
                ).result(30)
                seen.append(r.status_code)
                assert r.status_code < 500, (body, r.text)
                if r.status_code != 200:
                    assert set(r.json()["error"]) == {"message", "type", "param", "code"}
                else:
                    answer = r.json()
                    n = 1 if isinstance(body["input"], str) else len(body["input"])
                    assert [d["index"] for d in answer["data"]] == list(range(n))

            loop = asyncio.get_running_loop()
            await asyncio.to_thread(check)

    asyncio.run(run())
    assert 200 in seen and 400 in seen  # the examples answer 200; most fuzz 400
