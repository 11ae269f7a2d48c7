"""Property-based attack on the pipeline: any mix of duplicates, cache hits, corrupt entries, batch
sizes, workers and failing batches keeps order and values, and never caches a wrong vector."""

from __future__ import annotations

import asyncio
import base64
import tempfile
import warnings
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from embedstack import FakeEmbedding
from embedstack.kvstore import SimpleKVStore, SQLiteKVStore
from embedstack.types import Role

pytestmark = pytest.mark.slow  # many hypothesis examples of attacked stores and models

ALPHABET = [f"w{i}" for i in range(12)] + ["", "é", "naïve café", "日本語", "x" * 300]
POISON = "POISON"


class AttackedModel(FakeEmbedding):
    """FakeEmbedding that fails every batch holding POISON (after the others may have finished)."""

    parallel_sync_batches: ClassVar[bool] = True

    def _embed_batch(self, items: list[Any], role: Role) -> np.ndarray:
        if POISON in items:
            raise RuntimeError("injected batch failure")
        return super()._embed_batch(items, role)


def _corrupt(value: dict[str, Any], how: str, dim: int) -> dict[str, Any]:
    """A damaged copy of a stored vector (SimpleKVStore's {"dim", "f32"} form)."""
    raw = base64.b64decode(value["f32"])
    if how == "truncate":
        raw, dim = raw[: len(raw) // 2], dim // 2
    elif how == "nan":
        raw = np.full(dim, np.nan, dtype="<f4").tobytes()
    elif how == "inf":
        raw = np.full(dim, np.inf, dtype="<f4").tobytes()
    elif how == "garbage":
        return {"dim": dim, "f32": "!!not base64!!"}
    return {"dim": dim, "f32": base64.b64encode(raw).decode()}


def _corrupt_sqlite(path: Path, key: str, how: str, dim: int) -> None:
    import sqlite3

    with sqlite3.connect(path) as db:
        (raw,) = db.execute("SELECT data FROM vectors WHERE key = ?", (key,)).fetchone()
        if how == "truncate":
            raw = raw[: len(raw) // 2]
        elif how in ("nan", "inf"):
            raw = np.full(dim, np.nan if how == "nan" else np.inf, dtype="<f4").tobytes()
        else:
            raw = b"\x00\x01garbage"
        db.execute("UPDATE vectors SET data = ? WHERE key = ?", (raw, key))


scenario = st.fixed_dictionaries(
    {
        "texts": st.lists(st.sampled_from(ALPHABET), max_size=40),
        "prefill": st.lists(st.sampled_from(ALPHABET), max_size=12),
        "corrupt": st.lists(
            st.tuples(st.sampled_from(ALPHABET), st.sampled_from(["truncate", "nan", "inf", "garbage"])), max_size=4
        ),
        "batch": st.integers(1, 7),
        "workers": st.sampled_from([None, 1, 2, 4]),
        "poison_at": st.none() | st.integers(0, 40),
        "mode": st.sampled_from(["sync", "async"]),
        "store": st.sampled_from(["simple", "sqlite", "none"]),
    }
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario)
def test_pipeline_keeps_order_and_values_under_attack(s: dict[str, Any]) -> None:
    dim = 8
    texts = list(s["texts"])
    if s["poison_at"] is not None:
        texts.insert(min(s["poison_at"], len(texts)), POISON)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.sqlite"
        store: Any = {"simple": SimpleKVStore, "sqlite": lambda: SQLiteKVStore(path, memory_entries=0), "none": None}[
            s["store"]
        ]
        cache = store() if store else None
        model = AttackedModel(
            embed_dim=dim, embed_batch_size=s["batch"], num_workers=s["workers"], embeddings_cache=cache
        )
        reference = FakeEmbedding(embed_dim=dim)
        corrupted: set[str] = set()
        if cache is not None and s["prefill"]:
            model.embed(s["prefill"])
            key_of = model.pipeline.key_factory(Role.TEXT)
            for text, how in dict(s["corrupt"]).items():
                if text not in s["prefill"]:
                    continue
                corrupted.add(text)
                if isinstance(cache, SimpleKVStore):
                    key = key_of(text)
                    cache.put(key, _corrupt(cache.get(key, "embeddings"), how, dim), "embeddings")
                else:
                    _corrupt_sqlite(path, key_of(text), how, dim)
        model._calls.clear()
        cached_before = set(s["prefill"]) - corrupted if cache is not None else set()

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # corrupt entries are warned about
            try:
                if s["mode"] == "sync":
                    out = model.embed(texts)
                else:
                    out = asyncio.run(model.aembed(texts))
                error = None
            except RuntimeError as e:
                error = e

        embedded = model.embedded
        if POISON in texts:
            assert error is not None and "injected" in str(error)
        else:
            assert error is None
            want = np.stack([reference.vector_for(t) for t in texts]) if texts else np.zeros((0, dim), np.float32)
            np.testing.assert_array_equal(out, want)  # order and values, duplicates included
            assert out.flags.writeable
            # each missing text reached the model exactly once; cached ones never did
            assert sorted(embedded) == sorted(set(texts) - cached_before)
        assert not (set(embedded) & cached_before)

        if cache is not None:  # never a wrong vector in the cache: rerun without the poison, all from cache or right
            clean = [t for t in texts if t != POISON]
            again = AttackedModel(embed_dim=dim, embeddings_cache=cache)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                got = again.embed(clean)
            if clean:
                np.testing.assert_array_equal(got, np.stack([reference.vector_for(t) for t in clean]))
            if isinstance(cache, SQLiteKVStore):
                cache.close()
