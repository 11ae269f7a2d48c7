"""Malformed 200 answers (issue 13, defect 2): non-finite values, non-numbers, wrong lengths, counts and indexes.

Every fault comes from the real fake server (tests/openai/openai_fake_server.py, ANSWER_FAULTS): such an
answer is retried like any malformed one, and a final failure names the affected items and says what was
wrong; a bad vector is never returned or cached.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pytest
from openai_fake_server import ANSWER_FAULTS, FakeOpenAIServer
from openai_testutil import embed

from embedstack.kvstore.simple import SimpleKVStore
from embedstack.providers.openai import EmbeddingAPIError

TEXTS = [f"t{i}" for i in range(6)]

#: Row faults aimed at texts[3], and what the error must say about them.
ROW_FAULTS = {
    "nan_json": "NaN or infinite",
    "inf_json": "NaN or infinite",
    "overflow": "NaN or infinite",
    "nan_b64": "NaN or infinite",
    "inf_b64": "NaN or infinite",
    "bool": "true/false",
    "numeric_string": "strings",
    "null": "null",
    "wrong_length": "15 values where the other vectors have 16",
    "empty_vector": "0 values where the other vectors have 16",
    "missing": "no vector",
    "duplicate_index": "the same index on two vectors",
}
#: Which items a row fault at texts[3] makes unusable (a repeated index also leaves texts[4] in doubt).
HIT = {"duplicate_index": [3, 4]}

#: Faults of the whole answer, and what the error must say about them.
ANSWER_WIDE = {
    "extra": "7 vectors for 6 inputs",
    "bad_index": "index 6",
    "garbage": "not JSON",
    "malformed": "not JSON",
    "no_data": "no 'data' list",
}


def test_every_answer_fault_is_covered() -> None:
    covered = set(ROW_FAULTS) | set(ANSWER_WIDE) | {"short", "other_dim", "ignore_dimensions"}
    assert covered == set(ANSWER_FAULTS)


@pytest.mark.parametrize("fault", sorted(ROW_FAULTS))
@pytest.mark.slow  # real retry waits, for every kind of bad vector
def test_a_bad_vector_is_retried_then_named(make_model: Any, server: FakeOpenAIServer, fault: str, mode: str) -> None:
    server.faults.corrupt = {"t3": fault}
    store = SimpleKVStore()
    model = make_model(max_retries=2, embeddings_cache=store)
    with pytest.raises(EmbeddingAPIError) as info:
        embed(model, TEXTS, mode)
    err = info.value
    msg = str(err)
    hit = HIT.get(fault, [3])
    assert err.indexes == hit and f"texts[{hit[0]}:{hit[-1] + 1}] ({len(hit)} item" in msg, msg
    assert "after 3 attempts" in msg and "malformed response body" in msg
    assert ROW_FAULTS[fault] in msg, msg
    assert len(server.records) == 3 and all(r.action == fault for r in server.records)
    # nothing of the bad answer was kept: a rerun asks again for every text and gets the right vectors
    server.faults.corrupt = {}
    np.testing.assert_array_equal(embed(model, TEXTS, mode), server.vectors(TEXTS))
    assert server.records[-1].inputs == TEXTS


@pytest.mark.parametrize("fault", sorted(ANSWER_WIDE))
def test_a_bad_answer_is_retried_then_names_the_request(
    make_model: Any, server: FakeOpenAIServer, fault: str, mode: str
) -> None:
    server.faults.always = fault
    with pytest.raises(EmbeddingAPIError) as info:
        embed(make_model(max_retries=1), TEXTS, mode)
    msg = str(info.value)
    assert "texts[0:6] (6 items)" in msg and "after 2 attempts" in msg, msg
    assert ANSWER_WIDE[fault] in msg, msg
    assert len(server.records) == 2


@pytest.mark.parametrize("fault", ["nan_b64", "overflow", "bool", "numeric_string", "wrong_length", "extra", "garbage"])
def test_bad_answers_then_a_good_one(make_model: Any, server: FakeOpenAIServer, fault: str, mode: str) -> None:
    server.faults.script.extend([fault, {"fault": fault, "row": 0}])
    out = embed(make_model(), TEXTS, mode)
    np.testing.assert_array_equal(out, server.vectors(TEXTS))
    assert [r.action for r in server.records] == [fault, fault, "ok"]


def test_retries_of_bad_answers_are_logged(
    make_model: Any, server: FakeOpenAIServer, caplog: pytest.LogCaptureFixture
) -> None:
    server.faults.script.append("nan_b64")
    with caplog.at_level(logging.INFO, logger="embedstack.openai"):
        make_model().embed(TEXTS)
    lines = [r.getMessage() for r in caplog.records if r.name == "embedstack.openai"]
    assert any("NaN or infinite" in line and "retry 1/8" in line for line in lines), lines


def test_a_length_that_differs_from_earlier_calls(make_model: Any, server: FakeOpenAIServer, mode: str) -> None:
    model = make_model(max_retries=1)
    embed(model, ["first"], mode)  # 16 values
    server.faults.always = "other_dim"
    with pytest.raises(EmbeddingAPIError) as info:
        embed(model, ["a", "b"], mode)
    msg = str(info.value)
    assert "17 values where this model's earlier answers had 16" in msg and "texts[0:2]" in msg, msg
    assert len(server.records) == 3


def test_a_length_that_differs_from_the_requested_dimensions(
    make_model: Any, server: FakeOpenAIServer, mode: str
) -> None:
    server.faults.always = "ignore_dimensions"
    with pytest.raises(EmbeddingAPIError) as info:
        embed(make_model(dimensions=8, max_retries=1), ["x", "y"], mode)
    msg = str(info.value)
    assert "16 values though dimensions=8 was asked" in msg and "may not support `dimensions`" in msg, msg
    assert "after 2 attempts" in msg and len(server.records) == 2


def test_several_problems_in_one_answer_are_all_named(make_model: Any, server: FakeOpenAIServer) -> None:
    server.faults.corrupt = {"t1": "nan_json", "t4": "bool"}
    with pytest.raises(EmbeddingAPIError) as info:
        make_model(max_retries=0).embed(TEXTS)
    err = info.value
    assert err.indexes == [1, 4]
    assert "NaN or infinite" in str(err) and "true/false" in str(err)


def test_a_window_of_a_long_input_names_its_item(make_model: Any, server: FakeOpenAIServer) -> None:
    long = " ".join(f"w{i}" for i in range(60))
    model = make_model(max_input_tokens=50, token_encoding=None, long_inputs="split", max_retries=0)
    server.faults.script.append({"fault": "inf_b64", "row": 2})  # a window of texts[1]
    with pytest.raises(EmbeddingAPIError) as info:
        model.embed(["short", long])
    assert info.value.indexes == [1], str(info.value)


def test_good_float_answers_still_pass(make_model: Any, server: FakeOpenAIServer, mode: str) -> None:
    server.faults.force_float = True  # float lists with ints among them are fine
    server.faults.script.append(
        {"status": 200, "body": {"data": [{"index": 0, "embedding": [1, 0, 2.5, -3]}], "usage": {"total_tokens": 1}}}
    )
    np.testing.assert_array_equal(embed(make_model(), ["x"], mode), np.array([[1, 0, 2.5, -3]], dtype=np.float32))
