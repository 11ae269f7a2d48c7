"""Writing sparse vectors (`embed --sparse`), beside dense ones or alone: the sparse model, fitted when it is BM25.

The output's metadata has a "sparse" entry naming the sparse model (spec, class, identity, dimensions) and, for
BM25, a summary of its statistics (`stats`: where they came from, documents, mean length, terms). A BM25 model
without statistics is fitted on the corpus being embedded (`"from": "corpus"`) and its statistics are kept with
the output (`jobs._output`: Parquet schema metadata, else OUT.bm25.json), so a later query is scored against
them. Appending to such an output updates them: the old statistics and the new documents' counts add up
(`BM25Stats.merge`, equal to fitting on the whole corpus), and the old rows' vectors are recomputed from their
kept text with the new statistics, so the output equals one embedded from scratch. Statistics that were given
(`bm25:<stats.json>`, `"from": "given"`) stay as they are.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from embedstack.errors import ModelMismatchError, OutputError
from embedstack.jobs._output import SPARSE_COLUMNS, STATS_KEY
from embedstack.jobs._readers import InputError, RecordReader
from embedstack.kvstore.base import BaseKVStore
from embedstack.pipeline import Pipeline
from embedstack.sparse import BaseSparseEmbedding
from embedstack.types import Role

__all__ = ["STATS_KEY", "SparsePlan", "prepare_sparse", "resolve_sparse", "sparse_entry", "stats_summary"]


def resolve_sparse(spec: Any) -> BaseSparseEmbedding:
    """A sparse model from a spec ("bm25", "bm25:<stats.json>", "splade:<model>") or an instance."""
    from embedstack.registry import resolve_embed_model

    model = resolve_embed_model(spec)
    if not isinstance(model, BaseSparseEmbedding):
        raise ValueError(f"--sparse {spec!r} is a dense model; use bm25, bm25:<stats.json> or splade:<model>")
    return model


class SparsePlan:
    """What an embed run needs for sparse vectors: the pipeline, the metadata entry, the BM25 statistics to keep
    with the output (JSON), and `reweigh` (texts → vectors) for the copied rows of an append that changed them."""

    def __init__(
        self,
        pipeline: Pipeline,
        meta: dict[str, Any],
        stats_text: str | None = None,
        reweigh: Callable[[list[str]], list[Any]] | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.meta = meta
        self.stats_text = stats_text
        self.reweigh = reweigh

    def rows(self, texts: list[str], offset: int) -> list[Any]:
        """The sparse vectors of one chunk's texts."""
        return list(self.pipeline.embed(texts, Role.TEXT, offset=offset).values)

    def attach(self, writer: Any) -> None:
        """Give the writer the statistics to keep and the copied rows' re-weighing."""
        writer.stats_text = self.stats_text
        writer.reweigh = self.reweigh


def stats_summary(stats: Any, source: str) -> dict[str, Any]:
    """The metadata's summary of BM25 statistics (the statistics themselves are kept beside it)."""
    return {
        "from": source,
        "documents": stats.n_docs,
        "avgdl": round(stats.avgdl, 4),
        "terms": len(stats.vocab),
        "sha256": stats.fingerprint(),
    }


def sparse_entry(spec: Any, model: BaseSparseEmbedding, pipeline: Pipeline, source: str | None) -> dict[str, Any]:
    """An output's metadata entry for its sparse model (`source`: where BM25 statistics came from)."""
    from embedstack.providers.bm25 import BM25Embedding

    entry: dict[str, Any] = {
        "model": spec if isinstance(spec, str) else None,
        "model_class": model.class_name(),
        "model_name": model.model_name,
        "model_identity": dict(model.provider.model_identity()),
        "dims": pipeline.output.size,
    }
    if isinstance(model, BM25Embedding) and source is not None:
        entry["stats"] = stats_summary(model.stats, source)
    return entry


def _stats_source(entry: dict[str, Any]) -> str:
    """Where an output's BM25 statistics came from ("corpus" for outputs that predate the summary and were
    embedded with plain `bm25`)."""
    stats = entry.get("stats") or {}
    return str(stats.get("from") or ("corpus" if entry.get("model") == "bm25" else "given"))


def prepare_sparse(
    spec: Any,
    target: Path,
    reader: RecordReader,
    columns: Any,
    store: BaseKVStore | None,
    existing: dict[str, Any] | None = None,
    batch_size: int | None = None,
) -> SparsePlan:
    """Resolve the sparse model of an embed run: for BM25 without statistics, fit it on the input (on append:
    the output's statistics merged with the input's counts); check it against an output's on append."""
    from embedstack.providers.bm25 import BM25Embedding

    clash = [c for c in SPARSE_COLUMNS if c in columns]
    if clash:
        raise InputError(f"the input has a column {clash[0]!r}, which --sparse writes; drop it with --keep")
    model = resolve_sparse(spec)
    changes: dict[str, Any] = {"cache": store}
    if batch_size is not None:
        changes["batch_size"] = batch_size
    if existing is not None:
        return _prepare_append(spec, model, target, reader, changes, existing)
    stats_text, source = None, None
    if isinstance(model, BM25Embedding):
        source = "given" if model.fitted else "corpus"
        if not model.fitted:
            model.fit(record.text for record in reader)  # statistics of the corpus being embedded
        stats_text = model.stats.to_json()
    pipeline = model.pipeline.with_options(**changes)
    return SparsePlan(pipeline, sparse_entry(spec, model, pipeline, source), stats_text)


def _prepare_append(
    spec: Any, model: BaseSparseEmbedding, target: Path, reader: RecordReader, changes: dict[str, Any], existing: Any
) -> SparsePlan:
    from embedstack.jobs._stored import read_stats
    from embedstack.providers.bm25 import BM25Embedding, BM25Stats

    entry = existing.get("sparse")
    shown = spec if isinstance(spec, str) else type(model).__name__
    if not entry:
        raise OutputError(
            f"{target} holds no sparse vectors; refusing to append rows with {shown} sparse vectors to it "
            "(its old rows have none); leave out --sparse, or embed into a new output"
        )
    was = entry.get("model") or entry.get("model_class")
    stats_text, reweigh, source = None, None, None
    if isinstance(model, BM25Embedding):
        source = _stats_source(entry)
        if source == "corpus":
            if model.fitted:
                raise ModelMismatchError(
                    f"{target}: its BM25 statistics were fitted on its own corpus and an append updates them; pass "
                    "an unfitted BM25 (--sparse bm25), not one with statistics"
                )
            field = existing.get("text_field") or "text"
            if field not in (existing.get("columns") or []):
                raise OutputError(
                    f"{target} keeps no {field!r} column, so its BM25 vectors cannot be recomputed with the "
                    "statistics the new rows change; embed the whole corpus into a new output (keeping the text), "
                    "or fix the statistics: save them and use --sparse bm25:<stats.json>"
                )
            raw = read_stats(target)
            if raw is None:
                raise OutputError(f"{target}: its BM25 statistics are missing; embed into a new output")
            old = BM25Stats.from_json(raw, f"{target}'s BM25 statistics")
            model.use_stats(BM25Stats.merge([old, model.count(record.text for record in reader)]))
            stats_text = model.stats.to_json()
            recompute = model.pipeline.with_options(cache=None)
            reweigh = lambda texts: list(recompute.embed(texts, Role.TEXT).values)  # noqa: E731
        else:
            stats_text = read_stats(target)
    ident = dict(model.provider.model_identity())
    recorded = entry.get("model_identity") or {}
    skip = {"stats"} if reweigh is not None else set()
    diff = sorted(k for k in set(ident) | set(recorded) if k not in skip and ident.get(k) != recorded.get(k))
    if entry.get("model_class") != model.class_name() or diff:
        what = ", ".join(f"{k}={recorded.get(k)!r} vs {ident.get(k)!r}" for k in diff[:3]) or model.class_name()
        raise ModelMismatchError(
            f"{target}'s sparse vectors were made with {was!r}; refusing to append with a different sparse model "
            f"({what}); use --sparse {entry.get('model') or '<the same model>'}, or embed into a new output"
        )
    pipeline = model.pipeline.with_options(**changes)
    return SparsePlan(pipeline, sparse_entry(spec, model, pipeline, source), stats_text, reweigh)
