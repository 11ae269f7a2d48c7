"""OpenAI-style providers against a real HTTP server: vectors, order, encodings, usage, Azure, OpenAI-like."""

from __future__ import annotations

import asyncio
import json
import pickle
from typing import Any

import numpy as np
import pytest
from openai_fake_server import FakeOpenAIServer, count_tokens
from openai_testutil import FAST, KEY, embed

from embedstack import AzureOpenAIEmbedding, OpenAIEmbedding, OpenAILikeEmbedding
from embedstack.kvstore.simple import SimpleKVStore
from embedstack.types import Role


def test_vectors_equal_the_servers_in_input_order(make_model: Any, server: FakeOpenAIServer, mode: str) -> None:
    model = make_model(embed_batch_size=7)
    texts = [f"text number {i}" for i in range(40)]
    out = embed(model, texts, mode)
    assert out.dtype == np.float32 and out.shape == (40, 16)
    np.testing.assert_array_equal(out, server.vectors(texts))
    assert len(server.ok_records) == 6  # ceil(40 / 7) requests


def test_compat_methods_return_lists(make_model: Any, server: FakeOpenAIServer) -> None:
    model = make_model()
    q = model.get_query_embedding("what is up")
    t = model.get_text_embedding("a text")
    batch = model.get_text_embedding_batch(["a", "b", "a"])
    assert isinstance(q, list) and isinstance(q[0], float)
    np.testing.assert_allclose(q, server.vector("what is up"), rtol=1e-6)
    np.testing.assert_allclose(t, server.vector("a text"), rtol=1e-6)
    np.testing.assert_allclose(batch, server.vectors(["a", "b", "a"]), rtol=1e-6)
    aq = asyncio.run(model.aget_query_embedding("what is up"))
    assert aq == q
    # duplicates are sent once
    assert server.ok_records[2].inputs == ["a", "b"]


def test_sends_model_dimensions_and_base64(make_model: Any, server: FakeOpenAIServer, mode: str) -> None:
    model = make_model(model="text-embedding-3-large", dimensions=8)
    out = embed(model, ["x y", "z"], mode)
    body = server.ok_records[0].body
    assert body["model"] == "text-embedding-3-large"
    assert body["dimensions"] == 8
    assert body["encoding_format"] == "base64"
    assert server.ok_records[0].headers["authorization"] == f"Bearer {KEY}"
    np.testing.assert_array_equal(out, server.vectors(["x y", "z"], dimensions=8))


def test_float_encoding_and_servers_that_ignore_base64(make_model: Any, server: FakeOpenAIServer, mode: str) -> None:
    texts = ["alpha", "beta", "gamma"]
    floats = embed(make_model(encoding_format="float"), texts, mode)
    assert server.ok_records[-1].body["encoding_format"] == "float"
    server.faults.force_float = True  # asked for base64, answered with float lists (as some servers do)
    forced = embed(make_model(), texts, mode)
    np.testing.assert_allclose(floats, server.vectors(texts), rtol=1e-6)
    np.testing.assert_allclose(forced, server.vectors(texts), rtol=1e-6)


def test_maps_results_by_index_not_position(make_model: Any, server: FakeOpenAIServer, mode: str) -> None:
    server.faults.out_of_order = True
    texts = [f"t{i}" for i in range(9)]
    out = embed(make_model(), texts, mode)
    np.testing.assert_array_equal(out, server.vectors(texts))


def test_usage_reaches_end_events(make_model: Any, server: FakeOpenAIServer, event_recorder: Any, mode: str) -> None:
    texts = ["one two three", "four", "five six"]
    embed(make_model(embed_batch_size=2), texts, mode)
    ends = event_recorder.of("EmbeddingEndEvent")
    # async batches run side by side: their end events may come in either order
    assert sorted(e.token_count for e in ends) == sorted(
        [count_tokens("one two three") + count_tokens("four"), count_tokens("five six")]
    )


def test_malformed_answers_are_retried(make_model: Any, server: FakeOpenAIServer, mode: str) -> None:
    server.faults.script.extend(["malformed", "short", {"status": 200, "body": {"data": "nope"}}])
    texts = ["a", "b", "c"]
    out = embed(make_model(), texts, mode)
    np.testing.assert_array_equal(out, server.vectors(texts))
    assert [r.action for r in server.records] == ["malformed", "short", "scripted", "ok"]


@pytest.mark.parametrize(
    "data",
    [
        [{"index": 0, "embedding": [1.0, 0.0]}, {"index": 0, "embedding": [0.0, 1.0]}],  # repeated index
        [{"embedding": [1.0, 0.0]}, {"embedding": [0.0, 1.0]}],  # no index
        [{"index": 0, "embedding": [1.0, 0.0]}, {"index": 1, "embedding": [0.0, 1.0, 2.0]}],  # ragged
        [{"index": 0, "embedding": "!!notbase64"}, {"index": 1, "embedding": "AAAA"}],
    ],
)
def test_unusable_bodies_fail_with_a_clear_message(make_model: Any, server: FakeOpenAIServer, data: Any) -> None:
    server.faults.script.extend([{"status": 200, "body": {"object": "list", "data": data}}] * 3)
    with pytest.raises(Exception, match="malformed response body") as info:
        make_model(max_retries=2).embed(["p", "q"])
    assert "after 3 attempts" in str(info.value)


def test_dimensions_the_server_ignores_are_a_malformed_answer(make_model: Any, server: FakeOpenAIServer) -> None:
    server.faults.script.append({"status": 200, "body": {"data": [{"index": 0, "embedding": [0.5] * 16}]}})
    np.testing.assert_array_equal(make_model(dimensions=8).embed(["x"]), server.vectors(["x"], dimensions=8))
    assert [r.action for r in server.records] == ["scripted", "ok"]  # retried (test_openai_answers: the final error)


def test_empty_strings_error_names_indexes_before_any_request(
    make_model: Any, server: FakeOpenAIServer, mode: str
) -> None:
    with pytest.raises(ValueError, match=r"texts\[1\], texts\[3\] are empty strings.*empty_inputs='zeros'"):
        embed(make_model(), ["a", "", "b", ""], mode)
    assert server.records == []


def test_empty_strings_as_zeros(make_model: Any, server: FakeOpenAIServer, mode: str) -> None:
    model = make_model(empty_inputs="zeros", embed_batch_size=2)
    out = embed(model, ["a", "", "b", "c"], mode)
    np.testing.assert_array_equal(out[[0, 2, 3]], server.vectors(["a", "b", "c"]))
    assert not out[1].any()
    assert all("" not in r.inputs for r in server.records)
    # a batch of only empty strings: the size comes from what the model has seen
    only = embed(model, ["", ""], mode)
    assert only.shape == (2, 16) and not only.any()


def test_empty_only_batch_probes_the_size_once(make_model: Any, server: FakeOpenAIServer) -> None:
    model = make_model(cls=OpenAILikeEmbedding, model="tiny", api_key=None, empty_inputs="zeros")
    server.api_key = None
    out = model.embed([""])
    assert out.shape == (1, 16) and not out.any()
    assert [r.inputs for r in server.records] == [[" "]]


def test_images_are_refused(make_model: Any) -> None:
    with pytest.raises(TypeError, match="embeds text only"):
        make_model().embed([b"\x89PNG"], role=Role.IMAGE)


def test_query_and_text_instructions(server: FakeOpenAIServer, mode: str) -> None:
    server.api_key = None
    model = OpenAILikeEmbedding(
        model="e5", api_base=server.url, query_instruction="query: ", text_instruction="passage: ", **FAST
    )
    if mode == "sync":
        q = model.get_query_embedding("cats")
        t = model.get_text_embedding("cats")
    else:
        q = asyncio.run(model.aget_query_embedding("cats"))
        t = asyncio.run(model.aget_text_embedding("cats"))
    np.testing.assert_allclose(q, server.vector("query: cats"), rtol=1e-6)
    np.testing.assert_allclose(t, server.vector("passage: cats"), rtol=1e-6)


def test_openai_like_never_sends_the_openai_key(server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    server.api_key = None
    model = OpenAILikeEmbedding(model="bge-small", api_base=server.url)
    model.embed(["hello"])
    assert server.ok_records[0].headers["authorization"] == "Bearer EMPTY"
    assert model.max_input_tokens is None and model.max_request_tokens is None


def test_openai_like_needs_model_and_base() -> None:
    with pytest.raises(ValueError, match="needs model="):
        OpenAILikeEmbedding(api_base="http://localhost:1/v1")
    with pytest.raises(ValueError, match="needs api_base="):
        OpenAILikeEmbedding(model="m")


def test_azure_deployment_path_version_and_key(server: FakeOpenAIServer, mode: str) -> None:
    model = AzureOpenAIEmbedding(
        model="text-embedding-3-small",
        azure_endpoint=server.root,
        azure_deployment="my-embedder",
        api_version="2024-10-21",
        api_key=KEY,
        **FAST,
    )
    out = embed(model, ["azure text", "more"], mode)
    np.testing.assert_array_equal(out, server.vectors(["azure text", "more"]))
    rec = server.ok_records[0]
    assert rec.path == "/openai/deployments/my-embedder/embeddings"
    assert rec.headers["api-key"] == KEY
    d = model.to_dict()
    assert d["azure_deployment"] == "my-embedder" and d["class_name"] == "AzureOpenAIEmbedding"


def test_azure_token_provider(server: FakeOpenAIServer, mode: str) -> None:
    server.api_key = None
    calls: list[int] = []

    def token() -> str:
        calls.append(1)
        return "entra-token"

    model = AzureOpenAIEmbedding(
        azure_endpoint=server.root, api_version="2024-10-21", azure_ad_token_provider=token, **FAST
    )
    embed(model, ["x"], mode)
    assert server.ok_records[0].headers["authorization"] == "Bearer entra-token"
    assert calls
    assert "azure_ad_token_provider" not in model.to_dict()


def test_azure_needs_endpoint_version_and_credentials() -> None:
    with pytest.raises(ValueError, match="AZURE_OPENAI_ENDPOINT"):
        AzureOpenAIEmbedding(api_version="v", api_key="k")
    with pytest.raises(ValueError, match="api_version"):
        AzureOpenAIEmbedding(azure_endpoint="https://x.openai.azure.com", api_key="k")
    with pytest.raises(ValueError, match="AZURE_OPENAI_API_KEY"):
        AzureOpenAIEmbedding(azure_endpoint="https://x.openai.azure.com", api_version="v")


def test_env_key_and_base_url(server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", server.url)
    model = OpenAIEmbedding(**FAST)
    assert model.api_base == server.url and model.model_name == "text-embedding-3-small"
    np.testing.assert_array_equal(model.embed(["env"]), server.vectors(["env"]))


def test_round_trip_and_pickle(make_model: Any, server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch) -> None:
    model = make_model(model="text-embedding-3-large", dimensions=4, num_workers=3)
    model.embed(["warm the client"])
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    again = OpenAIEmbedding.from_json(model.to_json())
    assert again.to_dict() == model.to_dict()
    clone = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(clone.embed(["p"]), server.vectors(["p"], dimensions=4))


def test_cache_key_ignores_runtime_fields_but_not_outputs(make_model: Any, server: FakeOpenAIServer) -> None:
    store = SimpleKVStore()
    make_model(embeddings_cache=store).embed(["cached"])
    n = len(server.records)
    make_model(embeddings_cache=store, timeout=9, max_retries=1, num_workers=4).embed(["cached"])
    assert len(server.records) == n  # same vectors: served from the cache
    make_model(embeddings_cache=store, dimensions=8).embed(["cached"])
    make_model(embeddings_cache=store, model="text-embedding-3-large").embed(["cached"])
    assert len(server.records) == n + 2


def test_progress_bar(make_model: Any, capsys: pytest.CaptureFixture[str]) -> None:
    make_model(embed_batch_size=2).get_text_embedding_batch(["a", "b", "c"], show_progress=True)
    assert "3/3" in capsys.readouterr().err


def test_server_sees_json_it_can_parse(make_model: Any, server: FakeOpenAIServer) -> None:
    make_model(additional_kwargs={"user": "u-1"}).embed(["x"])
    assert server.ok_records[0].body["user"] == "u-1"
    json.dumps(server.ok_records[0].body)


def test_each_event_loop_gets_its_own_client_closed_with_the_loop(
    make_model: Any, server: FakeOpenAIServer, caplog: pytest.LogCaptureFixture
) -> None:
    import gc

    model = make_model(num_workers=2, embed_batch_size=1)

    async def go() -> Any:
        await model.aembed(["x", "y", "z"])
        return await model._async_client()

    first = asyncio.run(go())
    assert first.is_closed()  # closed by asyncio.run's shutdown of the loop, not left for the GC
    second = asyncio.run(go())
    assert second is not first and second.is_closed()
    gc.collect()
    assert not [r for r in caplog.records if r.name == "asyncio"]  # no "Event loop is closed" task errors
