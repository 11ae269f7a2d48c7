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


def test_stale_temp_files_of_dead_runs_are_removed(tmp_path: Path) -> None:
    host = socket.gethostname().replace(".", "_")
    dead = tmp_path / f".o.parquet.{host}.999999999.deadbeef.tmp"
    live = tmp_path / f".o.parquet.{host}.{os.getpid()}.cafecafe.tmp"
    other = tmp_path / ".o.parquet.otherhost.1.abcd.tmp"
    for p in (dead, live, other):
        p.write_bytes(b"partial")
    embed_records(["a"], tmp_path / "o.parquet", model="fake:4", cache=None)
    assert not dead.exists() and live.exists() and other.exists()


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
    assert bf16._identity() != _Precise(embed_dim=8)._identity()  # the cache still keeps them apart
    embed_records(texts, out, model=bf16, cache=None)
    hits = search(out, "document number 3", k=2, model=_Precise(embed_dim=8), cache=None)
    assert len(hits) == 2
    embed_records(["one more"], out, model=_Precise(embed_dim=8, precision="int8"), cache=None, append=True)
    assert load_embeddings(out).vectors.shape == (7, 8)
    with pytest.raises(ModelMismatchError, match="embed_dim=8 vs 4"):  # other fields still refuse
        search(out, "q", model=_Precise(embed_dim=4, precision="bf16"), cache=None)


def test_output_must_be_a_file_with_a_known_extension(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match=r"unknown output extension \.txt"):
        embed_records(["a"], tmp_path / "o.txt", model="fake", cache=None)
    (tmp_path / "dir.parquet").mkdir()
    with pytest.raises(InputError, match="is a folder"):
        embed_records(["a"], tmp_path / "dir.parquet", model="fake", cache=None)
