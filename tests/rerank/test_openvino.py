"""The OpenVINO backend of CrossEncoderReranker: fp32 equals torch, NNCF int8 keeps the ranking."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from embedstack.kvstore import SimpleKVStore
from embedstack.providers.huggingface.onnx_export import ExportError
from embedstack.rerank import CrossEncoderReranker
from embedstack.rerank._onnx import spearman
from embedstack.types import Role

from .conftest import PAIRS, WORDS

pytestmark = pytest.mark.slow
pytest.importorskip("openvino")


def _ranking_pairs() -> list[tuple[str, str]]:
    """60 pairs of words from the tiny vocabulary (seeded): enough for a ranking to mean something."""
    rng = np.random.default_rng(7)
    return [
        (" ".join(rng.choice(WORDS, size=3)), " ".join(rng.choice(WORDS, size=int(rng.integers(2, 30)))))
        for _ in range(60)
    ]


@pytest.fixture(scope="module")
def graphs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ov-graphs")


@pytest.mark.parametrize("fixture", ["ce_bert", "ce_xlmr", "ce_bert3"])
def test_openvino_fp32_equals_torch(fixture: str, request: pytest.FixtureRequest, graphs: Path) -> None:
    path = request.getfixturevalue(fixture)
    pairs = [*PAIRS, *_ranking_pairs()]
    torch_model = CrossEncoderReranker(str(path))
    ov = CrossEncoderReranker(str(path), backend="openvino", onnx_cache_dir=graphs)
    np.testing.assert_allclose(ov.score(pairs), torch_model.score(pairs), atol=1e-5, rtol=0)
    assert ov.identity() == torch_model.identity()  # exact: one cache for every fp32 backend
    assert len(list(graphs.rglob("classifier-plain-*.onnx"))) >= 1
    assert not list(graphs.rglob("classifier-fp32-*.onnx"))  # OpenVINO reads the plain graph, not ORT's fused one


def test_openvino_int8_is_its_own_graph_and_keeps_the_order(ce_bert: Path, graphs: Path) -> None:
    """The fast mode on a tiny random model: built (NNCF) and cached apart from fp32, close to its ranking.

    8 bits cannot hold a 32-wide random model's ranking to 0.99 (its scores lie close together); the build's
    own check passes on its calibration pairs, and on a MiniLM-L6-sized model bench/rerank.py reports the
    figures. Here: a broken graph would rank far worse than 0.95."""
    pairs = _ranking_pairs()
    fp32 = CrossEncoderReranker(str(ce_bert), backend="openvino", onnx_cache_dir=graphs).score(pairs)
    int8 = CrossEncoderReranker(str(ce_bert), backend="openvino", precision="int8", onnx_cache_dir=graphs)
    fast = int8.score(pairs)
    assert spearman(fast, fp32) >= 0.95
    assert not np.array_equal(fast, fp32)  # it is another graph
    assert len(list(graphs.rglob("classifier-nncf-int8-*.onnx"))) == 1
    assert int8.identity()["int8_runtime"] == "openvino"  # never shares cached scores with fp32 or ORT's int8
    ort_int8 = CrossEncoderReranker(str(ce_bert), backend="onnx", precision="int8", onnx_cache_dir=graphs)
    assert ort_int8.identity() != int8.identity()
    cache = SimpleKVStore()
    CrossEncoderReranker(str(ce_bert), cache=cache).score(pairs[:5])
    assert not int8.pipeline.with_options(cache=cache).cached(pairs[:5], Role.PAIR).found.any()


def test_openvino_int8_that_changes_the_ranking_is_refused(
    ce_xlmr: Path, graphs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from embedstack.rerank import _openvino

    monkeypatch.setattr(_openvino, "INT8_MIN_SPEARMAN", 1.01)  # no recipe can reach it
    with pytest.raises(ExportError, match=r"use precision='fp32'") as info:
        CrossEncoderReranker(str(ce_xlmr), backend="openvino", precision="int8", onnx_cache_dir=graphs).load()
    assert "every layer" in str(info.value) and "attention only" in str(info.value)
    assert list(graphs.glob("*xlmr*/classifier-plain-*.onnx")) and not list(graphs.glob("*xlmr*/classifier-nncf-*"))


def test_openvino_precisions_are_checked(ce_bert: Path) -> None:
    with pytest.raises(ValueError, match="fp16"):
        CrossEncoderReranker(str(ce_bert), backend="openvino", precision="fp16")
    with pytest.raises(ValueError, match="int8 needs"):
        CrossEncoderReranker(str(ce_bert), precision="int8")
