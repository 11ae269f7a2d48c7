"""The embed job (read, embed in chunks through the cached pipeline, write atomically); search."""

from __future__ import annotations

import datetime as _dt
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from embedstack.base import BaseEmbedding
from embedstack.errors import EmbedstackError
from embedstack.jobs._output import (
    FORMAT_TAG,
    load_embeddings,
    open_writer,
    output_format,
    read_meta,
)
from embedstack.jobs._readers import InputError, Record, RecordReader, ScanResult, find_sources
from embedstack.kvstore.base import BaseKVStore
from embedstack.progress import Progress
from embedstack.types import Role

__all__ = [
    "DEFAULT_CACHE",
    "EmbedReport",
    "Hit",
    "ModelMismatchError",
    "default_cache_path",
    "embed_files",
    "embed_records",
    "search",
]


class _DefaultCache:
    """Sentinel, "not passed": the model's cache, else the user cache file (None: no cache)."""

    def __repr__(self) -> str:
        return "DEFAULT_CACHE"


DEFAULT_CACHE: Any = _DefaultCache()
CacheArg = Any  # DEFAULT_CACHE | None | str | os.PathLike[str] | BaseKVStore


class ModelMismatchError(EmbedstackError, ValueError):
    """The model asked for is not the one an output was embedded with."""


def default_cache_path() -> Path:
    """The SQLite cache file in the user cache directory (platformdirs)."""
    from embedstack._optional import require

    platformdirs = require("platformdirs", extra="cli")
    return Path(platformdirs.user_cache_dir("embedstack")) / "cache.sqlite"


def open_store(cache: Any) -> BaseKVStore | None:
    """A cache argument → a store: None, a store, "redis://..." (RedisKVStore) or a SQLite file path."""
    if cache is None or isinstance(cache, BaseKVStore):
        return cache
    text = os.fspath(cache)
    if text.startswith(("redis://", "rediss://", "unix://")):
        from embedstack.kvstore.redis import RedisKVStore

        return RedisKVStore(text)
    from embedstack.kvstore.sqlite import SQLiteKVStore

    return SQLiteKVStore(text)


def _open_cache(model: BaseEmbedding, cache: CacheArg) -> None:
    from embedstack.kvstore.sqlite import SQLiteKVStore

    if cache is DEFAULT_CACHE:
        if model.embeddings_cache is None:
            model.embeddings_cache = SQLiteKVStore(default_cache_path())
    else:
        model.embeddings_cache = open_store(cache)


def _resolve(model: Any) -> tuple[BaseEmbedding, str | None]:
    from embedstack.registry import resolve_embed_model

    if isinstance(model, BaseEmbedding):
        return model, None
    if isinstance(model, str):
        return resolve_embed_model(model), model
    return resolve_embed_model(model), None


def model_identity(model: BaseEmbedding) -> dict[str, Any]:
    """What makes a model's vectors what they are (the same data its cache keys hash)."""
    return model._identity()


def _identity_diff(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


#: Identity fields that change only the arithmetic, not the model: outputs made with "local" on another
#: backend or precision (torch, ONNX Runtime fp32, OpenVINO bf16 when asked for: cosine >= 0.9999 apart),
#: and an int8 corpus is searchable with fp32 queries, so an output may be searched or extended at another
#: precision.
NUMERIC_FIELDS = frozenset({"precision", "int8_runtime", "bf16_runtime"})


def check_model(model: BaseEmbedding, meta: Mapping[str, Any], out: Path, action: str) -> None:
    """Refuse to `action` an output with a model other than the one it was embedded with."""
    ident = model_identity(model)
    recorded = meta.get("model_identity") or {}
    diff = [k for k in _identity_diff(ident, recorded) if k not in NUMERIC_FIELDS]
    if diff:
        was = meta.get("model") or recorded.get("class_name", "?")
        shown = ", ".join(f"{k}={recorded.get(k)!r} vs {ident.get(k)!r}" for k in diff[:3])
        raise ModelMismatchError(
            f"{out} was embedded with {was!r}; refusing to {action} with a different model "
            f"({shown}); "
            f"use --model {meta.get('model') or '<the same model>'}, or embed into a new output"
        )


class EmbedReport(BaseModel):
    """What an embed job did: rows written, texts the model computed, texts from the cache."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    out: Path
    count: int = Field(description="Texts embedded by this run (rows added).")
    total_rows: int = Field(description="Rows in the output (more than count after an append).")
    computed: int = Field(description="Texts the model was asked for (the rest: from the cache, or duplicates).")
    cached: bool = Field(description="Whether a cache was used.")
    model: str
    dim: int
    skipped: list[str] = Field(default_factory=list, description="Bad records skipped (skip_bad), one message each.")
    duplicate_ids: int = 0
    first_duplicate: str | None = None
    seconds: float = 0.0

    def summary(self) -> str:
        """One line: "embedded N texts (M computed, K from cache) with MODEL → OUT"."""
        reused = self.count - self.computed
        how = (
            f"{self.computed} computed, {reused} from cache" if self.cached else f"{self.computed} computed, cache off"
        )
        if not self.cached and reused:
            how += f", {reused} duplicates"
        texts = "text" if self.count == 1 else "texts"
        return f"embedded {self.count} {texts} ({how}) with {self.model} → {self.out}"


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _run(
    reader: RecordReader,
    out: str | os.PathLike[str],
    *,
    model: Any,
    batch_size: int | None,
    cache: CacheArg,
    append: bool,
    chunk_size: int,
    progress: bool | Callable[[int], Any],
) -> EmbedReport:
    t0 = time.perf_counter()
    target = Path(out)
    output_format(target)
    if target.is_dir():
        raise InputError(f"{target}: is a folder; give an output file such as {target / 'embeddings.parquet'}")
    scan = reader.scan()
    if scan.count == 0:
        inputs = ", ".join(reader.describe_inputs())
        why = f"all {len(scan.skipped)} records were bad and skipped" if scan.skipped else "empty input"
        raise InputError(f"{inputs}: no texts to embed ({why})")
    existing = None
    if append and target.exists():
        existing = read_meta(target)
    emb, spec = _resolve(model)
    # a caller's model object is left as it was
    saved = (emb.embed_batch_size, emb.embeddings_cache)
    try:
        if batch_size is not None:
            emb.embed_batch_size = batch_size
        _open_cache(emb, cache)
        if existing is not None:
            check_model(emb, existing, target, "append to it")
        return _embed(reader, scan, target, emb, spec, existing, chunk_size, progress, t0)
    finally:
        if spec is None:
            emb.embed_batch_size, emb.embeddings_cache = saved


def _embed(
    reader: RecordReader,
    scan: ScanResult,
    target: Path,
    emb: BaseEmbedding,
    spec: str | None,
    existing: dict[str, Any] | None,
    chunk_size: int,
    progress_arg: bool | Callable[[int], Any],
    t0: float,
) -> EmbedReport:
    name = spec or emb.class_name()
    prior = int(existing["count"]) if existing else 0
    meta: dict[str, Any] = {
        "format": FORMAT_TAG,
        "version": 1,
        "embedstack": _version(),
        "model": spec,
        "model_class": emb.class_name(),
        "model_name": getattr(emb, "model_name", None),
        "model_identity": model_identity(emb),
        "dim": existing["dim"] if existing else None,
        "count": prior + scan.count,
        "text_field": reader.field,
        "id_field": reader.id_field,
        "columns": list(existing["columns"]) if existing else list(scan.columns),
        "inputs": (list(existing.get("inputs", [])) if existing else []) + reader.describe_inputs(),
        "created": existing.get("created") if existing else _now(),
    }
    if existing:
        meta["updated"] = _now()
        meta["columns"] += [c for c in scan.columns if c not in meta["columns"]]
    writer = open_writer(target, meta, scan.columns, existing=existing is not None)
    progress = Progress(scan.count, progress_arg, desc="embedding", unit="text")
    pending: deque[Record] = deque()

    def texts() -> Iterator[str]:
        for record in reader:
            pending.append(record)
            yield record.text

    done = 0
    try:
        for vectors in emb.embed_iter(texts(), chunk_size, Role.TEXT, show_progress=progress):
            chunk = [pending.popleft() for _ in range(len(vectors))]
            writer.write(chunk, vectors)
            done += len(chunk)
        if done != scan.count:
            raise InputError(f"the input changed while it was read ({scan.count} texts, then {done}); re-run")
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    finally:
        progress.close()
    return EmbedReport(
        out=target,
        count=done,
        total_rows=writer.written,
        computed=progress.computed,
        cached=emb.embeddings_cache is not None,
        model=name,
        dim=int(meta["dim"]),
        skipped=scan.skipped,
        duplicate_ids=scan.duplicate_ids,
        first_duplicate=scan.first_duplicate,
        seconds=time.perf_counter() - t0,
    )


def _version() -> str:
    from embedstack import __version__

    return __version__


def embed_files(
    inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    model: Any = "local",
    field: str = "text",
    id_field: str | None = None,
    keep: str | Sequence[str] = "all",
    input_format: str | None = None,
    batch_size: int | None = None,
    cache: CacheArg = DEFAULT_CACHE,
    append: bool = False,
    skip_bad: bool = False,
    chunk_size: int = 2048,
    progress: bool | Callable[[int], Any] = False,
) -> EmbedReport:
    """Embed files (.txt/.jsonl/.json/.csv/.tsv/.parquet, folders, "-": stdin) into OUT.

    OUT is a .parquet, .npy or .jsonl file. Vectors go through the model's cached pipeline in
    chunks: an interrupted run keeps what it computed (in the cache), a re-run computes only the
    rest; OUT is replaced atomically.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    sources = find_sources(list(inputs), input_format, field=field)
    target = Path(out).resolve()
    for src in sources:
        if src.path is not None and src.path.resolve() == target:
            raise InputError(f"{src.name}: is both an input and the output; write to another file")
    reader = RecordReader(
        sources,
        field=field,
        id_field=id_field,
        keep=keep,
        skip_bad=skip_bad,
    )
    return _run(
        reader,
        out,
        model=model,
        batch_size=batch_size,
        cache=cache,
        append=append,
        chunk_size=chunk_size,
        progress=progress,
    )


def embed_records(
    records: Iterable[str | Mapping[str, Any]],
    out: str | os.PathLike[str],
    *,
    model: Any = "local",
    field: str = "text",
    id_field: str | None = None,
    keep: str | Sequence[str] = "all",
    batch_size: int | None = None,
    cache: CacheArg = DEFAULT_CACHE,
    append: bool = False,
    skip_bad: bool = False,
    chunk_size: int = 2048,
    progress: bool | Callable[[int], Any] = False,
) -> EmbedReport:
    """Embed an iterable of texts or mappings (read into memory once) into OUT, like embed_files."""
    items = records if isinstance(records, Sequence) and not isinstance(records, str) else list(records)
    reader = RecordReader(items=items, field=field, id_field=id_field, keep=keep, skip_bad=skip_bad)
    return _run(
        reader,
        out,
        model=model,
        batch_size=batch_size,
        cache=cache,
        append=append,
        chunk_size=chunk_size,
        progress=progress,
    )


class Hit(BaseModel):
    """One search result: rank (1 = best), id, cosine score, the text and the other kept columns."""

    rank: int
    id: str
    score: float
    text: str | None = None
    fields: dict[str, Any] = Field(default_factory=dict)


def search(
    out: str | os.PathLike[str],
    query: str,
    k: int = 10,
    *,
    model: Any = None,
    cache: CacheArg = DEFAULT_CACHE,
) -> list[Hit]:
    """Cosine top-k of `query` over an output, with the model recorded in it (or an identical)."""
    from embedstack.similarity import cosine_top_k

    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    path = Path(out)
    data = load_embeddings(path)
    meta = data.meta
    if model is None:
        if not meta.get("model"):
            raise ModelMismatchError(
                f"{path} was embedded with a model object ({meta.get('model_class')}); pass the same model to search it"
            )
        model = meta["model"]
    emb, spec = _resolve(model)
    check_model(emb, meta, path, "search it")
    saved = emb.embeddings_cache  # a caller's model object is left as it was
    try:
        _open_cache(emb, cache)
        q = emb.embed([query], role=Role.QUERY)[0]
    finally:
        if spec is None:
            emb.embeddings_cache = saved
    if q.shape[0] != data.vectors.shape[1]:
        raise ModelMismatchError(
            f"the query vector has {q.shape[0]} dims, {path} holds {data.vectors.shape[1]}-dim vectors"
        )
    text_field = meta.get("text_field") or "text"
    hits = []
    for rank, (i, score) in enumerate(cosine_top_k(q, np.asarray(data.vectors), k), 1):
        fields = {name: col[i] for name, col in data.columns.items()}
        text = fields.pop(text_field, None)
        hits.append(
            Hit(
                rank=rank,
                id=data.ids[i],
                score=score,
                text=text if isinstance(text, str) else None,
                fields=fields,
            )
        )
    return hits
