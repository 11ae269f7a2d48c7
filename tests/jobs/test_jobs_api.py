"""The Python API behind the CLI (embedstack.jobs) in process: records, columns, chunks, search."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedstack.jobs import (
    InputError,
    ModelMismatchError,
    OutputError,
    embed_files,
    embed_records,
    load_embeddings,
    search,
)
from embedstack.kvstore import SimpleKVStore, SQLiteKVStore
from embedstack.providers.mock import FakeEmbedding
from embedstack.types import Role


class Failing(FakeEmbedding):
    """Fails on its n-th batch (fault injection for the atomic-output tests)."""

    fail_on: int = 3

    def _embed_batch(self, items: list[Any], role: Role) -> Any:
        if len(self.calls) + 1 >= self.fail_on:
            raise RuntimeError("model crashed")
        return super()._embed_batch(items, role)


def test_embed_records_from_strings_and_mappings(tmp_path: Path) -> None:
    model = FakeEmbedding(embed_dim=8)
    report = embed_records(["alpha", "beta", "alpha"], tmp_path / "s.parquet", model=model, cache=None)
    data = load_embeddings(tmp_path / "s.parquet")
    assert data.ids == ["0", "1", "2"] and data.columns == {"text": ["alpha", "beta", "alpha"]}
    np.testing.assert_array_equal(data.vectors, np.stack([model.vector_for(t) for t in ["alpha", "beta", "alpha"]]))
    assert report.computed == 2 and report.count == 3  # the duplicate was embedded once
    assert report.summary() == "embedded 3 texts (2 computed, cache off, 1 duplicates) with FakeEmbedding → " + str(
        tmp_path / "s.parquet"
    )
    assert data.meta["model"] is None and data.meta["model_class"] == "FakeEmbedding"

    gen = ({"doc": i, "body": f"text {i}", "n": i} for i in range(5))
    embed_records(gen, tmp_path / "m.jsonl", model="fake:8", field="body", id_field="doc", cache=None)
    data = load_embeddings(tmp_path / "m.jsonl")
    assert data.ids == ["0", "1", "2", "3", "4"] and data.columns["n"] == [0, 1, 2, 3, 4]

    with pytest.raises(InputError, match="item 1: expected a str or a mapping, got int"):
        embed_records(["ok", 5], tmp_path / "bad.parquet", model="fake", cache=None)  # type: ignore[list-item]


def test_kept_columns_get_arrow_types_from_their_values(tmp_path: Path) -> None:
    rows = [
        {
            "id": 1,
            "text": "a",
            "n": 1,
            "x": 1.5,
            "flag": True,
            "mixed": 1,
            "nested": {"k": [1, 2]},
            "maybe": None,
        },
        {
            "id": 2,
            "text": "b",
            "n": 2,
            "x": 2,
            "flag": False,
            "mixed": "two",
            "nested": {"k": []},
            "maybe": "set",
        },
    ]
    embed_records(rows, tmp_path / "t.parquet", model="fake:4", cache=None)
    table = pq.read_table(tmp_path / "t.parquet")
    types = {f.name: f.type for f in table.schema}
    assert types["id"] == pa.string() and table.column("id").to_pylist() == ["1", "2"]
    assert (types["n"], types["x"], types["flag"], types["maybe"]) == (
        pa.int64(),
        pa.float64(),
        pa.bool_(),
        pa.string(),
    )
    assert table.column("mixed").to_pylist() == ["1", "two"]  # mixed types are stored as text
    assert [json.loads(v) for v in table.column("nested").to_pylist()] == [{"k": [1, 2]}, {"k": []}]

    embed_records(rows, tmp_path / "k.parquet", model="fake:4", cache=None, keep=["n", "absent"])
    assert pq.read_table(tmp_path / "k.parquet").column_names == ["id", "vector", "n", "absent"]
    embed_records(rows, tmp_path / "none.parquet", model="fake:4", cache=None, keep="none")
    assert pq.read_table(tmp_path / "none.parquet").column_names == ["id", "vector"]


def test_chunks_stream_in_order_and_the_cache_and_batch_size_are_the_callers(
    tmp_path: Path,
) -> None:
    src = tmp_path / "in.txt"
    src.write_text("".join(f"line {i}\n" for i in range(30)))
    store = SimpleKVStore()
    model = FakeEmbedding(embed_dim=8, embeddings_cache=store, embed_batch_size=5)
    steps: list[int] = []

    class Bar:
        def update(self, n: int) -> None:
            steps.append(n)

        def close(self) -> None:
            steps.append(-1)

    report = embed_files(
        src,
        tmp_path / "o.npy",
        model=model,
        chunk_size=7,
        batch_size=4,
        progress=lambda total: Bar(),
    )
    assert sum(n for n in steps if n > 0) == 30 and steps[-1] == -1
    assert [len(items) for _, items in model.calls] == [4, 3] * 4 + [2]  # chunks of 7 in batches of 4
    assert model.embed_batch_size == 5 and model.embeddings_cache is store  # left as they were
    assert report.computed == 30 and len(store.get_all("embeddings")) == 30
    data = load_embeddings(tmp_path / "o.npy")
    assert data.ids == [f"{src}:{i}" for i in range(1, 31)]
    np.testing.assert_array_equal(data.vectors, np.stack([model.vector_for(f"line {i}") for i in range(30)]))

    # DEFAULT_CACHE: the model's own store
    again = embed_files(src, tmp_path / "o2.npy", model=model)
    assert again.computed == 0 and model.embeddings_cache is store


@pytest.mark.parametrize("out", ["o.parquet", "o.npy", "o.jsonl"])
def test_a_failing_model_leaves_no_output_and_no_temp_files(tmp_path: Path, out: str) -> None:
    src = tmp_path / "in.txt"
    src.write_text("".join(f"line {i}\n" for i in range(30)))
    embed_files(src, tmp_path / out, model="fake:8", cache=None)
    before = load_embeddings(tmp_path / out)
    with pytest.raises(RuntimeError, match="model crashed"):
        embed_files(
            src,
            tmp_path / out,
            model=Failing(embed_dim=8),
            cache=tmp_path / "c.sqlite",
            chunk_size=5,
            batch_size=5,
        )
    after = load_embeddings(tmp_path / out)
    assert after.meta == before.meta and np.array_equal(after.vectors, before.vectors)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    # the two batches done before the crash were kept
    assert SQLiteKVStore(tmp_path / "c.sqlite").count_vectors("embeddings") == 10


@pytest.mark.parametrize("out", ["o.parquet", "o.npy", "o.jsonl"])
def test_stale_temp_files_of_dead_runs_are_removed(tmp_path: Path, out: str) -> None:
    host = socket.gethostname().replace(".", "_")
    # every file a writer makes: the output and, for .npy/.jsonl, its .rows.jsonl and .meta.json sidecars
    names = [out, f"{out}.rows.jsonl", f"{out}.meta.json"]
    dead = [tmp_path / f".{name}.{host}.999999999.deadbeef.tmp" for name in names]
    live = tmp_path / f".{out}.{host}.{os.getpid()}.cafecafe.tmp"
    other = tmp_path / f".{out}.otherhost.1.abcd.tmp"
    unrelated = tmp_path / f".{out}.notes.{host}.999999999.deadbeef.tmp"
    for p in [*dead, live, other, unrelated]:
        p.write_bytes(b"partial")
    embed_records(["a"], tmp_path / out, model="fake:4", cache=None)
    assert [p.name for p in dead if p.exists()] == []
    assert live.exists() and other.exists() and unrelated.exists()


def test_search_api_and_model_checks(tmp_path: Path) -> None:
    model = FakeEmbedding(embed_dim=8)
    texts = [f"document number {i}" for i in range(20)]
    embed_records(texts, tmp_path / "o.parquet", model=model, cache=None)
    with pytest.raises(ModelMismatchError, match="embedded with a model object"):
        search(tmp_path / "o.parquet", "q", model=None, cache=None)
    hits = search(tmp_path / "o.parquet", "document number 3", k=4, model=model, cache=None)
    scores = np.stack([model.vector_for(t) for t in texts]) @ model.vector_for("document number 3", "query")
    assert [h.id for h in hits] == [str(i) for i in np.argsort(-scores)[:4]]
    assert hits[0].text == texts[int(hits[0].id)]
    with pytest.raises(ModelMismatchError, match="embed_dim=8 vs 4"):
        search(tmp_path / "o.parquet", "q", model=FakeEmbedding(embed_dim=4), cache=None)
    with pytest.raises(ValueError, match="k must be positive"):
        search(tmp_path / "o.parquet", "q", k=0, model=model, cache=None)


class _Precise(FakeEmbedding):
    """A fake with a precision field, like HuggingFaceEmbedding's (part of its identity)."""

    precision: str = "fp32"


def test_the_same_model_at_another_precision_may_search_and_append(tmp_path: Path) -> None:
    """ "local" is OpenVINO bf16 on one CPU and ONNX fp32 on another: the output stays usable."""
    out = tmp_path / "o.parquet"
    texts = [f"document number {i}" for i in range(6)]
    bf16 = _Precise(embed_dim=8, precision="bf16")
    assert bf16.provider.identity() != _Precise(embed_dim=8).provider.identity()  # the cache still keeps them apart
    embed_records(texts, out, model=bf16, cache=None)
    fp32 = _Precise(embed_dim=8)
    hits = search(out, "document number 3", k=2, model=fp32, cache=None)
    scores = np.stack([bf16.vector_for(t) for t in texts]) @ fp32.vector_for("document number 3", "query")
    assert [h.id for h in hits] == [str(i) for i in np.argsort(-scores)[:2]]
    np.testing.assert_allclose([h.score for h in hits], np.sort(scores)[::-1][:2], rtol=1e-5)
    embed_records(["one more"], out, model=_Precise(embed_dim=8, precision="int8"), cache=None, append=True)
    assert load_embeddings(out).vectors.shape == (7, 8)
    with pytest.raises(ModelMismatchError, match="embed_dim=8 vs 4"):  # other fields still refuse
        search(out, "q", model=_Precise(embed_dim=4, precision="bf16"), cache=None)


@pytest.mark.parametrize("suffix", [".parquet", ".npy", ".jsonl"])
def test_an_append_of_items_without_ids_numbers_them_on_from_the_rows_there(tmp_path: Path, suffix: str) -> None:
    """Ids of a Python iterable's items are positions; appended ones go on from the output's rows (they restarted at
    0, so one id named two rows and a search hit did not say which), ids given by the items are kept."""
    out = tmp_path / f"o{suffix}"
    model = FakeEmbedding(embed_dim=8)
    embed_records(["a", "b", "c"], out, model=model, cache=None)
    embed_records(["d", {"text": "e"}], out, model=model, cache=None, append=True)
    embed_records([{"text": "f", "id": "mine"}], out, model=model, cache=None, append=True)
    loaded = load_embeddings(out)
    assert list(loaded.ids) == ["0", "1", "2", "3", "4", "mine"]
    for row, text in enumerate("abcdef"):  # each id names the row of its own text
        np.testing.assert_allclose(loaded.vectors[row], model.vector_for(text), rtol=1e-5, atol=1e-6)


def test_output_must_be_a_file_with_a_known_extension(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match=r"unknown output extension \.txt"):
        embed_records(["a"], tmp_path / "o.txt", model="fake", cache=None)
    (tmp_path / "dir.parquet").mkdir()
    with pytest.raises(InputError, match="is a folder"):
        embed_records(["a"], tmp_path / "dir.parquet", model="fake", cache=None)


def test_a_lone_surrogate_names_the_item_and_can_be_skipped(tmp_path: Path) -> None:
    """ "\\ud800" is a str but not Unicode: refused before the model, or skipped with skip_bad."""
    model = FakeEmbedding(embed_dim=4)
    items: list[str | dict[str, str]] = ["fine", "half \ud800 a pair", {"text": "ok", "tag": "\udfff"}, "last"]
    with pytest.raises(InputError, match=r"item 1: the text has a lone surrogate \(\\ud800\) at character 6"):
        embed_records(items, tmp_path / "o.parquet", model=model, cache=None)
    assert model.calls == [] and not (tmp_path / "o.parquet").exists()
    report = embed_records(items, tmp_path / "o.parquet", model=model, cache=None, skip_bad=True)
    assert load_embeddings(tmp_path / "o.parquet").ids == ["0", "3"]
    assert [m.split(":")[0] for m in report.skipped] == ["item 1", "item 2"]
    assert "field 'tag' has a lone surrogate (\\udfff)" in report.skipped[1]
    assert model.embedded == ["fine", "last"]


class _Watched(FakeEmbedding):
    """Counts how often its description is built (what building an event for it costs)."""

    described: int = 0

    def _descriptor(self) -> dict[str, Any]:
        self.described += 1
        return super()._descriptor()


class _CallsAnother(FakeEmbedding):
    """The job's model; each batch, another model in the same process embeds a text too."""

    other: Any = None

    def _embed_batch(self, items: list[Any], role: Role) -> Any:
        self.other.embed([f"unrelated {len(self.calls)}"])
        return super()._embed_batch(items, role)


@pytest.mark.parametrize("cache", ["sqlite", None])
def test_a_job_builds_no_events_for_other_models(tmp_path: Path, cache: str | None) -> None:
    """Progress is counted without a process-wide event handler: other models' calls stay free."""
    other = _Watched(embed_dim=4)
    model = _CallsAnother(embed_dim=4, embed_batch_size=3, other=other)
    texts = [f"text {i}" for i in range(10)] + ["text 0"]
    steps: list[int] = []

    class Bar:
        def update(self, n: int) -> None:
            steps.append(n)

    store = tmp_path / "c.sqlite" if cache else None
    report = embed_records(texts, tmp_path / "o.npy", model=model, cache=store, chunk_size=5, progress=lambda n: Bar())
    # without a cache the repeated "text 0" (in another chunk) is embedded again
    batches, computed = (4, 10) if store else (5, 11)
    assert len(other.calls) == batches and other.described == 0  # the other model ran, and built no event
    assert report.computed == computed and sum(steps) == 11
    if store:  # a second run: all from the cache, the bar still reaches the total
        steps.clear()
        again = embed_records(texts, tmp_path / "o.npy", model=model, cache=store, progress=lambda n: Bar())
        assert again.computed == 0 and sum(steps) == 11 and len(other.calls) == 4


def test_search_leaves_the_callers_model_as_it_was(tmp_path: Path) -> None:
    model = FakeEmbedding(embed_dim=8)
    embed_records([f"doc {i}" for i in range(5)], tmp_path / "o.parquet", model=model, cache=None)
    search(tmp_path / "o.parquet", "doc 1", k=2, model=model, cache=tmp_path / "c.sqlite")
    assert model.embeddings_cache is None
    assert SQLiteKVStore(tmp_path / "c.sqlite").count_vectors("embeddings") == 1  # the query went through it
    own = SimpleKVStore()
    model.embeddings_cache = own
    search(tmp_path / "o.parquet", "doc 2", k=2, model=model, cache=None)
    assert model.embeddings_cache is own and own.get_all("embeddings") == {}
    search(tmp_path / "o.parquet", "doc 2", k=2, model=model)  # DEFAULT_CACHE: the model's own store
    assert model.embeddings_cache is own and len(own.get_all("embeddings")) == 1


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"SQLite format 3\x00\xff\xfe\x00", "bytes that are not UTF-8"),
        (b"", "not JSON"),
        (b"[1, 2]", "top level is a list"),
        (b'{"embeddings": [1, 2]}', "collection 'embeddings' is a list"),
        (b'{"embeddings": {"k": 5}}', "entry 'k' of collection 'embeddings' is a number"),
    ],
)
def test_simple_kvstore_refuses_a_file_it_did_not_write(tmp_path: Path, content: bytes, needle: str) -> None:
    path = tmp_path / "store.json"
    path.write_bytes(content)
    with pytest.raises(ValueError) as info:
        SimpleKVStore.from_persist_path(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: not a SimpleKVStore file") and needle in msg, msg
    assert "persist()" in msg
    good = SimpleKVStore({"embeddings": {"k": {"v": [1.0]}}})
    good.persist(path)
    assert SimpleKVStore.from_persist_path(path).get("k", "embeddings") == {"v": [1.0]}
