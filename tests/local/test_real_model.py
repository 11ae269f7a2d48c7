"""HuggingFaceEmbedding on the real bundled all-MiniLM-L6-v2: quality, instructions, cache."""

from __future__ import annotations

import asyncio
import threading
import warnings
from typing import Any

import numpy as np
import pytest

from embedstack import resolve_embed_model
from embedstack.kvstore import SimpleKVStore
from embedstack.providers.hub import BUNDLED_SHA256
from embedstack.providers.huggingface import DEFAULT_MODEL, HuggingFaceEmbedding
from embedstack.types import Role

pytestmark = pytest.mark.slow  # the bundled model, loaded

PARAPHRASES = [
    (
        "How do I bake a loaf of bread at home?",
        "A simple recipe for making homemade bread in your oven.",
    ),
    (
        "What is the weather forecast for tomorrow?",
        "Tomorrow will be sunny with a high of 25 degrees.",
    ),
    ("Which team won the football match?", "The home side won the soccer game 2-1 in extra time."),
    (
        "How can I speed up my Python program?",
        "Tips for making Python code run faster: profile first.",
    ),
]


class CountingEncoder:
    """Wraps the real encoder to count what reaches it (observation only, results unchanged)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.dim = inner.dim
        self.max_length = inner.max_length
        self.text_tokenizer = inner.text_tokenizer
        self.device = inner.device
        self.texts: list[str] = []

    def encode(self, texts: list[str], tokens: Any = None) -> Any:
        self.texts.extend(texts)
        return self.inner.encode(texts, tokens)


def spy(model: HuggingFaceEmbedding) -> CountingEncoder:
    counter = CountingEncoder(model._loaded())
    model._encoder = counter
    return counter


def cos(a: Any, b: Any) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_loads_the_verified_bundled_model_offline(minilm: HuggingFaceEmbedding) -> None:
    assert minilm.source.origin == "bundled"
    assert minilm.embed_dim == 384
    import hashlib

    digest = hashlib.sha256((minilm.source.path / "model.safetensors").read_bytes()).hexdigest()
    assert digest == BUNDLED_SHA256


def test_reference_cosine(minilm: HuggingFaceEmbedding) -> None:
    a, b = minilm.get_text_embedding_batch(["A man is eating food.", "A man is eating a piece of bread."])
    assert len(a) == 384
    assert cos(a, b) == pytest.approx(0.7553, abs=0.002)


@pytest.mark.filterwarnings("ignore:.*truncated:UserWarning")
def test_matches_sentence_transformers_encode(minilm: HuggingFaceEmbedding) -> None:
    from sentence_transformers import SentenceTransformer

    texts = [
        "A man is eating food.",
        "",
        "Completely different: stock markets fell.",
        "word " * 400,
    ]
    reference = SentenceTransformer(str(minilm.source.path), device="cpu").encode(texts)
    ours = minilm.embed(texts)
    assert ours.dtype == np.float32 and ours.shape == (4, 384)
    for r, o in zip(reference, ours, strict=True):
        assert cos(r, o) > 0.9999


def test_paraphrase_ranking(minilm: HuggingFaceEmbedding) -> None:
    queries = minilm.embed([q for q, _ in PARAPHRASES], role="query")
    docs = minilm.embed([d for _, d in PARAPHRASES])
    scores = queries @ docs.T
    assert list(scores.argmax(axis=1)) == list(range(len(PARAPHRASES)))


def test_query_instruction_changes_vector_and_cache_key(minilm: HuggingFaceEmbedding) -> None:
    instr = "Represent this sentence for searching relevant passages: "
    with_instr = HuggingFaceEmbedding(query_instruction=instr)
    q = "How do I bake bread?"
    plain_vec = np.asarray(minilm.get_query_embedding(q))
    instr_vec = np.asarray(with_instr.get_query_embedding(q))
    assert cos(plain_vec, instr_vec) < 0.99
    # The instruction is prepended exactly: the same as embedding the prefixed text without one.
    assert np.allclose(instr_vec, minilm.get_text_embedding(instr + q), atol=1e-5)
    assert with_instr.provider.instruction(Role.QUERY) == instr
    assert minilm.provider.instruction(Role.QUERY) is None
    assert with_instr.pipeline.key_factory(Role.QUERY)(q) != minilm.pipeline.key_factory(Role.QUERY)(q)
    # A query instruction does not touch text vectors, so text cache keys stay shared.
    assert with_instr.pipeline.key_factory(Role.TEXT)(q) == minilm.pipeline.key_factory(Role.TEXT)(q)


def test_instruction_is_a_cache_miss_across_models() -> None:
    store = SimpleKVStore()
    plain = HuggingFaceEmbedding(embeddings_cache=store)
    instructed = HuggingFaceEmbedding(embeddings_cache=store, query_instruction="query: ")
    plain.get_query_embedding("where is the river?")
    counter = spy(instructed)
    instructed.get_query_embedding("where is the river?")
    assert counter.texts == ["query: where is the river?"]


def test_second_call_is_served_from_cache() -> None:
    model = HuggingFaceEmbedding(embeddings_cache=SimpleKVStore())
    texts = ["the cat sat on the mat", "a quick brown fox", "the cat sat on the mat"]
    counter = spy(model)
    first = model.get_text_embedding_batch(texts)
    assert sorted(counter.texts) == ["a quick brown fox", "the cat sat on the mat"]  # deduplicated
    counter.texts.clear()
    second = model.get_text_embedding_batch(texts)
    assert counter.texts == []
    assert np.allclose(first, second)


async def test_async_equals_sync(minilm: HuggingFaceEmbedding) -> None:
    texts = [d for _, d in PARAPHRASES] + [
        "short",
        "",
        "a somewhat longer sentence about rivers and trees",
    ]
    sync = minilm.get_text_embedding_batch(texts)
    asy = await minilm.aget_text_embedding_batch(texts)
    assert np.allclose(sync, asy, atol=1e-6)
    q = PARAPHRASES[0][0]
    assert np.allclose(minilm.get_query_embedding(q), await minilm.aget_query_embedding(q), atol=1e-6)


async def test_async_calls_share_one_instance(minilm: HuggingFaceEmbedding) -> None:
    texts = [f"sentence number {i} about a {w}" for i, w in enumerate(["cat", "dog", "car", "tree"] * 3)]
    expected = minilm.embed(texts)
    results = await asyncio.gather(*(minilm.aembed(texts[i::3]) for i in range(3)))
    for i, got in enumerate(results):
        assert np.allclose(got, expected[i::3], atol=1e-5)


def test_threads_share_one_instance(minilm: HuggingFaceEmbedding) -> None:
    texts = [f"thread test {i}: the {w} is on the mat" for i, w in enumerate(["cat", "dog", "fox"] * 4)]
    expected = minilm.embed(texts)
    results: dict[int, Any] = {}

    def work(i: int) -> None:
        results[i] = minilm.embed(texts[i::4])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(4):
        assert np.allclose(results[i], expected[i::4], atol=1e-5)


def test_order_restored_after_length_sort(minilm: HuggingFaceEmbedding) -> None:
    texts = ["x", "a much longer sentence than the others in this list", "medium sized text", ""]
    assert minilm._plan(texts, Role.TEXT).order == [1, 2, 0, 3]
    together = minilm.embed(texts)
    one_by_one = np.stack([minilm.embed([t])[0] for t in texts])
    assert np.allclose(together, one_by_one, atol=1e-5)


def test_truncation_reported_and_warned_once(event_recorder: Any) -> None:
    model = HuggingFaceEmbedding()
    texts = ["word " * 600, "short text", "token " * 300]
    with pytest.warns(UserWarning, match="2 text.* truncated"):
        vectors = model.embed(texts)
    assert vectors.shape == (3, 384)
    ends = event_recorder.of("EmbeddingEndEvent")
    assert sum(e.truncated for e in ends) == 2
    assert sum(e.token_count for e in ends) == 256 + 256 + 4  # [CLS] short text [SEP]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.embed(["again " * 600])  # counted, not warned a second time
    assert event_recorder.of("EmbeddingEndEvent")[-1].truncated == 1
    # The truncated text embeds as its first 254 word tokens (+ [CLS] and [SEP]).
    assert np.allclose(vectors[0], model.embed(["word " * 254])[0], atol=1e-5)


def test_empty_string_is_embedded(minilm: HuggingFaceEmbedding) -> None:
    v = minilm.embed([""])
    assert v.shape == (1, 384) and np.isfinite(v).all()
    assert np.linalg.norm(v[0]) == pytest.approx(1.0, abs=1e-5)


def test_dimensions_truncate_and_renormalise(minilm: HuggingFaceEmbedding) -> None:
    small = HuggingFaceEmbedding(dimensions=128)
    texts = ["a cat on a mat", "the stock market"]
    full = minilm.embed(texts)
    cut = small.embed(texts)
    assert cut.shape == (2, 128)
    expected = full[:, :128] / np.linalg.norm(full[:, :128], axis=1, keepdims=True)
    assert np.allclose(cut, expected, atol=1e-5)
    assert small.pipeline.key_factory(Role.TEXT)("x") != minilm.pipeline.key_factory(Role.TEXT)("x")
    with pytest.raises(ValueError, match="dimensions=1000 exceeds"):
        HuggingFaceEmbedding(dimensions=1000).load()


def test_normalize_false_returns_pooled_vectors(minilm: HuggingFaceEmbedding) -> None:
    raw = HuggingFaceEmbedding(normalize=False).embed(["a cat on a mat"])[0]
    assert abs(np.linalg.norm(raw) - 1.0) > 0.01
    assert np.allclose(raw / np.linalg.norm(raw), minilm.embed(["a cat on a mat"])[0], atol=1e-5)


def test_images_are_refused(minilm: HuggingFaceEmbedding) -> None:
    with pytest.raises(TypeError, match="text only"):
        minilm._embed_batch([b"\x89PNG"], Role.IMAGE)


def test_resolve_local_default_and_path(minilm: HuggingFaceEmbedding) -> None:
    from embedstack.callbacks.manager import CallbackManager

    cm = CallbackManager([])
    model = resolve_embed_model("local", callback_manager=cm)
    assert isinstance(model, HuggingFaceEmbedding)
    assert model.model_name == DEFAULT_MODEL and model.backend in ("torch", "onnx", "openvino")
    assert model.callback_manager is cm
    by_path = resolve_embed_model(f"local:{minilm.source.path}")
    assert isinstance(by_path, HuggingFaceEmbedding) and by_path.source.origin == "path"
    text = "A man is eating food."
    assert cos(by_path.get_text_embedding(text), minilm.get_text_embedding(text)) > 0.99999


def test_round_trip_through_to_dict(minilm: HuggingFaceEmbedding) -> None:
    data = minilm.to_dict()
    assert data["class_name"] == "HuggingFaceEmbedding"
    again = HuggingFaceEmbedding.from_dict(data)
    assert again.pipeline.key_factory(Role.TEXT)("x") == minilm.pipeline.key_factory(Role.TEXT)("x")
    # device/backend do not change vectors and stay out of the cache key; precision is in it.
    assert HuggingFaceEmbedding(device="cpu").pipeline.key_factory(Role.TEXT)("x") == minilm.pipeline.key_factory(
        Role.TEXT
    )("x")
    assert HuggingFaceEmbedding(backend="onnx").pipeline.key_factory(Role.TEXT)("x") == minilm.pipeline.key_factory(
        Role.TEXT
    )("x")
    assert HuggingFaceEmbedding(precision="bf16").pipeline.key_factory(Role.TEXT)("x") != minilm.pipeline.key_factory(
        Role.TEXT
    )("x")
