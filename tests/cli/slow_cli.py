"""`embedstack` plus a test model, "slowfake:<dim>": a FakeEmbedding that sleeps per batch and logs.

SLOWFAKE_DELAY (seconds per batch) makes a run slow enough to kill mid-way; SLOWFAKE_LOG (a path)
receives every text the model is asked for, one JSON string per line, before the batch returns.
The model is a plain FakeEmbedding (same identity, cache keys and vectors as "fake:<dim>"); only
this process's copy of its batch hook is wrapped to write the log.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from embedstack.providers.mock import FakeEmbedding
from embedstack.registry import register_provider
from embedstack.types import Role

_embed_batch = FakeEmbedding._embed_batch


def _logging_embed_batch(self: FakeEmbedding, items: list[Any], role: Role) -> Any:
    log = os.environ.get("SLOWFAKE_LOG")
    if log:
        with open(log, "a", encoding="utf-8") as f:
            f.write("".join(json.dumps(i) + "\n" for i in items))
    return _embed_batch(self, items, role)


def _slowfake(arg: str | None) -> FakeEmbedding:
    return FakeEmbedding(embed_dim=int(arg or 16), delay_s=float(os.environ.get("SLOWFAKE_DELAY", "0")))


if __name__ == "__main__":
    FakeEmbedding._embed_batch = _logging_embed_batch  # type: ignore[method-assign]
    register_provider("slowfake", _slowfake, '"slowfake:<dim>" (tests: FakeEmbedding with SLOWFAKE_DELAY/_LOG)')
    from embedstack.cli import main

    sys.exit(main())
