"""`embedstack serve` on the command line: --model parsing, --help without the server's dependencies loaded,
the API key from the environment, and the warning for a public bind without a key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from embedstack.cli import build_parser
from embedstack.cli._serve import _is_loopback, parse_models

from .conftest import start_server


def test_parse_models() -> None:
    assert parse_models(None) == [(None, "local")]
    assert parse_models(["local"]) == [(None, "local")]
    assert parse_models(["minilm=local"]) == [("minilm", "local")]
    assert parse_models(["e5=local:intfloat/e5-small-v2", "fake:8"]) == [
        ("e5", "local:intfloat/e5-small-v2"),
        (None, "fake:8"),
    ]
    assert parse_models(["local:/models/a=b"]) == [(None, "local:/models/a=b")]  # '=' after ':' is part of a path
    with pytest.raises(ValueError, match="names no model"):
        parse_models(["name="])


def test_parser_defaults() -> None:
    args = build_parser().parse_args(["serve"])
    assert (args.host, args.port, args.models, args.api_key, args.no_cache) == ("127.0.0.1", 8000, None, None, False)
    args = build_parser().parse_args(["serve", "--model", "a=fake:4", "--model", "fake:8", "--max-wait-ms", "0"])
    assert args.models == ["a=fake:4", "fake:8"] and args.max_wait_ms == 0


def test_loopback() -> None:
    assert _is_loopback("127.0.0.1") and _is_loopback("localhost") and _is_loopback("::1")
    assert not _is_loopback("0.0.0.0") and not _is_loopback("10.1.2.3")


@pytest.mark.slow  # a subprocess
def test_help_does_not_import_the_server() -> None:
    code = (
        "import sys; from embedstack.cli import build_parser; build_parser(); "
        "print(sorted(m for m in ('fastapi', 'uvicorn', 'embedstack.server.app') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.slow  # a subprocess
def test_key_from_environment_and_public_bind_warning(tmp_path: Path) -> None:
    server = start_server(
        tmp_path,
        "--model",
        "f=fake:8",
        "--host",
        "0.0.0.0",
        "--no-cache",
        env={"EMBEDSTACK_API_KEY": "env-key"},
    )
    try:
        url = server.url
        body = {"input": "x", "model": "f"}
        assert httpx.post(f"{url}/v1/embeddings", json=body).status_code == 401
        r = httpx.post(f"{url}/v1/embeddings", json=body, headers={"authorization": "Bearer env-key"})
        assert r.status_code == 200
    finally:
        assert server.stop() == 0
    log = server.log.read_text()
    assert "env-key" not in log
    assert "without an API key" not in log  # a key is set

    bare = start_server(tmp_path, "--model", "f=fake:8", "--host", "0.0.0.0", "--no-cache")
    assert bare.stop() == 0
    assert "without an API key" in bare.log.read_text()
