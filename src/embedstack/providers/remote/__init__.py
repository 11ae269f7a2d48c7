"""What every remote provider shares: the one retry loop, secrets out of text and logs, credential checks, and
the HTTP clients per event loop.

Modules: `retry` (classifying a failed attempt, the policy, the loop and its sync and async drivers), `redact`
(`scrub`, `protect_logs`), `credentials` (keys HTTP can carry, environment variables, secrets in URLs),
`clients` (a sync client and one async client per event loop). Used by the OpenAI provider
(`embedstack.providers.openai`) and the remote rerankers (`embedstack.rerank.remote`).
"""

from __future__ import annotations

__all__: list[str] = []
