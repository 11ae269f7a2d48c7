"""Export, cache and load of the ONNX backend on tiny random checkpoints made by the fixtures."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import onnx
from embedstack.pooling import Pooling
from embedstack.providers.huggingface import onnx_export as _onnx_export
from embedstack.providers.huggingface.onnx_encoder import OnnxEncoder, physical_cores
from embedstack.providers.huggingface.onnx_export import cache_key, model_fingerprint

pytestmark = pytest.mark.slow  # ONNX exports


def _cos(a: Any, b: Any) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture
def count_exports(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Records each torch export (the expensive step a cache hit must skip)."""
    calls: list[Path] = []
    real = _onnx_export._export_torch

    def counting(model_dir: Path, out: Path, feeds: Any) -> Any:
        calls.append(model_dir)
        return real(model_dir, out, feeds)

    monkeypatch.setattr(_onnx_export, "_export_torch", counting)
    return calls


def _graphs(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.onnx"))


def test_export_matches_torch_and_is_cached(
    tiny_bert: Path, tmp_path: Path, count_exports: list[Path], sentences: list[str], torch_reference: Any
) -> None:
    enc = OnnxEncoder(tiny_bert, cache_dir=tmp_path)
    assert (enc.dim, enc.max_length) == (32, 64)
    result = enc.encode(sentences)
    ref = torch_reference(tiny_bert, sentences, max_length=64)
    assert np.asarray(result.vectors).shape == (len(sentences), 32)
    assert _cos(result.vectors, ref).min() >= 0.9999
    assert len(count_exports) == 1
    graph = enc.graph_path
    assert graph.parent.parent == tmp_path and graph.with_name(graph.name + ".sha256").is_file()
    assert not [p for p in tmp_path.rglob("*.tmp")], "temp files left behind"

    again = OnnxEncoder(tiny_bert, cache_dir=tmp_path)  # a cache hit: no second export
    assert len(count_exports) == 1 and again.graph_path == graph
    np.testing.assert_array_equal(again.encode(sentences).vectors, result.vectors)


def test_fused_graph_and_declared_inputs_only(tiny_bert: Path, shared_cache: Path) -> None:
    enc = OnnxEncoder(tiny_bert, cache_dir=shared_cache)
    ops = {n.op_type for n in onnx.load(str(enc.graph_path)).graph.node}
    assert {"Attention", "SkipLayerNormalization"} <= ops, ops  # ORT's transformer fusions
    assert enc.inputs == ["input_ids", "attention_mask", "token_type_ids"]
    assert enc.threads == physical_cores() >= 1


def test_graph_without_token_type_ids(
    tiny_distilbert: Path, shared_cache: Path, sentences: list[str], torch_reference: Any
) -> None:
    enc = OnnxEncoder(tiny_distilbert, cache_dir=shared_cache)
    assert "token_type_ids" not in enc.inputs  # fed only what the graph declares
    ref = torch_reference(tiny_distilbert, sentences, max_length=64)
    assert _cos(enc.encode(sentences).vectors, ref).min() >= 0.9999


def test_sentence_transformers_layout(
    tiny_st: Path, shared_cache: Path, sentences: list[str], torch_reference: Any
) -> None:
    """CLS pooling and max_seq_length come from the sentence-transformers config files."""
    enc = OnnxEncoder(tiny_st, cache_dir=shared_cache)
    assert (enc.pooling, enc.max_length) == (Pooling.CLS, 16)
    ref = torch_reference(tiny_st, sentences, max_length=16, pooling="cls")
    assert _cos(enc.encode(sentences).vectors, ref).min() >= 0.9999
    mean = OnnxEncoder(tiny_st, cache_dir=shared_cache, pooling=Pooling.MEAN)
    ref_mean = torch_reference(tiny_st, sentences, max_length=16)
    assert _cos(mean.encode(sentences).vectors, ref_mean).min() >= 0.9999


def test_token_count_truncation_and_empty(tiny_st: Path, shared_cache: Path) -> None:
    enc = OnnxEncoder(tiny_st, cache_dir=shared_cache)
    texts = ["a", "", "data " * 40, "the cat sat on the mat"]
    result = enc.encode(texts)
    # [CLS] a [SEP]=3, [CLS][SEP]=2, cut to 16, [CLS] 6 words [SEP]=8
    assert result.token_count == 3 + 2 + 16 + 8
    assert result.truncated == 1
    empty = enc.encode([])
    assert np.asarray(empty.vectors).shape == (0, 32) and empty.token_count == 0


@pytest.mark.parametrize("budget", [1, 7, 40])
def test_token_budget_batches_keep_order(
    tiny_bert: Path, shared_cache: Path, budget: int, sentences: list[str]
) -> None:
    whole = OnnxEncoder(tiny_bert, cache_dir=shared_cache)
    small = OnnxEncoder(tiny_bert, cache_dir=shared_cache, token_budget=budget)
    texts = [" ".join(["fox"] * n) for n in (3, 0, 9, 1, 5, 5, 12, 2)] + sentences
    np.testing.assert_allclose(small.encode(texts).vectors, whole.encode(texts).vectors, rtol=1e-4, atol=1e-5)
    lengths = np.array([len(e.ids) for e in small.tokenizer.encode_batch(texts)])
    batches = small._batches(lengths)
    assert sorted(i for b in batches for i in b) == list(range(len(texts)))
    for rows in batches:
        assert len(rows) == 1 or len(rows) * lengths[rows].max() <= budget


def test_corrupt_cache_is_rebuilt(
    tiny_bert: Path, tmp_path: Path, count_exports: list[Path], sentences: list[str]
) -> None:
    first = OnnxEncoder(tiny_bert, cache_dir=tmp_path)
    expected = first.encode(sentences).vectors
    graph = first.graph_path
    data = bytearray(graph.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = b"\0" * 64  # same size, different bytes
    graph.write_bytes(bytes(data))

    second = OnnxEncoder(tiny_bert, cache_dir=tmp_path)
    assert len(count_exports) == 2, "a corrupt graph must be rebuilt, not used"
    np.testing.assert_allclose(second.encode(sentences).vectors, expected, rtol=1e-5, atol=1e-6)

    graph.write_bytes(graph.read_bytes()[:100])  # truncated by a crash
    OnnxEncoder(tiny_bert, cache_dir=tmp_path)
    assert len(count_exports) == 3

    graph.with_name(graph.name + ".sha256").unlink()  # died before the sidecar was written
    OnnxEncoder(tiny_bert, cache_dir=tmp_path)
    assert len(count_exports) == 4


def test_graph_that_fails_to_load_is_rebuilt(tiny_bert: Path, tmp_path: Path, count_exports: list[Path]) -> None:
    """A file whose checksum matches but that ONNX Runtime rejects is rebuilt once."""
    graph = OnnxEncoder(tiny_bert, cache_dir=tmp_path).graph_path
    junk = b"not an onnx graph"
    graph.write_bytes(junk)
    sidecar = graph.with_name(graph.name + ".sha256")
    import hashlib

    sidecar.write_text(json.dumps({"sha256": hashlib.sha256(junk).hexdigest(), "size": len(junk)}))
    enc = OnnxEncoder(tiny_bert, cache_dir=tmp_path)
    assert len(count_exports) == 2
    assert enc.graph_path.stat().st_size > 1000


def test_crash_mid_export_leaves_no_file(tiny_bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def dies(src: Path, dst: Path, model_dir: Path) -> dict[str, int]:
        dst.write_bytes(b"half a graph")
        raise KeyboardInterrupt  # not an optimiser error: it must propagate

    monkeypatch.setattr(_onnx_export, "_optimise", dies)
    with pytest.raises(KeyboardInterrupt):
        OnnxEncoder(tiny_bert, cache_dir=tmp_path)
    assert _graphs(tmp_path) == []
    assert [p.name for p in tmp_path.rglob("*") if p.suffix == ".tmp"] == []
    assert [p.name for p in tmp_path.rglob("*build-*")] == []  # the build's work folder is gone too


def test_failed_fusion_falls_back_to_plain_graph(
    tiny_bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sentences: list[str], torch_reference: Any
) -> None:
    def broken(src: Path, dst: Path, model_dir: Path) -> dict[str, int]:
        raise RuntimeError("fusion crashed")

    monkeypatch.setattr(_onnx_export, "_optimise", broken)
    enc = OnnxEncoder(tiny_bert, cache_dir=tmp_path)
    ops = {n.op_type for n in onnx.load(str(enc.graph_path)).graph.node}
    assert "Attention" not in ops
    ref = torch_reference(tiny_bert, sentences, max_length=64)
    assert _cos(enc.encode(sentences).vectors, ref).min() >= 0.9999


def test_cache_key_tracks_weights_versions_and_precision(
    tiny_bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(tiny_bert, copy)
    fp = model_fingerprint(copy, tmp_path / "c")
    assert model_fingerprint(copy, tmp_path / "c") == fp  # memoised, same answer
    weights = copy / "model.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 1
    weights.write_bytes(bytes(blob))
    assert model_fingerprint(copy, tmp_path / "c") != fp
    assert cache_key(fp, "fp32") != cache_key(fp, "int8")
    before = cache_key(fp, "fp32")
    monkeypatch.setattr(_onnx_export, "_version", lambda dist: "0.0-other")
    assert cache_key(fp, "fp32") != before


def test_weights_rewritten_with_same_size_and_mtime_rebuild_the_graph(
    tiny_bert: Path, tmp_path: Path, count_exports: list[Path], sentences: list[str], torch_reference: Any
) -> None:
    """A cached graph is keyed by its files' contents: new weights copied over the old ones with their size and
    mtime (cp -p, touch -r, rsync -t) are a new export, never the old weights' graph (the memo had (path, size,
    mtime) only)."""
    import os

    import transformers

    copy = tmp_path / "copy"
    shutil.copytree(tiny_bert, copy)
    first = OnnxEncoder(copy, cache_dir=tmp_path / "c")
    old = first.encode(sentences).vectors
    retrained = transformers.BertModel.from_pretrained(str(copy))
    for p in retrained.parameters():
        p.data.mul_(-1.5)
    retrained.save_pretrained(str(tmp_path / "retrained"))
    weights = copy / "model.safetensors"
    st = weights.stat()
    shutil.copyfile(tmp_path / "retrained" / "model.safetensors", weights)
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (weights.stat().st_size, weights.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)

    again = OnnxEncoder(copy, cache_dir=tmp_path / "c")
    assert len(count_exports) == 2 and again.graph_path != first.graph_path
    new = again.encode(sentences).vectors
    assert _cos(new, torch_reference(copy, sentences, max_length=64)).min() >= 0.9999
    assert not np.allclose(new, old, atol=1e-3)  # the old graph would have served other numbers


@pytest.mark.parametrize(("backend", "recipe"), [("onnx", "INT8_RECIPE"), ("openvino", "NNCF_RECIPE")])
def test_embedding_cache_key_tracks_the_int8_recipe(
    tiny_bert: Path, monkeypatch: pytest.MonkeyPatch, backend: str, recipe: str
) -> None:
    """A new int8 recipe re-exports the graph (other vectors): the embeddings' cache key changes with it, or a warm
    cache mixes the old recipe's vectors with the new one's (the key held only int8_runtime)."""
    from embedstack.providers.huggingface import HuggingFaceEmbedding

    model = HuggingFaceEmbedding(str(tiny_bert), backend=backend, precision="int8")
    before = model.pipeline.key_factory("text")("a cat")
    monkeypatch.setattr(_onnx_export, recipe, getattr(_onnx_export, recipe) + 1)
    again = HuggingFaceEmbedding(str(tiny_bert), backend=backend, precision="int8")
    assert again.pipeline.key_factory("text")("a cat") != before
    assert "int8_recipe" not in again.provider.model_identity()  # a corpus stays searchable, as for int8_runtime


@pytest.mark.parametrize(("backend", "tool"), [("onnx", "onnxruntime"), ("openvino", "nncf"), ("openvino", "openvino")])
def test_int8_cache_key_tracks_the_quantisers_version(
    tiny_bert: Path, monkeypatch: pytest.MonkeyPatch, backend: str, tool: str
) -> None:
    """int8 numbers depend on the version of the tool that quantised (and compiles) the graph: another version is
    another key (the int8 graph is rebuilt for it, so a warm cache would mix two quantisations); fp32 keys and
    model_identity() stay as they were."""
    from embedstack.providers.huggingface import HuggingFaceEmbedding

    def key(precision: str) -> str:
        model = HuggingFaceEmbedding(str(tiny_bert), backend=backend, precision=precision)
        return model.pipeline.key_factory("text")("a cat")

    int8, fp32 = key("int8"), key("fp32")
    identity = HuggingFaceEmbedding(str(tiny_bert), backend=backend, precision="int8").provider.model_identity()
    real = _onnx_export._version
    monkeypatch.setattr(_onnx_export, "_version", lambda dist: "0.0-other" if dist == tool else real(dist))
    assert key("int8") != int8
    assert key("fp32") == fp32
    again = HuggingFaceEmbedding(str(tiny_bert), backend=backend, precision="int8")
    assert again.provider.identity()["int8_versions"][tool] == "0.0-other"
    assert again.provider.model_identity() == identity  # a corpus stays searchable, as for int8_recipe


def _shipping(model_dir: Path, folder: Path, graph: Path, weights: bool = True) -> Path:
    """A copy of `model_dir` that ships `graph` as onnx/model.onnx (with or without its torch weights)."""
    shutil.copytree(model_dir, folder, ignore=None if weights else shutil.ignore_patterns("*.safetensors"))
    (folder / "onnx").mkdir()
    shutil.copy(graph, folder / "onnx" / "model.onnx")
    return folder


def test_shipped_onnx_that_reproduces_torch_is_used_without_an_export(
    tiny_bert: Path, shared_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sentences: list[str]
) -> None:
    exported = OnnxEncoder(tiny_bert, cache_dir=shared_cache)
    model = _shipping(tiny_bert, tmp_path / "shipped", exported.graph_path)
    checked: list[Path] = []
    real = _onnx_export._torch_hidden

    def no_torch_export(*args: Any) -> Any:
        raise AssertionError("the shipped graph should have been used")

    def hidden(model_dir: Path, feeds: Any) -> Any:
        checked.append(model_dir)
        return real(model_dir, feeds)

    monkeypatch.setattr(_onnx_export, "_export_torch", no_torch_export)
    monkeypatch.setattr(_onnx_export, "_torch_hidden", hidden)
    enc = OnnxEncoder(model, cache_dir=tmp_path / "cache")
    assert checked == [model]  # compared with the torch weights it ships with, once
    np.testing.assert_allclose(enc.encode(sentences).vectors, exported.encode(sentences).vectors, rtol=1e-4, atol=1e-5)


def test_shipped_onnx_that_drifts_from_torch_is_replaced_by_an_export(
    tiny_bert: Path,
    tmp_path: Path,
    count_exports: list[Path],
    sentences: list[str],
    torch_reference: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A model directory whose onnx/model.onnx is another model's graph (same inputs and shapes, other
    weights): its vectors would be wrong, so the weights are exported instead, with a warning."""
    import torch
    import transformers

    other = tmp_path / "other"
    shutil.copytree(tiny_bert, other)
    torch.manual_seed(7)
    transformers.BertModel(transformers.BertConfig.from_pretrained(str(other))).eval().save_pretrained(str(other))
    wrong_graph = OnnxEncoder(other, cache_dir=tmp_path / "c1").graph_path
    assert len(count_exports) == 1
    model = _shipping(tiny_bert, tmp_path / "shipped", wrong_graph)

    with caplog.at_level("WARNING", logger="embedstack"):
        enc = OnnxEncoder(model, cache_dir=tmp_path / "c2")
    assert len(count_exports) == 2  # the shipped graph was refused and the weights exported
    assert "does not reproduce" in caplog.text and "model.onnx" in caplog.text
    ref = torch_reference(tiny_bert, sentences, max_length=64)
    assert _cos(enc.encode(sentences).vectors, ref).min() >= 0.9999


def test_shipped_onnx_without_weights_is_used_with_a_warning(
    tiny_bert: Path,
    shared_cache: Path,
    tmp_path: Path,
    count_exports: list[Path],
    sentences: list[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    exported = OnnxEncoder(tiny_bert, cache_dir=shared_cache)
    model = _shipping(tiny_bert, tmp_path / "onnx-only", exported.graph_path, weights=False)
    with caplog.at_level("WARNING", logger="embedstack"):
        enc = OnnxEncoder(model, cache_dir=tmp_path / "cache")
    assert count_exports == [] and "cannot be checked" in caplog.text
    np.testing.assert_allclose(enc.encode(sentences).vectors, exported.encode(sentences).vectors, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("gate", ["passes", "fails"])
def test_int8_quantises_all_or_keeps_ffn_outputs_by_calibration(
    tiny_bert: Path, shared_cache: Path, sentences: list[str], monkeypatch: pytest.MonkeyPatch, gate: str
) -> None:
    # The thresholds are part of the int8 cache key, so each setting builds its own graph.
    monkeypatch.setattr(_onnx_export, "INT8_MIN_MEAN_COSINE", -1.0 if gate == "passes" else 1.01)
    fp32 = OnnxEncoder(tiny_bert, cache_dir=shared_cache)
    int8 = OnnxEncoder(tiny_bert, precision="int8", cache_dir=shared_cache)
    assert int8.graph_path != fp32.graph_path
    graph = onnx.load(str(int8.graph_path)).graph
    ops = [n.op_type for n in graph.node]
    assert set(ops) & {"DynamicQuantizeMatMul", "MatMulInteger", "QAttention"}, ops
    layers = onnx.load(str(fp32.graph_path)).graph
    ffn_outputs = len(_onnx_export._sensitive_nodes(onnx.load(str(fp32.graph_path))))
    assert ffn_outputs == sum(n.op_type == "Attention" for n in layers.node) > 0  # one per layer
    # Passing the gate leaves no fp32 MatMul; failing it keeps exactly the FFN output projections.
    assert ops.count("MatMul") == (0 if gate == "passes" else ffn_outputs), ops
    vectors = np.asarray(int8.encode(sentences).vectors)
    assert np.isfinite(vectors).all() and vectors.shape == (len(sentences), 32)
    assert _cos(vectors, fp32.encode(sentences).vectors).mean() >= 0.95


def test_int8_fidelity_sees_mean_cls_and_last_token_pooling() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(3, 5, 8))
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    assert _onnx_export.int8_fidelity(ref.copy(), ref, mask) == pytest.approx((1.0, 1.0))
    padded = ref.copy()
    padded[0, 3:] = 1e6  # padding positions do not count
    assert _onnx_export.int8_fidelity(padded, ref, mask)[1] == pytest.approx(1.0)
    flipped = ref.copy()
    flipped[1, 0] *= -1  # only the first token changes: CLS pooling would see it
    mean, worst = _onnx_export.int8_fidelity(flipped, ref, mask)
    assert worst == pytest.approx(-1.0) and mean < 1.0
    last = ref.copy()
    last[0, 2] *= -1  # only row 0's last real token changes: last-token pooling would see it
    assert _onnx_export.int8_fidelity(last, ref, mask)[1] == pytest.approx(-1.0)


@pytest.mark.parametrize("precision", ["bf16", "fp16", "int4"])
def test_unsupported_precision_names_the_options(tiny_bert: Path, precision: str) -> None:
    with pytest.raises(ValueError, match="int8"):
        OnnxEncoder(tiny_bert, precision=precision)


def test_bad_inputs(tiny_bert: Path, tiny_st: Path, tmp_path: Path, shared_cache: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        OnnxEncoder(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="max_length=65"):
        OnnxEncoder(tiny_bert, max_length=65, cache_dir=shared_cache)
    dense = tmp_path / "dense"
    shutil.copytree(tiny_st, dense)
    modules = json.loads((dense / "modules.json").read_text())
    modules.insert(2, {"idx": 2, "name": "2", "path": "2_Dense", "type": "x.models.Dense"})
    (dense / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ValueError, match=r"Dense module '2'.*no weights"):  # a Dense without its weights
        OnnxEncoder(dense, cache_dir=shared_cache)
    magic = tmp_path / "magic"
    shutil.copytree(tiny_st, magic)
    (magic / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_magic_tokens": True}))
    with pytest.raises(ValueError, match="pooling_mode_magic_tokens"):
        OnnxEncoder(magic, cache_dir=shared_cache)
    assert OnnxEncoder(magic, cache_dir=shared_cache, pooling=Pooling.MEAN).dim == 32
    maxpool = tmp_path / "maxpool"  # max pooling is computed (was refused)
    shutil.copytree(tiny_st, maxpool)
    (maxpool / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_max_tokens": True}))
    assert OnnxEncoder(maxpool, cache_dir=shared_cache).pooling is Pooling.MAX


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_graphs_with_external_weights_are_whole_checked_and_exact(
    tiny_bert: Path,
    tmp_path: Path,
    shared_cache: Path,
    monkeypatch: pytest.MonkeyPatch,
    runtime: str,
    sentences: list[str],
) -> None:
    """Past protobuf's 2 GB (bge-m3, Qwen3-Embedding-0.6B in fp32) torch's exporter writes each weight to a file
    of its own beside the graph: every graph then keeps its weights in one `.data` file that its sidecar checks,
    int8 builds too, and no loose weight file is left in the cache (here forced on a tiny model)."""
    real_export = _onnx_export._export_torch

    def export_like_a_big_model(model_dir: Path, out: Path, feeds: Any) -> Any:
        reference = real_export(model_dir, out, feeds)
        model = onnx.load(str(out))
        onnx.save(model, str(out), save_as_external_data=True, all_tensors_to_one_file=False, size_threshold=0)
        return reference

    monkeypatch.setattr(_onnx_export, "_export_torch", export_like_a_big_model)
    monkeypatch.setattr(_onnx_export, "_EXTERNAL_DATA_BYTES", 1)
    for precision in ("fp32", "int8"):
        want = OnnxEncoder(tiny_bert, precision=precision, cache_dir=shared_cache, runtime=runtime)
        enc = OnnxEncoder(tiny_bert, precision=precision, cache_dir=tmp_path, runtime=runtime)
        assert _onnx_export.has_external_data(enc.graph_path), precision
        sidecar = json.loads(enc.graph_path.with_name(enc.graph_path.name + ".sha256").read_text())
        assert sidecar["data"]["size"] == enc.graph_path.with_name(enc.graph_path.name + ".data").stat().st_size
        np.testing.assert_allclose(enc.encode(sentences).vectors, want.encode(sentences).vectors, rtol=1e-4, atol=1e-5)
    folder = enc.graph_path.parent
    names = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
    assert all(n.endswith((".onnx", ".onnx.data", ".onnx.sha256")) for n in names), names
    data = enc.graph_path.with_name(enc.graph_path.name + ".data")
    damaged = bytearray(data.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    data.write_bytes(bytes(damaged))  # same size, one weight changed: the sidecar notices
    assert not _onnx_export._verified(enc.graph_path)
    again = OnnxEncoder(tiny_bert, precision="int8", cache_dir=tmp_path, runtime=runtime)  # rebuilt, not used
    assert _onnx_export._verified(again.graph_path)
    np.testing.assert_allclose(again.encode(sentences).vectors, enc.encode(sentences).vectors, rtol=1e-5, atol=1e-6)
