"""backend="openvino": the plain export and its NNCF int8 graph, cached like ONNX Runtime's, run by OpenVINO."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import onnx
from embedstack.providers.huggingface import onnx_encoder as _onnx
from embedstack.providers.huggingface import onnx_export as _onnx_export
from embedstack.providers.huggingface.onnx_encoder import OnnxEncoder

pytestmark = pytest.mark.slow  # OpenVINO compiles and int8 calibration


def _cos(a: Any, b: Any) -> np.ndarray:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return np.asarray((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)))


def test_openvino_fp32_runs_the_plain_graph_and_matches_onnxruntime(
    tiny_bert: Path, shared_cache: Path, sentences: list[str]
) -> None:
    ort = OnnxEncoder(tiny_bert, cache_dir=shared_cache)
    ov = OnnxEncoder(tiny_bert, cache_dir=shared_cache, runtime="openvino")
    assert ov.graph_path != ort.graph_path and ov.graph_path.parent == ort.graph_path.parent
    domains = {n.domain for n in onnx.load(str(ov.graph_path)).graph.node}
    assert "com.microsoft" not in domains  # standard ops only: OpenVINO cannot read ORT's fused ones
    assert ov.inputs == ort.inputs and ov.output == ort.output
    np.testing.assert_allclose(ov.encode(sentences).vectors, ort.encode(sentences).vectors, rtol=1e-4, atol=1e-5)


def test_openvino_int8_is_nncf_qdq_cached_and_close(
    tiny_bert: Path, tmp_path: Path, sentences: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fp32 = OnnxEncoder(tiny_bert, cache_dir=tmp_path, runtime="openvino")
    int8 = OnnxEncoder(tiny_bert, precision="int8", cache_dir=tmp_path, runtime="openvino")
    ops = [n.op_type for n in onnx.load(str(int8.graph_path)).graph.node]
    assert ops.count("QuantizeLinear") >= 6 and "DequantizeLinear" in ops  # every layer's MatMuls
    vectors = np.asarray(int8.encode(sentences).vectors)
    assert np.isfinite(vectors).all() and vectors.shape == (len(sentences), 32)
    assert _cos(vectors, fp32.encode(sentences).vectors).mean() >= 0.95

    def no_nncf(*args: Any) -> Any:
        raise AssertionError("the cached int8 graph should have been used")

    monkeypatch.setattr(_onnx_export, "_build_nncf", no_nncf)
    again = OnnxEncoder(tiny_bert, precision="int8", cache_dir=tmp_path, runtime="openvino")
    assert again.graph_path == int8.graph_path
    np.testing.assert_array_equal(again.encode(sentences).vectors, vectors)


def test_unknown_runtime_names_the_choices(tiny_bert: Path) -> None:
    with pytest.raises(ValueError, match="openvino"):
        OnnxEncoder(tiny_bert, runtime="tensorrt")


def test_huggingface_embedding_openvino_int8_real_model(env_cache: Path, bundled_model: Path) -> None:
    """The fast mode on the real model: close to fp32, and its own cache entries (not ORT int8's)."""
    from embedstack.providers.huggingface import HuggingFaceEmbedding

    texts = [
        "A man is eating food.",
        "A man is eating a piece of bread.",
        "python3-numpy: fast array computing for Python",
        "How do I parse JSON in a shell script?",
    ]
    fp32 = HuggingFaceEmbedding(backend="onnx").embed(texts)
    fast = HuggingFaceEmbedding(backend="openvino", precision="int8")
    cos = (fast.embed(texts) * fp32).sum(1)
    assert cos.mean() >= 0.99 and cos.min() >= 0.97, cos
    ort_int8 = HuggingFaceEmbedding(backend="onnx", precision="int8")
    assert (
        fast.provider.identity() != ort_int8.provider.identity()
    )  # different approximations never share cache entries


def test_openvino_fp32_and_int8_ask_for_f32_explicitly(tiny_bert: Path, shared_cache: Path) -> None:
    """On a CPU with native bf16 OpenVINO's default is bf16: fp32 must not silently become it."""
    ov = OnnxEncoder(tiny_bert, cache_dir=shared_cache, runtime="openvino")
    assert str(ov.session.compiled.get_property("INFERENCE_PRECISION_HINT")) in ("f32", "<Type: 'float32'>")


def _needs_native_bf16() -> None:
    import openvino

    if not _onnx.native_bf16(openvino):
        pytest.skip("this CPU has no native bfloat16 (AVX512_BF16 or AMX); the refusal is tested separately")


def test_openvino_bf16_is_rounded_and_close_where_the_cpu_has_bf16(
    tiny_bert: Path, shared_cache: Path, sentences: list[str]
) -> None:
    _needs_native_bf16()
    fp32 = OnnxEncoder(tiny_bert, cache_dir=shared_cache, runtime="openvino")
    bf16 = OnnxEncoder(tiny_bert, precision="bf16", cache_dir=shared_cache, runtime="openvino")
    assert bf16.graph_path == fp32.graph_path  # one plain graph; the precision is OpenVINO's setting
    a, b = np.asarray(bf16.encode(sentences).vectors), np.asarray(fp32.encode(sentences).vectors)
    assert not np.array_equal(a, b)  # really computed in bf16
    assert _cos(a, b).min() >= 0.999


def test_openvino_bf16_without_native_support_is_refused_before_any_build(
    tiny_bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_onnx, "native_bf16", lambda ov: False)  # a CPU without AVX512_BF16 / AMX
    with pytest.raises(ValueError, match=r"native bfloat16.*precision='fp32' or 'int8'"):
        OnnxEncoder(tiny_bert, precision="bf16", cache_dir=tmp_path, runtime="openvino")
    assert not list(tmp_path.rglob("*.onnx"))  # nothing exported for a model that cannot run


def test_onnxruntime_bf16_points_to_openvino(tiny_bert: Path) -> None:
    with pytest.raises(ValueError, match="backend='openvino' runs bf16"):
        OnnxEncoder(tiny_bert, precision="bf16")


def test_huggingface_embedding_openvino_bf16_real_model(env_cache: Path, bundled_model: Path) -> None:
    """bf16 on the real model: within the fp32 fidelity bar, with cache entries of its own."""
    from embedstack.providers.huggingface import HuggingFaceEmbedding

    _needs_native_bf16()
    texts = ["A man is eating food.", "python3-numpy: fast array computing for Python", "a"]
    fp32 = HuggingFaceEmbedding(backend="onnx").embed(texts)
    bf16 = HuggingFaceEmbedding(backend="openvino", precision="bf16")
    cos = (bf16.embed(texts) * fp32).sum(1)
    assert cos.min() >= 0.9999, cos
    torch_bf16 = HuggingFaceEmbedding(backend="torch", precision="bf16")
    assert bf16.provider.identity() != torch_bf16.provider.identity()
    assert bf16.provider.identity() != HuggingFaceEmbedding(backend="openvino").provider.identity()


def test_shape_buckets_bound_padding_and_the_number_of_shapes() -> None:
    lengths = range(1, 4097)
    buckets = {n: _onnx.shape_bucket(n) for n in lengths}
    assert all(buckets[n] == n for n in range(1, 17))  # short queries are not padded at all
    assert all(n <= b < n + max(1, n / 8) for n, b in buckets.items())  # under 12.5% padding
    assert len({buckets[n] for n in range(1, 257)}) == 48  # a 256-token model: 48 shapes, not 256


def test_openvino_pads_batches_to_buckets_without_changing_vectors(
    tiny_bert: Path, shared_cache: Path, sentences: list[str]
) -> None:
    ov = OnnxEncoder(tiny_bert, cache_dir=shared_cache, runtime="openvino")
    ort = OnnxEncoder(tiny_bert, cache_dir=shared_cache)
    text = " ".join(["data"] * 15)  # 17 tokens with [CLS] and [SEP]
    tokens = ov.text_tokenizer.tokenize([text])
    assert len(tokens[0].ids) == 17
    assert ov._feeds(tokens, [0])["input_ids"].shape == (1, 18)
    exact = ort.text_tokenizer.tokenize([text])
    assert ort._feeds(exact, [0])["input_ids"].shape == (1, 17)  # exact for ORT: no per-shape cost
    short = OnnxEncoder(tiny_bert, max_length=50, cache_dir=shared_cache, runtime="openvino")
    assert _onnx.shape_bucket(49) == 52 and short._padded_length(49) == 50  # never past max_length
    got = np.asarray(ov.encode([text, *sentences]).vectors)
    np.testing.assert_allclose(got, ort.encode([text, *sentences]).vectors, rtol=1e-4, atol=1e-5)


def test_huggingface_embedding_bf16_is_refused_without_native_bf16(
    env_cache: Path, tiny_bert: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from embedstack.providers.huggingface import HuggingFaceEmbedding

    monkeypatch.setattr(_onnx, "native_bf16", lambda ov: False)  # a CPU without AVX512_BF16 / AMX
    model = HuggingFaceEmbedding(str(tiny_bert), backend="openvino", precision="bf16")
    with pytest.raises(ValueError, match=r"native bfloat16.*precision='fp32' or 'int8'"):
        model.embed(["a text"])


def test_one_openvino_core_per_process(
    tiny_bert: Path, shared_cache: Path, sentences: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every capability query and compiled model goes through one Core: a second Core loads the CPU plugin
    again, and creating and querying several has crashed processes."""
    import openvino

    made: list[Any] = []
    real_core = openvino.Core

    def counting_core(*args: Any) -> Any:
        made.append(real_core(*args))
        return made[-1]

    monkeypatch.setattr(_onnx, "_core", None, raising=False)  # as in a fresh process
    monkeypatch.setattr(openvino, "Core", counting_core)
    if _onnx.native_bf16(openvino):  # what resolve_embed_model("local") asks, then bf16 asks again
        OnnxEncoder(tiny_bert, precision="bf16", cache_dir=shared_cache, runtime="openvino")
    else:
        with pytest.raises(ValueError, match="native bfloat16"):
            OnnxEncoder(tiny_bert, precision="bf16", cache_dir=shared_cache, runtime="openvino")
    a = OnnxEncoder(tiny_bert, cache_dir=shared_cache, runtime="openvino")
    b = OnnxEncoder(tiny_bert, precision="int8", cache_dir=shared_cache, runtime="openvino")
    assert len(made) == 1
    assert np.isfinite(a.encode(sentences).vectors).all() and np.isfinite(b.encode(sentences).vectors).all()


def test_openvino_models_are_released_before_interpreter_teardown(
    tiny_bert: Path, shared_cache: Path, tmp_path: Path
) -> None:
    """At exit, each infer request and compiled model is freed, then the Core, from an atexit hook (while
    the interpreter is whole), not in whatever order module teardown reaches them."""
    import subprocess
    import sys

    script = tmp_path / "exit.py"
    script.write_text(
        "import atexit, sys\n"
        "state = {}\n"
        "def check():\n"  # registered first, so it runs after embedstack's hook
        "    s = state['enc'].session\n"
        "    from embedstack.providers.huggingface import onnx_encoder as _onnx\n"
        "    print('released', s.request is None and s.compiled is None and _onnx._core is None, flush=True)\n"
        "atexit.register(check)\n"
        "from pathlib import Path\n"
        "from embedstack.providers.huggingface.onnx_encoder import OnnxEncoder\n"
        f"state['enc'] = OnnxEncoder(Path({str(tiny_bert)!r}), cache_dir=Path({str(shared_cache)!r}), "
        "runtime='openvino')\n"
        "print(state['enc'].encode(['a cat', 'the dog']).vectors.shape, flush=True)\n"
    )
    OnnxEncoder(tiny_bert, cache_dir=shared_cache, runtime="openvino")  # the graph exists: the child only loads it
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[:2] == ["(2, 32)", "released True"], done.stdout


def test_backend_specs_pick_their_backend_and_agree(env_cache: Path, tiny_bert: Path, sentences: list[str]) -> None:
    """The torch:, onnx: and openvino: specs (`embedstack serve --model NAME=openvino:PATH`) pin the backend at
    fp32 and give the same vectors; local: still picks the default runtime."""
    from embedstack import resolve_embed_model

    models = {b: resolve_embed_model(f"{b}:{tiny_bert}") for b in ("torch", "onnx", "openvino")}
    for backend, model in models.items():
        assert (model.backend, model.precision, model.model_name) == (backend, "fp32", str(tiny_bert))
    reference = models["torch"].embed(sentences)
    for backend in ("onnx", "openvino"):
        assert _cos(models[backend].embed(sentences), reference).min() >= 0.9999, backend
    assert resolve_embed_model(f"local:{tiny_bert}").backend == "onnx"
