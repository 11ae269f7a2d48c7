"""The embed job: read, embed in chunks through the cached pipeline, shape (dimensions, precision), write
atomically. Search lives in jobs._search."""

from __future__ import annotations

import datetime as _dt
import os
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

from embedstack.base import BaseEmbedding
from embedstack.errors import ModelMismatchError
from embedstack.jobs._output import (
    FORMAT_TAG,
    OutputError,
    Writer,
    open_writer,
    output_format,
    read_meta,
)
from embedstack.jobs._readers import InputError, Record, RecordReader, ScanResult, find_sources
from embedstack.kvstore.base import BaseKVStore
from embedstack.pipeline import Pipeline
from embedstack.progress import Progress
from embedstack.types import Role
from embedstack.vectors.formats import CALIBRATION_ROWS, VectorFormat, check_compact_args
from embedstack.vectors.precision import BINARY, RESCORE_PRECISION

__all__ = [
    "DEFAULT_CACHE",
    "Compact",
    "EmbedReport",
    "LongInputs",
    "ModelMismatchError",
    "check_model",
    "default_cache_path",
    "embed_files",
    "embed_records",
    "model_identity",
    "open_store",
    "with_model_options",
]


class _DefaultCache:
    """Sentinel, "not passed": the model's cache, else the user cache file (None: no cache)."""

    def __repr__(self) -> str:
        return "DEFAULT_CACHE"


DEFAULT_CACHE: Any = _DefaultCache()
CacheArg = Any  # DEFAULT_CACHE | None | str | os.PathLike[str] | BaseKVStore


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


def pipeline_for(model: BaseEmbedding, cache: CacheArg, batch_size: int | None = None) -> Pipeline:
    """The model's pipeline with a job's cache and batch size: a copy, the caller's model is left as it was.

    `cache`: DEFAULT_CACHE (the model's own store, else the user cache directory's SQLite file), None (no
    cache), a store, "redis://..." or a SQLite path."""
    from embedstack.kvstore.sqlite import SQLiteKVStore

    pipeline = model.pipeline
    store: BaseKVStore | None
    if cache is DEFAULT_CACHE:
        store = pipeline.cache if pipeline.cache is not None else SQLiteKVStore(default_cache_path())
    else:
        store = open_store(cache)
    changes: dict[str, Any] = {"cache": store}
    if batch_size is not None:
        changes["batch_size"] = batch_size
    return pipeline.with_options(**changes)


def _resolve(model: Any) -> tuple[BaseEmbedding, str | None]:
    from embedstack.registry import resolve_dense_model

    if isinstance(model, BaseEmbedding):
        return model, None
    if isinstance(model, str):
        return resolve_dense_model(model), model
    return resolve_dense_model(model), None


def model_identity(model: BaseEmbedding) -> dict[str, Any]:
    """What makes a model's vectors what they are (the same data its cache keys hash)."""
    return dict(model.provider.identity())


def with_model_options(model: BaseEmbedding, options: Mapping[str, Any] | None) -> BaseEmbedding:
    """A copy of `model` with `options` ({field: value}, validated as the model validates them), or the model
    itself when there are none; a model without such a field is refused by name."""
    if not options:
        return model
    from pydantic import ValidationError

    fields = type(model).model_fields
    unknown = [k for k in options if k not in fields]
    if unknown:
        flags = ", ".join("--" + k.replace("_", "-") for k in unknown)
        raise ValueError(
            f"{flags} applies to local models (local, local:<name or path>, torch:, onnx:, openvino:), not to "
            f"{type(model).__name__}"
        )
    probe = model.model_copy()  # validated there as an assignment would be, then copied with _refresh
    for name, value in options.items():
        try:
            type(model).__pydantic_validator__.validate_assignment(probe, name, value)
        except ValidationError as e:
            raise ValueError(f"{name}={value!r}: {e.errors()[0]['msg']}") from None
    checked = {name: getattr(probe, name) for name in options}
    return model.model_copy(update=checked)


@dataclass(frozen=True)
class LongInputs:
    """How an embed job treats texts past the model's token limit: `long_inputs` ("truncate", "chunk") and
    `chunk_overlap` set on the model (None: the model's own), or `late_chunks` tokens: each text is a document
    cut into chunks of that many tokens, embedded by late chunking, one output row per chunk."""

    long_inputs: str | None = None
    chunk_overlap: int | None = None
    late_chunks: int | None = None

    def options(self) -> dict[str, Any]:
        """The model settings to apply (recorded in the output, so a search embeds queries alike)."""
        out: dict[str, Any] = {}
        if self.long_inputs is not None and self.long_inputs != "truncate":
            out["long_inputs"] = self.long_inputs
        if self.chunk_overlap is not None:
            out["chunk_overlap"] = self.chunk_overlap
        return out

    def check(self) -> None:
        """Refuse bad combinations before any work."""
        if self.late_chunks is not None:
            if not isinstance(self.late_chunks, int) or self.late_chunks < 1:
                raise ValueError(f"late_chunks must be a positive number of tokens, got {self.late_chunks!r}")
            if self.long_inputs == "chunk":
                raise ValueError(
                    "--late-chunks embeds each chunk from its whole document; it cannot be combined with "
                    "--long-inputs chunk (leave one out)"
                )


def _identity_diff(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def check_model(model: BaseEmbedding, meta: Mapping[str, Any], out: Path, action: str) -> None:
    """Refuse to `action` an output with a model other than the one it was embedded with."""
    provider = model.provider
    ident = dict(provider.identity())
    arithmetic = set(ident) - set(provider.model_identity())  # backend/precision: another output's may differ
    recorded = meta.get("model_identity") or {}
    diff = [k for k in _identity_diff(ident, recorded) if k not in arithmetic]
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
    computed: int = Field(
        description="Texts the model was asked for (the rest: from the cache, or duplicates); with late chunks, "
        "documents encoded."
    )
    cached: bool = Field(description="Whether a cache was used.")
    model: str
    dim: int
    precision: str = Field(default="float32", description="How the vectors are stored (float32, int8, binary, ...).")
    skipped: list[str] = Field(default_factory=list, description="Bad records skipped (skip_bad), one message each.")
    duplicate_ids: int = 0
    first_duplicate: str | None = None
    seconds: float = 0.0
    sparse: str | None = Field(default=None, description="The sparse model whose vectors were written.")
    dense: bool = Field(default=True, description="Whether dense vectors were written (False: sparse only).")
    documents: int | None = Field(default=None, description="With late chunks: the documents they were cut from.")

    def summary(self) -> str:
        """One line: "embedded N texts (M computed, K from cache) with MODEL → OUT"."""
        reused = self.count - self.computed
        how = (
            f"{self.computed} computed, {reused} from cache" if self.cached else f"{self.computed} computed, cache off"
        )
        if not self.cached and reused:
            how += f", {reused} duplicates"
        texts = "text" if self.count == 1 else "texts"
        stored = f" ({self.precision}, {self.dim} dims)" if self.precision != "float32" else ""
        if not self.dense:
            return f"embedded {self.count} {texts} ({how}) with {self.sparse} (sparse only) → {self.out}"
        if self.documents is not None:
            docs = "document" if self.documents == 1 else "documents"
            how = f"{self.computed} encoded, " + (
                f"{self.documents - self.computed} from cache" if self.cached else "cache off"
            )
            return (
                f"embedded {self.documents} {docs} as {self.count} late chunks ({how}) with {self.model} → "
                f"{self.out}{stored}"
            )
        beside = f" + sparse {self.sparse}" if self.sparse else ""
        return f"embedded {self.count} {texts} ({how}) with {self.model}{beside} → {self.out}{stored}"


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class Compact:
    """The vector shape a caller asked for: dimensions, precision, int8 ranges, rescoring vectors (None: the
    default, or on append what the output already has)."""

    dimensions: int | None = None
    precision: str | None = None
    ranges: Any = None
    rescore: bool | None = None

    def check(self) -> None:
        """Refuse bad values before any work."""
        check_compact_args(self.dimensions, self.precision)
        if self.ranges is not None and np.asarray(self.ranges).ndim != 2:
            raise ValueError("ranges must be a (2, dimensions) array, e.g. from embedstack.vectors.calibration_ranges")

    def against(self, stored: VectorFormat, out: Path) -> None:
        """Refuse to append vectors of another shape than `stored`'s, naming both and the fix."""
        asked = []
        if self.dimensions is not None and self.dimensions != stored.dim:
            asked.append(f"{self.dimensions} dims")
        if self.precision is not None and self.precision != stored.precision:
            asked.append(self.precision)
        if self.rescore is not None and stored.binary and self.rescore != (stored.rescore is not None):
            asked.append("rescoring vectors" if self.rescore else "no rescoring vectors")
        if self.ranges is not None:
            asked.append("other ranges")
        if asked:
            has = f"{stored.precision} vectors of {stored.dim} dims"
            if stored.binary:
                has += " with rescoring vectors" if stored.rescore else " without rescoring vectors"
            fix = f"--precision {stored.precision}" + (f" --dimensions {stored.dim}" if stored.truncated else "")
            raise OutputError(
                f"{out} holds {has}; refusing to append {', '.join(asked)} to it "
                f"(its codes and ranges must stay one set); use {fix} (or leave them out), or embed into a new output"
            )

    def new_format(self, source_dim: int) -> VectorFormat:
        """The format of a new output whose model gives `source_dim`-dim vectors (ranges not yet set)."""
        dim = self.dimensions or source_dim
        if dim > source_dim:
            raise ValueError(f"dimensions={dim} exceeds the model's {source_dim} dimensions")
        precision = self.precision or "float32"
        keep = precision in BINARY and self.rescore is not False
        fmt = VectorFormat(precision, dim, source_dim, None, RESCORE_PRECISION if keep else None)
        if self.ranges is not None:
            ranges = np.asarray(self.ranges, dtype=np.float32)
            if ranges.shape != (2, dim):
                raise ValueError(
                    f"ranges must have shape (2, {dim}) (minimum and maximum per dimension), got {ranges.shape}"
                )
            fmt = VectorFormat(precision, dim, source_dim, ranges, fmt.rescore)
        return fmt


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
    compact: Compact = Compact(),
    sparse: Any = None,
    long: LongInputs = LongInputs(),
) -> EmbedReport:
    t0 = time.perf_counter()
    compact.check()
    long.check()
    target = Path(out)
    fmt = output_format(target)
    dense = model is not None
    if not dense:
        _check_sparse_only(target, fmt, sparse, compact)
        if long.long_inputs is not None or long.chunk_overlap is not None or long.late_chunks is not None:
            raise ValueError(
                "long_inputs, chunk_overlap and late_chunks shape a dense model's vectors; leave them out with no "
                "dense model (--no-dense)"
            )
    if target.is_dir():
        raise InputError(f"{target}: is a folder; give an output file such as {target / 'embeddings.parquet'}")
    if append and reader.items is not None and target.exists():  # positional ids go on from the output's rows
        reader.first_id = int(read_meta(target).get("count") or 0)
    scan = reader.scan()
    if scan.count == 0:
        inputs = ", ".join(reader.describe_inputs())
        why = f"all {len(scan.skipped)} records were bad and skipped" if scan.skipped else "empty input"
        raise InputError(f"{inputs}: no texts to embed ({why})")
    existing = None
    if append and target.exists():
        existing = read_meta(target)
        _check_kinds(existing, target, dense, sparse)
    emb: BaseEmbedding | None = None
    spec: str | None = None
    pipeline: Pipeline | None = None
    options: dict[str, Any] = {}
    if dense:
        emb, spec = _resolve(model)
        options = long.options()
        if existing and spec and long.long_inputs is None and long.chunk_overlap is None:  # appended as it was made
            options = dict(existing.get("model_options") or {})
        emb = with_model_options(emb, options)  # a copy: a caller's model object is left as it was
        pipeline = pipeline_for(emb, cache, batch_size)  # a copy: a caller's model object is left as it was
        if existing is not None:
            check_model(emb, existing, target, "append to it")
            compact.against(VectorFormat.from_meta(existing), target)
    if existing is not None and existing.get("late_chunks") != long.late_chunks:
        was, now = existing.get("late_chunks"), long.late_chunks
        raise ValueError(
            f"{target} holds "
            + (f"late chunks of {was} tokens" if was else "one row per text")
            + "; refusing to append "
            + (f"late chunks of {now} tokens" if now else "one row per text")
            + (f" (use --late-chunks {was})" if was else " (leave out --late-chunks)")
        )
    if long.late_chunks is not None:
        if sparse is not None:
            raise ValueError("--sparse cannot be combined with --late-chunks yet; embed without one of them")
        assert emb is not None and pipeline is not None  # no dense model with late_chunks is refused above
        late = (long.late_chunks, chunk_size, progress, t0, compact, pipeline.cache)
        return _embed_late(reader, scan, target, emb, spec, existing, options, *late)
    plan = None
    if sparse is not None:
        from embedstack.jobs._sparse_write import prepare_sparse

        store = pipeline.cache if pipeline is not None else _store(cache)
        plan = prepare_sparse(sparse, target, reader, scan.columns, store, existing, None if dense else batch_size)
    return _embed(reader, scan, target, emb, pipeline, spec, existing, chunk_size, progress, t0, compact, plan, options)


def _check_sparse_only(target: Path, fmt: str, sparse: Any, compact: Compact) -> None:
    """Refuse an output without dense vectors where it cannot be written."""
    if sparse is None:
        raise ValueError("nothing to embed: pass a model, a sparse model (sparse='bm25', 'splade:<model>'), or both")
    if fmt == "npy":
        raise InputError(
            f"{target}: a .npy output holds a dense matrix; write sparse vectors alone to a .parquet or .jsonl output"
        )
    if any(x is not None for x in (compact.dimensions, compact.precision, compact.ranges, compact.rescore)):
        raise ValueError(
            "dimensions, precision, ranges and rescore shape dense vectors; "
            "leave them out with no dense model (--no-dense)"
        )


def _check_kinds(existing: dict[str, Any], target: Path, dense: bool, sparse: Any) -> None:
    """Refuse to append rows without a kind of vector the output's rows have (or with one they lack)."""
    from embedstack.jobs._output import is_dense

    if is_dense(existing) and not dense:
        raise ModelMismatchError(
            f"{target} holds dense vectors ({existing.get('model') or existing.get('model_class')}); refusing to "
            f"append rows without them; use --model {existing.get('model') or '<the same model>'}"
        )
    if not is_dense(existing) and dense:
        raise ModelMismatchError(
            f"{target} holds sparse vectors only; refusing to append rows with dense ones; use --no-dense "
            "(Python: model=None), or embed into a new output"
        )
    entry = existing.get("sparse")
    if entry and sparse is None:
        raise ModelMismatchError(
            f"{target} holds sparse vectors ({entry.get('model') or entry.get('model_class')}) beside its rows; "
            f"refusing to append rows without them; add --sparse {entry.get('model') or '<the same sparse model>'}"
        )


def _store(cache: CacheArg) -> BaseKVStore | None:
    """The store a cache argument names when no dense model brings its own (DEFAULT_CACHE: the user cache file)."""
    from embedstack.kvstore.sqlite import SQLiteKVStore

    return SQLiteKVStore(default_cache_path()) if cache is DEFAULT_CACHE else open_store(cache)


def _embed_late(
    reader: RecordReader,
    scan: ScanResult,
    target: Path,
    emb: BaseEmbedding,
    spec: str | None,
    existing: dict[str, Any] | None,
    options: Mapping[str, Any],
    tokens: int,
    chunk_size: int,
    progress: bool | Callable[[int], Any],
    t0: float,
    compact: Compact,
    store: BaseKVStore | None,
) -> EmbedReport:
    """`--late-chunks`: one row per chunk of each text (jobs._late), cached in `store` when there is one."""
    from embedstack.jobs._late import write_late_chunks

    meta = _meta(reader, scan, emb, spec, existing, options)
    fmt = VectorFormat.from_meta(existing) if existing else None
    written, computed = write_late_chunks(
        reader,
        scan,
        target,
        emb,
        meta,
        existing,
        tokens,
        chunk_size,
        progress,
        lambda writer: _Shaper(writer, meta, fmt, compact, emb),
        store,
    )
    return EmbedReport(
        out=target,
        count=written,
        total_rows=int(meta["count"]),
        computed=computed,
        cached=store is not None,
        model=spec or emb.class_name(),
        dim=int(meta["dim"]),
        precision=str(meta.get("precision") or "float32"),
        skipped=scan.skipped,
        duplicate_ids=scan.duplicate_ids,
        first_duplicate=scan.first_duplicate,
        seconds=time.perf_counter() - t0,
        documents=scan.count,
    )


def _meta(
    reader: RecordReader,
    scan: ScanResult,
    emb: BaseEmbedding | None,
    spec: str | None,
    existing: dict[str, Any] | None,
    options: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """A new output's metadata, or an appended one's updated."""
    prior = int(existing["count"]) if existing else 0
    meta: dict[str, Any] = {
        "format": FORMAT_TAG,
        "version": 1,
        "embedstack": _version(),
        "model": spec,
        "model_class": emb.class_name() if emb is not None else None,
        "model_name": getattr(emb, "model_name", None),
        "model_identity": model_identity(emb) if emb is not None else None,
        "dim": existing.get("dim") if existing else None,
        "count": prior + scan.count,
        "text_field": reader.field,
        "id_field": reader.id_field,
        "columns": list(existing["columns"]) if existing else list(scan.columns),
        "inputs": (list(existing.get("inputs", [])) if existing else []) + reader.describe_inputs(),
        "created": existing.get("created") if existing else _now(),
    }
    if emb is None:
        meta["dense"] = False
    if options:
        meta["model_options"] = dict(options)
    if existing:
        meta["updated"] = _now()
        meta["columns"] += [c for c in scan.columns if c not in meta["columns"]]
    return meta


def _embed(
    reader: RecordReader,
    scan: ScanResult,
    target: Path,
    emb: BaseEmbedding | None,
    pipeline: Pipeline | None,
    spec: str | None,
    existing: dict[str, Any] | None,
    chunk_size: int,
    progress_arg: bool | Callable[[int], Any],
    t0: float,
    compact: Compact,
    sparse: Any = None,
    options: Mapping[str, Any] | None = None,
) -> EmbedReport:
    sparse_name = (sparse.meta["model"] or sparse.meta["model_class"]) if sparse is not None else None
    name = (spec or emb.class_name()) if emb is not None else str(sparse_name)
    meta = _meta(reader, scan, emb, spec, existing, options)
    if sparse is not None:
        meta["sparse"] = sparse.meta
    writer = open_writer(target, meta, scan.columns, existing=existing is not None)
    if sparse is not None:
        sparse.attach(writer)
    progress = Progress(scan.count, progress_arg, desc="embedding", unit="text")
    pending: deque[Record] = deque()
    shaper = (
        _Shaper(writer, meta, VectorFormat.from_meta(existing) if existing else None, compact, emb)
        if emb is not None
        else None
    )

    def texts() -> Iterator[str]:
        for record in reader:
            pending.append(record)
            yield record.text

    done = 0
    try:
        if pipeline is None or shaper is None:  # sparse vectors only: the sparse model's pipeline drives the run
            for out in sparse.pipeline.iterate(texts(), chunk_size, Role.TEXT, show_progress=progress):
                chunk = [pending.popleft() for _ in range(len(out.values))]
                writer.pending_sparse.extend(out.values)
                writer.write(chunk, None)
                done += len(chunk)
        else:
            for out in pipeline.iterate(texts(), chunk_size, Role.TEXT, show_progress=progress):
                vectors = out.values
                chunk = [pending.popleft() for _ in range(len(vectors))]
                if sparse is not None:  # the same texts' sparse vectors, written beside in the same rows
                    writer.pending_sparse.extend(sparse.rows([r.text for r in chunk], done))
                shaper.write(chunk, vectors)
                done += len(chunk)
            shaper.flush()
        if done != scan.count:
            raise InputError(f"the input changed while it was read ({scan.count} texts, then {done}); re-run")
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    finally:
        progress.close()
    cache = pipeline.cache if pipeline is not None else sparse.pipeline.cache
    return EmbedReport(
        out=target,
        count=done,
        total_rows=writer.written,
        computed=progress.computed,
        cached=cache is not None,
        model=name,
        dim=int(meta["dim"] or 0),
        precision=str(meta.get("precision") or "float32"),
        skipped=scan.skipped,
        duplicate_ids=scan.duplicate_ids,
        first_duplicate=scan.first_duplicate,
        seconds=time.perf_counter() - t0,
        sparse=sparse_name,
        dense=emb is not None,
    )


class _Shaper:
    """Turns model vectors into the output's stored form and hands them to the writer.

    A new output's int8 ranges (and binary outputs' rescoring ranges) are calibrated ONCE, on its first
    `CALIBRATION_ROWS` vectors (held back until that many have come, or the input ends): the input is read
    in one pass, so its start is the sample; an append reuses the ranges in the output's metadata.
    """

    def __init__(
        self, writer: Writer, meta: dict[str, Any], fmt: VectorFormat | None, compact: Compact, emb: BaseEmbedding
    ) -> None:
        self.writer, self.meta, self.fmt, self.compact, self.emb = writer, meta, fmt, compact, emb
        self.held: list[tuple[list[Record], npt.NDArray[np.float32]]] = []
        if fmt is not None:
            meta.update(fmt.to_meta())

    def write(self, records: list[Record], vectors: npt.NDArray[np.float32]) -> None:
        """Shape and write one chunk (or hold it until the ranges can be calibrated)."""
        if self.fmt is None:
            self.held.append((records, vectors))
            fmt = self.compact.new_format(int(vectors.shape[1]))
            if fmt.needs_ranges and fmt.ranges is None and sum(len(r) for r, _ in self.held) < CALIBRATION_ROWS:
                return
            self._start(fmt)
            return
        codes, extra = self.fmt.encode(vectors)
        self.writer.write(records, codes, extra)

    def flush(self) -> None:
        """Write what is held (an input shorter than the calibration sample)."""
        if self.fmt is None and self.held:
            self._start(self.compact.new_format(int(self.held[0][1].shape[1])))

    def _start(self, fmt: VectorFormat) -> None:
        if fmt.needs_ranges:
            sample = np.concatenate([v for _, v in self.held])
            self.meta["ranges_from"] = "given" if fmt.ranges is not None else f"first {len(sample)} vectors"
            if fmt.ranges is None:
                fmt = fmt.with_ranges(sample)
        if fmt.truncated:
            matryoshka_warning(
                self.emb.provider.capabilities.catalog, getattr(self.emb, "model_name", None), fmt.dim, fmt.source_dim
            )
        self.fmt = fmt
        self.meta.update(fmt.to_meta())
        held, self.held = self.held, []
        for records, vectors in held:
            self.write(records, vectors)


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
    dimensions: int | None = None,
    precision: str | None = None,
    ranges: Any = None,
    rescore: bool | None = None,
    sparse: Any = None,
    long_inputs: str | None = None,
    chunk_overlap: int | None = None,
    late_chunks: int | None = None,
) -> EmbedReport:
    """Embed files (.txt/.jsonl/.json/.csv/.tsv/.parquet, folders, "-": stdin) into OUT.

    OUT is a .parquet, .npy or .jsonl file. Vectors go through the model's cached pipeline in
    chunks: an interrupted run keeps what it computed (in the cache), a re-run computes only the
    rest; OUT is replaced atomically. `dimensions` keeps each vector's first N values, re-normalised;
    `precision` stores them as float32 (default), float16, int8, uint8, binary or ubinary; int8/uint8
    `ranges` default to those of the first 2,048 vectors; binary outputs keep int8 rescoring vectors
    unless `rescore=False`. On append, None takes what the output has; anything else must match it.
    `sparse` ("bm25", "bm25:<stats.json>", "splade:<model>" or a BaseSparseEmbedding): also write each
    text's sparse vector (Parquet and .jsonl: `sparse_indices` / `sparse_values`; .npy: OUT.npy.sparse.npz); a
    BM25 model without statistics is fitted on the input, its statistics are kept with the output, and an
    append updates them (the old rows' vectors are recomputed from their kept text). `model=None` with a
    `sparse` model writes sparse vectors only (.parquet or .jsonl).
    `long_inputs` ("truncate", "chunk") and `chunk_overlap` set those fields of a local model (recorded in OUT,
    so a search embeds its queries alike); `late_chunks=N` writes one row per chunk of N tokens of each text,
    embedded by late chunking (jobs._late).
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
        compact=Compact(dimensions, precision, ranges, rescore),
        sparse=sparse,
        long=LongInputs(long_inputs, chunk_overlap, late_chunks),
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
    dimensions: int | None = None,
    precision: str | None = None,
    ranges: Any = None,
    rescore: bool | None = None,
    sparse: Any = None,
    long_inputs: str | None = None,
    chunk_overlap: int | None = None,
    late_chunks: int | None = None,
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
        compact=Compact(dimensions, precision, ranges, rescore),
        sparse=sparse,
        long=LongInputs(long_inputs, chunk_overlap, late_chunks),
    )


_MATRYOSHKA_WARNED: set[str] = set()


def matryoshka_warning(provider: str | None, name: str | None, dimensions: int, source_dim: int) -> None:
    """Warn once per model when `dimensions` truncates a model not known to be Matryoshka-trained."""
    from embedstack.providers.catalog import truncation_note

    note = truncation_note(provider, name, dimensions, source_dim)
    key = f"{provider}:{name}"
    if note is None or key in _MATRYOSHKA_WARNED:
        return
    _MATRYOSHKA_WARNED.add(key)
    warnings.warn(note, UserWarning, stacklevel=3)
