"""`embedstack embed/search/info/models` end to end in subprocesses, with the fake model."""

from __future__ import annotations

import csv
import gzip
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tests.conftest import Run, cli_env

from embedstack.jobs import load_embeddings, read_meta
from embedstack.kvstore import SQLiteKVStore
from embedstack.providers.mock import FakeEmbedding

pytestmark = pytest.mark.slow  # `embedstack` in subprocesses

FAKE = FakeEmbedding(embed_dim=16)


def expected(texts: list[str]) -> np.ndarray:
    return np.stack([FAKE.vector_for(t, "text") for t in texts])


def write_input(fmt: str, path: Path, rows: list[dict[str, Any]]) -> Path:
    """Write rows (id, text, query) as `fmt`; returns the file (or folder)."""
    if fmt == "txt":
        path.write_text("".join(r["text"].replace("\n", " ") + "\n" for r in rows), encoding="utf-8")
    elif fmt in ("jsonl", "jsonl.gz"):
        data = "".join(json.dumps(r) + "\n" for r in rows).encode()
        path.write_bytes(gzip.compress(data) if fmt.endswith(".gz") else data)
    elif fmt == "json":
        path.write_text(json.dumps(rows), encoding="utf-8")
    elif fmt in ("csv", "tsv"):
        with open(path, "w", encoding="utf-8", newline="") as f:
            w = csv.DictWriter(f, ["id", "text", "query"], delimiter="," if fmt == "csv" else "\t")
            w.writeheader()
            w.writerows(rows)
    elif fmt == "parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


FORMATS = ["jsonl", "jsonl.gz", "json", "csv", "tsv", "parquet", "txt"]


def test_every_input_format_in_one_run(cli: Run, tmp_path: Path, sample_rows: list[dict[str, str]]) -> None:
    """Seven files, one per format, eight records each: every record embedded, in input order."""
    parts = {fmt: sample_rows[i * 8 : i * 8 + 8] for i, fmt in enumerate(FORMATS)}
    files = [write_input(fmt, tmp_path / f"in.{fmt}", rows).name for fmt, rows in parts.items()]
    r = cli("embed", *files, "-o", "out.parquet", "-m", "fake:16", "--cache", "c.sqlite")
    assert r.returncode == 0, r.stderr
    assert "embedded 56 texts (56 computed, 0 from cache) with fake:16 → out.parquet" in r.stderr
    data = load_embeddings(tmp_path / "out.parquet")
    for i, (fmt, rows) in enumerate(parts.items()):
        got = slice(i * 8, i * 8 + 8)
        texts = [row["text"].replace("\n", " ") if fmt == "txt" else row["text"] for row in rows]
        np.testing.assert_array_equal(data.vectors[got], expected(texts), err_msg=fmt)
        assert data.columns["text"][got] == texts, fmt
        if fmt == "txt":  # no ids or other fields: FILE:LINE ids
            assert data.ids[got] == [f"in.txt:{n}" for n in range(1, 9)]
            assert data.columns["query"][got] == [None] * 8
        else:
            assert data.ids[got] == [row["id"] for row in rows], fmt
            assert data.columns["query"][got] == [row["query"] for row in rows], fmt
    assert data.meta["inputs"] == files


@pytest.mark.parametrize("out", ["out.parquet", "out.npy", "out.jsonl"])
def test_each_output_format_round_trips_with_model_metadata(
    cli: Run, tmp_path: Path, sample_jsonl: Path, sample_rows: list[dict[str, str]], out: str
) -> None:
    r = cli("embed", "docs.jsonl", "-o", out, "-m", "fake:16", "--no-cache", "--keep", "query")
    assert r.returncode == 0, r.stderr
    path = tmp_path / out
    vecs = expected([row["text"] for row in sample_rows])
    ids = [row["id"] for row in sample_rows]
    # read each format with its own library, as a user would
    if out.endswith(".parquet"):
        table = pq.read_table(path)
        assert table.schema.field("vector").type == pa.list_(pa.float32(), 16)
        assert table.column_names == ["id", "vector", "query"]
        assert table.column("id").to_pylist() == ids
        np.testing.assert_array_equal(np.array(table.column("vector").to_pylist(), dtype=np.float32), vecs)
        meta = json.loads(table.schema.metadata[b"embedstack"])
    elif out.endswith(".npy"):
        np.testing.assert_array_equal(np.load(path), vecs)
        side = [json.loads(line) for line in (tmp_path / "out.npy.rows.jsonl").read_text().splitlines()]
        assert [s["id"] for s in side] == ids and side[0] == {
            "id": ids[0],
            "query": sample_rows[0]["query"],
        }
        meta = json.loads((tmp_path / "out.npy.meta.json").read_text())
    else:
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        assert [x["id"] for x in lines] == ids
        np.testing.assert_array_equal(np.array([x["vector"] for x in lines], dtype=np.float32), vecs)
        meta = json.loads((tmp_path / "out.jsonl.meta.json").read_text())
    assert meta["model"] == "fake:16" and meta["dim"] == 16 and meta["count"] == len(ids)
    assert meta["model_identity"] == FAKE.provider.identity()
    assert meta == read_meta(path)

    info = cli("info", out)
    assert info.returncode == 0, info.stderr
    assert (
        "fake:16 (FakeEmbedding, fake)" in info.stdout
        and "dims     16" in info.stdout
        and f"count    {len(ids)}" in info.stdout
    )
    as_json = json.loads(cli("info", out, "--json").stdout)
    assert as_json["count"] == len(ids) and as_json["model_identity"] == FAKE.provider.identity()
    assert as_json["format"] == "embedstack-embeddings" and as_json["output_format"] == Path(out).suffix[1:]


def test_stdin_and_folders(cli: Run, tmp_path: Path, sample_rows: list[dict[str, str]]) -> None:
    r = cli(
        "embed",
        "-",
        "-o",
        "stdin.parquet",
        "-m",
        "fake:16",
        "--no-cache",
        input="first text\n\nsecond text\n",
    )
    assert r.returncode == 0, r.stderr
    data = load_embeddings(tmp_path / "stdin.parquet")
    assert data.ids == ["<stdin>:1", "<stdin>:3"]
    np.testing.assert_array_equal(data.vectors, expected(["first text", "second text"]))

    jsonl = "".join(json.dumps(r) + "\n" for r in sample_rows[:3])
    r = cli("embed", "-", "-o", "stdin2.parquet", "-m", "fake:16", "--no-cache", input=jsonl)
    assert r.returncode == 0, r.stderr
    assert load_embeddings(tmp_path / "stdin2.parquet").ids == [row["id"] for row in sample_rows[:3]]

    # CSV and TSV on stdin: sniffed from a header naming the text field, read as for a .csv/.tsv file
    for fmt in ("csv", "tsv"):
        table = write_input(fmt, tmp_path / f"rows.{fmt}", sample_rows[3:6]).read_text(encoding="utf-8")
        r = cli("embed", "-", "-o", f"stdin-{fmt}.jsonl", "-m", "fake:16", "--no-cache", input=table)
        assert r.returncode == 0, r.stderr
        data = load_embeddings(tmp_path / f"stdin-{fmt}.jsonl")
        assert data.ids == [row["id"] for row in sample_rows[3:6]], fmt
        assert data.columns["query"] == [row["query"] for row in sample_rows[3:6]], fmt
        np.testing.assert_array_equal(data.vectors, expected([row["text"] for row in sample_rows[3:6]]))
    # a header naming other columns (--field picks the text) is CSV too; prose with commas stays text
    r = cli("embed", "-", "-o", "body.jsonl", "-m", "fake:16", "--no-cache", "--field", "body", input="n,body\n1,x y\n")
    assert r.returncode == 0, r.stderr
    assert load_embeddings(tmp_path / "body.jsonl").columns == {"n": ["1"], "body": ["x y"]}
    prose = "Hello, world\nid,text are two words, here\n"
    r = cli("embed", "-", "-o", "prose.jsonl", "-m", "fake:16", "--no-cache", input=prose)
    assert r.returncode == 0, r.stderr
    assert load_embeddings(tmp_path / "prose.jsonl").columns["text"] == prose.splitlines()

    # Parquet on stdin (sniffed from its magic bytes): re-embed an output with another model
    parquet = (tmp_path / "stdin2.parquet").read_bytes()
    r = cli("embed", "-", "-o", "stdin3.jsonl", "-m", "fake:8", "--no-cache", input=parquet)
    assert r.returncode == 0, r.stderr
    again = load_embeddings(tmp_path / "stdin3.jsonl")
    assert again.ids == [row["id"] for row in sample_rows[:3]] and again.vectors.shape == (3, 8)

    folder = tmp_path / "corpus"
    (folder / "sub").mkdir(parents=True)
    write_input("jsonl", folder / "a.jsonl", sample_rows[:4])
    write_input("csv", folder / "sub" / "b.csv", sample_rows[4:6])
    (folder / "notes.md").write_text("ignored: not an input format\n")
    (folder / ".hidden.txt").write_text("ignored: hidden\n")
    r = cli("embed", "corpus", "-o", "folder.npy", "-m", "fake:16", "--no-cache")
    assert r.returncode == 0, r.stderr
    data = load_embeddings(tmp_path / "folder.npy")
    assert data.ids == [row["id"] for row in sample_rows[:6]]
    np.testing.assert_array_equal(data.vectors, expected([row["text"] for row in sample_rows[:6]]))


def test_second_run_is_served_from_the_cache(
    cli: Run, tmp_path: Path, sample_jsonl: Path, sample_rows: list[dict[str, str]]
) -> None:
    first = cli("embed", "docs.jsonl", "-o", "a.parquet", "-m", "fake:16", "--cache", "c.sqlite")
    assert "(60 computed, 0 from cache)" in first.stderr
    assert SQLiteKVStore(tmp_path / "c.sqlite").count_vectors("embeddings") == 60
    # 10 new texts among the old ones: only those reach the model
    rows = sample_rows + [{"id": f"new{i}", "text": f"a brand new text {i}"} for i in range(10)]
    write_input("jsonl", tmp_path / "more.jsonl", rows)
    second = cli("embed", "more.jsonl", "-o", "b.parquet", "-m", "fake:16", "--cache", "c.sqlite")
    assert "embedded 70 texts (10 computed, 60 from cache)" in second.stderr
    np.testing.assert_array_equal(
        load_embeddings(tmp_path / "b.parquet").vectors[:60],
        load_embeddings(tmp_path / "a.parquet").vectors,
    )


def test_default_cache_lives_in_the_user_cache_dir(cli: Run, tmp_path: Path, sample_jsonl: Path) -> None:
    r = cli("embed", "docs.jsonl", "-o", "a.parquet", "-m", "fake:16")
    assert r.returncode == 0, r.stderr
    cache = tmp_path / "xdg-cache" / "embedstack" / "cache.sqlite"
    assert SQLiteKVStore(cache).count_vectors("embeddings") == 60
    assert "(0 computed, 60 from cache)" in cli("embed", "docs.jsonl", "-o", "b.parquet", "-m", "fake:16").stderr


def test_search_ranks_by_cosine_with_the_recorded_model(
    cli: Run, tmp_path: Path, sample_jsonl: Path, sample_rows: list[dict[str, str]]
) -> None:
    assert cli("embed", "docs.jsonl", "-o", "a.parquet", "-m", "fake:16", "--no-cache").returncode == 0
    query = "library for stubbing HTTP requests"
    r = cli("search", "a.parquet", query, "-k", "3", "--json", "--no-cache")
    assert r.returncode == 0, r.stderr
    hits = json.loads(r.stdout)
    docs = expected([row["text"] for row in sample_rows])
    scores = docs @ FAKE.vector_for(query, "query")
    best = np.argsort(-scores)[:3]
    assert [h["id"] for h in hits] == [sample_rows[i]["id"] for i in best]
    assert [h["rank"] for h in hits] == [1, 2, 3]
    np.testing.assert_allclose([h["score"] for h in hits], scores[best], rtol=1e-5)
    assert hits[0]["text"] == sample_rows[best[0]]["text"] and hits[0]["fields"] == {
        "query": sample_rows[best[0]]["query"]
    }

    plain = cli("search", "a.parquet", query, "-k", "2", "--no-cache")
    lines = plain.stdout.splitlines()
    # rank, score and id of the two best, in order
    assert [line.split()[:3] for line in lines] == [
        [str(rank), f"{scores[i]:.4f}", sample_rows[i]["id"]] for rank, i in enumerate(best[:2], 1)
    ]
    assert sample_rows[best[0]]["text"].split()[0] in lines[0]


def test_search_and_append_refuse_another_model(cli: Run, tmp_path: Path, sample_jsonl: Path) -> None:
    assert cli("embed", "docs.jsonl", "-o", "a.parquet", "-m", "fake:16", "--no-cache").returncode == 0
    r = cli("search", "a.parquet", "query", "-m", "fake:8", "--no-cache")
    assert r.returncode == 1
    assert r.stderr.startswith(
        "embedstack: error: a.parquet was embedded with 'fake:16'; refusing to search it with a different model"
    )
    assert "embed_dim=16 vs 8" in r.stderr and r.stderr.count("\n") == 1

    r = cli("embed", "docs.jsonl", "-o", "a.parquet", "-m", "fake:8", "--append", "--no-cache")
    assert r.returncode == 1 and "refusing to append to it with a different model" in r.stderr
    assert read_meta(tmp_path / "a.parquet")["count"] == 60  # untouched

    # the same model under another spelling is fine
    assert cli("search", "a.parquet", "query", "-m", "fake", "--no-cache").returncode == 0


@pytest.mark.parametrize("out", ["out.parquet", "out.npy", "out.jsonl"])
def test_append_adds_rows_with_the_same_model(
    cli: Run, tmp_path: Path, sample_rows: list[dict[str, str]], out: str
) -> None:
    write_input("jsonl", tmp_path / "a.jsonl", sample_rows[:5])
    write_input("csv", tmp_path / "b.csv", sample_rows[5:8])
    assert cli("embed", "a.jsonl", "-o", out, "-m", "fake:16", "--no-cache").returncode == 0
    r = cli("embed", "b.csv", "-o", out, "-m", "fake:16", "--no-cache", "--append")
    assert r.returncode == 0, r.stderr
    data = load_embeddings(tmp_path / out)
    assert data.ids == [row["id"] for row in sample_rows[:8]]
    np.testing.assert_array_equal(data.vectors, expected([row["text"] for row in sample_rows[:8]]))
    assert data.columns["query"] == [row["query"] for row in sample_rows[:8]]
    assert data.meta["inputs"] == ["a.jsonl", "b.csv"] and data.meta["count"] == 8 and "updated" in data.meta


def test_models_lists_forms_extras_and_the_bundled_model(cli: Run) -> None:
    r = cli("models")
    assert r.returncode == 0, r.stderr
    assert '"local" or "local:<model name or path>"' in r.stdout
    assert "cli          installed" in r.stdout
    assert '"rerank:<model name or path>"' in r.stdout and '"tei:<server url>"' in r.stdout  # rerankers too
    info = json.loads(cli("models", "--json").stdout)
    assert any(f.startswith('"cohere:<model>"') for f in info["rerank_forms"])
    assert info["extras"]["cli"] is True
    bundled = [m for m in info["offline"] if m["spec"] == "local"]
    assert bundled and Path(bundled[0]["where"], "config.json").is_file()


def test_help_is_fast_to_import_and_entry_points_work(cli: Run, tmp_path: Path) -> None:
    r = cli("--help")
    assert r.returncode == 0 and all(c in r.stdout for c in ("embed", "search", "info", "models"))
    assert cli().returncode == 2
    heavy = "{'pyarrow', 'torch', 'platformdirs', 'embedstack.jobs'}"
    code = f"import sys, embedstack.cli; print(sorted({heavy} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "[]"
    script = Path(sys.executable).with_name("embedstack")
    assert script.exists(), "console script missing: pip install -e '.[cli]'"
    r2 = subprocess.run([str(script), "--version"], capture_output=True, text=True, env=cli_env(tmp_path))
    assert r2.returncode == 0 and r2.stdout.startswith("embedstack ")
