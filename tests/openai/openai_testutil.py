"""Constants and helpers shared by the OpenAI provider tests (imported by name: tests/openai is on sys.path)."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

#: A key distinctive enough that finding it anywhere (repr, logs, errors) is a leak, not a coincidence.
KEY = "sk-embedstack-TESTKEY-7f3a9c2e51b84d6aa0c4"

#: Millisecond backoffs so fault tests stay fast.
FAST: dict[str, Any] = {"retry_backoff": 0.001, "retry_max_backoff": 0.01, "timeout": 5.0}


def embed(model: Any, texts: list[str], mode: str) -> np.ndarray:
    """model.embed or model.aembed, by mode ("sync" or "async")."""
    if mode == "sync":
        return model.embed(texts)  # type: ignore[no-any-return]
    return asyncio.run(model.aembed(texts))  # type: ignore[no-any-return]
