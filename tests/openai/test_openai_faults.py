"""Faults against the real fake server: retries, Retry-After, timeouts, drops, final errors, concurrency."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import numpy as np
import pytest
from openai_fake_server import FakeOpenAIServer, Faults
from openai_testutil import FAST, KEY, embed

from embedstack.providers.openai import EmbeddingAPIError, OpenAIEmbedding


@pytest.mark.parametrize("workers", [None, 4])
@pytest.mark.slow  # real retry waits
def test_10k_texts_through_30_percent_429_and_500(server: FakeOpenAIServer, mode: str, workers: int | None) -> None:
    server.faults = Faults(fail_rate=0.3, fail_statuses=(429, 500), retry_after_ms=1)
    model = OpenAIEmbedding(
        api_key=KEY, api_base=server.url, embed_batch_size=100, num_workers=workers, max_retries=12, **FAST
    )
    texts = [f"document {i}" for i in range(10_000)]
    out = embed(model, texts, mode)
    np.testing.assert_array_equal(out, server.vectors(texts))
    statuses = server.statuses()
    assert statuses.count(200) == 100
    assert statuses.count(429) > 10 and statuses.count(500) > 10  # the faults really happened
    assert sorted(server.embedded_inputs()) == sorted(texts)  # each text embedded once


def test_401_fails_at_once_without_retry(make_model: Any, server: FakeOpenAIServer, mode: str) -> None:
    model = make_model(api_key="sk-wrong-key-000")
    texts = ["a", "b", "c"]
    with pytest.raises(EmbeddingAPIError) as info:
        embed(model, texts, mode)
    assert server.statuses() == [401]
    err = info.value
    assert err.status_code == 401 and err.attempts == 1
    msg = str(err)
    assert "texts[0:3]" in msg and "1 attempt" in msg and "not retryable" in msg
    assert "Incorrect API key provided" in msg and "OPENAI_API_KEY" in msg


@pytest.mark.parametrize("status", [400, 403, 404, 422])
def test_client_errors_are_never_retried(make_model: Any, server: FakeOpenAIServer, status: int, mode: str) -> None:
    server.faults.script.extend([status] * 3)
    with pytest.raises(EmbeddingAPIError, match=f"HTTP {status}"):
        embed(make_model(), ["x"], mode)
    assert server.statuses() == [status]


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503])
def test_transient_statuses_are_retried(make_model: Any, server: FakeOpenAIServer, status: int, mode: str) -> None:
    server.faults.script.extend([status, status])
    out = embed(make_model(), ["x", "y"], mode)
    np.testing.assert_array_equal(out, server.vectors(["x", "y"]))
    assert server.statuses() == [status, status, 200]


def test_insufficient_quota_429_is_not_retried(make_model: Any, server: FakeOpenAIServer) -> None:
    body = {
        "error": {
            "message": "You exceeded your current quota.",
            "type": "insufficient_quota",
            "code": "insufficient_quota",
        }
    }
    server.faults.script.extend([{"status": 429, "body": body}] * 3)
    with pytest.raises(EmbeddingAPIError, match="exceeded your current quota"):
        make_model().embed(["x"])
    assert server.statuses() == [429]


def _gap_after_first(server: FakeOpenAIServer) -> float:
    first, second = server.records[0], server.records[1]
    return second.start - first.end


@pytest.mark.parametrize(
    ("headers", "at_least"),
    [
        ({"Retry-After": "1"}, 1.0),
        ({"retry-after-ms": "300"}, 0.3),
        ({"retry-after-ms": "250", "Retry-After": "9"}, 0.25),
    ],
)
@pytest.mark.slow  # real retry waits
def test_retry_after_is_honoured(
    make_model: Any, server: FakeOpenAIServer, headers: dict[str, str], at_least: float, mode: str
) -> None:
    server.faults.script.append({"status": 429, "headers": headers})
    out = embed(make_model(), ["wait for me"], mode)
    np.testing.assert_array_equal(out, server.vectors(["wait for me"]))
    assert server.statuses() == [429, 200]
    gap = _gap_after_first(server)
    assert gap >= at_least
    assert gap < at_least + 5  # retry-after-ms wins over Retry-After when both are sent


def test_retry_after_longer_than_max_wait_ends_the_retries(make_model: Any, server: FakeOpenAIServer) -> None:
    server.faults.script.append({"status": 429, "headers": {"Retry-After": "3600"}})
    with pytest.raises(EmbeddingAPIError, match=r"asked to wait 3600s, more than retry_max_wait=120s"):
        make_model().embed(["x"])
    assert server.statuses() == [429]


def test_backoff_grows_between_attempts(make_model: Any, server: FakeOpenAIServer) -> None:
    server.faults.script.extend([500, 500, 500])
    make_model(retry_backoff=0.05, retry_max_backoff=1.0).embed(["x"])
    gaps = [b.start - a.end for a, b in zip(server.records, server.records[1:])]
    # jittered in [0.5, 1] x 0.05 * 2^(n-1): ~0.025-0.05, 0.05-0.1, 0.1-0.2
    assert gaps[0] >= 0.025 and gaps[1] >= 0.05 and gaps[2] >= 0.1


@pytest.mark.slow  # real retry waits
def test_timeouts_are_retried(make_model: Any, server: FakeOpenAIServer, mode: str) -> None:
    server.faults = Faults(script=["hang", "hang"], hang_s=1.5)
    out = embed(make_model(timeout=0.5), ["slow"], mode)
    np.testing.assert_array_equal(out, server.vectors(["slow"]))
    assert not server.faults.script  # both hangs were served (their records land when they wake up)
    assert server.ok_records


def test_timeouts_end_in_a_timeout_error(make_model: Any, server: FakeOpenAIServer) -> None:
    server.faults = Faults(script=["hang"] * 3, hang_s=0.6)
    with pytest.raises(EmbeddingAPIError, match=r"after 2 attempts: timeout: no answer within 0.2s"):
        make_model(timeout=0.2, max_retries=1).embed(["slow"])


def test_dropped_connections_are_retried(make_model: Any, server: FakeOpenAIServer, mode: str) -> None:
    server.faults.script.extend(["drop", "drop", "drop"])
    out = embed(make_model(), ["fragile", "line"], mode)
    np.testing.assert_array_equal(out, server.vectors(["fragile", "line"]))
    assert [r.action for r in server.records] == ["drop", "drop", "drop", "ok"]


def test_final_failure_names_items_attempts_and_server_message(
    make_model: Any, server: FakeOpenAIServer, mode: str
) -> None:
    texts = [f"t{i}" for i in range(10)]
    server.faults.poison = {"t6"}
    with pytest.raises(EmbeddingAPIError) as info:
        embed(make_model(embed_batch_size=4, max_retries=2), texts, mode)
    err = info.value
    msg = str(err)
    assert "texts[4:8] (4 items)" in msg
    assert "after 3 attempts" in msg
    assert "HTTP 500: The server had an error while processing your request." in msg
    assert server.url in msg
    assert err.indexes == [4, 5, 6, 7] and err.attempts == 3 and err.status_code == 500
    assert sum(1 for r in server.records if "t6" in r.inputs) == 3


def test_failure_index_names_the_first_occurrence_of_duplicates(make_model: Any, server: FakeOpenAIServer) -> None:
    server.faults.poison = {"bad"}
    with pytest.raises(EmbeddingAPIError) as info:
        make_model(embed_batch_size=1, max_retries=0).get_text_embedding_batch(["ok", "bad", "ok", "bad"])
    assert "texts[1, 3]" in str(info.value)


def test_retries_are_logged(make_model: Any, server: FakeOpenAIServer, caplog: pytest.LogCaptureFixture) -> None:
    server.faults.script.append(503)
    with caplog.at_level(logging.INFO, logger="embedstack.openai"):
        make_model().embed(["x"])
    assert any("HTTP 503" in r.getMessage() and "retry 1/8" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("workers", [3, 5])
def test_concurrency_never_exceeds_num_workers(server: FakeOpenAIServer, mode: str, workers: int) -> None:
    server.delay_s = 0.02
    server.faults = Faults(fail_rate=0.2, fail_statuses=(429, 500), retry_after_ms=1)
    model = OpenAIEmbedding(api_key=KEY, api_base=server.url, embed_batch_size=5, num_workers=workers, **FAST)
    texts = [f"c{i}" for i in range(150)]
    np.testing.assert_array_equal(embed(model, texts, mode), server.vectors(texts))
    assert server.max_concurrency <= workers
    assert server.max_concurrency >= 2  # and batches really did run side by side


def test_sync_without_workers_is_sequential(make_model: Any, server: FakeOpenAIServer) -> None:
    server.delay_s = 0.01
    make_model(embed_batch_size=2).embed([f"s{i}" for i in range(12)])
    assert server.max_concurrency == 1


def test_async_is_bounded_by_default(make_model: Any, server: FakeOpenAIServer) -> None:
    server.delay_s = 0.02
    texts = [f"a{i}" for i in range(120)]
    out = asyncio.run(make_model(embed_batch_size=2).aembed(texts))
    np.testing.assert_array_equal(out, server.vectors(texts))
    assert 2 <= server.max_concurrency <= 8


@pytest.mark.slow  # real retry waits
def test_a_429_pauses_every_worker(make_model: Any, server: FakeOpenAIServer) -> None:
    server.delay_s = 0.01
    server.faults.script.append({"status": 429, "headers": {"retry-after-ms": "1000"}})
    model = make_model(embed_batch_size=1, num_workers=4)
    texts = [f"p{i}" for i in range(24)]
    np.testing.assert_array_equal(model.embed(texts), server.vectors(texts))
    limited = next(r for r in server.records if r.status == 429)
    # (the first 0.2 s leave the client time to read the 429 before the pause can start)
    started_during_pause = [r for r in server.records if limited.end + 0.2 < r.start < limited.end + 1.0]
    assert started_during_pause == []


def test_failed_batch_stops_new_ones(server: FakeOpenAIServer) -> None:
    server.faults.script.append(401)
    model = OpenAIEmbedding(api_key=KEY, api_base=server.url, embed_batch_size=1, **FAST)
    with pytest.raises(EmbeddingAPIError):
        model.embed([f"x{i}" for i in range(20)])
    assert len(server.records) == 1
