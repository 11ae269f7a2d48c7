"""`Pipeline.cached`: the read-only cache lookup the server answers hits with (the model is never called)."""

from __future__ import annotations

import numpy as np
import pytest

from embedstack.errors import InvalidInputError
from embedstack.kvstore.simple import SimpleKVStore
from embedstack.registry import resolve_embed_model
from embedstack.types import Role


def cached_rows(model, items, role, label="input"):  # type: ignore[no-untyped-def]
    return model.pipeline.cached(items, role, label)


def test_hits_rows_and_mask_without_calling_the_model() -> None:
    model = resolve_embed_model("fake:8")
    model.embeddings_cache = SimpleKVStore()
    rows, found = cached_rows(model, ["a", "b"], Role.TEXT)
    assert rows is None and not found.any()  # nothing cached (and the length is declared: no call needed)
    want = model.embed(["a", "b"])
    rows, found = cached_rows(model, ["b", "x", "a", "b"], Role.TEXT)
    assert found.tolist() == [True, False, True, True]
    assert rows is not None
    np.testing.assert_array_equal(rows[[0, 2, 3]], want[[1, 0, 1]])
    assert not rows[1].any()
    rows, found = cached_rows(model, ["a"], Role.QUERY)  # another role is another key
    assert rows is None and not found.any()


def test_no_cache_or_unknown_length_finds_nothing_but_checks_items() -> None:
    model = resolve_embed_model("fake:8")
    rows, found = cached_rows(model, ["a"], Role.TEXT)
    assert rows is None and found.tolist() == [False]
    with pytest.raises(InvalidInputError):
        cached_rows(model, ["ok", "\ud800"], Role.TEXT, "input")
    with pytest.raises(TypeError):
        cached_rows(model, ["ok", 3], Role.TEXT)  # type: ignore[list-item]


def test_entries_of_another_length_are_misses() -> None:
    from embedstack.cache_key import CACHE_COLLECTION

    model = resolve_embed_model("fake:8")
    store = model.embeddings_cache = SimpleKVStore()
    model.embed(["good"])
    key = model.pipeline.key_factory(Role.TEXT)("stale")
    store.put_vectors([key], np.ones((1, 5), dtype=np.float32), CACHE_COLLECTION)  # a 5-dim entry for an 8-dim model
    with pytest.warns(RuntimeWarning, match="wrong-length"):
        rows, found = cached_rows(model, ["stale", "good"], Role.TEXT)
    assert found.tolist() == [False, True]
    assert rows is not None and rows.shape == (2, 8)


def test_the_recorded_length_is_trusted_and_nothing_without_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh model object (its length not known yet) finds what the cache recorded for it, as embed does; with no
    recorded length (an entry written by something else) nothing is trusted."""
    from embedstack.cache_key import CACHE_COLLECTION

    store = SimpleKVStore()
    first = resolve_embed_model("fake:8")
    monkeypatch.setattr(type(first), "_declared_dim", lambda self: None)  # like a model whose weights are not loaded
    first.embeddings_cache = store
    first.embed(["kept"])  # computes, and records the length in the cache
    fresh = resolve_embed_model("fake:8")
    assert fresh.pipeline.known_size()[0] is None
    fresh.embeddings_cache = store
    rows, found = cached_rows(fresh, ["kept", "new"], Role.TEXT)
    assert found.tolist() == [True, False] and rows is not None
    np.testing.assert_array_equal(rows[0], first.embed(["kept"])[0])
    bare = SimpleKVStore()
    fresh.embeddings_cache = bare
    bare.put_vectors(
        [fresh.pipeline.key_factory(Role.TEXT)("kept")], np.ones((1, 8), dtype=np.float32), CACHE_COLLECTION
    )
    rows, found = cached_rows(fresh, ["kept"], Role.TEXT)
    assert rows is None and not found.any()
