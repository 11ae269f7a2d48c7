"""`embedstack` plus a test model, "slowfake:<dim>": a FakeEmbedding that sleeps per batch and logs.

SLOWFAKE_DELAY (seconds per batch) makes a run slow enough to kill mid-way; SLOWFAKE_LOG (a path)
receives every text the model is asked for, one JSON string per line, before the batch returns.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from embedstack.providers.mock import FakeEmbedding
from embedstack.registry import register_provider
from embedstack.types import Role


class LoggingFakeEmbedding(FakeEmbedding):
    """FakeEmbedding (same identity and vectors) that appends each batch's texts to SLOWFAKE_LOG."""

    @classmethod
    def class_name(cls) -> str:
        return "FakeEmbedding"

    def _embed_batch(self, items: list[Any], role: Role) -> Any:
        log = os.environ.get("SLOWFAKE_LOG")
        if log:
            with open(log, "a", encoding="utf-8") as f:
                f.write("".join(json.dumps(i) + "\n" for i in items))
        return super()._embed_batch(items, role)


def _slowfake(arg: str | None) -> FakeEmbedding:
    return LoggingFakeEmbedding(
        embed_dim=int(arg or 16), delay_s=float(os.environ.get("SLOWFAKE_DELAY", "0"))
    )


register_provider(
    "slowfake",
    _slowfake,
    '"slowfake:<dim>" (tests: FakeEmbedding with SLOWFAKE_DELAY and SLOWFAKE_LOG)',
)

if __name__ == "__main__":
    from embedstack.cli import main

    sys.exit(main())
