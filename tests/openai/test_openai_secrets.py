"""The API key appears nowhere: repr, to_dict/to_json, events, callbacks, logs, exceptions, tracebacks."""

from __future__ import annotations

import asyncio
import logging
import pickle
import traceback
from typing import Any

import pytest
from openai_fake_server import FakeOpenAIServer
from openai_testutil import FAST, KEY

from embedstack import AzureOpenAIEmbedding, OpenAIEmbedding, OpenAILikeEmbedding
from embedstack.callbacks.base_handler import BaseCallbackHandler
from embedstack.callbacks.manager import CallbackManager
from embedstack.providers.openai import EmbeddingAPIError


class _Recorder(BaseCallbackHandler):
    def __init__(self) -> None:
        super().__init__([], [])
        self.seen: list[str] = []

    def on_event_start(
        self, event_type: Any, payload: Any = None, event_id: str = "", parent_id: str = "", **kw: Any
    ) -> str:
        self.seen.append(repr(payload))
        return event_id

    def on_event_end(self, event_type: Any, payload: Any = None, event_id: str = "", **kw: Any) -> None:
        self.seen.append(repr(payload))

    def start_trace(self, trace_id: str | None = None) -> None:
        return None

    def end_trace(self, trace_id: str | None = None, trace_map: Any = None) -> None:
        return None


def _models(server: FakeOpenAIServer) -> list[Any]:
    return [
        OpenAIEmbedding(api_key=KEY, api_base=server.url, **FAST),
        OpenAILikeEmbedding(model="m", api_key=KEY, api_base=server.url, **FAST),
        AzureOpenAIEmbedding(azure_endpoint=server.root, api_version="2024-10-21", api_key=KEY, **FAST),
    ]


def test_key_not_in_repr_dict_json_or_pickle_text(server: FakeOpenAIServer) -> None:
    for model in _models(server):
        assert model.api_key.get_secret_value() == KEY
        for text in (
            repr(model),
            str(model),
            str(model.to_dict()),
            model.to_json(),
            str(model._descriptor()),
            str(model._identity()),
            repr(model.model_dump()),
        ):
            assert KEY not in text, type(model).__name__
        assert KEY.encode() not in pickle.dumps(model.to_dict())


def test_key_not_in_events_callbacks_or_logs(
    server: FakeOpenAIServer, event_recorder: Any, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = _Recorder()
    server.faults.script.extend([429, 500, "drop"])
    with caplog.at_level(logging.DEBUG):  # every logger: ours, the SDK's, httpx's
        for model in _models(server):
            model.callback_manager = CallbackManager([recorder])
            model.embed(["a", "b"])
            asyncio.run(model.aembed(["c"]))
    assert event_recorder.events and recorder.seen
    for event in event_recorder.events:
        assert KEY not in event.model_dump_json()
    assert all(KEY not in s for s in recorder.seen)
    assert caplog.records
    for record in caplog.records:
        assert KEY not in record.getMessage() and KEY not in str(record.args)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_key_not_in_errors_even_when_the_server_echoes_it(server: FakeOpenAIServer, mode: str) -> None:
    server.api_key = "the-server-wants-another-key"
    server.faults.echo_key_on_401 = True  # a careless server that repeats the bearer token
    model = OpenAIEmbedding(api_key=KEY, api_base=server.url, **FAST)
    with pytest.raises(EmbeddingAPIError) as info:
        if mode == "sync":
            model.embed(["x"])
        else:
            asyncio.run(model.aembed(["x"]))
    assert server.records[0].headers["authorization"] == f"Bearer {KEY}"  # it really was echoed
    err = info.value
    rendered = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    assert KEY not in str(err) and KEY not in repr(err) and KEY not in rendered
    assert "Incorrect API key provided: ***" in str(err)
    assert err.__cause__ is None
    assert KEY not in str(pickle.loads(pickle.dumps(err)))


def test_auth_like_headers_are_masked(server: FakeOpenAIServer) -> None:
    model = OpenAIEmbedding(
        api_key=KEY,
        api_base=server.url,
        default_headers={"X-Api-Key": KEY, "Authorization": f"Bearer {KEY}", "X-Team": "search"},
    )
    d = model.to_dict()
    assert d["default_headers"] == {"X-Api-Key": "***", "Authorization": "***", "X-Team": "search"}
    assert KEY not in repr(model)


def test_credentials_in_the_base_url_are_masked() -> None:
    model = OpenAILikeEmbedding(model="m", api_base="https://user:hunter2-password@llm.internal:8443/v1")
    assert "hunter2" not in repr(model) and "hunter2" not in model.to_json()
    assert model.to_dict()["api_base"] == "https://***@llm.internal:8443/v1"
