"""The server's defaults, importable without its dependencies (the command line shows them in --help)."""

from __future__ import annotations

__all__ = [
    "DEFAULT_MAX_BATCH_TOKENS",
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MAX_QUEUE",
    "DEFAULT_MAX_WAIT_MS",
    "MAX_INPUTS",
    "SERVER_HEADER",
]

#: Response header on every answer (the server's version; exposed to browsers with CORS).
SERVER_HEADER = "x-embedstack-server"
#: Tokens per model call: small enough that a single-text request never waits long behind a big one on a CPU.
DEFAULT_MAX_BATCH_TOKENS = 2048
#: How long the first input to an idle model waits for requests already arriving to join its batch (a lone one: 0).
DEFAULT_MAX_WAIT_MS = 2.0
#: Inputs waiting per model before new requests get 429.
DEFAULT_MAX_QUEUE = 16384
#: Request bodies over this are refused (413): 2,048 texts of ~4 KB each.
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
#: Inputs per request, as OpenAI allows; more is a 413.
MAX_INPUTS = 2048
