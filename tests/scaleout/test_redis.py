"""RedisKVStore against a real redis-server: the SQLite key scheme, one round trip per batch, secrets,
a dead or hung server mid-job, reconnection, and eight processes sharing one cache."""

from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from embedstack.cache_key import CACHE_COLLECTION
from embedstack.kvstore import RedisKVStore, SQLiteKVStore
from embedstack.kvstore.redis import RedisCacheError, redact_url
from embedstack.providers.mock import FakeEmbedding

from .conftest import RedisServer

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]  # Ray, Redis
TEXTS = [f"document number {i}" for i in range(120)]


def _raw(server: RedisServer) -> Any:
    import redis

    return redis.Redis.from_url(server.url)


def _wait_until(check: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def test_lazy_export_and_no_redis_on_import() -> None:
    code = "import sys, embedstack, embedstack.kvstore; assert 'redis' not in sys.modules, 'redis imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    from embedstack.kvstore.redis import RedisKVStore as direct

    assert RedisKVStore is direct


def test_dict_api_vectors_and_ttl(redis_server: RedisServer) -> None:
    store = RedisKVStore(redis_server.url, namespace="t1")
    store.put("a", {"x": 1})
    store.put("b", {"y": [1, 2]}, collection="other")
    assert store.get("a") == {"x": 1}
    assert store.get("a", collection="other") is None
    assert store.get_all("other") == {"b": {"y": [1, 2]}}
    store.put_all([("c", {"z": 3}), ("d", {"w": 4})])
    assert store.get_many(["d", "nope", "c"]) == [{"w": 4}, None, {"z": 3}]
    assert store.delete("a") is True and store.delete("a") is False
    mat = np.random.default_rng(0).standard_normal((5, 7)).astype(np.float32)
    store.put_vectors([f"k{i}" for i in range(5)], mat, "emb")
    got = store.get_vectors(["k3", "missing", "k0"], "emb")
    assert got[1] is None
    np.testing.assert_array_equal(got[0], mat[3])
    np.testing.assert_array_equal(got[2], mat[0])
    assert store.count_vectors("emb") == 5
    # the namespace isolates users of one server
    assert RedisKVStore(redis_server.url, namespace="t2").get_vectors(["k0"], "emb") == [None]
    expiring = RedisKVStore(redis_server.url, namespace="t3", ttl=100)
    expiring.put_vectors(["k"], mat[:1], "emb")
    assert 0 < _raw(redis_server).ttl("t3:v:emb:k") <= 100
    assert _raw(redis_server).ttl("t1:v:emb:k0") == -1  # no ttl: kept
    assert store.clear() > 0 and store.count_vectors("emb") == 0


async def test_async_twins(redis_server: RedisServer) -> None:
    store = RedisKVStore(redis_server.url)
    mat = np.ones((2, 3), np.float32)
    await store.aput_vectors(["a", "b"], mat, "emb")
    blobs = await store.aget_vector_blobs(["b", "c"], "emb")
    assert blobs == [mat[1].tobytes(), None]
    await store.aput("k", {"v": 1})
    assert await store.aget("k") == {"v": 1}


def test_same_keys_and_values_as_sqlite_one_round_trip_per_batch(redis_server: RedisServer, tmp_path: Path) -> None:
    sqlite = SQLiteKVStore(tmp_path / "c.sqlite")
    redis_store = RedisKVStore(redis_server.url)
    raw = _raw(redis_server)
    a = FakeEmbedding(embeddings_cache=sqlite, embed_batch_size=16)
    b = FakeEmbedding(embeddings_cache=redis_store, embed_batch_size=16)
    raw.config_resetstat()
    np.testing.assert_array_equal(a.embed(TEXTS), b.embed(TEXTS))
    stats = raw.info("commandstats")
    assert stats["cmdstat_mget"]["calls"] <= 2  # the batch read (+ the model's recorded length)
    assert stats["cmdstat_set"]["calls"] >= len(TEXTS)  # pipelined, not one round trip each
    rows = sqlite._conn().execute("SELECT key, data FROM vectors WHERE collection = ?", (CACHE_COLLECTION,))
    in_sqlite = {k: bytes(v) for k, v in rows}
    prefix = f"embedstack:v:{CACHE_COLLECTION}:"
    in_redis = {n.decode()[len(prefix) :]: raw.get(n) for n in raw.scan_iter(match=prefix + "*")}
    assert len(in_sqlite) == len(TEXTS)
    assert in_redis == in_sqlite  # the same keys, the same float32 bytes
    # a second model is served entirely from Redis, in one MGET
    c = FakeEmbedding(embeddings_cache=RedisKVStore(redis_server.url), embed_batch_size=16)
    raw.config_resetstat()
    np.testing.assert_array_equal(c.embed(TEXTS), a.embed(TEXTS))
    assert c.embedded == []
    assert raw.info("commandstats")["cmdstat_mget"]["calls"] == 1


def test_password_never_shown(tmp_path: Path) -> None:
    pytest.importorskip("redis")
    secret = "s3cr3t-Pa55word"
    server = RedisServer(tmp_path, password=secret)
    server.start()
    try:
        store = RedisKVStore(server.url)
        assert secret not in repr(store) and secret not in store.url and "***" in store.url
        store.put_vectors(["k"], np.ones((1, 4), np.float32), "emb")
        assert store.get_vector_blobs(["k"], "emb")[0] is not None
        copy = pickle.loads(pickle.dumps(store))  # ships to other processes without its connection
        assert copy.get_vector_blobs(["k"], "emb")[0] is not None
        wrong = server.url.replace(secret, "not-" + secret)
        bad = RedisKVStore(wrong)
        with pytest.raises(RedisCacheError) as info:
            bad.get_vector_blobs(["k"], "emb")
        assert secret not in str(info.value) and "not-" not in str(info.value)
        model = FakeEmbedding(embeddings_cache=bad)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.embed(["x", "y"])
        shown = " ".join(str(w.message) for w in caught)
        assert "could not be read" in shown and "***" in shown
        assert secret not in shown
        assert "not-" not in shown
    finally:
        server.stop()
    assert redact_url("redis://user:pw@h:1/0") == "redis://user:***@h:1/0"
    assert redact_url("redis://token@h") == "redis://***@h"
    assert redact_url("unix:///tmp/r.sock?db=0&password=pw") == "unix:///tmp/r.sock?db=0&password=***"


class _KillsRedisMidJob(FakeEmbedding):
    """Kills redis-server (kill -9) while embedding its third batch: a fault injected mid-job."""

    def _embed_batch(self, items: list[Any], role: Any) -> np.ndarray:
        if len(self.calls) == 2:
            self.server.kill()  # type: ignore[attr-defined]
        return super()._embed_batch(items, role)


def test_redis_killed_mid_job_then_restarted(redis_server: RedisServer) -> None:
    store = RedisKVStore(redis_server.url, retry_after=0.2)
    model = _KillsRedisMidJob(embeddings_cache=store, embed_batch_size=10)
    object.__setattr__(model, "server", redis_server)
    with pytest.warns(RuntimeWarning, match="could not be written.*Redis server is up") as caught:
        out = model.embed(TEXTS)
    assert len([w for w in caught if "could not be" in str(w.message)]) == 1  # one warning, not one per batch
    np.testing.assert_array_equal(out, np.stack([model.vector_for(t) for t in TEXTS]))  # every vector returned

    # while Redis is down, reads are misses and a run still completes, quickly
    down = FakeEmbedding(embeddings_cache=store)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        np.testing.assert_array_equal(down.embed(TEXTS[:5]), out[:5])
    assert time.perf_counter() - t0 < 2.0
    assert len(down.embedded) == 5

    redis_server.start()  # same port, empty (no persistence)
    _wait_until(store.ping)  # the breaker lets a call through again and it reconnects
    again = FakeEmbedding(embeddings_cache=store, embed_batch_size=10)
    np.testing.assert_array_equal(again.embed(TEXTS), out)
    assert store.count_vectors(CACHE_COLLECTION) == len(TEXTS)  # written to the restarted server
    served = FakeEmbedding(embeddings_cache=RedisKVStore(redis_server.url))
    np.testing.assert_array_equal(served.embed(TEXTS), out)
    assert served.embedded == []  # the next run is served from it


def test_hung_redis_fails_fast(redis_server: RedisServer) -> None:
    store = RedisKVStore(redis_server.url, socket_timeout=0.3, retry_after=60)
    assert store.ping()
    redis_server.pause()  # accepts nothing, answers nothing
    try:
        model = FakeEmbedding(embeddings_cache=store, embed_batch_size=10)
        t0 = time.perf_counter()
        with pytest.warns(RuntimeWarning, match="could not be read"):
            out = model.embed(TEXTS)
        elapsed = time.perf_counter() - t0
        np.testing.assert_array_equal(out, np.stack([model.vector_for(t) for t in TEXTS]))
        assert elapsed < 3.0, elapsed  # one timeout, then the open breaker skips Redis: never one per batch
    finally:
        redis_server.resume()


_WORKER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from embedstack.kvstore import RedisKVStore
    from embedstack.providers.mock import FakeEmbedding

    url, start = sys.argv[1], int(sys.argv[2])
    texts = [f"shared text {i}" for i in range(start, start + 200)]
    model = FakeEmbedding(embeddings_cache=RedisKVStore(url), embed_batch_size=16)
    out = model.embed(texts)
    assert np.array_equal(out, np.stack([model.vector_for(t) for t in texts]))
    print(len(model.embedded))
    """
)


def test_eight_processes_share_one_redis(redis_server: RedisServer) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, redis_server.url, str(100 * p)], stdout=subprocess.PIPE, text=True
        )
        for p in range(8)
    ]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * 8, outs
    store = RedisKVStore(redis_server.url)
    unique = [f"shared text {i}" for i in range(900)]
    assert store.count_vectors(CACHE_COLLECTION) == 900  # zero lost entries
    model = FakeEmbedding(embeddings_cache=store)
    np.testing.assert_array_equal(model.embed(unique), np.stack([model.vector_for(t) for t in unique]))
    assert model.embedded == []  # every vector any process computed is there, and correct
    assert sum(int(o) for o in outs) >= 900  # the overlapping halves were computed at least once


class _Exact(FakeEmbedding):
    """Rows made of float32 values that a lossy round trip would change: -0.0, subnormals, the extremes."""

    def vector_for(self, item: Any, role: Any = "text") -> np.ndarray:
        vec = super().vector_for(item, role).copy()
        vec[:6] = [-0.0, np.float32(1e-45), np.float32(-1.2e-38), 3.4e18, -np.float32(3.4e18) * 1.5, 1]
        vec[6:] = np.nextafter(vec[6:], np.float32(np.inf))
        return vec


def test_vectors_round_trip_bit_exactly_and_never_collide(redis_server: RedisServer) -> None:
    texts = ["same text", "another", "same text "]
    expect: dict[Any, np.ndarray] = {}
    for dim in (16, 17):  # two models (their identities differ), each text as a query and as a text
        model = _Exact(embed_dim=dim, embeddings_cache=RedisKVStore(redis_server.url))
        for role in ("query", "text"):
            expect[dim, role] = model.embed(texts, role)
    for (dim, role), want in expect.items():
        served = _Exact(embed_dim=dim, embeddings_cache=RedisKVStore(redis_server.url))
        got = served.embed(texts, role)
        assert served.embedded == []  # every row came from Redis
        assert got.tobytes() == want.tobytes()  # bit for bit: -0.0 and subnormals too
        assert want.tobytes() == np.stack([served.vector_for(t, role) for t in texts]).tobytes()
    assert not np.array_equal(expect[16, "query"][:, 6:], expect[16, "text"][:, 6:])
    assert RedisKVStore(redis_server.url).count_vectors(CACHE_COLLECTION) == 2 * 2 * len(texts)


def test_sparse_rows_round_trip_exactly(redis_server: RedisServer) -> None:
    from embedstack.providers.bm25 import BM25Embedding

    corpus = ["the quick brown fox", "jumps over the lazy dog", "the the the", "fox " * 50, "zebra"]
    plain = BM25Embedding().fit(corpus)
    cached = BM25Embedding(embeddings_cache=RedisKVStore(redis_server.url)).fit(corpus)
    want = plain.get_text_embedding_batch(corpus)
    assert cached.get_text_embedding_batch(corpus) == want  # computed, written
    again = BM25Embedding(embeddings_cache=RedisKVStore(redis_server.url)).fit(corpus)
    assert again.get_text_embedding_batch(corpus) == want  # served from Redis: the same indices and float values
    assert [again.get_query_embedding(q) for q in corpus] == [plain.get_query_embedding(q) for q in corpus]
    rows, want_rows = again.embed(corpus), plain.embed(corpus)  # the bulk path: int32 indices, float32 values
    for got, ref in zip(rows, want_rows):
        assert got.indices.tobytes() == ref.indices.tobytes() and got.values.tobytes() == ref.values.tobytes()
    assert {} in want  # a row with no terms round-trips too


def test_entries_of_a_wrong_length_with_the_length_record_evicted_are_misses(redis_server: RedisServer) -> None:
    """A LangChain model declares no length; Redis holds every entry truncated and its length record evicted
    (maxmemory, a shorter ttl, a manual delete). The entries used to be served as 4-value vectors."""
    from langchain_core.embeddings import DeterministicFakeEmbedding

    from embedstack.cache_key import DIM_COLLECTION
    from embedstack.providers.langchain import LangchainEmbedding

    texts = ["alpha", "beta", "gamma"]
    want = np.array(DeterministicFakeEmbedding(size=8).embed_documents(texts), np.float32)
    LangchainEmbedding(DeterministicFakeEmbedding(size=8), embeddings_cache=RedisKVStore(redis_server.url)).embed(texts)
    raw = _raw(redis_server)
    for name in raw.scan_iter(match=f"embedstack:v:{CACHE_COLLECTION}:*"):
        raw.set(name, raw.get(name)[:16])
    assert sum(raw.delete(n) for n in raw.scan_iter(match=f"embedstack:v:{DIM_COLLECTION}:*")) == 1
    fresh = LangchainEmbedding(DeterministicFakeEmbedding(size=8), embeddings_cache=RedisKVStore(redis_server.url))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        np.testing.assert_array_equal(fresh.embed(texts), want)
    assert {len(raw.get(n)) for n in raw.scan_iter(match=f"embedstack:v:{CACHE_COLLECTION}:*")} == {8 * 4}


def test_collections_whose_names_hold_a_colon_never_share_a_key(redis_server: RedisServer) -> None:
    """Collection "emb:a" key "k" and collection "emb" key "a:k" used to be one Redis key: a write to one replaced the
    other's vector, and get_all/count/clear of "docs" took in "docs:v2". Each now behaves as SimpleKVStore."""
    from embedstack.kvstore import SimpleKVStore

    redis_store, ref = RedisKVStore(redis_server.url), SimpleKVStore()
    ones, twos, threes = (np.full((1, 4), v, np.float32) for v in (1, 2, 3))
    for store in (redis_store, ref):
        store.put_vectors(["k"], ones, "emb:a")
        store.put_vectors(["a:k"], twos, "emb")
        store.put_vectors(["k"], threes, "emb%3Aa")  # an escaped-looking name is a collection of its own too
        store.put("x", {"v": 1}, collection="docs")
        store.put("v2:x", {"v": 2}, collection="docs")
        store.put("x", {"v": 3}, collection="docs:v2")
    for store in (redis_store, ref):
        got = [store.get_vectors(["k"], "emb:a")[0], store.get_vectors(["a:k"], "emb")[0]]
        got.append(store.get_vectors(["k"], "emb%3Aa")[0])
        np.testing.assert_array_equal(np.stack(got), np.concatenate([ones, twos, threes]))
        assert store.get_all("docs") == {"x": {"v": 1}, "v2:x": {"v": 2}}
        assert store.get_all("docs:v2") == {"x": {"v": 3}}
    assert redis_store.count_vectors("emb") == 1
    assert redis_store.clear("docs") == 2 and redis_store.get_all("docs:v2") == {"x": {"v": 3}}
    assert _raw(redis_server).exists(f"embedstack:v:{CACHE_COLLECTION}:x") == 0  # plain names keep their layout
    redis_store.put_vectors(["x"], ones, CACHE_COLLECTION)
    assert _raw(redis_server).exists(f"embedstack:v:{CACHE_COLLECTION}:x") == 1
