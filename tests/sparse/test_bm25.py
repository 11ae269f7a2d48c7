"""BM25 with no weights: scores equal the textbook formula (and bm25s) on a small corpus; statistics are
computed over the corpus, saved, loaded and part of the cache key."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import pytest

from embedstack import resolve_embed_model
from embedstack.kvstore import SimpleKVStore
from embedstack.providers.bm25 import BM25Embedding, NotFittedError
from embedstack.sparse import sparse_dot

pytest.importorskip("Stemmer")

CORPUS = [
    "A cat is a feline and likes to purr",
    "A dog is the human's best friend and loves to play",
    "A bird is a beautiful animal that can fly",
    "A fish is a creature that lives in water and swims",
    "Cats and dogs playing together in the garden",
    "Running runners run; the runner ran",
]
QUERIES = ["does the fish purr like a cat?", "dogs play", "run run", "zebra", "the"]


def _textbook(corpus_terms: list[list[str]], query: list[str], k1: float, b: float) -> list[float]:
    """Σ over query terms of IDF · tf(k1+1)/(tf + k1(1 − b + b·|D|/avgdl)), IDF = ln(1 + (N − df + .5)/(df + .5))."""
    n = len(corpus_terms)
    avgdl = sum(map(len, corpus_terms)) / n
    df = Counter(t for doc in corpus_terms for t in set(doc))
    scores = []
    for doc in corpus_terms:
        tf = Counter(doc)
        score = 0.0
        for term in query:
            if tf[term]:
                idf = math.log(1 + (n - df[term] + 0.5) / (df[term] + 0.5))
                score += idf * tf[term] * (k1 + 1) / (tf[term] + k1 * (1 - b + b * len(doc) / avgdl))
        scores.append(score)
    return scores


@pytest.mark.parametrize(("k1", "b"), [(1.5, 0.75), (1.2, 0.0), (0.9, 1.0)])
def test_scores_equal_the_textbook_formula(k1: float, b: float) -> None:
    model = BM25Embedding(k1=k1, b=b).fit(CORPUS)
    terms = model.tokenize(CORPUS)
    assert terms[5] == ["run", "runner", "run", "runner", "ran"]  # lowercased, stemmed, stopword "the" dropped
    docs = model.get_text_embedding_batch(CORPUS)
    for query in QUERIES:
        q = model.get_query_embedding(query)
        got = [sparse_dot(q, d) for d in docs]
        assert got == pytest.approx(_textbook(terms, model.tokenize([query])[0], k1, b), rel=1e-6, abs=1e-6)
    assert model.get_query_embedding("zebra") == {}  # a term no document has scores nothing


def test_scores_equal_bm25s_lucene_times_k1_plus_1() -> None:
    bm25s = pytest.importorskip("bm25s")
    import Stemmer

    model = BM25Embedding().fit(CORPUS)
    docs = model.get_text_embedding_batch(CORPUS)
    retriever = bm25s.BM25(method="lucene", k1=1.5, b=0.75)
    retriever.index(
        bm25s.tokenize(CORPUS, stopwords="en", stemmer=Stemmer.Stemmer("english"), show_progress=False),
        show_progress=False,
    )
    for query in QUERIES[:3]:
        q = model.get_query_embedding(query)
        theirs = retriever.get_scores(model.tokenize([query])[0])
        assert [sparse_dot(q, d) / 2.5 for d in docs] == pytest.approx(theirs.tolist(), rel=1e-5, abs=1e-6)


def test_statistics_are_saved_loaded_and_keyed(tmp_path: Path) -> None:
    fitted = BM25Embedding().fit(CORPUS)
    path = fitted.save_stats(tmp_path / "stats.json")
    loaded = resolve_embed_model(f"bm25:{path}")
    assert isinstance(loaded, BM25Embedding)
    assert loaded.get_text_embedding_batch(CORPUS) == fitted.get_text_embedding_batch(CORPUS)
    assert loaded.get_query_embedding("cats") == fitted.get_query_embedding("cats")
    assert loaded.pipeline.key_factory("text")("a cat") == fitted.pipeline.key_factory("text")("a cat")

    cache = SimpleKVStore()
    one = BM25Embedding(embeddings_cache=cache).fit(CORPUS)
    before = one.get_text_embedding("a cat and a dog")
    one.fit(CORPUS[:3])  # other statistics: other keys, other vectors, never the cached ones
    assert one.get_text_embedding("a cat and a dog") != before
    assert one.pipeline.key_factory("text")("a cat") != fitted.pipeline.key_factory("text")("a cat")


def test_unfitted_and_bad_statistics_are_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(NotFittedError, match=r"call model.fit\(corpus_texts\)"):
        resolve_embed_model("bm25").get_text_embedding("a cat")  # type: ignore[union-attr]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        BM25Embedding(stats_path=str(tmp_path / "missing.json")).get_query_embedding("a")
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "something else"}')
    with pytest.raises(ValueError, match="not BM25 statistics"):
        BM25Embedding(stats_path=str(bad)).get_query_embedding("a")
    with pytest.raises(ValueError, match="at least one document"):
        BM25Embedding().fit([])


def test_decode_and_no_stemming() -> None:
    model = BM25Embedding(language=None, stopwords=None).fit(CORPUS)
    assert model.tokenize(["The Runners"]) == [["the", "runners"]]
    assert [t for t, _ in model.decode(model.get_query_embedding("runners the"))] == ["runners", "the"]


def test_fit_transform_equals_fit_then_embed_exactly() -> None:
    corpus = [*CORPUS, "", "the and of"]  # a document with no terms at all, one of stopwords only
    fast = BM25Embedding().fit_transform(corpus)
    model = BM25Embedding().fit(corpus)
    slow = model.embed(corpus)
    for a, b in zip(fast, slow):
        assert a.indices.tolist() == b.indices.tolist() and a.values.tobytes() == b.values.tobytes()
    assert fast[-1].indices.tolist() == [] and fast[-2].indices.tolist() == []
    assert model.pipeline.key_factory("text")("x") == BM25Embedding().fit(corpus).pipeline.key_factory("text")("x")


def test_statistics_counted_in_pieces_merge_into_those_of_the_whole() -> None:
    from embedstack.providers.bm25 import BM25Stats

    model = BM25Embedding()
    whole = BM25Embedding().fit(CORPUS).stats
    pieces = [model.count(CORPUS[i : i + 3]) for i in range(0, len(CORPUS), 3)]
    assert BM25Stats.merge(pieces).to_json() == whole.to_json()  # vocabulary order, df, N and avgdl all equal
    assert BM25Stats.merge(reversed(pieces)).to_json() == whole.to_json()
    assert whole.total_length == sum(len(doc) for doc in model.tokenize(CORPUS))
    assert not model.fitted  # counting leaves the model's own statistics alone
    with pytest.raises(ValueError, match="at least one non-empty part"):
        BM25Stats.merge([])
