"""Embed corpora to files and search them: the Python API behind `embedstack embed/search/info`.

from embedstack.jobs import embed_files, search
report = embed_files("examples/packages.jsonl", "packages.parquet", model="local")
hits = search("packages.parquet", "HTTP mocking for Ruby", k=5)
"""

from embedstack.jobs._embed import (
    DEFAULT_CACHE,
    EmbedReport,
    ModelMismatchError,
    default_cache_path,
    embed_files,
    embed_records,
    with_model_options,
)
from embedstack.jobs._output import Embeddings, OutputError, load_embeddings, read_meta
from embedstack.jobs._ray import embed_dataset
from embedstack.jobs._readers import InputError, Record, RecordReader, find_sources
from embedstack.jobs._search import DEFAULT_RESCORE, Hit, SearchResult, search
from embedstack.vectors import VectorFormat

__all__ = [
    "DEFAULT_CACHE",
    "DEFAULT_RESCORE",
    "EmbedReport",
    "Embeddings",
    "Hit",
    "InputError",
    "ModelMismatchError",
    "OutputError",
    "Record",
    "RecordReader",
    "SearchResult",
    "VectorFormat",
    "default_cache_path",
    "embed_dataset",
    "embed_files",
    "embed_records",
    "find_sources",
    "load_embeddings",
    "read_meta",
    "search",
    "with_model_options",
]
