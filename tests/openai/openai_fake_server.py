"""A real HTTP server on 127.0.0.1 that speaks OpenAI's POST /v1/embeddings, with injectable faults.

Used by the tests and by bench/openai_client.py. Vectors are deterministic per input (seeded from
a sha256 of the text), so a client's output can be compared with `vector_for`. Faults: random or
scripted HTTP errors (429 with Retry-After / retry-after-ms, 500, 401, ...), timeouts, dropped
connections, out-of-order `index`, TEI-style batch caps (413/422), a per-request delay, and 200
answers that are wrong in one of the ways listed in `ANSWER_FAULTS` (NaN/Infinity in JSON, NaN/inf
in base64, 1e39, booleans, numeric strings, wrong lengths, wrong counts, bad indexes, garbage).
The server records every request and the highest concurrency it saw.

Driving faults: `server.faults.script` is a queue, one action consumed per request, e.g.
`script.extend(["nan_json", {"fault": "wrong_length", "row": 2}, 500, "ok"])`; `faults.always`
is the action for every request the script does not cover; `faults.corrupt = {"t3": "inf_b64"}`
corrupts the vector of input "t3" in every answer that contains it.

Run standalone (the benchmark does): `python tests/openai/openai_fake_server.py --delay 0.05`;
it prints its base URL on the first line of stdout and serves until killed.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import random
import socket
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np

__all__ = ["ANSWER_FAULTS", "FakeOpenAIServer", "Faults", "RequestRecord", "count_tokens", "vector_for"]

#: Faults in a 200 answer, by name. Row faults hit one vector (the last input's, or the one a
#: {"fault": ..., "row": i} / {"fault": ..., "input": text} action names); the others hit the answer.
ANSWER_FAULTS: dict[str, str] = {
    "nan_json": "a JSON NaN literal in the vector (all vectors sent as float lists)",
    "inf_json": "a JSON Infinity literal in the vector (float lists)",
    "overflow": "1e39 in the vector: finite in JSON, inf as float32 (float lists)",
    "nan_b64": "a float32 NaN in the vector (all vectors sent as base64)",
    "inf_b64": "a float32 +inf in the vector (base64)",
    "bool": "a JSON true among the vector's numbers (float lists)",
    "numeric_string": 'a numeric string ("0.125") among the vector\'s numbers (float lists)',
    "null": "the vector is JSON null",
    "wrong_length": "the vector has one value too few",
    "empty_vector": "the vector has no values",
    "missing": "the vector is left out of the answer (one vector too few)",
    "duplicate_index": "the vector carries the index of another input",
    "bad_index": "the vector's index is out of range",
    "short": "answer-wide: the last vector is left out (same as 'missing' on the last row)",
    "extra": "answer-wide: one vector too many (a copy of the last, with index n)",
    "other_dim": "answer-wide: every vector has one value more than the server's dimension",
    "ignore_dimensions": "answer-wide: the request's `dimensions` is ignored (full-size vectors)",
    "no_data": "answer-wide: a JSON object without 'data'",
    "garbage": "answer-wide: an HTML page with status 200",
    "malformed": "answer-wide: JSON cut off in the middle",
}
_ROW_FAULTS = frozenset(
    {
        "nan_json",
        "inf_json",
        "overflow",
        "nan_b64",
        "inf_b64",
        "bool",
        "numeric_string",
        "null",
        "wrong_length",
        "empty_vector",
        "missing",
        "duplicate_index",
        "bad_index",
    }
)
_FLOAT_FAULTS = frozenset({"nan_json", "inf_json", "overflow", "bool", "numeric_string"})
_B64_FAULTS = frozenset({"nan_b64", "inf_b64"})
#: The JSON text that replaces one value of a vector, per float-list fault.
_BAD_VALUES = {
    "nan_json": "NaN",
    "inf_json": "Infinity",
    "overflow": "1e39",
    "bool": "true",
    "numeric_string": '"0.125"',
}

_VEC_CACHE: dict[tuple[str, int], np.ndarray] = {}
_VEC_LOCK = threading.Lock()


def _key(item: Any) -> str:
    """A text, or a token array as text, for seeding and recording."""
    if isinstance(item, str):
        return item
    return "tokens:" + ",".join(str(int(t)) for t in item)


def vector_for(item: Any, dim: int) -> np.ndarray:
    """The unit float32 vector the server returns for `item` at `dim` dimensions."""
    key = (_key(item), dim)
    vec = _VEC_CACHE.get(key)
    if vec is None:
        seed = int.from_bytes(hashlib.sha256(key[0].encode("utf-8", "surrogatepass")).digest()[:8], "little")
        raw = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
        vec = raw / np.linalg.norm(raw)
        with _VEC_LOCK:
            _VEC_CACHE[key] = vec
    return vec


def count_tokens(item: Any) -> int:
    """The server's token count for one input: whitespace words (at least 1), or the array length."""
    if isinstance(item, str):
        return max(1, len(item.split()))
    return len(item)


@dataclass
class Faults:
    """What the server does wrong; every field may be changed while it runs."""

    #: Fraction of requests answered with a random status from `fail_statuses`.
    fail_rate: float = 0.0
    fail_statuses: tuple[int, ...] = (429, 500)
    #: Headers sent with injected 429s: Retry-After (seconds, as text) and retry-after-ms.
    retry_after: str | None = None
    retry_after_ms: int | None = None
    #: Fractions of requests that time out (server sleeps `hang_s`) or drop the connection.
    timeout_rate: float = 0.0
    drop_rate: float = 0.0
    hang_s: float = 1.0
    #: Actions for the next requests, consumed one per request: an HTTP status (int), "drop",
    #: "hang", "ok", a name from ANSWER_FAULTS, a dict {"fault": name, "row": i} or
    #: {"fault": name, "input": text} (a row fault aimed at one vector), or a dict
    #: {"status": 429, "headers": {...}, "body": {...}} for full control.
    script: deque[Any] = field(default_factory=deque)
    #: The action for every request the script does not cover (None: answer correctly).
    always: Any = None
    #: Input text -> row fault applied to that input's vector in every answer containing it.
    corrupt: dict[str, str] = field(default_factory=dict)
    #: Inputs that always fail with `poison_status` while present in a request.
    poison: set[str] = field(default_factory=set)
    poison_status: int = 500
    #: TEI-style cap on inputs per request, answered with `batch_cap_status` and TEI's message.
    max_batch: int | None = None
    batch_cap_status: int = 422
    #: Reverse the order of `data` (clients must map by `index`).
    out_of_order: bool = False
    #: Ignore encoding_format and always send float lists (as some servers do).
    force_float: bool = False
    #: Echo the caller's bearer token in 401 messages (a careless server; tests secret scrubbing).
    echo_key_on_401: bool = False

    def __post_init__(self) -> None:
        self.script = deque(self.script)


@dataclass
class RequestRecord:
    """One request as the server saw it."""

    path: str
    start: float
    end: float
    inputs: list[Any]
    status: int
    action: str
    body: dict[str, Any]
    headers: dict[str, str]
    #: The raw query string of the request URL ("" when none).
    query: str = ""


class FakeOpenAIServer:
    """OpenAI embeddings API on 127.0.0.1 in a background thread; use as a context manager."""

    def __init__(
        self,
        dim: int = 16,
        api_key: str | None = None,
        delay_s: float = 0.0,
        faults: Faults | None = None,
        seed: int = 0,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.dim = dim
        self.api_key = api_key
        self.delay_s = delay_s
        self.faults = faults or Faults()
        self.records: list[RequestRecord] = []
        self.in_flight = 0
        self.max_concurrency = 0
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        server = ThreadingHTTPServer((host, port), _Handler, bind_and_activate=False)
        server.daemon_threads = True
        server.request_queue_size = 256
        server.allow_reuse_address = True
        server.server_bind()
        server.server_activate()
        server.owner = self  # type: ignore[attr-defined]
        self._server = server
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        """The port it listens on."""
        return int(self._server.server_address[1])

    @property
    def root(self) -> str:
        """http://127.0.0.1:PORT (Azure endpoints are built on this)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The OpenAI base URL: http://127.0.0.1:PORT/v1."""
        return self.root + "/v1"

    def start(self) -> FakeOpenAIServer:
        """Serve in a daemon thread."""
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def reset(self) -> None:
        """Forget recorded requests and faults (keeps dim, key and delay)."""
        with self._lock:
            self.records.clear()
            self.max_concurrency = 0
            self.faults = Faults()

    # -- what tests read ---------------------------------------------------------------------------
    def vector(self, item: Any, dimensions: int | None = None) -> np.ndarray:
        """The vector this server returns for `item` (with `dimensions`, if the request set it)."""
        return _shorten(vector_for(item, self.dim), dimensions)

    def vectors(self, items: list[Any], dimensions: int | None = None) -> np.ndarray:
        """vector() for each item, stacked."""
        return np.stack([self.vector(i, dimensions) for i in items])

    @property
    def ok_records(self) -> list[RequestRecord]:
        """Requests answered 200 with vectors."""
        return [r for r in self.records if r.status == 200 and r.action == "ok"]

    def embedded_inputs(self) -> list[Any]:
        """Every input the server returned a vector for, in answer order."""
        return [i for r in self.ok_records for i in r.inputs]

    def statuses(self) -> list[int]:
        """The status of every request (0 for dropped or hung ones)."""
        return [r.status for r in self.records]

    # -- request handling (runs in the handler threads) ---------------------------------------------
    def _choose(self, inputs: list[Any]) -> Any:
        f = self.faults
        with self._lock:
            if f.script:
                return f.script.popleft()
            if f.poison and any(isinstance(i, str) and i in f.poison for i in inputs):
                return f.poison_status
            if f.max_batch is not None and len(inputs) > f.max_batch:
                return "cap"
            r = self._rng.random()
            if r < f.fail_rate:
                return self._rng.choice(f.fail_statuses)
            r -= f.fail_rate
            if r < f.timeout_rate:
                return "hang"
            r -= f.timeout_rate
            if r < f.drop_rate:
                return "drop"
            return "ok" if f.always is None else f.always

    def _enter(self) -> None:
        with self._lock:
            self.in_flight += 1
            self.max_concurrency = max(self.max_concurrency, self.in_flight)

    def _leave(self, record: RequestRecord) -> None:
        with self._lock:
            self.in_flight -= 1
            self.records.append(record)


def _shorten(vec: np.ndarray, dimensions: int | None) -> np.ndarray:
    if dimensions is None or dimensions >= vec.shape[0]:
        return vec
    cut = vec[:dimensions]
    return np.asarray(cut / np.linalg.norm(cut), dtype=np.float32)


def _error_body(status: int, message: str, type_: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


_STATUS_TEXT = {
    400: ("invalid_request_error", "Invalid request."),
    401: ("invalid_request_error", "Incorrect API key provided."),
    403: ("permission_error", "You are not allowed to use this model."),
    404: ("invalid_request_error", "The model does not exist."),
    408: ("timeout", "Request timed out."),
    409: ("conflict", "Conflict, please retry."),
    413: ("invalid_request_error", "Payload too large."),
    422: ("invalid_request_error", "Unprocessable entity."),
    429: ("rate_limit_error", "Rate limit reached for requests. Please try again later."),
    500: ("server_error", "The server had an error while processing your request."),
    502: ("server_error", "Bad gateway."),
    503: ("server_error", "The engine is currently overloaded, please try again later."),
}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FakeOpenAI/1.0"
    # Headers and body leave in one write, without Nagle: otherwise delayed ACKs add ~40 ms a request.
    disable_nagle_algorithm = True
    wbufsize = 1 << 16
    _record: dict[str, Any] | None = None

    def log_message(self, format: str, *args: Any) -> None:  # silence the default stderr logging
        return None

    @property
    def owner(self) -> FakeOpenAIServer:
        return self.server.owner  # type: ignore[attr-defined, no-any-return]

    def _note(self, **fields: Any) -> None:
        if self._record is not None:
            self._record.update(fields)

    def _finish(self, status: int) -> None:
        """Record the request once, before its answer leaves (a client never sees an unrecorded answer)."""
        rec, self._record = self._record, None
        if rec is not None:
            self.owner._leave(
                RequestRecord(
                    path=rec["path"],
                    start=rec["start"],
                    end=time.perf_counter(),
                    inputs=rec["inputs"],
                    status=status,
                    action=rec["action"],
                    body=rec["body"],
                    headers=rec["headers"],
                    query=rec["query"],
                )
            )

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self._finish(status)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), headers)

    def _error(self, status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None) -> None:
        type_ = _STATUS_TEXT.get(status, ("error", ""))[0]
        self._json(status, _error_body(status, message, type_, code), headers)

    def do_GET(self) -> None:
        owner = self.owner
        if urlsplit(self.path).path == "/stats":
            stats = {
                "requests": len(owner.records),
                "max_concurrency": owner.max_concurrency,
                "statuses": owner.statuses(),
                "inputs": sum(len(r.inputs) for r in owner.ok_records),
            }
            self._json(200, stats)
        else:
            self._error(404, f"no route {self.path}")

    def do_POST(self) -> None:
        owner = self.owner
        parts = urlsplit(self.path)
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {k.lower(): v for k, v in self.headers.items()}
        if parts.path == "/reset":
            owner.reset()
            self._json(200, {"ok": True})
            return
        azure = parts.path.startswith("/openai/deployments/") and parts.path.endswith("/embeddings")
        if parts.path != "/v1/embeddings" and not azure:
            self._error(404, f"no route {parts.path}")
            return
        owner._enter()
        self._record = {
            "path": parts.path,
            "start": time.perf_counter(),
            "inputs": [],
            "body": {},
            "headers": headers,
            "action": "ok",
            "query": parts.query,
        }
        try:
            self._embeddings(owner, raw, headers, azure, parts.query)
        finally:
            self._finish(0)  # dropped or hung: no answer was sent

    def _embeddings(
        self, owner: FakeOpenAIServer, raw: bytes, headers: dict[str, str], azure: bool, query: str
    ) -> None:
        if owner.api_key is not None:  # authentication first, as OpenAI does
            given = headers.get("api-key") if azure else headers.get("authorization", "").removeprefix("Bearer ")
            if given != owner.api_key:
                shown = given or ""
                if not owner.faults.echo_key_on_401 and given:
                    shown = given[:3] + "***" + given[-4:]
                self._note(action="auth")
                self._error(401, f"Incorrect API key provided: {shown}.", "invalid_api_key")
                return
        if azure and "api-version" not in parse_qs(query):
            self._note(action="azure")
            self._error(404, "api-version query parameter is required")
            return
        try:
            body = json.loads(raw)
            inputs = body["input"]
        except (ValueError, KeyError):
            self._note(action="bad-json")
            self._error(400, "We could not parse the JSON body of your request.")
            return
        if isinstance(inputs, str) or (inputs and isinstance(inputs[0], int)):
            inputs = [inputs]
        self._note(inputs=inputs, body=body)
        if any(i == "" for i in inputs):
            self._note(action="empty")
            self._error(400, "'$.input' is invalid: empty strings are not allowed.")
            return
        if len(inputs) > 2048:
            self._note(action="too-many")
            self._error(400, "'$.input' is invalid: at most 2048 inputs.")
            return
        if owner.delay_s:
            time.sleep(owner.delay_s)
        action = owner._choose(inputs)
        if isinstance(action, dict) and "fault" in action:
            self._ok(owner, inputs, body, action)
        elif isinstance(action, dict):
            st = int(action.get("status", 500))
            self._note(action="scripted")
            default = _error_body(st, _STATUS_TEXT.get(st, ("error", "error"))[1], "error")
            self._json(st, action.get("body") or default, action.get("headers"))
        elif isinstance(action, int):
            self._fail(owner, action)
        elif action == "cap":
            self._note(action="cap")
            msg = f"batch size {len(inputs)} > maximum allowed batch size {owner.faults.max_batch}"
            self._json(owner.faults.batch_cap_status, {"error": msg, "error_type": "Validation"})
        elif action == "hang":
            self._note(action="hang")
            time.sleep(owner.faults.hang_s)
            self.close_connection = True
        elif action == "drop":
            self._note(action="drop")
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        elif action == "ok":
            self._ok(owner, inputs, body, None)
        elif isinstance(action, str) and action in ANSWER_FAULTS:
            self._ok(owner, inputs, body, {"fault": action})
        else:
            raise ValueError(f"unknown fault action {action!r}")

    def _fail(self, owner: FakeOpenAIServer, status: int) -> None:
        message = _STATUS_TEXT.get(status, ("error", f"HTTP {status}"))[1]
        headers: dict[str, str] = {}
        if status == 429:
            if owner.faults.retry_after is not None:
                headers["Retry-After"] = owner.faults.retry_after
            if owner.faults.retry_after_ms is not None:
                headers["retry-after-ms"] = str(owner.faults.retry_after_ms)
        self._note(action="fault")
        self._error(status, message, headers=headers)

    def _ok(self, owner: FakeOpenAIServer, inputs: list[Any], body: dict[str, Any], fault: Any) -> None:
        """A 200 answer: the right vectors, or with `fault` ({"fault": name, "row"/"input": ...}) applied."""
        name = fault["fault"] if fault else None
        if name is not None and name not in ANSWER_FAULTS:
            raise ValueError(f"unknown answer fault {name!r}")
        rows: dict[int, str] = {}  # row -> row fault
        for i, text in enumerate(inputs):
            if isinstance(text, str) and text in owner.faults.corrupt:
                rows[i] = owner.faults.corrupt[text]
        if name in _ROW_FAULTS:
            row = inputs.index(fault["input"]) if "input" in fault else int(fault.get("row", -1)) % len(inputs)
            rows[row] = name
        actions = sorted(set(rows.values()) | ({name} if name else set()))
        self._note(action="+".join(actions) if actions else "ok")
        if name == "garbage":
            self._send(200, b"<html><body><h1>502 Bad Gateway</h1></body></html>", {"Content-Type": "text/html"})
            return
        if name == "malformed":
            self._send(200, b'{"object": "list", "data": [{"object": "embedding", "index": 0, "embed')
            return
        if name == "no_data":
            self._json(200, {"object": "list", "model": body.get("model", "")})
            return
        n = len(inputs)
        dims = None if name == "ignore_dimensions" else body.get("dimensions")
        b64 = body.get("encoding_format") == "base64" and not owner.faults.force_float
        if any(f in _FLOAT_FAULTS for f in rows.values()):
            b64 = False
        if any(f in _B64_FAULTS for f in rows.values()):
            b64 = True
        order = list(range(n))
        if owner.faults.out_of_order:
            order.reverse()
        if name == "short":
            order = [i for i in order if i != n - 1]
        parts = []
        for i in order:
            f = rows.get(i)
            if f == "missing":
                continue
            vec = owner.vector(inputs[i], dims)
            if name == "other_dim":
                vec = np.append(vec, np.float32(0.5))
            index = {"duplicate_index": (i + 1) % n if n > 1 else i, "bad_index": n}.get(f or "", i)
            parts.append(f'{{"object":"embedding","index":{index},"embedding":{_encode(vec, f, b64)}}}')
        if name == "extra":
            vec = owner.vector(inputs[-1], dims)
            parts.append(f'{{"object":"embedding","index":{n},"embedding":{_encode(vec, None, b64)}}}')
        tokens = sum(count_tokens(i) for i in inputs)
        usage = f'{{"prompt_tokens":{tokens},"total_tokens":{tokens}}}'
        model = json.dumps(body.get("model", ""))
        text = f'{{"object":"list","data":[{",".join(parts)}],"model":{model},"usage":{usage}}}'
        self._send(200, text.encode())


def _encode(vec: np.ndarray, fault: str | None, b64: bool) -> str:
    """One vector as JSON text (a base64 string or a float list), with a row fault applied."""
    if fault == "null":
        return "null"
    if fault == "empty_vector":
        vec = vec[:0]
    elif fault == "wrong_length":
        vec = vec[:-1]
    elif fault in ("nan_b64", "inf_b64"):
        vec = vec.copy()
        vec[len(vec) // 2] = np.nan if fault == "nan_b64" else np.inf
    if b64:
        return '"' + base64.b64encode(vec.astype("<f4").tobytes()).decode() + '"'
    bad = _BAD_VALUES.get(fault or "")
    if bad is None or not len(vec):
        return json.dumps(vec.tolist())
    values = [json.dumps(v) for v in vec.tolist()]
    values[len(values) // 2] = bad
    return "[" + ",".join(values) + "]"


def main(argv: list[str] | None = None) -> None:
    """Serve until killed; print the base URL first."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--dim", type=int, default=1536)
    p.add_argument("--delay", type=float, default=0.0, help="seconds added to every request")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--api-key", default=None)
    args = p.parse_args(argv)
    server = FakeOpenAIServer(dim=args.dim, delay_s=args.delay, api_key=args.api_key, port=args.port)
    print(server.url, flush=True)
    try:
        server._server.serve_forever(poll_interval=0.05)
    except KeyboardInterrupt:
        pass
    finally:
        server._server.server_close()
    sys.exit(0)


if __name__ == "__main__":
    main()
