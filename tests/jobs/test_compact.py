"""Compact outputs (issue 17): dimensions and precision at embed time, their metadata, append and info.

Fake models where the model does not matter (formats, ranges, refusals); the real default model `local`
on the bundled sample's (query, text) pairs for retrieval quality (tests/jobs/test_search.py).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from tests.conftest import SAMPLE, Run

from embedstack.jobs import OutputError, _embed, embed_records, load_embeddings, read_meta, search
from embedstack.providers.mock import FakeEmbedding
from embedstack.vectors import PRECISIONS, calibration_ranges, dequantize, quantize, truncate_dimensions

TEXTS = [f"document number {i} about topic {i % 7}" for i in range(120)]


def _vectors(model: FakeEmbedding, texts: list[str]) -> np.ndarray:
    return np.stack([model.vector_for(t) for t in texts]).astype(np.float32)


@pytest.mark.filterwarnings("ignore:.*Matryoshka-trained")
@pytest.mark.parametrize("ext", ["npy", "parquet", "jsonl"])
@pytest.mark.parametrize("precision", PRECISIONS)
def test_each_precision_is_stored_as_its_codes_and_reads_back_as_float32(
    tmp_path: Path, ext: str, precision: str
) -> None:
    model = FakeEmbedding(embed_dim=64)
    out = tmp_path / f"o.{ext}"
    report = embed_records(TEXTS, out, model=model, cache=None, precision=precision, dimensions=40, chunk_size=50)
    assert report.precision == precision and report.dim == 40
    shaped = truncate_dimensions(_vectors(model, TEXTS), 40)
    meta = read_meta(out)
    assert (meta["precision"], meta["dim"], meta["source_dim"], meta["dimensions"]) == (precision, 40, 64, 40)
    ranges = None if meta["ranges"] is None else np.asarray(meta["ranges"], dtype=np.float32)
    binary = precision in ("binary", "ubinary")
    assert (ranges is not None) == (precision in ("int8", "uint8") or binary)  # binary: the rescoring vectors'
    assert meta["rescore"] == ("int8" if binary else None)
    expected = quantize(shaped, precision, ranges)
    if ext == "npy":  # memory-mappable in every precision; binary: packed (n, ceil(40 / 8))
        stored = np.load(out, mmap_mode="r")
        assert stored.dtype == expected.dtype and stored.shape == ((120, 5) if binary else (120, 40))
        assert np.array_equal(stored, expected)
        if binary:
            kept = np.load(out.with_name(out.name + ".rescore.npy"), mmap_mode="r")
            assert kept.dtype == np.int8 and np.array_equal(kept, quantize(shaped, "int8", ranges))
    elif ext == "parquet":
        import pyarrow.parquet as pq

        schema = pq.read_schema(out)
        assert schema.field("vector").type.value_type.to_pandas_dtype() == expected.dtype
        assert schema.field("vector").type.list_size == expected.shape[1]
        assert ("rescore" in schema.names) == binary
    else:
        first = json.loads(out.read_text(encoding="utf-8").splitlines()[0])
        assert first["vector"] == expected[0].tolist()
        assert all(isinstance(v, int) for v in first["vector"]) == (precision not in ("float32", "float16"))
    data = load_embeddings(out)  # contract: float32 (n, dim) in every precision
    assert data.vectors.dtype == np.float32 and data.vectors.shape == (120, 40)
    if precision in ("int8", "uint8") or binary:  # dequantised codes (binary: the rescoring vectors)
        codes = quantize(shaped, "int8" if binary else precision, ranges)
        np.testing.assert_array_equal(data.vectors, dequantize(codes, "int8" if binary else precision, ranges))
    else:
        np.testing.assert_allclose(data.vectors, shaped, atol=1e-3)


def test_binary_without_rescoring_vectors_reads_back_as_signs(tmp_path: Path) -> None:
    model = FakeEmbedding(embed_dim=32)
    out = tmp_path / "o.npy"
    embed_records(TEXTS, out, model=model, cache=None, precision="ubinary", rescore=False)
    meta = read_meta(out)
    assert meta["rescore"] is None and meta["ranges"] is None
    assert not out.with_name("o.npy.rescore.npy").exists()
    vectors = load_embeddings(out).vectors
    np.testing.assert_array_equal(vectors, np.where(_vectors(model, TEXTS) > 0, 1.0, -1.0))
    hits = search(out, TEXTS[5], k=3, model=model, cache=None)
    assert hits.method == "exact hamming" and all(0 <= h.score <= 1 for h in hits)


def test_ranges_are_calibrated_once_on_the_first_vectors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not per chunk: the ranges of the first CALIBRATION_ROWS (whole chunks) quantise every later chunk."""
    monkeypatch.setattr("embedstack.jobs._embed.CALIBRATION_ROWS", 50)
    model = FakeEmbedding(embed_dim=16)
    out = tmp_path / "o.npy"
    embed_records(TEXTS, out, model=model, cache=None, precision="int8", chunk_size=20)
    meta = read_meta(out)
    vectors = _vectors(model, TEXTS)
    ranges = calibration_ranges(vectors[:60])  # chunks of 20 are held until 50 have come: 60
    assert meta["ranges_from"] == "first 60 vectors"
    np.testing.assert_array_equal(np.asarray(meta["ranges"], dtype=np.float32), ranges)
    np.testing.assert_array_equal(np.load(out), quantize(vectors, "int8", ranges))
    assert not np.array_equal(ranges, calibration_ranges(vectors))  # the whole corpus would differ here


def test_given_ranges_are_used_and_checked(tmp_path: Path) -> None:
    model = FakeEmbedding(embed_dim=16)
    ranges = np.stack([np.full(16, -1.0), np.full(16, 1.0)]).astype(np.float32)
    embed_records(TEXTS, tmp_path / "o.npy", model=model, cache=None, precision="uint8", ranges=ranges)
    assert read_meta(tmp_path / "o.npy")["ranges_from"] == "given"
    np.testing.assert_array_equal(np.load(tmp_path / "o.npy"), quantize(_vectors(model, TEXTS), "uint8", ranges))
    with pytest.raises(ValueError, match=r"ranges must have shape \(2, 8\)"):
        embed_records(TEXTS, tmp_path / "p.npy", model=model, cache=None, precision="int8", dimensions=8, ranges=ranges)
    with pytest.raises(ValueError, match="unknown precision 'int4'"):
        embed_records(TEXTS, tmp_path / "p.npy", model=model, cache=None, precision="int4")
    with pytest.raises(ValueError, match="dimensions=32 exceeds the model's 16"):
        embed_records(TEXTS, tmp_path / "p.npy", model=model, cache=None, dimensions=32)
    assert not (tmp_path / "p.npy").exists()


@pytest.mark.parametrize("ext", ["npy", "parquet", "jsonl"])
def test_append_reuses_the_stored_ranges_bit_for_bit(tmp_path: Path, ext: str) -> None:
    model = FakeEmbedding(embed_dim=24)
    out = tmp_path / f"o.{ext}"
    embed_records(TEXTS[:60], out, model=model, cache=None, precision="binary", dimensions=16)
    before = read_meta(out)
    old = load_embeddings(out).vectors
    # no precision or dimensions given: the output's are taken; a text seen before gets the same codes
    embed_records([*TEXTS[60:], TEXTS[3]], out, model=model, cache=None, append=True)
    after = read_meta(out)
    assert after["ranges"] == before["ranges"] and after["precision"] == "binary" and after["dim"] == 16
    new = load_embeddings(out).vectors
    assert new.shape == (121, 16)
    np.testing.assert_array_equal(new[:60], old)
    np.testing.assert_array_equal(new[120], old[3])
    np.testing.assert_array_equal(new[120], new[3])


def test_append_refuses_another_precision_or_dimensions(tmp_path: Path) -> None:
    model = FakeEmbedding(embed_dim=24)
    out = tmp_path / "o.parquet"
    embed_records(TEXTS[:30], out, model=model, cache=None, precision="int8", dimensions=16)
    size = out.stat().st_size
    with pytest.raises(
        OutputError, match=r"holds int8 vectors of 16 dims; refusing to append binary.*--precision int8"
    ):
        embed_records(["x"], out, model=model, cache=None, append=True, precision="binary")
    with pytest.raises(OutputError, match=r"refusing to append 24 dims.*--dimensions 16"):
        embed_records(["x"], out, model=model, cache=None, append=True, dimensions=24)
    assert out.stat().st_size == size and read_meta(out)["count"] == 30
    embed_records(["x"], out, model=model, cache=None, append=True, precision="int8", dimensions=16)  # the same: fine
    assert read_meta(out)["count"] == 31


def test_truncating_a_model_not_trained_for_it_warns_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(_embed, "_MATRYOSHKA_WARNED", set())
    with pytest.warns(UserWarning, match="'fake' is not known to be Matryoshka-trained: its first 8 of 16"):
        embed_records(TEXTS[:5], tmp_path / "a.npy", model="fake:16", cache=None, dimensions=8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        embed_records(TEXTS[:5], tmp_path / "b.npy", model="fake:16", cache=None, dimensions=8)  # once
        embed_records(TEXTS[:5], tmp_path / "c.npy", model="fake:16", cache=None, dimensions=16)  # no cut
        _embed.matryoshka_warning("openai", "text-embedding-3-small", 256, 1536)  # trained for it
    with pytest.warns(UserWarning, match="'sentence-transformers/all-MiniLM-L6-v2' is not Matryoshka-trained"):
        _embed.matryoshka_warning("local", "sentence-transformers/all-MiniLM-L6-v2", 128, 384)


def test_cli_embed_info_and_ray_refusal(cli: Run, tmp_path: Path) -> None:
    r = cli(
        "embed", str(SAMPLE), "-o", "o.npy", "-m", "fake:32", "--no-cache", "--precision", "int8", "--dimensions", "24"
    )
    assert r.returncode == 0, r.stderr
    assert "(int8, 24 dims)" in r.stderr and "not known to be Matryoshka-trained" in r.stderr
    info = cli("info", "o.npy")
    assert info.returncode == 0, info.stderr
    lines = dict(line.split(None, 1) for line in info.stdout.splitlines())
    assert lines["dims"] == "24 (of the model's 32)"
    assert lines["vectors"].startswith("int8, 24 of 32 dims; 24 bytes per vector")
    assert "from first 300 vectors" in lines["ranges"]
    doc = json.loads(cli("info", "o.npy", "--json").stdout)
    assert (doc["precision"], doc["dim"], doc["source_dim"], doc["dimensions"]) == ("int8", 24, 32, 24)
    assert np.asarray(doc["ranges"]).shape == (2, 24)
    bad = cli("embed", str(SAMPLE), "-o", "o.npy", "-m", "fake:32", "--no-cache", "--append", "--precision", "binary")
    assert bad.returncode == 1 and "refusing to append binary" in bad.stderr and "--precision int8" in bad.stderr
    ray = cli("embed", str(SAMPLE), "-o", "d", "--ray", "local", "--precision", "int8")
    assert ray.returncode == 1 and "--precision cannot be used with --ray" in ray.stderr
    old = cli("embed", str(SAMPLE), "-o", "f.parquet", "-m", "fake:8", "--no-cache")  # float32: as before
    assert old.returncode == 0 and "dims" not in old.stderr.split("→")[-1]
    assert "vectors  float32, 8 dims; 32 bytes per vector" in cli("info", "f.parquet").stdout
