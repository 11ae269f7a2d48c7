"""The CLI's scale-out paths: `--cache redis://...` with and without `--ray`, and `--ray` writing a Parquet
dataset directory that `embedstack search/info` and `load_embeddings` read like a file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from embedstack.cli import main
from embedstack.jobs import embed_files, load_embeddings, read_meta
from embedstack.providers.mock import FakeEmbedding

from .conftest import RedisServer

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]  # Ray, Redis


def _corpus(path: Path, n: int) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"doc{i}", "text": f"package {i} mocks HTTP requests", "stars": i}) + "\n")
    return path


def _sets(server: RedisServer) -> int:
    import redis

    stats = redis.Redis.from_url(server.url).info("commandstats")
    return int(stats.get("cmdstat_set", {}).get("calls", 0))


def test_cli_cache_redis_url(redis_server: RedisServer, tmp_path: Path) -> None:
    src = _corpus(tmp_path / "c.jsonl", 30)
    args = ["embed", str(src), "--model", "fake:8", "--cache", redis_server.url, "-q"]
    assert main([*args, "-o", str(tmp_path / "a.parquet")]) == 0
    assert _sets(redis_server) >= 30
    import redis

    redis.Redis.from_url(redis_server.url).config_resetstat()
    assert main([*args, "-o", str(tmp_path / "b.parquet")]) == 0
    assert _sets(redis_server) == 0  # the second run was served from Redis
    a, b = load_embeddings(tmp_path / "a.parquet"), load_embeddings(tmp_path / "b.parquet")
    np.testing.assert_array_equal(a.vectors, b.vectors)


def test_cli_ray_writes_a_dataset_directory(
    ray_session: Any, redis_server: RedisServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = _corpus(tmp_path / "c.jsonl", 40)
    out = tmp_path / "vectors"
    ray_args = ["--ray", "--concurrency", "2", "--cache", redis_server.url, "-q"]
    assert main(["embed", str(src), "-o", str(out), "--model", "fake:8", *ray_args]) == 0
    assert _sets(redis_server) >= 40  # the actors wrote to the shared cache
    data = load_embeddings(out)
    assert sorted(data.ids) == sorted(f"doc{i}" for i in range(40))
    model = FakeEmbedding(embed_dim=8)
    texts = data.columns["text"]
    for i in range(len(data)):
        np.testing.assert_array_equal(data.vectors[i], model.vector_for(texts[i]))
        assert data.columns["stars"][i] == int(data.ids[i][3:])
    # the same model metadata as a file output
    embed_files(src, tmp_path / "file.parquet", model="fake:8", cache=None)
    file_meta, dir_meta = read_meta(tmp_path / "file.parquet"), read_meta(out)
    assert set(file_meta) - {"updated"} <= set(dir_meta)
    for key in ("format", "model", "model_class", "model_name", "model_identity", "dim", "count", "text_field"):
        assert dir_meta[key] == file_meta[key], key
    capsys.readouterr()
    found = []
    for target in (out, tmp_path / "file.parquet"):  # the directory answers as the file does
        assert main(["search", str(target), "package 7 mocks HTTP requests", "-k", "5", "--json", "--no-cache"]) == 0
        found.append([(h["id"], round(h["score"], 5), h["text"]) for h in json.loads(capsys.readouterr().out)])
    assert found[0] == found[1] and len(found[0]) == 5
    assert main(["info", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "count    40" in shown and "parquet-dataset" in shown
    # a folder that is not ours is refused, not overwritten
    (tmp_path / "other").mkdir()
    assert main(["embed", str(src), "-o", str(tmp_path / "other"), "--model", "fake:8", "--ray", "-q"]) == 1
    assert "not an embedstack dataset directory" in capsys.readouterr().err


def test_cli_ray_sparse_only_dataset_searches_as_a_file(
    ray_session: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("Stemmer")
    src = tmp_path / "c.jsonl"
    with open(src, "w", encoding="utf-8") as f:
        for i in range(40):
            word = ("json", "yaml", "http", "mock")[i % 4]
            f.write(json.dumps({"id": f"doc{i}", "text": f"package {i} handles {word} {word if i % 5 else ''}"}) + "\n")
    out, single = tmp_path / "sparse", tmp_path / "single.parquet"
    args = ["--sparse", "bm25", "--no-dense", "--no-cache", "-q"]
    assert main(["embed", str(src), "-o", str(out), "--ray", "--concurrency", "2", *args]) == 0
    assert main(["embed", str(src), "-o", str(single), *args]) == 0
    assert (out / "_embedstack.bm25.json").read_text() == read_meta_stats(single)  # fitted on all 40 rows
    capsys.readouterr()
    found = []
    for target in (out, single):
        assert main(["search", str(target), "json mock", "-k", "5", "--json"]) == 0
        found.append(sorted((round(h["score"], 5), h["id"]) for h in json.loads(capsys.readouterr().out)))
    assert found[0] == found[1] and len(found[0]) == 5
    assert main(["info", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "none (sparse vectors only)" in shown and "40 documents" in shown and "_embedstack.bm25.json" in shown
    data = load_embeddings(out)
    assert data.vectors.shape == (40, 0) and data.sparse is not None and len(data.sparse) == 40


def read_meta_stats(path: Path) -> str:
    from embedstack.jobs._stored import read_stats

    stats = read_stats(path)
    assert stats is not None
    return stats
