"""The OpenVINO backend of CrossEncoderReranker: fp32 equals torch (at bucketed shapes), NNCF int8 keeps every
query's ranking or is refused by name."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from embedstack.kvstore import SimpleKVStore
from embedstack.providers.huggingface.onnx_export import ExportError
from embedstack.rerank import CrossEncoderReranker
from embedstack.rerank._onnx import per_query_spearman
from embedstack.types import Role

from .conftest import PAIRS, WORDS

pytestmark = pytest.mark.slow
#: The bundled sample corpus (package descriptions).
SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "packages.jsonl"
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


def _corpus_pairs(queries: int, candidates: int) -> tuple[list[tuple[str, str]], list[int]]:
    """Each of the first `queries` package descriptions of the sample corpus against `candidates` texts
    (its own and the following ones): real text, grouped by query as a reranker reads it."""
    rows = [json.loads(line) for line in SAMPLE.read_text(encoding="utf-8").splitlines()[: queries + candidates]]
    pairs = [(rows[q]["query"], rows[q + i]["text"]) for q in range(queries) for i in range(candidates)]
    return pairs, [candidates] * queries


def test_openvino_int8_keeps_every_querys_ranking(
    ce_minilm: Path, graphs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fast mode on a MiniLM-L6-sized cross-encoder: NNCF int8 with the classifier head unquantised,
    built and cached apart from fp32, ranks held-out queries' documents as fp32 does (Spearman >= 0.99, mean
    per query)."""
    import openvino

    import onnx
    from embedstack.rerank import _openvino

    pairs, sizes = _corpus_pairs(6, 20)
    fp32 = CrossEncoderReranker(str(ce_minilm), backend="openvino", onnx_cache_dir=graphs).score(pairs)
    int8 = CrossEncoderReranker(str(ce_minilm), backend="openvino", precision="int8", onnx_cache_dir=graphs)
    fast = int8.score(pairs)
    rhos = per_query_spearman(fast, fp32, sizes)
    assert float(np.mean(rhos)) >= 0.99 and min(rhos) >= 0.98, rhos  # the bar is the mean per query
    assert not np.array_equal(fast, fp32)  # it is another graph
    built = list(graphs.glob("*minilm*/classifier-nncf-int8-*.onnx"))
    assert len(built) == 1
    graph = onnx.load(str(built[0]))
    dequantised = {o for n in graph.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    head = [n for n in graph.graph.node if n.op_type == "Gemm"]  # the pooler and the classifier
    assert head and not any(i in dequantised for n in head for i in n.input)  # kept fp32
    assert sum(n.op_type == "MatMul" and n.input[1] in dequantised for n in graph.graph.node) >= 12  # int8 layers
    compute = _openvino.int8_compute(openvino)
    scorer = int8.load()._weights.scorer
    assert isinstance(scorer, _openvino.OpenVinoScorer) and scorer.compute == compute
    identity = int8.identity()
    assert identity["int8_runtime"] == "openvino" and identity["int8_compute"] == compute
    assert identity["int8_recipe"] == _openvino.NNCF_RERANK_RECIPE  # another recipe's scores never served
    cache = SimpleKVStore()
    CrossEncoderReranker(str(ce_minilm), cache=cache).score(pairs[:5])
    assert not int8.pipeline.with_options(cache=cache).cached(pairs[:5], Role.PAIR).found.any()
    # the precision its unquantised ops run at is part of its identity (and of its graph's key)
    monkeypatch.setattr(_openvino, "native_bf16", lambda ov: compute != "bf16")
    other = CrossEncoderReranker(str(ce_minilm), backend="openvino", precision="int8", onnx_cache_dir=graphs)
    assert other.identity()["int8_compute"] != compute and other.identity() != identity


@pytest.mark.parametrize("fixture", ["ce_bert", "ce_xlmr"])
def test_openvino_int8_that_changes_the_ranking_is_refused(
    fixture: str, request: pytest.FixtureRequest, graphs: Path
) -> None:
    """A tiny random model's scores lie too close together for 8 bits: every recipe misses the bar on some
    calibration query, and the build is refused by name, with each recipe's figures; nothing int8 is cached."""
    path = request.getfixturevalue(fixture)
    with pytest.raises(ExportError, match=r"changes this model's rankings.*worst query.*use precision='fp32'") as info:
        CrossEncoderReranker(str(path), backend="openvino", precision="int8", onnx_cache_dir=graphs).load()
    message = str(info.value)
    for recipe in ("every encoder MatMul", "FFN output MatMuls kept", "the last layer kept", "attention only"):
        assert recipe in message
    folder = "*ce-xlmr*" if fixture == "ce_xlmr" else "*ce-bert0*"
    assert list(graphs.glob(f"{folder}/classifier-plain-*.onnx"))
    assert not list(graphs.glob(f"{folder}/classifier-nncf-*"))


def test_int8_recipes_find_the_head_and_the_last_layer(ce_bert: Path, graphs: Path) -> None:
    import onnx
    from embedstack.rerank._openvino import _ffn_matmuls, _head_and_last_layer

    CrossEncoderReranker(str(ce_bert), backend="openvino", onnx_cache_dir=graphs).load()
    plain = next(graphs.glob("*ce-bert0*/classifier-plain-*.onnx"))
    model = onnx.load(str(plain))
    head, last = _head_and_last_layer(model)
    assert len(head) == 2 and any("classifier" in n for n in head) and any("pooler" in n for n in head)
    assert len(last) == 8 and all("layer.1/" in n for n in last)  # q, k, v, scores x2, attention output, FFN x2
    into, after = _ffn_matmuls(model)
    assert len(into) == len(after) == 2 and set(after) & set(last)


def test_openvino_buckets_keep_the_logits(ce_bert: Path, graphs: Path) -> None:
    """Batches run at `shape_bucket` lengths (within the model's limit): the masked pad tokens change no logit."""
    from embedstack.providers.huggingface.onnx_encoder import shape_bucket
    from embedstack.rerank._openvino import OpenVinoScorer

    reranker = CrossEncoderReranker(str(ce_bert), backend="openvino", onnx_cache_dir=graphs).load()
    scorer = reranker._weights.scorer
    assert isinstance(scorer, OpenVinoScorer)
    tokenizer = reranker.tokenizer()
    for words in (3, 19, 45, 70):  # 7, 23, 49 and 64 (cut) tokens
        pairs = [("red house", " ".join(WORDS[: words - i])) for i in range(3)]
        feeds = tokenizer.pad(tokenizer.tokenize(pairs))
        length = feeds["input_ids"].shape[1]
        bucketed = scorer._bucketed(feeds)
        assert bucketed["input_ids"].shape[1] == min(shape_bucket(length), 64) >= length
        plain = scorer.session.run(["logits"], {n: feeds[n] for n in scorer.inputs})[0]
        np.testing.assert_allclose(scorer.logits(feeds), plain, atol=1e-6, rtol=0)


def test_openvino_precisions_are_checked(ce_bert: Path) -> None:
    with pytest.raises(ValueError, match="fp16"):
        CrossEncoderReranker(str(ce_bert), backend="openvino", precision="fp16")
    with pytest.raises(ValueError, match="int8 needs"):
        CrossEncoderReranker(str(ce_bert), precision="int8")
