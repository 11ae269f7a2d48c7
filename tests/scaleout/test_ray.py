"""embed_dataset on Ray Data: the real default model through an actor pool, bad rows, a shared Redis cache,
an actor killed mid-job (kill -9). Ray starts once per session."""

from __future__ import annotations

import os
import signal
from collections import Counter
from typing import Any

import numpy as np
import pytest

from embedstack.jobs import embed_dataset
from embedstack.jobs._readers import InputError
from embedstack.providers.mock import FakeEmbedding

from .conftest import RedisServer, embedder_stats

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]  # Ray, Redis

_ACTOR_TITLE = b"ray::MapWorker(MapBatches(_Embedder))"


def _rows(ds: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
        out += batch.to_pylist()
    return out


def _items(n: int, prefix: str = "text") -> list[dict[str, Any]]:
    return [{"id": f"r{i}", "text": f"{prefix} number {i} about packages", "n": i} for i in range(n)]


def test_default_model_on_two_actors(ray_session: Any) -> None:
    from embedstack.registry import resolve_embed_model

    ray = ray_session
    items = _items(300)
    ds = ray.data.from_items(items, override_num_blocks=6)
    out = embed_dataset(ds, "local", concurrency=2, batch_size=50)
    tables = list(out.iter_batches(batch_format="pyarrow", batch_size=None))  # one run (schema() would run another)
    typ = tables[0].schema.field("embedding").type
    assert str(typ.value_type) == "float" and typ.list_size == 384
    rows = [r for t in tables for r in t.to_pylist()]
    assert sorted(r["id"] for r in rows) == sorted(i["id"] for i in items)  # complete, none doubled
    expected = resolve_embed_model("local").embed([i["text"] for i in items])
    by_id = {r["id"]: r for r in rows}
    for i, item in enumerate(items):
        row = by_id[item["id"]]
        assert row["n"] == item["n"] and row["text"] == item["text"]  # other columns kept, row-aligned
        np.testing.assert_allclose(np.asarray(row["embedding"], np.float32), expected[i], atol=1e-5)


def test_bad_rows_fail_or_are_skipped(ray_session: Any) -> None:
    ray = ray_session
    items = _items(40)
    items[7]["text"] = None
    items[9]["text"] = 12
    ds = ray.data.from_items(items, override_num_blocks=2)
    with pytest.raises(Exception, match=r"id='r7'.*'text' is missing.*on_bad='skip'"):
        _rows(embed_dataset(ds, "fake:8", concurrency=1, batch_size=20))
    rows = _rows(embed_dataset(ds, "fake:8", concurrency=1, batch_size=20, on_bad="skip"))
    assert sorted(r["id"] for r in rows) == sorted(f"r{i}" for i in range(40) if i not in (7, 9))
    fake = FakeEmbedding(embed_dim=8)
    for row in rows:  # the rows after a skipped one keep their own vectors (aligned, not shifted)
        item = items[int(row["id"][1:])]
        assert row["text"] == item["text"] and row["n"] == item["n"]
        np.testing.assert_array_equal(np.asarray(row["embedding"], np.float32), fake.vector_for(item["text"]))
    with pytest.raises(ValueError, match="on_bad"):
        embed_dataset(ds, "fake:8", on_bad="ignore")
    with pytest.raises(TypeError, match="spec string"):
        embed_dataset(ds, object())
    with pytest.raises(Exception, match="no column 'body'"):
        _rows(embed_dataset(ds, "fake:8", column="body"))
    assert issubclass(InputError, ValueError)


def test_model_object_and_shared_redis_cache(ray_session: Any, redis_server: RedisServer) -> None:
    import redis

    ray = ray_session
    items = _items(120, prefix="cached")
    ds = ray.data.from_items(items, override_num_blocks=4)
    model = FakeEmbedding(embed_dim=12)  # travels as its class and to_dict(), rebuilt on each actor
    rows = _rows(embed_dataset(ds, model, concurrency=2, batch_size=30, cache=redis_server.url))
    for r in rows:
        np.testing.assert_array_equal(np.asarray(r["embedding"], np.float32), model.vector_for(r["text"]))
    raw = redis.Redis.from_url(redis_server.url)
    assert len(list(raw.scan_iter(match="embedstack:v:embeddings:*"))) == 120
    raw.config_resetstat()
    again = _rows(embed_dataset(ds, model, concurrency=2, batch_size=30, cache=redis_server.url))
    assert sorted(r["id"] for r in again) == sorted(r["id"] for r in rows)
    stats = raw.info("commandstats")
    assert "cmdstat_set" not in stats  # every vector came from the shared cache: nothing computed, nothing written
    assert stats["cmdstat_mget"]["calls"] >= 4


def _actor_pids() -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if f.read().startswith(_ACTOR_TITLE):
                        pids.append(int(entry))
            except OSError:
                continue
    return pids


def test_actor_killed_mid_job(ray_session: Any) -> None:
    ray = ray_session
    items = _items(400)
    ds = ray.data.from_items(items, override_num_blocks=20)
    out = embed_dataset(ds, "fake:16", model_kwargs={"delay_s": 0.15}, concurrency=2, batch_size=20)
    rows: list[dict[str, Any]] = []
    killed = None
    for batch in out.iter_batches(batch_format="pyarrow", batch_size=None):
        rows += batch.to_pylist()
        if killed is None:
            pids = _actor_pids()
            assert pids, "no actor process found"
            killed = pids[0]
            os.kill(killed, signal.SIGKILL)  # mid-job: most batches are still to come
            done_at_kill = len(rows)
    assert killed is not None and done_at_kill < len(items)
    counts = Counter(r["id"] for r in rows)
    assert set(counts) == {i["id"] for i in items}  # no row missing
    assert max(counts.values()) == 1  # none doubled
    model = FakeEmbedding(embed_dim=16)
    for r in rows[::37]:
        np.testing.assert_array_equal(np.asarray(r["embedding"], np.float32), model.vector_for(r["text"]))


def test_a_remote_model_arrives_on_the_actors_with_its_credentials(ray_session: Any) -> None:
    """A remote model object sent to Ray travels pickled with its key (never through to_dict(), which leaves secrets
    out), so each actor's copy authenticates against the (real, local) OpenAI-compatible server; its loaded client
    does not travel, each actor makes its own."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[1] / "openai"))
    from openai_fake_server import FakeOpenAIServer, vector_for

    from embedstack.providers.openai import OpenAILikeEmbedding

    ray = ray_session
    key = "sk-ray-credentials-test-0123456789"
    with FakeOpenAIServer(dim=12, api_key=key) as server:
        model = OpenAILikeEmbedding(model_name="fake-embed", api_key=key, api_base=server.url, max_retries=0)
        assert key not in str(model.to_dict())  # the descriptor path never carries the key
        model.get_text_embedding("warm the client first")  # a loaded client must not need to travel
        items = _items(12)
        ds = ray.data.from_items(items, override_num_blocks=2)
        rows = _rows(embed_dataset(ds, model, concurrency=2, batch_size=6, cache=None))
        assert sorted(r["id"] for r in rows) == sorted(i["id"] for i in items)
        for row in rows:
            want = vector_for(row["text"], 12)
            np.testing.assert_allclose(np.asarray(row["embedding"], np.float32), want / np.linalg.norm(want), atol=1e-5)
        wrong = OpenAILikeEmbedding(
            model_name="fake-embed", api_key="sk-wrong-key-00000000", api_base=server.url, max_retries=0
        )
        with pytest.raises(Exception, match=r"401|API key|Incorrect"):
            _rows(embed_dataset(ray.data.from_items(items[:2]), wrong, concurrency=1, cache=None))


@pytest.mark.parametrize("blocks", [1, None])  # one block of 300 rows; from_items' own 1-2-row blocks
def test_small_input_is_cut_for_every_actor(ray_session: Any, blocks: int | None) -> None:
    """300 rows for 2 actors with the default batch size: before, one task (a single block) or two of 256
    and 44 rows; now four equal tasks, so neither actor waits idle."""
    ray = ray_session
    items = _items(300)
    ds = ray.data.from_items(items, override_num_blocks=blocks) if blocks else ray.data.from_items(items)
    out = embed_dataset(ds, "fake:8", concurrency=2).materialize()
    rows = _rows(out)
    assert sorted(r["id"] for r in rows) == sorted(i["id"] for i in items)
    stats = embedder_stats(out.stats())
    assert stats["tasks"] >= 4, stats
    assert stats["rows_min"] >= 60 and stats["rows_max"] <= 90, stats  # 75 each


def test_spread_leaves_large_inputs_alone(ray_session: Any) -> None:
    from embedstack.jobs._ray import spread

    ray = ray_session
    ds = ray.data.from_items(_items(2000), override_num_blocks=8)
    assert spread(ds, 2, 256) == (ds, 256)  # 8 batches of 256 already: no copy, same batches
    assert spread(ds, 1, 256) == (ds, 256)
    one = ray.data.from_items(_items(2000), override_num_blocks=1)
    split, size = spread(one, 2, 256)
    assert size == 256 and split.materialize().num_blocks() == 2  # one block per actor
    small, size = spread(ray.data.from_items(_items(40), override_num_blocks=1), 4, 256)
    assert size == 5 and small.materialize().num_blocks() == 8


def test_a_small_file_read_lazily_is_spread_too(ray_session: Any, tmp_path: Any) -> None:
    """One small JSON Lines file is one read block of unknown row count: it is read first (it is small), then cut
    into equal batches for the pool, as the CLI's --ray path reads its inputs."""
    import json

    from embedstack.jobs._ray import read_inputs

    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(i) + "\n" for i in _items(300)), encoding="utf-8")
    ds = read_inputs([str(src)])
    out = embed_dataset(ds, "fake:8", concurrency=2).materialize()
    assert sorted(r["id"] for r in _rows(out)) == sorted(i["id"] for i in _items(300))
    stats = embedder_stats(out.stats())
    assert stats["tasks"] >= 4 and stats["rows_min"] >= 60 and stats["rows_max"] <= 90, stats


def test_sparse_columns_with_bm25_fitted_on_the_whole_dataset(ray_session: Any) -> None:
    pytest.importorskip("Stemmer")
    from embedstack.providers.bm25 import BM25Embedding

    ray = ray_session
    items = [
        {"id": f"r{i}", "text": f"package {i} parses {'json' if i % 3 else 'yaml'} fast", "n": i} for i in range(60)
    ]
    ds = ray.data.from_items(items, override_num_blocks=4)
    out = embed_dataset(ds, "fake:8", concurrency=2, batch_size=20, sparse="bm25")
    rows = {r["id"]: r for r in _rows(out)}
    texts = [i["text"] for i in items]
    want = BM25Embedding().fit_transform(texts)  # one fit over all 60 rows, though the actors saw 20 at a time
    for item, vec in zip(items, want):
        row = rows[item["id"]]
        assert row["sparse_indices"] == vec.indices.tolist() and row["sparse_values"] == vec.values.tolist()
        np.testing.assert_array_equal(row["embedding"], FakeEmbedding(embed_dim=8).vector_for(item["text"]))
    alone = _rows(embed_dataset(ds, None, concurrency=2, sparse="bm25"))
    assert "embedding" not in alone[0] and len(alone) == 60
    with pytest.raises(ValueError, match="nothing to embed"):
        embed_dataset(ds, None)


def test_splade_on_actors_equals_splade_in_process(ray_session: Any, tmp_path: Any, tiny_bert_checkpoint: Any) -> None:
    pytest.importorskip("transformers")
    import torch
    import transformers

    from embedstack.providers.splade import SpladeEmbedding

    plain = tmp_path / "mlm"  # a plain masked-LM checkpoint: SPLADE max pooling over ReLU
    transformers.AutoTokenizer.from_pretrained(str(tiny_bert_checkpoint)).save_pretrained(plain)
    torch.manual_seed(1)
    config = transformers.BertConfig.from_pretrained(str(tiny_bert_checkpoint))
    transformers.BertForMaskedLM(config).eval().save_pretrained(plain)
    items = _items(24)
    out = embed_dataset(ray_session.data.from_items(items), None, concurrency=2, batch_size=6, sparse=f"splade:{plain}")
    rows = {r["id"]: r for r in _rows(out)}
    want = SpladeEmbedding(model_name=str(plain)).embed([i["text"] for i in items])
    for item, vec in zip(items, want):
        row = rows[item["id"]]
        assert row["sparse_indices"] == vec.indices.tolist()
        np.testing.assert_allclose(row["sparse_values"], vec.values, rtol=1e-5, atol=1e-6)
