"""Per-process state (SDK clients, learned batch cap, 429 cooldown): never pickled, rebuilt when a field changes."""

from __future__ import annotations

import copy
import json
import pickle
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
from openai_fake_server import FakeOpenAIServer, Faults
from openai_testutil import KEY
from pydantic import SecretStr

from embedstack.providers.openai import EmbeddingAPIError, OpenAILikeEmbedding

# Loads a pickled model from stdin and prints what it learned and the vectors it gets, as JSON.
_CHILD = """
import json, pickle, sys
model = pickle.loads(sys.stdin.buffer.read())
out = {"max_inputs": model._max_inputs(), "cooldown": model._cooldown.remaining() > 0}
out["vectors"] = model.embed(["fresh", "process"]).tolist()
print(json.dumps(out))
"""


def test_pickled_model_embeds_in_a_fresh_process_without_this_ones_state(
    make_model: Any, server: FakeOpenAIServer
) -> None:
    server.faults = Faults(max_batch=3)
    model = make_model(cls=OpenAILikeEmbedding, model="bge", num_workers=2)
    model.embed([f"t{i}" for i in range(6)])
    assert model._max_inputs() == 3  # learned from the server's 422
    model._cooldown.extend(3600)  # a 429 pause: a deadline on this process's monotonic clock
    child = subprocess.run(
        [sys.executable, "-c", _CHILD], input=pickle.dumps(model), capture_output=True, timeout=120, check=False
    )
    assert child.returncode == 0, child.stderr.decode()
    got = json.loads(child.stdout)
    assert got["max_inputs"] == model.max_inputs_per_request  # learned again if needed, not carried over
    assert got["cooldown"] is False  # the hour-long pause stayed in this process
    np.testing.assert_array_equal(np.asarray(got["vectors"], dtype=np.float32), server.vectors(["fresh", "process"]))


@pytest.mark.parametrize("how", ["pickle", "deepcopy", "model_copy_deep"])
def test_copies_get_their_own_clients(make_model: Any, server: FakeOpenAIServer, how: str) -> None:
    model = make_model()
    model.embed(["warm"])
    client = model._sync_client()
    if how == "pickle":
        clone = pickle.loads(pickle.dumps(model))
    elif how == "deepcopy":
        clone = copy.deepcopy(model)
    else:
        clone = model.model_copy(deep=True)
    assert clone._sync_client() is not client
    np.testing.assert_array_equal(clone.embed(["c"]), server.vectors(["c"]))
    assert model._sync_client() is client  # the original keeps its own


def test_a_shallow_copy_with_another_server_talks_to_that_server(make_model: Any, server: FakeOpenAIServer) -> None:
    model = make_model()
    model.embed(["warm"])
    with FakeOpenAIServer(dim=8, api_key=KEY) as other:
        moved = model.model_copy(update={"api_base": other.url})
        np.testing.assert_array_equal(moved.embed(["there"]), other.vectors(["there"]))
        assert [r.inputs for r in other.ok_records] == [["there"]]
    np.testing.assert_array_equal(model.embed(["here"]), server.vectors(["here"]))
    assert model.model_copy()._sync_client() is model._sync_client()  # no update: the clients are shared


def test_a_key_assigned_after_use_is_the_key_sent(make_model: Any, server: FakeOpenAIServer) -> None:
    model = make_model(max_retries=0)
    model.embed(["before"])
    model.api_key = SecretStr("sk-another-key-the-server-refuses")
    with pytest.raises(EmbeddingAPIError) as info:
        model.embed(["after"])
    assert info.value.status_code == 401
    model.api_key = SecretStr(KEY)
    np.testing.assert_array_equal(model.embed(["again"]), server.vectors(["again"]))


def test_a_learned_cap_is_forgotten_when_the_server_changes(make_model: Any, server: FakeOpenAIServer) -> None:
    server.faults = Faults(max_batch=2)
    model = make_model(cls=OpenAILikeEmbedding, model="bge")
    model.embed(["a", "b", "c"])
    assert model._max_inputs() == 2
    model.timeout = 7.0  # not the server: the cap stays
    assert model._max_inputs() == 2
    with FakeOpenAIServer(dim=16) as other:
        model.api_base = other.url
        assert model._max_inputs() == model.max_inputs_per_request
        model.embed(["x", "y", "z"])
        assert [len(r.inputs) for r in other.ok_records] == [3]


def test_precheck_names_items_by_their_stream_position_in_embed_iter(make_model: Any) -> None:
    """embed_iter's chunks: an empty string deep in the stream is named where the caller has it."""
    texts = [f"t{i}" for i in range(30)]
    texts[27] = ""
    model = make_model()
    with pytest.raises(ValueError, match=r"texts\[27\] is an empty string"):
        list(model.embed_iter(texts, chunk_size=10))
