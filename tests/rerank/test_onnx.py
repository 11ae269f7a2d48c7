"""The ONNX Runtime backend of CrossEncoderReranker: fp32 equals torch, int8 keeps the ranking or is refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from embedstack.kvstore import SimpleKVStore
from embedstack.providers.huggingface.onnx_export import ExportError
from embedstack.rerank import CrossEncoderReranker
from embedstack.rerank._onnx import RERANK_EXPORT_FORMAT, per_query_spearman, spearman
from embedstack.types import Role

from .conftest import PAIRS, WORDS

pytestmark = pytest.mark.slow


def _ranking_pairs() -> list[tuple[str, str]]:
    """60 pairs of words from the tiny vocabulary (seeded): enough for a ranking to mean something."""
    rng = np.random.default_rng(7)
    return [
        (" ".join(rng.choice(WORDS, size=3)), " ".join(rng.choice(WORDS, size=int(rng.integers(2, 30)))))
        for _ in range(60)
    ]


@pytest.mark.parametrize("fixture", ["ce_bert", "ce_xlmr", "ce_bert3"])
def test_onnx_fp32_equals_torch(fixture: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    path = request.getfixturevalue(fixture)
    pairs = [*PAIRS, *_ranking_pairs()]
    torch_scores = CrossEncoderReranker(str(path)).score(pairs)
    onnx = CrossEncoderReranker(str(path), backend="onnx", onnx_cache_dir=tmp_path)
    np.testing.assert_allclose(onnx.score(pairs), torch_scores, atol=1e-5, rtol=0)
    assert onnx.identity() == CrossEncoderReranker(str(path)).identity()  # exact: one cache for both backends
    graphs = sorted(p.name for p in tmp_path.rglob("classifier-fp32-*.onnx"))
    assert len(graphs) == 1
    again = CrossEncoderReranker(str(path), backend="onnx", onnx_cache_dir=tmp_path).load()
    assert again._weights.scorer is not None and again._weights.scorer.graph_path.name == graphs[0]  # type: ignore[attr-defined]


@pytest.mark.parametrize("backend", ["onnx", "openvino"])
def test_int8_scores_are_keyed_by_the_quantisers_version(
    ce_bert: Path, monkeypatch: pytest.MonkeyPatch, backend: str
) -> None:
    """Another ONNX Runtime (the quantiser; NNCF calibrates on it too) quantises otherwise: its int8 scores are
    never served from another version's cache; fp32 identities and model_identity() do not change."""
    from embedstack.providers.huggingface import onnx_export

    int8 = CrossEncoderReranker(str(ce_bert), backend=backend, precision="int8").identity()
    fp32 = CrossEncoderReranker(str(ce_bert), backend=backend).identity()
    real = onnx_export._version
    monkeypatch.setattr(onnx_export, "_version", lambda d: "0.0-other" if d == "onnxruntime" else real(d))
    other = CrossEncoderReranker(str(ce_bert), backend=backend, precision="int8")
    assert other.identity() != int8 and other.identity()["int8_versions"]["onnxruntime"] == "0.0-other"
    assert CrossEncoderReranker(str(ce_bert), backend=backend).identity() == fp32
    model_identity = other.pipeline.provider.model_identity()
    assert "int8_versions" not in model_identity


@pytest.mark.parametrize("fixture", ["ce_bert", "ce_xlmr"])
def test_onnx_int8_keeps_the_ranking(fixture: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    path = request.getfixturevalue(fixture)
    pairs = _ranking_pairs()
    fp32 = CrossEncoderReranker(str(path), backend="onnx", onnx_cache_dir=tmp_path).score(pairs)
    int8 = CrossEncoderReranker(str(path), backend="onnx", precision="int8", onnx_cache_dir=tmp_path)
    fast = int8.score(pairs)
    assert spearman(fast, fp32) >= 0.99
    assert not np.array_equal(fast, fp32)  # it is another graph
    assert int8.identity()["int8_runtime"] == "onnx"  # never shares cached scores with fp32
    assert int8.identity()["int8_recipe"] == RERANK_EXPORT_FORMAT  # nor with another recipe's graph
    cache = SimpleKVStore()
    CrossEncoderReranker(str(path), backend="onnx", cache=cache, onnx_cache_dir=tmp_path).score(pairs[:5])
    int8_cached = CrossEncoderReranker(
        str(path), backend="onnx", precision="int8", cache=cache, onnx_cache_dir=tmp_path
    )
    assert not int8_cached.pipeline.cached(pairs[:5], Role.PAIR).found.any()


def test_int8_that_changes_the_ranking_is_refused(
    ce_bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No recipe reaching the bar (here a bar no int8 graph can reach) refuses the build by name; nothing is cached."""
    from embedstack.rerank import _onnx

    monkeypatch.setattr(_onnx, "INT8_MIN_SPEARMAN", 1.01)
    reranker = CrossEncoderReranker(str(ce_bert), backend="onnx", precision="int8", onnx_cache_dir=tmp_path)
    with pytest.raises(ExportError, match=r"int8 changes this model's rankings.*attention projections only.*'fp32'"):
        reranker.score(PAIRS[:2])
    assert list(tmp_path.rglob("classifier-fp32-*.onnx")) and not list(tmp_path.rglob("classifier-int8-*.onnx"))


def test_spearman() -> None:
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 2], [5, 5, 9]) == pytest.approx(1.0)


def test_per_query_spearman() -> None:
    scores = [1, 2, 3, 3, 2, 1, 5]
    reference = [10, 20, 30, 1, 2, 3, 7]
    assert per_query_spearman(scores, reference, [3, 3, 1]) == pytest.approx([1.0, -1.0, 1.0])
