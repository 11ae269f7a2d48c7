"""Model families and sentence-transformers modules on every backend, against sentence-transformers itself.

Each test builds a tiny random checkpoint (tests/onnx/conftest.py), saves it with sentence-transformers, and
compares HuggingFaceEmbedding(backend=torch|onnx|openvino) with SentenceTransformer.encode on the same files:
fp32 must reach cosine >= 0.9999 on every text; what the fast path does not compute is refused by name.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from embedstack.pooling import Pooling
from embedstack.providers.huggingface import HuggingFaceEmbedding
from embedstack.providers.huggingface.onnx_encoder import FAST_PATH_FAMILIES, OnnxEncoder, onnx_problem

from .conftest import FAMILIES

pytestmark = pytest.mark.slow  # ONNX exports and OpenVINO compiles of every family

BACKENDS = ("torch", "onnx", "openvino")
#: Texts of many lengths in one call, so batches are padded (and one is cut at 16 tokens).
TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "a",
    "cat",
    "Python library for fast vector search with a small cache.",
    "man eating bread on the mat",
    " ".join(["data"] * 40),
    "the dog sat",
    "new old big small fast model",
]
EXACT = 0.9999


def _cos(a: Any, b: Any) -> np.ndarray:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return np.asarray((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)))


def _reference(path: Path, texts: list[str] = TEXTS, role: str = "encode") -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(path), device="cpu")
    return np.asarray(getattr(model, role)(texts, normalize_embeddings=True))


def _ours(path: Path, backend: str, texts: list[str] = TEXTS, **kwargs: Any) -> np.ndarray:
    model = HuggingFaceEmbedding(model_name=str(path), backend=backend, embed_batch_size=3, **kwargs)
    return np.asarray(model.get_text_embedding_batch(texts))


def _assert_exact(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    cos = _cos(got, want)
    assert cos.min() >= EXACT, cos


# -- the defect: last-token pooling of a decoder ------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_qwen3_last_token_pooling_matches_sentence_transformers(
    st_model: Callable[..., Path], env_cache: Path, backend: str
) -> None:
    """Was: onnx/openvino mean-pooled a `pooling_mode: "lasttoken"` model silently (cosine 0.6-0.9)."""
    path = st_model("qwen3", "lasttoken")
    assert json.loads((path / "1_Pooling" / "config.json").read_text())["pooling_mode"] == "lasttoken"
    _assert_exact(_ours(path, backend), _reference(path))


def test_qwen3_tokenizer_pads_left_and_the_fast_path_still_takes_the_last_real_token(
    st_model: Callable[..., Path], shared_cache: Path
) -> None:
    """The fast path pads on the right (exact for a causal decoder) and pools by the mask; a longer
    neighbour in the batch changes nothing."""
    path = st_model("qwen3", "lasttoken")
    assert json.loads((path / "tokenizer_config.json").read_text())["padding_side"] == "left"
    encoder = OnnxEncoder(path, cache_dir=shared_cache)
    alone = np.asarray(encoder.encode(["the dog sat"]).vectors)
    batched = np.asarray(encoder.encode(["the dog sat", " ".join(["data"] * 12)]).vectors)
    np.testing.assert_allclose(batched[:1], alone, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_bert_whose_tokenizer_pads_left_gives_each_text_its_vector_alone(
    st_model: Callable[..., Path], env_cache: Path, tmp_path: Path, backend: str
) -> None:
    """padding_side='left' in tokenizer_config.json shifts a BERT's absolute positions by each row's padding: the
    torch path's vectors depended on the batch (cosine 0.825 alone vs batched). Every backend pads on the right."""
    path = tmp_path / "tiny"
    shutil.copytree(st_model("bert", "mean"), path)
    config = json.loads((path / "tokenizer_config.json").read_text())
    (path / "tokenizer_config.json").write_text(json.dumps({**config, "padding_side": "left"}))
    texts = ["x", "the cat sat on the mat the cat sat on", "cat"]
    together = _ours(path, backend, texts)
    alone = np.concatenate([_reference(path, [t]) for t in texts])
    _assert_exact(together, alone)


# -- architectures ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("family", FAMILIES)
def test_family_matches_sentence_transformers(
    st_model: Callable[..., Path], env_cache: Path, family: str, backend: str
) -> None:
    pooling = "lasttoken" if family == "qwen3" else "mean"
    path = st_model(family, pooling)
    _assert_exact(_ours(path, backend), _reference(path))


def test_every_tested_family_is_on_the_fast_path_list() -> None:
    assert set(FAMILIES) | {"distilbert"} == set(FAST_PATH_FAMILIES)


@pytest.mark.parametrize("backend", ["onnx", "openvino"])
def test_other_architectures_are_refused_by_name_with_torch_as_the_way_out(
    family_checkpoint: Callable[[str], Path], tmp_path: Path, backend: str
) -> None:
    import transformers

    from .conftest import _family_config, _tokenizer, _vocab_size

    folder = tmp_path / "electra"
    _tokenizer(folder)
    transformers.ElectraModel(_family_config("electra", _vocab_size(folder))).save_pretrained(str(folder))
    model = HuggingFaceEmbedding(model_name=str(folder), backend=backend)
    with pytest.raises(ValueError, match=r"'electra'.*backend='torch'"):
        model.get_text_embedding("a")
    assert "electra" in str(onnx_problem(folder))
    torch_model = HuggingFaceEmbedding(model_name=str(folder), backend="torch")
    assert len(torch_model.get_text_embedding("a")) == 32  # the way out works


# -- every pooling mode on every backend --------------------------------------------------------------------
MODES: list[Any] = [
    "cls",
    "mean",
    "max",
    "mean_sqrt_len_tokens",
    "weightedmean",
    "lasttoken",
    ("cls", "mean"),
    ("max", "mean", "lasttoken"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", MODES, ids=lambda m: m if isinstance(m, str) else "+".join(m))
@pytest.mark.parametrize("family", ["bert", "qwen3"])
def test_pooling_mode_matches_sentence_transformers(
    st_model: Callable[..., Path], env_cache: Path, family: str, mode: Any, backend: str
) -> None:
    """Each mode on an encoder (right padding) and a decoder whose tokenizer pads on the left."""
    path = st_model(family, mode)
    _assert_exact(_ours(path, backend), _reference(path))


@pytest.mark.parametrize("backend", ["onnx", "openvino"])
def test_legacy_pooling_flags_are_read_as_sentence_transformers_reads_them(
    st_model: Callable[..., Path], env_cache: Path, tmp_path: Path, backend: str
) -> None:
    """Models saved before sentence-transformers 5 declare pooling with pooling_mode_* flags."""
    folder = tmp_path / "tiny"
    shutil.copytree(st_model("bert", "cls"), folder)
    flags = {"word_embedding_dimension": 32, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": False}
    (folder / "1_Pooling" / "config.json").write_text(
        json.dumps({**flags, "pooling_mode_max_tokens": True, "pooling_mode_lasttoken": True})
    )
    _assert_exact(_ours(folder, backend), _reference(folder))


def test_unknown_pooling_settings_are_refused_by_name(st_model: Callable[..., Path], tmp_path: Path) -> None:
    for config, named in (
        ({"pooling_mode": "median"}, "median"),
        ({"pooling_mode_magic_tokens": True}, "pooling_mode_magic_tokens"),
    ):
        folder = tmp_path / named / "tiny"
        shutil.copytree(st_model("bert", "cls"), folder)
        (folder / "1_Pooling" / "config.json").write_text(json.dumps(config))
        for backend in ("onnx", "openvino"):
            with pytest.raises(ValueError, match=f"{named}.*backend='torch'"):
                HuggingFaceEmbedding(model_name=str(folder), backend=backend).get_text_embedding("a")


def test_numpy_pooling_matches_sentence_transformers_for_either_padding_side() -> None:
    from sentence_transformers.sentence_transformer.modules import Pooling as STPooling

    rng = np.random.default_rng(3)
    hidden = rng.normal(size=(3, 6, 4)).astype(np.float32)
    right = np.array([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0]])
    for mask in (right, right[:, ::-1].copy()):
        for mode in Pooling:
            st = STPooling(4, pooling_mode=mode.value)
            features = {"token_embeddings": torch.from_numpy(hidden), "attention_mask": torch.from_numpy(mask)}
            want = st(features)["sentence_embedding"].numpy()
            np.testing.assert_allclose(Pooling.pool(hidden, mask, [mode]), want, rtol=1e-5, atol=1e-6)
    # Called on unpadded vectors (numpy or torch, batch or one text), every mode pools all tokens.
    ones = np.ones(hidden.shape[:2], dtype=np.int64)
    for mode in Pooling:
        want = Pooling.pool(hidden, ones, [mode])
        np.testing.assert_allclose(mode(hidden), want, rtol=1e-6)
        np.testing.assert_allclose(mode(hidden[1]), want[1], rtol=1e-6)
        np.testing.assert_allclose(mode(torch.from_numpy(hidden)).numpy(), want, rtol=1e-6)
    np.testing.assert_array_equal(Pooling.MAX(hidden), hidden.max(1))
    np.testing.assert_array_equal(Pooling.LAST_TOKEN(hidden), hidden[:, -1])


# -- Dense, Normalize, prompts ------------------------------------------------------------------------------
DENSE: list[Any] = [
    pytest.param(((16, torch.nn.Tanh(), False),), False, id="dense-tanh"),
    pytest.param(((24, torch.nn.GELU(), False), (8, torch.nn.Identity(), False)), False, id="two-dense"),
    pytest.param(((32, torch.nn.ReLU(), True), (12, torch.nn.Sigmoid(), True)), False, id="dense-residual"),
    pytest.param(((16, torch.nn.SiLU(), False),), True, id="normalize-then-dense"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("dense", "normalize_between"), DENSE)
def test_dense_layers_match_sentence_transformers(
    st_model: Callable[..., Path], env_cache: Path, dense: Any, normalize_between: bool, backend: str
) -> None:
    path = st_model("bert", "cls", dense=dense, normalize_between=normalize_between)
    want = _reference(path)
    got = _ours(path, backend)
    assert got.shape[1] == dense[-1][0]
    _assert_exact(got, want)


def test_dense_with_an_activation_the_fast_path_lacks_is_refused(st_model: Callable[..., Path], tmp_path: Path) -> None:
    folder = tmp_path / "tiny"
    shutil.copytree(st_model("bert", "cls", dense=((16, torch.nn.Tanh(), False),)), folder)
    config_path = next(folder.glob("*_Dense")) / "config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "activation_function": "torch.nn.modules.activation.Softplus"}))
    with pytest.raises(ValueError, match=r"Softplus.*backend='torch'"):
        HuggingFaceEmbedding(model_name=str(folder), backend="onnx").get_text_embedding("a")


def test_other_modules_are_refused_by_name(family_checkpoint: Callable[[str], Path], tmp_path: Path) -> None:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import LayerNorm, Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling as STPooling

    folder = tmp_path / "tiny"
    modules = [Transformer(str(family_checkpoint("bert"))), STPooling(32), LayerNorm(32)]
    SentenceTransformer(modules=modules, device="cpu").save(str(folder))
    for backend in ("onnx", "openvino"):
        with pytest.raises(ValueError, match=r"LayerNorm module.*backend='torch'"):
            HuggingFaceEmbedding(model_name=str(folder), backend=backend).get_text_embedding("a")
    assert "LayerNorm" in str(onnx_problem(folder))


PROMPTS: list[Any] = [
    pytest.param({"query": "query: ", "document": "passage: "}, None, id="query-and-document"),
    pytest.param({"query": "search for: ", "passage": "passage: "}, None, id="query-and-passage"),
    pytest.param({"classification": "classify: "}, "classification", id="default-only"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("prompts", "default"), PROMPTS)
def test_prompts_from_the_model_apply_on_every_backend(
    st_model: Callable[..., Path], env_cache: Path, prompts: dict[str, str], default: str | None, backend: str
) -> None:
    path = st_model("qwen3", "lasttoken", prompts=prompts, default_prompt_name=default)
    model = HuggingFaceEmbedding(model_name=str(path), backend=backend)
    queries = np.asarray([model.get_query_embedding(t) for t in TEXTS[:3]])
    _assert_exact(queries, _reference(path, TEXTS[:3], "encode_query"))
    _assert_exact(np.asarray(model.get_text_embedding_batch(TEXTS)), _reference(path, TEXTS, "encode_document"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_pooling_without_the_prompt_is_exact_without_one_and_refused_with_one(
    st_model: Callable[..., Path], env_cache: Path, backend: str
) -> None:
    path = st_model("bert", "mean", prompts={"query": "query: "}, include_prompt=False)
    model = HuggingFaceEmbedding(model_name=str(path), backend=backend)
    _assert_exact(np.asarray(model.get_text_embedding_batch(TEXTS)), _reference(path, TEXTS, "encode_document"))
    with pytest.raises(ValueError, match=r"include_prompt.*query_instruction=''"):
        model.get_query_embedding("the dog")
    plain = HuggingFaceEmbedding(model_name=str(path), backend=backend, query_instruction="")
    want = _reference(path, ["the dog"], "encode")
    _assert_exact(np.asarray([plain.get_query_embedding("the dog")]), want)


# -- int8, the fast mode ------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["onnx", "openvino"])
@pytest.mark.parametrize("family", FAMILIES)
def test_int8_builds_and_stays_close_to_fp32(
    st_model: Callable[..., Path], env_cache: Path, family: str, backend: str
) -> None:
    path = st_model(family, "lasttoken" if family == "qwen3" else "mean")
    fp32 = _ours(path, backend)
    int8 = _ours(path, backend, precision="int8")
    assert np.isfinite(int8).all()
    assert _cos(int8, fp32).mean() >= 0.95


# -- plain transformers checkpoints with pooling= -----------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", [m.value for m in Pooling])
def test_plain_checkpoint_pooling_argument_matches_sentence_transformers(
    family_checkpoint: Callable[[str], Path], st_model: Callable[..., Path], env_cache: Path, mode: str, backend: str
) -> None:
    """A plain Qwen3 checkpoint (left-padding tokenizer) with pooling=...: the same vectors as the
    sentence-transformers model that pools so."""
    plain = family_checkpoint("qwen3")
    got = _ours(plain, backend, pooling=mode, max_length=16)
    _assert_exact(got, _reference(st_model("qwen3", mode)))


def test_gelu_is_exact_with_or_without_scipy(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from embedstack.providers.huggingface import st_modules

    x = np.linspace(-6, 6, 101, dtype=np.float32).reshape(1, -1)
    want = torch.nn.GELU()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(st_modules._gelu(x), want, rtol=1e-5, atol=1e-6)  # torch rounds in float32
    monkeypatch.setitem(sys.modules, "scipy.special", None)  # import fails: the math.erf fallback
    np.testing.assert_allclose(st_modules._gelu(x), want, rtol=1e-5, atol=1e-6)  # torch rounds in float32


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_prompt_named_text_is_not_put_in_front_of_documents(
    st_model: Callable[..., Path], env_cache: Path, tmp_path: Path, backend: str
) -> None:
    """Was: a model declaring {"query": ..., "text": ...} had "text" put in front of every document (cosine 0.963
    to sentence-transformers' encode_document, which never looks that name up)."""
    folder = tmp_path / "tiny"
    shutil.copytree(st_model("bert", "mean"), folder)
    config_path = folder / "config_sentence_transformers.json"
    config = json.loads(config_path.read_text())
    prompts = {"query": "q: ", "text": "t: "}  # as saved before sentence-transformers wrote "document": ""
    config_path.write_text(json.dumps({**config, "prompts": prompts, "default_prompt_name": None}))
    model = HuggingFaceEmbedding(model_name=str(folder), backend=backend)
    _assert_exact(np.asarray(model.get_text_embedding_batch(TEXTS)), _reference(folder, TEXTS, "encode_document"))
    queries = np.asarray([model.get_query_embedding(t) for t in TEXTS[:3]])
    _assert_exact(queries, _reference(folder, TEXTS[:3], "encode_query"))
    with_text = HuggingFaceEmbedding(model_name=str(folder), backend=backend, text_instruction="t: ")
    assert _cos(np.asarray([with_text.get_text_embedding("cat")]), _reference(folder, ["cat"]))[0] < EXACT


def _greek_tokenizer(folder: Path) -> None:
    """A word-level tokenizer (no normaliser) that tells σ from ς, as a cased multilingual vocabulary does."""
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "οδοσ", "οδος", "και", "σ", "ς"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
    )
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        (folder / name).unlink(missing_ok=True)
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]"
    )
    fast.save_pretrained(str(folder))


@pytest.mark.parametrize("backend", BACKENDS)
def test_do_lower_case_lowers_a_final_sigma_as_sentence_transformers_does(
    st_model: Callable[..., Path], env_cache: Path, tmp_path: Path, backend: str
) -> None:
    """Was: do_lower_case ran str.lower(), which writes a word-final Σ as ς; sentence-transformers lower-cases with
    the tokenizers Lowercase normaliser, character by character (σ): other tokens, cosine far below 0.9999."""
    folder = tmp_path / "greek" / "tiny"
    shutil.copytree(st_model("bert", "mean"), folder)
    _greek_tokenizer(folder)
    config_path = folder / "sentence_bert_config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "do_lower_case": True}))
    texts = ["ΟΔΟΣ", "ΚΑΙ ΟΔΟΣ ΚΑΙ", "Σ", "οδος"]
    want = _reference(folder, texts)
    assert _cos(want[:1], want[3:])[0] < 0.99  # σ and ς are different tokens here: the test can fail
    _assert_exact(_ours(folder, backend, texts), want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_do_lower_case_keeps_a_special_token_in_a_text_special(
    st_model: Callable[..., Path], env_cache: Path, tmp_path: Path, backend: str
) -> None:
    """Was: do_lower_case lower-cased the text before the tokenizer, so a literal "[MASK]" or "[SEP]" became the
    words "[mask]", "[sep]" (cosine 0.927 to sentence-transformers, torch and ONNX); sentence-transformers
    lower-cases in the tokenizer's normaliser, after special tokens are split off."""
    folder = tmp_path / "lower" / "tiny"
    shutil.copytree(st_model("bert", "mean"), folder)
    config_path = folder / "sentence_bert_config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "do_lower_case": True}))
    texts = ["the [MASK] cat", "CAT [SEP] dog", "The Cat"]
    _assert_exact(_ours(folder, backend, texts), _reference(folder, texts))
    # vectors cached by the older lower-casing miss (a key of their own), and corpora made with it stay searchable
    provider = HuggingFaceEmbedding(model_name=str(folder), backend=backend).provider
    assert provider.identity()["lowercase"] == "normaliser" and "lowercase" not in provider.model_identity()
    assert "lowercase" not in HuggingFaceEmbedding(model_name=str(st_model("bert", "mean"))).provider.identity()


# -- the tokenizer transformers builds, not tokenizer.json as it is ---------------------------------------------
TOKENIZER_SETTINGS: list[Any] = [
    pytest.param({"do_lower_case": False}, id="do_lower_case-false"),
    pytest.param({"strip_accents": False}, id="strip_accents-false"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("settings", TOKENIZER_SETTINGS)
def test_tokenizer_config_settings_apply_as_transformers_applies_them(
    st_model: Callable[..., Path], env_cache: Path, tmp_path: Path, settings: dict[str, Any], backend: str
) -> None:
    """Was: the fast path read tokenizer.json as it is (a lower-casing, accent-stripping BertNormalizer), while
    transformers builds BERT's normaliser from tokenizer_config.json: cased text gave other tokens (cosine 0.905)."""
    folder = tmp_path / "tiny"
    shutil.copytree(st_model("bert", "mean"), folder)
    config_path = folder / "tokenizer_config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), **settings}))
    texts = ["The Quick brown FOX", "Café déjà vu", "the dog sat", "DATA data Data"]
    want = _reference(folder, texts)
    _assert_exact(_ours(folder, backend, texts), want)


def test_the_tokenizer_transformers_builds_is_cached(
    st_model: Callable[..., Path], env_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second load reads the cached tokenizer (no transformers); a damaged cache entry is built again."""
    import transformers

    from embedstack.providers.huggingface.onnx_encoder import OnnxTokenizer

    folder = tmp_path / "tiny"
    shutil.copytree(st_model("bert", "mean"), folder)
    config_path = folder / "tokenizer_config.json"
    config = {**json.loads(config_path.read_text()), "do_lower_case": False, "comment": "files of this test only"}
    config_path.write_text(json.dumps(config))  # other files than any other test's: a cache entry of its own
    texts = ["The Quick brown FOX", "cat"]
    before = set((env_cache / "tokenizers").glob("*.json")) if (env_cache / "tokenizers").is_dir() else set()
    first = [t.ids.tolist() for t in OnnxTokenizer(folder).tokenize(texts)]
    (entry,) = set((env_cache / "tokenizers").glob("*.json")) - before
    assert first[0][1] == 1  # "The" is not lower-cased: [UNK]

    def no_transformers(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the cached tokenizer should have been read")

    with monkeypatch.context() as patched:
        patched.setattr(transformers.AutoTokenizer, "from_pretrained", no_transformers)
        assert [t.ids.tolist() for t in OnnxTokenizer(folder).tokenize(texts)] == first
    entry.write_text("{ damaged")
    assert [t.ids.tolist() for t in OnnxTokenizer(folder).tokenize(texts)] == first
    assert json.loads(entry.read_text())  # written again
    own = tmp_path / "own-cache"  # an encoder's own cache folder holds its tokenizer too
    assert [t.ids.tolist() for t in OnnxTokenizer(folder, cache_dir=own).tokenize(texts)] == first
    assert [p.name for p in (own / "tokenizers").glob("*.json")] == [entry.name]


# -- sentence_bert_config.json settings that change tokens --------------------------------------------------
def _with_transformer_settings(st_model: Callable[..., Path], folder: Path, settings: dict[str, Any]) -> Path:
    shutil.copytree(st_model("bert", "mean"), folder)
    config_path = folder / "sentence_bert_config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), **settings}))
    return folder


def test_processing_kwargs_run_on_torch_and_are_refused_by_name_on_the_fast_path(
    st_model: Callable[..., Path], env_cache: Path, tmp_path: Path
) -> None:
    """Was: the fast path ignored processing_kwargs (a text max_length of 6: cosine 0.948, silently)."""
    folder = _with_transformer_settings(st_model, tmp_path / "tiny", {"processing_kwargs": {"text": {"max_length": 6}}})
    _assert_exact(_ours(folder, "torch"), _reference(folder))  # sentence-transformers' own preprocessing
    for backend in ("onnx", "openvino"):
        with pytest.raises(ValueError, match=r"processing_kwargs.*backend='torch'"):
            HuggingFaceEmbedding(model_name=str(folder), backend=backend).get_text_embedding("a")
    assert "processing_kwargs" in str(onnx_problem(folder))


@pytest.mark.parametrize("setting", ["query_length", "document_length"])
def test_per_role_token_limits_are_refused_by_name_on_every_backend(
    st_model: Callable[..., Path], env_cache: Path, tmp_path: Path, setting: str
) -> None:
    """Was: query_length / document_length (sentence-transformers >= 6 cuts that role's texts) were ignored on
    every backend (cosine 0.948)."""
    folder = _with_transformer_settings(st_model, tmp_path / "tiny", {setting: 6})
    for backend in BACKENDS:
        with pytest.raises(ValueError, match=f"{setting}=6.*sentence-transformers directly"):
            HuggingFaceEmbedding(model_name=str(folder), backend=backend).get_text_embedding("a")
