"""Long inputs on every backend, against sentence-transformers on the same weights.

`long_inputs="chunk"`: a text past the limit is the token-weighted mean of its pieces, each embedded as
sentence-transformers embeds the piece's text (the reference cuts the pieces itself); short texts are
unchanged; the pipeline (usage, events, cache, dedupe, batches) counts texts, not pieces. Late chunking
(`embed_chunks`): each span's vector is the mean of the document's token vectors over the span, taken from
sentence-transformers' own token embeddings.

The tiny models (tests/onnx/conftest.py) have a limit of 16 tokens and one token per word of WORDS.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from embedstack.kvstore import SimpleKVStore
from embedstack.providers.huggingface import HuggingFaceEmbedding
from embedstack.types import Role

from .conftest import WORDS

pytestmark = pytest.mark.slow  # ONNX exports and OpenVINO compiles of every family

BACKENDS = ("torch", "onnx", "openvino")
PROMPTS = {"query": "query: ", "document": "search data: "}
LIMIT = 16
VOCAB = [w for w in WORDS if w != "query"]


def _words(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [VOCAB[i] for i in rng.integers(0, len(VOCAB), n)]


def _st(path: Path) -> Any:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(path), device="cpu")


def _room(st: Any, prompt: str) -> int:
    """Tokens every piece spends on special tokens and the prompt (sentence-transformers' tokenizer)."""
    return len(st.tokenizer(prompt, add_special_tokens=True)["input_ids"])


def _windows(n: int, size: int, overlap: int) -> list[tuple[int, int]]:
    out, start = [], 0
    while True:
        stop = start + size
        if stop >= n:
            out.append((start, n))
            return out
        out.append((start, stop))
        start = stop - overlap


def _chunk_reference(st: Any, words: list[str], prompt: str, overlap: int) -> np.ndarray:
    """The token-weighted mean of the pieces' sentence-transformers vectors, normalised."""
    ranges = _windows(len(words), LIMIT - _room(st, prompt), overlap)
    texts = [prompt + " ".join(words[a:b]) for a, b in ranges]
    vectors = np.asarray(st.encode(texts, normalize_embeddings=True), dtype=np.float64)
    weights = np.asarray([b - a for a, b in ranges], dtype=np.float64)
    mean = (vectors * weights[:, None]).sum(0) / weights.sum()
    return mean / np.linalg.norm(mean)


def _cos(a: Any, b: Any) -> float:
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def prompted(st_model: Callable[..., Path]) -> Path:
    return st_model("bert", "mean", prompts=PROMPTS)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("family", "pooling"), [("bert", "mean"), ("qwen3", "lasttoken")])
def test_a_long_text_is_the_token_weighted_mean_of_its_pieces(
    st_model: Callable[..., Path], backend: str, family: str, pooling: str
) -> None:
    path = st_model(family, pooling, prompts=PROMPTS)
    st = _st(path)
    model = HuggingFaceEmbedding(str(path), backend=backend, long_inputs="chunk", chunk_overlap=3, embed_batch_size=4)
    long_a, long_b = _words(40, 1), _words(23, 2)
    short = "the quick brown fox"
    out = model.embed([" ".join(long_a), short, " ".join(long_b)])
    for got, words in ((out[0], long_a), (out[2], long_b)):
        want = _chunk_reference(st, words, PROMPTS["document"], 3)
        assert _cos(got, want) >= 0.99999
        np.testing.assert_allclose(got, want, atol=2e-5)
    short_want = st.encode([PROMPTS["document"] + short], normalize_embeddings=True)[0]
    np.testing.assert_allclose(out[1], short_want, atol=2e-5)
    query = model.get_query_embedding(" ".join(long_a))  # each piece carries the query prompt
    assert _cos(query, _chunk_reference(st, long_a, PROMPTS["query"], 3)) >= 0.99999


def test_short_texts_are_unchanged(prompted: Path) -> None:
    texts = ["the quick brown fox", "a cat sat on the mat", "python data"]
    truncating = HuggingFaceEmbedding(str(prompted), backend="onnx")
    chunking = HuggingFaceEmbedding(str(prompted), backend="onnx", long_inputs="chunk")
    assert np.array_equal(truncating.embed(texts), chunking.embed(texts))
    mixed = chunking.embed([*texts, " ".join(_words(50))])  # batched beside a long text's pieces
    np.testing.assert_allclose(mixed[:3], truncating.embed(texts), atol=1e-6)


def test_the_pipeline_counts_texts_not_pieces(prompted: Path, event_recorder: Any) -> None:
    st = _st(prompted)
    long = " ".join(_words(45, 3))
    texts = ["the cat", long, "the dog", long]  # the long text twice: embedded once
    store = SimpleKVStore()
    model = HuggingFaceEmbedding(
        str(prompted), backend="torch", long_inputs="chunk", embeddings_cache=store, embed_batch_size=4
    )
    out = model.pipeline.embed(texts)
    whole = [len(st.tokenizer(PROMPTS["document"] + t)["input_ids"]) for t in texts]
    assert whole[1] > LIMIT
    assert out.usage.computed == 3 and out.usage.cached == 0 and out.usage.truncated == 0
    assert out.token_counts is not None and out.token_counts.tolist() == whole
    assert out.truncated is not None and not out.truncated.any()
    assert out.usage.tokens == sum(whole[:3])
    assert np.array_equal(out.values[1], out.values[3])
    ends = event_recorder.of("EmbeddingEndEvent")
    assert sorted(c for e in ends for c in e.chunks) == sorted(set(texts))  # texts, never pieces
    assert all(e.truncated == 0 for e in ends)
    assert model.provider.count_tokens(texts, Role.TEXT) == (whole, [False] * 4)
    again = model.pipeline.embed(texts)
    assert again.usage.computed == 0 and np.array_equal(again.values, out.values)
    # the same cache never hands a chunked vector to a truncating model, nor the other way round
    truncating = HuggingFaceEmbedding(str(prompted), backend="torch", embeddings_cache=store)
    assert truncating.pipeline.key_factory("text")(long) != model.pipeline.key_factory("text")(long)
    with pytest.warns(UserWarning, match="truncated"):
        cut = truncating.pipeline.embed([long])
    assert cut.usage.computed == 1 and cut.usage.truncated == 1
    assert _cos(cut.values[0], st.encode([PROMPTS["document"] + long], normalize_embeddings=True)[0]) >= 0.99999
    assert _cos(cut.values[0], out.values[1]) < 0.9999


def test_pieces_fill_the_batch_size(prompted: Path, event_recorder: Any) -> None:
    """A long text's pieces count in the batch size: a batch of 4 holds the 3-piece text and one more."""
    st = _st(prompted)
    long = " ".join(_words(27, 4))
    assert len(_windows(27, LIMIT - _room(st, PROMPTS["document"]), 2)) == 3
    shorts = ["the cat", "a dog", "python data", "the model", "new file"]
    model = HuggingFaceEmbedding(
        str(prompted), backend="onnx", long_inputs="chunk", chunk_overlap=2, embed_batch_size=4
    )
    model.embed([*shorts[:2], long, *shorts[2:]])
    sizes = [len(e.chunks) for e in event_recorder.of("EmbeddingEndEvent")]
    assert sizes == [2, 4]


def test_the_setting_is_part_of_the_identity(prompted: Path) -> None:
    default = HuggingFaceEmbedding(str(prompted), backend="onnx")
    assert "long_inputs" not in default.provider.identity()  # the default keeps the keys it always had
    chunk = default.model_copy(update={"long_inputs": "chunk"})
    other = default.model_copy(update={"long_inputs": "chunk", "chunk_overlap": 5})
    keys = {m.pipeline.key_factory("text")("x") for m in (default, chunk, other)}
    assert len(keys) == 3
    assert chunk.provider.identity()["long_inputs"] == "chunk"
    with pytest.raises(ValueError, match="long_inputs"):
        HuggingFaceEmbedding(str(prompted), long_inputs="split")


def test_an_overlap_that_leaves_no_room_is_refused(prompted: Path) -> None:
    model = HuggingFaceEmbedding(str(prompted), backend="onnx", long_inputs="chunk", chunk_overlap=12)
    with pytest.raises(ValueError, match=r"chunk_overlap=12 is not less than the 11 text tokens .* below 11"):
        model.embed([" ".join(_words(40))])


# -- late chunking ---------------------------------------------------------------------------------------
def _late_reference(path: Path, words: list[str], spans: list[tuple[int, int]], overlap: int) -> np.ndarray:
    """Span means of sentence-transformers' token embeddings (macro windows stitched at their overlap's middle),
    through the modules after pooling, normalised. `spans` are word ranges (one token per word)."""
    st = _st(path)
    prompt = PROMPTS["document"]
    lead = 1  # [CLS]
    n_prompt = _room(st, prompt) - 2
    ranges = _windows(len(words), LIMIT - _room(st, prompt), overlap)
    rows = st.encode([prompt + " ".join(words[a:b]) for a, b in ranges], output_value="token_embeddings")
    parts = []
    for k, ((a, b), row) in enumerate(zip(ranges, rows)):
        lo = a if k == 0 else (ranges[k - 1][1] + a) // 2
        hi = b if k == len(ranges) - 1 else (b + ranges[k + 1][0]) // 2
        parts.append(np.asarray(row[lead + n_prompt + lo - a : lead + n_prompt + hi - a]))
    tokens = np.concatenate(parts)
    assert len(tokens) == len(words)
    pooled = torch.tensor(np.stack([tokens[s:e].mean(0) for s, e in spans]), dtype=torch.float32)
    features = {"sentence_embedding": pooled}
    with torch.no_grad():
        for module in list(st)[2:]:
            features = module(features)
    out = features["sentence_embedding"].numpy()
    return np.asarray(out / np.linalg.norm(out, axis=1, keepdims=True))


def _char_spans(words: list[str], spans: list[tuple[int, int]]) -> tuple[str, list[tuple[int, int]]]:
    starts, pos = [], 0
    for w in words:
        starts.append(pos)
        pos += len(w) + 1
    return " ".join(words), [(starts[s], starts[e - 1] + len(words[e - 1])) for s, e in spans]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n_words", [9, 40])  # within the limit; past it (macro windows)
def test_late_chunking_pools_each_span_of_the_encoded_document(
    st_model: Callable[..., Path], backend: str, n_words: int
) -> None:
    path = st_model("bert", "mean", dense=((24, torch.nn.Tanh(), False),), prompts=PROMPTS)
    words = _words(n_words, 6)
    word_spans = [(0, 3), (3, 7), (2, n_words)] if n_words < 20 else [(0, 5), (5, 18), (18, 33), (30, 40)]
    document, spans = _char_spans(words, word_spans)
    model = HuggingFaceEmbedding(str(path), backend=backend, chunk_overlap=4)
    got = model.embed_chunks(document, spans)
    want = _late_reference(path, words, word_spans, 4)
    assert got.shape == (len(spans), 24)
    for g, w in zip(got, want):
        assert _cos(g, w) >= 0.99999
    # a span's vector sees its context: the same words alone give another vector
    alone = model.embed_chunks(document[spans[1][0] : spans[1][1]], [(0, spans[1][1] - spans[1][0])])
    assert _cos(alone[0], got[1]) < 0.9999


def test_late_chunking_is_async_and_takes_spans_that_split_words(prompted: Path) -> None:
    import asyncio

    model = HuggingFaceEmbedding(str(prompted), backend="onnx")
    document = "the quick brown fox jumps over the lazy dog"
    sync = model.embed_chunks(document, [(0, 9), (4, 20)])  # (4, 20) starts inside "quick": the token counts
    assert np.array_equal(asyncio.run(model.aembed_chunks(document, [(0, 9), (4, 20)])), sync)
    assert np.array_equal(model.embed_chunks(document, [(5, 20)]), sync[1:])
    assert model.embed_chunks(document, []).shape == (0, 32)


def test_late_chunking_refuses_bad_spans_by_name(prompted: Path, st_model: Callable[..., Path]) -> None:
    model = HuggingFaceEmbedding(str(prompted), backend="onnx")
    document = "the cat   sat on the mat"
    with pytest.raises(ValueError, match=r"spans\[1\] = \(7, 10\) covers no token"):
        model.embed_chunks(document, [(0, 3), (7, 10)])
    with pytest.raises(ValueError, match=r"spans\[0\] = \(3, 99\) is not a span of the document.*<= 24"):
        model.embed_chunks(document, [(3, 99)])
    with pytest.raises(TypeError, match=r"spans\[0\]"):
        model.embed_chunks(document, [(1.5, 3)])  # type: ignore[list-item]
    combined = HuggingFaceEmbedding(str(st_model("bert", ("cls", "mean"))), backend="onnx")
    with pytest.raises(ValueError, match="several pooling modes"):
        combined.embed_chunks(document, [(0, 3)])


def test_chunk_spans_cut_a_document_into_token_chunks(prompted: Path) -> None:
    model = HuggingFaceEmbedding(str(prompted), backend="onnx")
    words = _words(25, 7)
    document = " ".join(words)
    spans = model.chunk_spans(document, 10)
    assert [document[s:e] for s, e in spans] == [" ".join(words[i : i + 10]) for i in range(0, 25, 10)]
    assert model.embed_chunks(document, spans).shape == (3, 32)


def test_chunking_with_dimensions_and_without_normalisation(prompted: Path) -> None:
    """Each piece's vector is made as the model's vectors are (Matryoshka truncation, normalisation or not)."""
    from sentence_transformers import SentenceTransformer

    st = _st(prompted)
    words = _words(30, 8)
    ranges = _windows(len(words), LIMIT - _room(st, PROMPTS["document"]), 3)
    texts = [PROMPTS["document"] + " ".join(words[a:b]) for a, b in ranges]
    weights = np.asarray([b - a for a, b in ranges], dtype=np.float64)[:, None]

    cut = HuggingFaceEmbedding(str(prompted), backend="onnx", long_inputs="chunk", chunk_overlap=3, dimensions=12)
    pieces = np.asarray(st.encode(texts), dtype=np.float64)[:, :12]
    pieces /= np.linalg.norm(pieces, axis=1, keepdims=True)
    want = (pieces * weights).sum(0) / weights.sum()
    np.testing.assert_allclose(cut.embed([" ".join(words)])[0], want / np.linalg.norm(want), atol=2e-5)

    raw = HuggingFaceEmbedding(str(prompted), backend="onnx", long_inputs="chunk", chunk_overlap=3, normalize=False)
    unnormalised = SentenceTransformer(modules=[st[0], st[1]], device="cpu")  # without its Normalize module
    pieces = np.asarray(unnormalised.encode(texts), dtype=np.float64)
    want = (pieces * weights).sum(0) / weights.sum()
    np.testing.assert_allclose(raw.embed([" ".join(words)])[0], want, atol=2e-5)


def test_spans_index_the_text_where_lower_casing_moves_characters(prompted: Path, tmp_path: Path) -> None:
    """A model that lower-cases (do_lower_case) turns "İ" into two characters; lower-cased in the tokenizer's own
    normaliser (as sentence-transformers does), its offsets still index the text as given, so spans map."""
    import json
    import shutil

    folder = tmp_path / "lower"
    shutil.copytree(prompted, folder)
    config = folder / "sentence_bert_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "do_lower_case": True}))
    model = HuggingFaceEmbedding(str(folder), backend="onnx")
    assert model.embed_chunks("The Cat sat", [(4, 7)]).shape == (1, 32)  # lower-casing that keeps the length
    got = model.embed_chunks("İstanbul cat", [(9, 12)])
    np.testing.assert_allclose(got, model.embed_chunks("Istanbul cat", [(9, 12)]), atol=1e-6)  # the same tokens


def _save_e5_style(plain: Path, config: Any, seed: int, pooling: str) -> Path:
    """A random model of `config` saved in `plain` (beside its tokenizer), then a sentence-transformers model over it
    ("tiny", beside `plain`): Transformer (LIMIT tokens), Pooling, Normalize, with e5's query and passage prompts."""
    import transformers
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    torch.manual_seed(seed)
    transformers.AutoModel.from_config(config).eval().save_pretrained(str(plain))
    modules = [Transformer(str(plain), max_seq_length=LIMIT), Pooling(32, pooling_mode=pooling), Normalize()]
    folder = plain.parent / "tiny"
    prompts = {"query": "query: ", "document": "passage: "}
    SentenceTransformer(modules=modules, device="cpu", prompts=prompts).save(str(folder))
    return folder


@pytest.fixture(scope="module")
def byte_level_decoder(family_checkpoint: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Qwen3 sentence-transformers model with a byte-level BPE tokenizer, as Qwen3-Embedding's: the space in front
    of a word belongs to the word's token (" dog"), so a prompt's trailing space joins the text's first token."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    rng = np.random.default_rng(0)
    corpus = [" ".join(_words(12, int(s))) for s in rng.integers(0, 10_000, 300)] + ["passage: query: "] * 50
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>"]
    tok.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=700, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    eos = tok.token_to_id("<|endoftext|>")
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single="$A <|endoftext|>", special_tokens=[("<|endoftext|>", eos)]),
        ]
    )
    plain = tmp_path_factory.mktemp("byte-level") / "plain"
    transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>", padding_side="left"
    ).save_pretrained(str(plain))
    weights = family_checkpoint("qwen3")
    config = transformers.AutoConfig.from_pretrained(str(weights))
    config.vocab_size, config.pad_token_id, config.eos_token_id, config.bos_token_id = (
        tok.get_vocab_size(),
        eos,
        eos,
        eos,
    )
    return _save_e5_style(plain, config, 5, "lasttoken")


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_a_prompts_trailing_space_joined_to_the_first_word_is_not_repeated_in_every_piece(
    byte_level_decoder: Path, env_cache: Path, backend: str
) -> None:
    """Was: with a byte-level tokenizer the text's first token (" the", which starts at the prompt's trailing
    space) was taken for part of the prompt, so every piece of a long text carried the first word again."""
    st = _st(byte_level_decoder)
    words = [w for w in VOCAB if len(st.tokenizer(" " + w, add_special_tokens=False)["input_ids"]) == 1]
    words = [words[i] for i in np.random.default_rng(3).integers(0, len(words), 30)]
    assert len(st.tokenizer(" ".join(words))["input_ids"]) == len(words) + 1  # one token a word, then <|endoftext|>
    room = len(st.tokenizer("passage:")["input_ids"])  # "passage", ":" and <|endoftext|>: the space joins the word
    ranges = _windows(len(words), LIMIT - room, 3)
    texts = ["passage: " + " ".join(words[a:b]) for a, b in ranges]
    assert all(len(st.tokenizer(t)["input_ids"]) == LIMIT for t in texts[:-1])  # full pieces, none cut
    vectors = np.asarray(st.encode(texts, normalize_embeddings=True), dtype=np.float64)
    weights = np.asarray([b - a for a, b in ranges], dtype=np.float64)[:, None]
    want = (vectors * weights).sum(0)
    model = HuggingFaceEmbedding(str(byte_level_decoder), backend=backend, long_inputs="chunk", chunk_overlap=3)
    assert _cos(model.get_text_embedding(" ".join(words)), want) >= 0.99999
    # late chunking: the first word is the document's (a span over it alone was "covers no token")
    document = " ".join(words[:5])
    assert model.embed_chunks(document, [(0, len(words[0])), (0, len(document))]).shape == (2, 32)


@pytest.fixture(scope="module")
def sentencepiece_encoder(family_checkpoint: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An XLM-RoBERTa sentence-transformers model with a SentencePiece-style (Unigram, "▁") tokenizer, as
    multilingual-e5's, and e5's prompts."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    rng = np.random.default_rng(1)
    corpus = [" ".join(_words(12, int(s))) for s in rng.integers(0, 10_000, 400)] + ["passage: query: "] * 50
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    tok.train_from_iterator(corpus, trainers.UnigramTrainer(vocab_size=300, special_tokens=specials, unk_token="<unk>"))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    plain = tmp_path_factory.mktemp("sentencepiece") / "plain"
    transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    ).save_pretrained(str(plain))
    config = transformers.AutoConfig.from_pretrained(str(family_checkpoint("xlm-roberta")))
    config.vocab_size, config.pad_token_id, config.bos_token_id, config.eos_token_id = tok.get_vocab_size(), 1, 0, 2
    return _save_e5_style(plain, config, 6, "mean")


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_a_lone_space_token_of_the_first_word_is_not_taken_for_the_prompt(
    sentencepiece_encoder: Path, env_cache: Path, backend: str
) -> None:
    """Was: a first word SentencePiece splits as "▁", "z", "q" put its "▁" (the prompt's trailing space) into the
    prompt, so every later piece of a long text started with a stray "▁"."""
    st = _st(sentencepiece_encoder)
    ids = st.tokenizer("passage: zq", add_special_tokens=False)["input_ids"]
    assert st.tokenizer.convert_ids_to_tokens(ids)[-3:] == ["▁", "z", "q"]
    words = [w for w in VOCAB if len(st.tokenizer(w, add_special_tokens=False)["input_ids"]) == 1]
    words = ["zq"] + [words[i] for i in np.random.default_rng(4).integers(0, len(words), 30)]
    token_word = [0, 0, 0, *range(1, len(words))]  # the word each of the text's tokens belongs to
    room = len(st.tokenizer("passage:")["input_ids"])  # <s>, the prompt's tokens, </s>
    ranges = _windows(len(token_word), LIMIT - room, 3)
    texts = ["passage: " + " ".join(words[token_word[a] : token_word[b - 1] + 1]) for a, b in ranges]
    assert all(len(st.tokenizer(t)["input_ids"]) == LIMIT for t in texts[:-1])  # full pieces, none cut
    vectors = np.asarray(st.encode(texts, normalize_embeddings=True), dtype=np.float64)
    weights = np.asarray([b - a for a, b in ranges], dtype=np.float64)[:, None]
    model = HuggingFaceEmbedding(str(sentencepiece_encoder), backend=backend, long_inputs="chunk", chunk_overlap=3)
    assert _cos(model.get_text_embedding(" ".join(words)), (vectors * weights).sum(0)) >= 0.99999
