"""BM25 as sparse vectors: no weights to download, statistics computed over a corpus and kept with the model.

Texts are lowercased, split into words of two or more word characters (`\\w\\w+`, as bm25s and
scikit-learn), English stopwords dropped (Lucene's list, as bm25s) and stemmed with PyStemmer
(Snowball). `fit(corpus)` counts, over the corpus, each term's document frequency, the number of
documents and their mean length: the statistics, saved with `save_stats` and loaded with `stats_path`
(their sha256 is part of the cache key, so vectors made under other statistics are never reused).

A document's vector holds, per term t (its vocabulary index): IDF(t) · tf·(k1+1) / (tf + k1·(1−b+b·|D|/avgdl)),
with IDF(t) = ln(1 + (N − df + 0.5)/(df + 0.5)) (Lucene's, never negative); a query's vector holds each
term's count in the query. Their dot product is the textbook BM25 score of the document for the query
(bm25s' "lucene" method times the constant k1+1: the same ranking). Terms outside the fitted vocabulary
are dropped (no document of the corpus has them: they score 0).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import Field, PrivateAttr

from embedstack._optional import require
from embedstack.errors import EmbedstackError
from embedstack.outputs import SparseVector
from embedstack.provider import BatchOutput, Prepared, TokenCounts
from embedstack.sparse import BatchSparseEmbedding, SparseEmbedding
from embedstack.types import Role

__all__ = ["STOPWORDS_EN", "BM25Embedding", "BM25Stats", "NotFittedError", "from_spec"]

#: Lucene's English stopwords (bm25s' "en").
STOPWORDS_EN = frozenset(
    "a an and are as at be but by for if in into is it no not of on or such that the their then there these they "
    "this to was will with".split()
)
_WORD = re.compile(r"(?u)\b\w\w+\b")
_STATS_FORMAT = "embedstack-bm25-stats/1"
#: Words whose stems are remembered (then the memory starts again).
_WORD_CACHE = 1_000_000


class NotFittedError(EmbedstackError, RuntimeError):
    """BM25 was asked for vectors before it had corpus statistics."""


@dataclass
class BM25Stats:
    """Corpus statistics: the vocabulary (term → index), each term's document frequency, N and mean length."""

    vocab: dict[str, int] = field(default_factory=dict)
    df: list[int] = field(default_factory=list)
    n_docs: int = 0
    avgdl: float = 0.0

    def to_json(self) -> str:
        """Canonical JSON (its sha256 is the statistics' fingerprint)."""
        terms = sorted(self.vocab, key=self.vocab.__getitem__)
        data = {"format": _STATS_FORMAT, "terms": terms, "df": self.df, "n_docs": self.n_docs, "avgdl": self.avgdl}
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str, where: str = "statistics") -> BM25Stats:
        """Statistics from `to_json`'s text; ValueError naming `where` when they are not."""
        try:
            data = json.loads(text)
            if data.get("format") != _STATS_FORMAT:
                raise ValueError(f"format {data.get('format')!r}, expected {_STATS_FORMAT!r}")
            terms, df = list(data["terms"]), [int(x) for x in data["df"]]
            n_docs, avgdl = int(data["n_docs"]), float(data["avgdl"])
            if len(terms) != len(df) or len(set(terms)) != len(terms) or n_docs <= 0 or not avgdl > 0:
                raise ValueError("inconsistent terms, df, n_docs or avgdl")
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"{where} are not BM25 statistics saved by embedstack: {e}") from None
        return cls({t: i for i, t in enumerate(terms)}, df, n_docs, avgdl)

    def fingerprint(self) -> str:
        """sha256 of the canonical JSON."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    @property
    def total_length(self) -> int:
        """The corpus's length in terms (n_docs × avgdl, exact: avgdl is their quotient in float64)."""
        return round(self.avgdl * self.n_docs)

    @classmethod
    def merge(cls, parts: Iterable[BM25Stats]) -> BM25Stats:
        """The statistics of the corpora of `parts` together (document frequencies, counts and lengths add up):
        equal to fitting on all their documents at once, so statistics can be counted in pieces (Ray blocks,
        the documents an append adds) and combined."""
        parts = [p for p in parts if p.n_docs]
        if not parts:
            raise ValueError("BM25Stats.merge needs at least one non-empty part")
        df: Counter[str] = Counter()
        for part in parts:
            for term, i in part.vocab.items():
                df[term] += part.df[i]
        terms = sorted(df)
        n_docs = sum(p.n_docs for p in parts)
        total = sum(p.total_length for p in parts)
        return cls({t: i for i, t in enumerate(terms)}, [df[t] for t in terms], n_docs, max(total / n_docs, 1e-9))


class BM25Embedding(BatchSparseEmbedding):
    """BM25 sparse vectors (see the module docstring); `fit(corpus)` or `stats_path` first.

    `k1`, `b`: BM25's saturation and length normalisation. `language`: the Snowball stemmer (None: no
    stemming). `stopwords`: "en" (Lucene's list) or None.
    """

    model_name: str = "bm25"
    k1: float = Field(default=1.5, gt=0)
    b: float = Field(default=0.75, ge=0, le=1)
    language: str | None = "english"
    stopwords: str | None = "en"
    stats_path: str | None = Field(default=None, description="Statistics saved by save_stats (JSON).")
    embed_batch_size: int = Field(default=256, gt=0, le=100_000)

    _derived = frozenset({"_stemmer", "_words"})
    _stats: BM25Stats | None = PrivateAttr(default=None)
    _stemmer: Any = PrivateAttr(default=None)
    _words: dict[str, str | None] = PrivateAttr(default_factory=dict)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    @classmethod
    def class_name(cls) -> str:
        """Name stored in to_dict()."""
        return "BM25Embedding"

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if name == "stats_path":
            self._stats = None  # read the new file on next use

    # -- tokens ----------------------------------------------------------------------------------
    def _stem(self) -> Any:
        stemmer = self._stemmer
        if stemmer is None and self.language is not None:
            module = require("Stemmer", extra="sparse", package="PyStemmer")
            try:
                stemmer = self._stemmer = module.Stemmer(self.language)
            except KeyError:
                langs = ", ".join(module.algorithms())
                raise ValueError(f"no stemmer for language {self.language!r}; use one of: {langs}, or None") from None
        return stemmer

    def _stems(self, words: Iterable[str]) -> dict[str, str | None]:
        """The word → stem memory (None: a stopword), with `words` in it."""
        if self.stopwords not in (None, "en"):
            raise ValueError(f"stopwords must be 'en' or None, not {self.stopwords!r}")
        stems = self._words
        new = sorted(w for w in set(words) if w not in stems)
        if new:
            stop = STOPWORDS_EN if self.stopwords == "en" else frozenset()
            stemmer = self._stem()
            kept = [w for w in new if w not in stop]
            stemmed = dict(zip(kept, stemmer.stemWords(kept) if stemmer is not None else kept))
            if len(stems) + len(new) > _WORD_CACHE:
                stems = self._words = {}
            stems.update({w: stemmed.get(w) for w in new})
        return stems

    def tokenize(self, texts: Iterable[str]) -> list[list[str]]:
        """Each text's terms: lowercased words, stopwords dropped, stemmed."""
        words = [_WORD.findall(text.lower()) for text in texts]
        stems = self._stems(itertools.chain.from_iterable(words))
        return [[t for t in map(stems.__getitem__, doc) if t is not None] for doc in words]

    # -- statistics ------------------------------------------------------------------------------
    def fit(self, corpus: Iterable[str]) -> BM25Embedding:
        """Compute the statistics over `corpus` (replacing any); returns self."""
        self.fit_transform(corpus)
        return self

    def fit_transform(self, corpus: Iterable[str]) -> list[SparseVector]:
        """Compute the statistics over `corpus` and return its documents' vectors, from one tokenising pass
        (not cached: BM25 vectors cost less to compute than to look up). Equal to `fit` then `embed`."""
        words = [_WORD.findall(text.lower()) for text in corpus]
        if not words:
            raise ValueError("BM25Embedding.fit needs at least one document")
        flat = list(itertools.chain.from_iterable(words))
        unique = sorted(set(flat))
        stems = self._stems(unique)
        terms = sorted({t for t in map(stems.__getitem__, unique) if t is not None})
        term_id = {t: i for i, t in enumerate(terms)}
        word_id = {w: term_id[t] if (t := stems[w]) is not None else -1 for w in unique}
        ids = np.fromiter(map(word_id.__getitem__, flat), dtype=np.int64, count=len(flat))
        counts = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
        doc = np.repeat(np.arange(len(words), dtype=np.int64), counts)
        keep = ids >= 0
        ids, doc = ids[keep], doc[keep]
        lengths = np.bincount(doc, minlength=len(words))
        width = max(len(terms), 1)
        pairs = np.unique(doc * width + ids)  # each (document, term) once
        df = np.bincount(pairs % width, minlength=len(terms))
        n_docs, total = len(words), int(lengths.sum())
        self._set_stats(BM25Stats(term_id, df.tolist(), n_docs, max(total / n_docs, 1e-9)))
        return self._doc_rows(doc, ids, lengths)

    def count(self, corpus: Iterable[str]) -> BM25Stats:
        """The statistics of `corpus` alone, leaving the model's own as they are (combine with `BM25Stats.merge`)."""
        docs = self.tokenize(corpus)
        if not docs:
            raise ValueError("BM25Embedding.count needs at least one document")
        df = Counter(itertools.chain.from_iterable(set(doc) for doc in docs))
        terms = sorted(df)
        total = sum(map(len, docs))
        return BM25Stats(
            {t: i for i, t in enumerate(terms)}, [df[t] for t in terms], len(docs), max(total / len(docs), 1e-9)
        )

    def _doc_rows(
        self, doc: npt.NDArray[np.int64], ids: npt.NDArray[np.int64], lengths: npt.NDArray[np.int64]
    ) -> list[SparseVector]:
        """Document vectors from their terms: `doc[j]` holds vocabulary term `ids[j]`; `lengths[i]`: document
        i's length in terms."""
        n = len(lengths)
        width = max(len(self.stats.vocab), 1)
        key = np.sort(doc * width + ids)
        if len(key):
            starts = np.flatnonzero(np.concatenate(([True], key[1:] != key[:-1])))
            tf = np.diff(np.append(starts, len(key)))
            uniq = key[starts]
        else:
            uniq, tf = key, key
        which, term = np.divmod(uniq, width)
        idf = self._memo.get("idf")
        if idf is None:
            idf = self._memo["idf"] = self.idf
        k1, b = self.k1, self.b
        norm = k1 * (1 - b + b * lengths[which] / self.stats.avgdl)
        tf64 = tf.astype(np.float64)
        values = (idf[term] * tf64 * (k1 + 1) / (tf64 + norm)).astype(np.float32)
        cuts = np.cumsum(np.bincount(which, minlength=n))[:-1]
        return [SparseVector(i, v) for i, v in zip(np.split(term.astype(np.int32), cuts), np.split(values, cuts))]

    def _set_stats(self, stats: BM25Stats) -> None:
        self._stats = stats
        self._memo.clear()  # new statistics: new cache keys and vocabulary size

    def use_stats(self, stats: BM25Stats) -> BM25Embedding:
        """Score with `stats` (e.g. those stored with an output, so a query meets the corpus's); returns self."""
        self._set_stats(stats)
        return self

    @property
    def fitted(self) -> bool:
        """Whether the model has corpus statistics (fitted, given, or a `stats_path` to load them from)."""
        return self._stats is not None or self.stats_path is not None

    def save_stats(self, path: str | Path) -> Path:
        """Write the statistics as JSON to `path` (load them with `BM25Embedding(stats_path=path)`)."""
        path = Path(path)
        path.write_text(self.stats.to_json())
        return path

    @property
    def stats(self) -> BM25Stats:
        """The corpus statistics (loaded from `stats_path` on first use); NotFittedError when there are none."""
        stats = self._stats
        if stats is None:
            if self.stats_path is None:
                raise NotFittedError(
                    "BM25Embedding has no corpus statistics: call model.fit(corpus_texts) first, or load saved ones "
                    "with BM25Embedding(stats_path='stats.json') (resolve_embed_model('bm25:stats.json'))"
                )
            with self._lock:
                stats = self._stats
                if stats is None:
                    where = Path(self.stats_path).expanduser()
                    if not where.is_file():
                        raise FileNotFoundError(f"BM25 statistics file {str(where)!r} does not exist")
                    stats = self._stats = BM25Stats.from_json(where.read_text(), repr(str(where)))
        return stats

    @property
    def idf(self) -> np.ndarray[Any, np.dtype[np.float64]]:
        """Each vocabulary term's IDF, ln(1 + (N − df + 0.5)/(df + 0.5))."""
        stats = self.stats
        df = np.asarray(stats.df, dtype=np.float64)
        return np.log1p((stats.n_docs - df + 0.5) / (df + 0.5))  # type: ignore[no-any-return]

    # -- the pipeline's hooks --------------------------------------------------------------------
    def _identity(self) -> dict[str, Any]:
        data = super()._identity()
        data.pop("stats_path", None)  # where they were read from changes nothing; what they are does
        data["stats"] = self.stats.fingerprint()
        return data

    def _vocab_size(self) -> int | None:
        return max(len(self.stats.vocab), 1)

    def _warm_up(self) -> None:
        _ = self.stats
        self._stem()

    def _count_tokens(self, items: list[Any], role: Role) -> TokenCounts | None:
        prepared = self._prepare(items, role)
        return list(prepared.token_counts), list(prepared.truncated)

    def _prepare(self, items: list[Any], role: Role) -> Prepared:
        """Each text's terms, made once (a server's arrival: its exact count, and the batch reuses them)."""
        terms = self.tokenize(items)
        return Prepared(terms, [len(t) for t in terms], [False] * len(terms))

    def _vectors(self, texts: list[str], role: Role, prepared: list[Any] | None = None) -> BatchOutput:
        stats = self.stats
        vocab, terms = stats.vocab, (prepared if prepared is not None else self.tokenize(texts))
        rows: list[SparseVector] = []
        if role is Role.QUERY:
            for doc in terms:
                counts = Counter(vocab[t] for t in doc if t in vocab)
                idx = np.fromiter(sorted(counts), dtype=np.int32, count=len(counts))
                rows.append(SparseVector(idx, np.array([counts[i] for i in idx.tolist()], dtype=np.float32)))
        else:
            flat = [vocab.get(t, -1) for doc in terms for t in doc]
            ids = np.asarray(flat, dtype=np.int64)
            lengths = np.fromiter(map(len, terms), dtype=np.int64, count=len(terms))
            which = np.repeat(np.arange(len(terms), dtype=np.int64), lengths)
            keep = ids >= 0
            rows = self._doc_rows(which[keep], ids[keep], lengths)
        return BatchOutput(rows, [len(t) for t in terms], [False] * len(terms))

    def decode(self, embedding: SparseEmbedding | SparseVector, top_k: int | None = None) -> list[tuple[str, float]]:
        """(term, weight) pairs of a vector, largest weight first."""
        pairs = embedding.to_dict() if isinstance(embedding, SparseVector) else embedding
        terms = {i: t for t, i in self.stats.vocab.items()}
        ranked = sorted(pairs.items(), key=lambda kv: (-kv[1], kv[0]))[:top_k]
        return [(terms.get(i, f"[{i}]"), float(v)) for i, v in ranked]


def from_spec(arg: str | None) -> BM25Embedding:
    """`bm25` (fit it before use) or `bm25:<statistics.json>` (registry factory)."""
    return BM25Embedding(stats_path=arg) if arg else BM25Embedding()
