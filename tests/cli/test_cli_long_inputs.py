"""`embed --long-inputs chunk` and `embed --late-chunks TOKENS` through the command line's main function, with
the bundled all-MiniLM-L6-v2 on torch (limit 256 tokens), on files in a temporary folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from embedstack.cli import main
from embedstack.jobs import embed_files, load_embeddings
from embedstack.kvstore import SimpleKVStore
from embedstack.providers.huggingface import HuggingFaceEmbedding

pytestmark = pytest.mark.slow  # the bundled model, loaded

DATA = Path(__file__).resolve().parents[2] / "bench" / "data" / "packages-retrieval.jsonl"


@pytest.fixture(scope="module")
def docs() -> list[dict[str, str]]:
    """Three documents of four package descriptions each: two past the model's 256 tokens."""
    rows = [json.loads(line) for line, _ in zip(DATA.open(encoding="utf-8"), range(12))]
    return [{"id": f"d{i}", "text": "\n\n".join(r["text"] for r in rows[i * 4 : (i + 1) * 4])} for i in range(3)]


@pytest.fixture(scope="module")
def chunking() -> HuggingFaceEmbedding:
    return HuggingFaceEmbedding(backend="torch", long_inputs="chunk").load()


@pytest.fixture
def corpus(tmp_path: Path, docs: list[dict[str, str]], monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    return path


def test_embed_long_inputs_chunk(
    corpus: Path, docs: list[dict[str, str]], chunking: HuggingFaceEmbedding, capsys: pytest.CaptureFixture[str]
) -> None:
    counts, _ = chunking.provider.count_tokens([d["text"] for d in docs], "text")  # type: ignore[misc,arg-type]
    assert sum(c > 256 for c in counts) >= 2
    argv = ["embed", "docs.jsonl", "-o", "out.parquet", "--model", "torch", "--cache", "c.sqlite"]
    assert main([*argv, "--long-inputs", "chunk"]) == 0
    data = load_embeddings("out.parquet")
    assert data.meta["model_options"] == {"long_inputs": "chunk"}
    assert data.meta["model_identity"]["long_inputs"] == "chunk"
    capsys.readouterr()
    assert main(["info", "out.parquet"]) == 0
    assert "texts past the limit embedded whole (--long-inputs chunk" in capsys.readouterr().out
    want = chunking.embed([d["text"] for d in docs])
    np.testing.assert_allclose(data.vectors, want, atol=1e-5)
    truncated = HuggingFaceEmbedding(backend="torch").embed([d["text"] for d in docs])
    assert float(data.vectors[0] @ truncated[0]) < 0.999  # the whole text, not its first 256 tokens

    # search embeds the query with the recorded settings (a mismatch would be refused); append keeps them
    query = "a plugin for image processing in Krita"
    assert main(["search", "out.parquet", query, "--json", "-k", "1", "--cache", "c.sqlite"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["id"] == "d0"
    assert main([*argv, "--append"]) == 0
    assert "(0 computed, 3 from cache)" in capsys.readouterr().err
    assert load_embeddings("out.parquet").meta["model_options"] == {"long_inputs": "chunk"}
    assert main([*argv, "--append", "--long-inputs", "chunk", "--chunk-overlap", "10"]) == 1
    assert "refusing to append" in capsys.readouterr().err


def test_embed_late_chunks(
    corpus: Path, docs: list[dict[str, str]], chunking: HuggingFaceEmbedding, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["embed", "docs.jsonl", "--model", "torch", "--late-chunks", "64", "--cache", "c.sqlite"]
    assert main([*argv, "-o", "late.npy"]) == 0
    err = capsys.readouterr().err
    data = load_embeddings("late.npy")
    spans = [chunking.chunk_spans(d["text"], 64) for d in docs]
    assert f"embedded 3 documents as {sum(map(len, spans))} late chunks (3 encoded, 0 from cache)" in err
    assert data.meta["late_chunks"] == 64
    assert main(["info", "late.npy"]) == 0
    assert "late chunks of 64 tokens, one row per chunk" in capsys.readouterr().out
    assert data.ids == [f"{d['id']}#{k}" for d, s in zip(docs, spans) for k in range(len(s))]
    assert data.columns["doc_id"] == [d["id"] for d, s in zip(docs, spans) for _ in s]
    assert data.columns["text"] == [d["text"][a:b] for d, s in zip(docs, spans) for a, b in s]
    starts = [a for s in spans for a, _ in s]
    assert data.columns["chunk_start"] == starts
    want = np.concatenate([chunking.embed_chunks(d["text"], s) for d, s in zip(docs, spans)])
    np.testing.assert_allclose(data.vectors, want, atol=1e-5)
    assert main([*argv, "-o", "again.parquet"]) == 0  # a rerun (an interrupted one too) takes them from the cache
    assert "(0 encoded, 3 from cache)" in capsys.readouterr().err
    assert np.array_equal(load_embeddings("again.parquet").vectors, data.vectors)

    assert main(["embed", "docs.jsonl", "-o", "late.npy", "--model", "torch", "--append", "--no-cache"]) == 1
    assert "holds late chunks of 64 tokens; refusing to append one row per text" in capsys.readouterr().err
    assert main(["embed", "docs.jsonl", "-o", "x.npy", "--model", "fake:8", "--late-chunks", "64", "--no-cache"]) == 1
    assert "--late-chunks needs a local model" in capsys.readouterr().err
    assert (
        main(["embed", "docs.jsonl", "-o", "x.npy", "--model", "fake:8", "--long-inputs", "chunk", "--no-cache"]) == 1
    )
    assert "--long-inputs applies to local models" in capsys.readouterr().err
    argv = ["embed", "docs.jsonl", "-o", "x.npy", "--model", "torch", "--late-chunks", "64", "--long-inputs", "chunk"]
    assert main([*argv, "--no-cache"]) == 1
    assert "cannot be combined with --long-inputs chunk" in capsys.readouterr().err


class _BrokenStore(SimpleKVStore):
    """A store whose reads fail (the injected fault)."""

    def get_vector_blobs(self, keys: object, collection: str) -> list[object]:
        raise OSError("disk I/O error")


def test_late_chunks_survive_a_failing_cache(corpus: Path, docs: list[dict[str, str]]) -> None:
    with pytest.warns(RuntimeWarning, match="could not be read .*late chunks are still written"):
        report = embed_files("docs.jsonl", "late.npy", model="torch", late_chunks=64, cache=_BrokenStore())
    assert report.documents == 3 and report.computed == 3
    chunking = HuggingFaceEmbedding(backend="torch")
    want = np.concatenate([chunking.embed_chunks(d["text"], chunking.chunk_spans(d["text"], 64)) for d in docs])
    np.testing.assert_allclose(load_embeddings("late.npy").vectors, want, atol=1e-5)
