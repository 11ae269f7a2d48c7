"""Writing sparse vectors beside dense ones (`embed --sparse`): the sparse model, fitted when it is BM25.

A Parquet output embedded with a sparse model holds two list columns, `sparse_indices` (int32) and
`sparse_values` (float32), one sparse vector per row; its metadata's "sparse" entry names the sparse model
(spec, class, identity, dimensions). A BM25 model without statistics is fitted on the corpus being embedded,
and its statistics are stored in the Parquet file's schema metadata (`STATS_KEY`), so a later query is
scored against the same statistics.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from embedstack.jobs._output import SPARSE_COLUMNS, output_format
from embedstack.jobs._readers import InputError, RecordReader
from embedstack.kvstore.base import BaseKVStore
from embedstack.pipeline import Pipeline
from embedstack.sparse import BaseSparseEmbedding
from embedstack.types import Role

__all__ = ["STATS_KEY", "SparsePlan", "prepare_sparse", "resolve_sparse"]

#: Schema metadata key of a BM25 model's corpus statistics in a Parquet output.
STATS_KEY = b"embedstack.bm25_stats"


def resolve_sparse(spec: Any) -> BaseSparseEmbedding:
    """A sparse model from a spec ("bm25", "bm25:<stats.json>", "splade:<model>") or an instance."""
    from embedstack.registry import resolve_embed_model

    model = resolve_embed_model(spec)
    if not isinstance(model, BaseSparseEmbedding):
        raise ValueError(f"--sparse {spec!r} is a dense model; use bm25, bm25:<stats.json> or splade:<model>")
    return model


class SparsePlan:
    """What an embed run needs for sparse vectors: the pipeline, the metadata entry and the schema metadata."""

    def __init__(self, pipeline: Pipeline, meta: dict[str, Any], schema_metadata: dict[bytes, bytes]) -> None:
        self.pipeline = pipeline
        self.meta = meta
        self.schema_metadata = schema_metadata

    def rows(self, texts: list[str], offset: int) -> list[Any]:
        """The sparse vectors of one chunk's texts."""
        return list(self.pipeline.embed(texts, Role.TEXT, offset=offset).values)


def prepare_sparse(
    spec: Any, target: Path, reader: RecordReader, columns: Any, store: BaseKVStore | None, append: bool
) -> SparsePlan:
    """Resolve (and for BM25 without statistics, fit on the input) the sparse model of an embed run."""
    from embedstack.providers.bm25 import BM25Embedding

    if output_format(target) != "parquet":
        raise InputError(f"{target}: sparse vectors are written to Parquet outputs only; use OUT.parquet")
    if append:
        raise InputError("--sparse cannot be used with --append yet; embed into a new output")
    clash = [c for c in SPARSE_COLUMNS if c in columns]
    if clash:
        raise InputError(f"the input has a column {clash[0]!r}, which --sparse writes; drop it with --keep")
    model = resolve_sparse(spec)
    schema_metadata: dict[bytes, bytes] = {}
    if isinstance(model, BM25Embedding):
        if not model.fitted:
            model.fit(record.text for record in reader)  # statistics of the corpus being embedded
        schema_metadata[STATS_KEY] = model.stats.to_json().encode()
    pipeline = model.pipeline.with_options(cache=store)
    meta = {
        "model": spec if isinstance(spec, str) else None,
        "model_class": model.class_name(),
        "model_name": model.model_name,
        "model_identity": dict(model.provider.model_identity()),
        "dims": pipeline.output.size,
    }
    return SparsePlan(pipeline, meta, schema_metadata)
