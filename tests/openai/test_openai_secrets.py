"""The API key appears nowhere: repr, to_dict/to_json, events, callbacks, logs, exceptions, tracebacks."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import pickle
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from openai_fake_server import FakeOpenAIServer
from openai_testutil import FAST, KEY
from pydantic import SecretStr

from embedstack import AzureOpenAIEmbedding, OpenAIEmbedding, OpenAILikeEmbedding
from embedstack.callbacks.base_handler import BaseCallbackHandler
from embedstack.callbacks.manager import CallbackManager
from embedstack.providers.openai import EmbeddingAPIError
from embedstack.providers.remote.redact import scrub


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
            str(model.provider.identity()),
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


def test_headers_in_the_cache_identity_carry_no_credential(
    server: FakeOpenAIServer, event_recorder: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Extra headers are in the identity (they can select a model) as names and sha256 of values; credential headers
    are not there at all: not in identity(), model_identity(), events or logs."""
    import hashlib
    import json

    headers = {"X-Api-Key": KEY, "Authorization": f"Bearer {KEY}", "Ocp-Apim-Subscription-Key": KEY, "X-Deploy": "b"}
    for model in _models(server):
        model.default_headers = {**headers, **({"api-key": KEY} if isinstance(model, AzureOpenAIEmbedding) else {})}
        identity, shown = model.provider.identity(), model.provider.model_identity()
        want = {"x-deploy": "sha256:" + hashlib.sha256(b"b").hexdigest()}
        assert identity["default_headers"] == shown["default_headers"] == want, type(model).__name__
        for text in (json.dumps(identity), json.dumps(shown), repr(model), model.to_json()):
            assert KEY not in text and hashlib.sha256(KEY.encode()).hexdigest() not in text
        with caplog.at_level(logging.DEBUG):
            model.embed(["a", "b"])
    assert server.records[-1].headers["x-deploy"] == "b"
    assert event_recorder.events
    for event in event_recorder.events:
        assert KEY not in event.model_dump_json()
    for record in caplog.records:
        assert KEY not in record.getMessage() and KEY not in str(record.args)


def test_credentials_in_the_base_url_are_masked() -> None:
    model = OpenAILikeEmbedding(model="m", api_base="https://user:hunter2-password@llm.internal:8443/v1")
    assert "hunter2" not in repr(model) and "hunter2" not in model.to_json()
    assert model.to_dict()["api_base"] == "https://***@llm.internal:8443/v1"


# -- issue 13, defect 8: keys HTTP cannot carry, and credentials in the base URL ----------------------------------

_ALL_LOGGERS = ("embedstack", "openai", "httpx", "httpx2", "httpcore", "httpcore2")

BAD_KEYS = {
    "trailing newline": (KEY + "\n", "ends with a newline"),
    "trailing CRLF": (KEY + "\r\n", "ends with a newline"),
    "trailing space": (KEY + " ", "ends with a space"),
    "leading space": (" " + KEY, "starts with a space"),
    "tab": (KEY[:10] + "\t" + KEY[10:], "control character (U+0009"),
    "NUL": (KEY[:10] + "\x00" + KEY[10:], "control character (U+0000"),
    "inner newline": (KEY[:10] + "\n" + KEY[10:], "control character (U+000A"),
    "non-ASCII": (KEY[:10] + "é" + KEY[10:], "non-ASCII character (U+00E9 LATIN SMALL LETTER E WITH ACUTE)"),
    "zero-width space": (KEY + "\u200b", "non-ASCII character (U+200B ZERO WIDTH SPACE)"),
}


@contextlib.contextmanager
def _all_logs_at_debug(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Every record of our loggers, the SDK's and the HTTP stack's, down to DEBUG."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(caplog.at_level(logging.DEBUG))
        for name in _ALL_LOGGERS:
            stack.enter_context(caplog.at_level(logging.DEBUG, logger=name))
        yield


def _logged_text(caplog: pytest.LogCaptureFixture) -> str:
    """All captured records as a handler would write them, tracebacks included."""
    fmt = logging.Formatter("%(name)s %(levelname)s %(message)s")
    return "\n".join(fmt.format(r) + repr(r.args) for r in caplog.records)


@pytest.mark.parametrize("case", sorted(BAD_KEYS))
def test_a_key_http_cannot_carry_is_refused_at_construction(server: FakeOpenAIServer, case: str) -> None:
    key, what = BAD_KEYS[case]
    with pytest.raises(ValueError) as info:
        OpenAIEmbedding(api_key=key, api_base=server.url, **FAST)
    msg = str(info.value)
    assert msg.startswith("api_key ") and what in msg, msg
    assert KEY not in msg and KEY[:10] not in msg and KEY[10:] not in msg
    assert "strip" in msg or "copy the key again" in msg
    assert KEY not in repr(info.value) and info.value.__cause__ is None and info.value.__context__ is None


def test_a_key_from_the_environment_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY + "\n")
    with pytest.raises(ValueError, match=r"^OPENAI_API_KEY ends with a newline.*strip") as info:
        OpenAIEmbedding()
    assert KEY not in str(info.value)
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", KEY + "\n")
    with pytest.raises(ValueError, match=r"^AZURE_OPENAI_API_KEY ends with a newline") as info:
        AzureOpenAIEmbedding(azure_endpoint="https://x.openai.azure.com", api_version="2024-10-21")
    assert KEY not in str(info.value)


def test_every_provider_and_key_form_is_checked(server: FakeOpenAIServer) -> None:
    bad = KEY + "\n"
    builders: list[Callable[[], Any]] = [
        lambda: OpenAILikeEmbedding(model="m", api_key=bad, api_base=server.url),
        lambda: AzureOpenAIEmbedding(azure_endpoint=server.root, api_version="2024-10-21", api_key=bad),
        lambda: OpenAIEmbedding(api_key=SecretStr(bad), api_base=server.url),
        lambda: OpenAIEmbedding(api_key=KEY, api_base=server.url, default_headers={"X-Api-Key": bad}),
    ]
    for build in builders:
        with pytest.raises(ValueError, match="ends with a newline") as info:
            build()
        assert KEY not in str(info.value)
    with pytest.raises(TypeError, match=r"api_key is bytes; decode it") as type_info:
        OpenAIEmbedding(api_key=bad.encode(), api_base=server.url)  # a key read from a file opened "rb"
    assert KEY not in str(type_info.value)


def test_a_bad_key_set_later_fails_before_any_request_without_retries(
    server: FakeOpenAIServer, caplog: pytest.LogCaptureFixture, mode: str
) -> None:
    model = OpenAIEmbedding(api_key=KEY, api_base=server.url, **FAST)
    model.api_key = SecretStr(KEY + "\n")  # assignment is not validated by pydantic
    with _all_logs_at_debug(caplog), pytest.raises(ValueError, match="api_key ends with a newline") as info:
        if mode == "sync":
            model.embed(["x"])
        else:
            asyncio.run(model.aembed(["x"]))
    assert KEY not in str(info.value)
    assert server.records == []  # nothing was sent
    assert not [r for r in caplog.records if "retry" in r.getMessage()]  # and nothing was retried
    assert KEY not in _logged_text(caplog)


SECRET_BASES = {
    "api-key in the query": ("{root}/v1?api-key=QUERYSECRET-81d2f0", "QUERYSECRET-81d2f0"),
    "key in the query": ("{root}/v1?key=QUERYSECRET-81d2f0&keep=visible", "QUERYSECRET-81d2f0"),
    "password in the URL": ("http://alice:URLPASSWORD-5c9e@127.0.0.1:{port}/v1", "URLPASSWORD-5c9e"),
}


@pytest.mark.parametrize("case", sorted(SECRET_BASES))
def test_credentials_in_api_base_are_used_but_never_shown(
    server: FakeOpenAIServer, event_recorder: Any, caplog: pytest.LogCaptureFixture, case: str
) -> None:
    template, secret = SECRET_BASES[case]
    base = template.format(root=server.root, port=server.port)
    server.api_key = None  # the fake server checks no key: the URL's credentials are what is sent
    model = OpenAILikeEmbedding(model="m", api_base=base, api_key=KEY, max_retries=1, **FAST)
    server.faults.script.extend([500, 500])  # a retry, then a final failure
    with _all_logs_at_debug(caplog):
        with pytest.raises(EmbeddingAPIError) as info:
            model.embed(["a"])
        assert len(server.records) == 2
        np.testing.assert_array_equal(model.embed(["a", "b"]), server.vectors(["a", "b"]))
        np.testing.assert_array_equal(asyncio.run(model.aembed(["c"])), server.vectors(["c"]))
    # the real URL was used ...
    for record in server.records:
        assert record.path == "/v1/embeddings"
        if "query" in case:
            assert secret in record.query
        else:
            assert record.headers["authorization"] == "Basic " + base64.b64encode(f"alice:{secret}".encode()).decode()
    assert "keep=visible" in server.records[0].query or "keep" not in base
    # ... and shown nowhere
    err = info.value
    shown = [
        str(err),
        repr(err),
        "".join(traceback.format_exception(type(err), err, err.__traceback__)),
        repr(model),
        str(model.to_dict()),
        model.to_json(),
        _logged_text(caplog),
        *(e.model_dump_json() for e in event_recorder.events),
    ]
    assert caplog.records and event_recorder.events
    assert any("HTTP Request" in r.getMessage() for r in caplog.records)  # the HTTP stack did log its URLs
    for text in shown:
        assert secret not in text and KEY not in text
    assert "***" in str(err) and "***" in model.to_dict()["api_base"]
    if "keep" in base:
        assert "keep=visible" in model.to_dict()["api_base"]


def test_credentials_in_the_azure_endpoint_are_masked(server: FakeOpenAIServer) -> None:
    model = AzureOpenAIEmbedding(
        azure_endpoint=f"{server.root}?code=FUNCSECRET-1a2b", api_version="2024-10-21", api_key=KEY, **FAST
    )
    np.testing.assert_array_equal(model.embed(["z"]), server.vectors(["z"]))
    assert "code=FUNCSECRET-1a2b" in server.records[0].query and "api-version=2024-10-21" in server.records[0].query
    for text in (repr(model), model.to_json()):
        assert "FUNCSECRET" not in text


def test_scrub_catches_the_forms_a_secret_takes_in_messages() -> None:
    secret = "s3cr3t/with+odd=chars\n"
    text = f"raw {secret} escaped {secret!r} bytes {secret.encode()!r} quoted s3cr3t%2Fwith%2Bodd%3Dchars%0A"
    clean = scrub(text, [secret])
    assert "s3cr3t" not in clean and clean.count("***") == 4
    assert scrub("GET https://u:p@h/v1?api-key=abc&x=1 and ?access_token=zz", []) == (
        "GET https://***@h/v1?api-key=***&x=1 and ?access_token=***"
    )


def test_an_azure_token_http_cannot_carry_fails_without_retries(
    server: FakeOpenAIServer, caplog: pytest.LogCaptureFixture, mode: str
) -> None:
    calls: list[int] = []

    def token() -> str:
        calls.append(1)
        return KEY + "\n"

    model = AzureOpenAIEmbedding(
        azure_endpoint=server.root, api_version="2024-10-21", azure_ad_token_provider=token, **FAST
    )
    with _all_logs_at_debug(caplog), pytest.raises(ValueError, match="azure_ad_token_provider ends with a newline"):
        if mode == "sync":
            model.embed(["x"])
        else:
            asyncio.run(model.aembed(["x"]))
    assert server.records == [] and calls == [1]  # asked once, sent never, not retried
    assert KEY not in _logged_text(caplog)
