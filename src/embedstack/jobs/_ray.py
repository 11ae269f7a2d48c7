"""Embedding on Ray Data (extra `ray`): `map_batches` with an actor pool, Arrow batches in and out.

The model travels to the actors as a spec string and keyword arguments, or as a model object pickled
with its fields (credentials and token providers included) but never its loaded weights or clients:
each actor builds or rebuilds it once in `__init__` and keeps it for every batch. A cache given as a
store travels pickled (RedisKVStore and SQLiteKVStore carry their settings, not their connections),
so every actor reads and writes the same cache. A sparse model (`sparse=`) travels the same way and adds
`sparse_indices` / `sparse_values` columns; BM25 without statistics is first fitted over the whole dataset by
a counting pass (each block's statistics, merged on the driver: `BM25Stats.merge`), and every actor scores with
those statistics. Ray retries a batch whose actor
died (kill -9, a lost node) on a restarted actor; row order is not preserved, so match results by id.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from embedstack.base import BaseEmbedding
from embedstack.jobs._embed import open_store
from embedstack.jobs._readers import InputError
from embedstack.kvstore.base import BaseKVStore
from embedstack.types import Role

__all__ = [
    "DEFAULT_RAY_BATCH_SIZE",
    "default_num_cpus",
    "embed_dataset",
    "embed_files_ray",
    "fit_sparse",
    "init_ray",
    "read_inputs",
    "spread",
]

logger = logging.getLogger(__name__)

#: Rows per actor call: large enough to amortise Ray's per-batch overhead, small enough to retry cheaply.
DEFAULT_RAY_BATCH_SIZE = 256
#: Rows per actor call on GPU actors (the device wants bigger batches).
DEFAULT_RAY_GPU_BATCH_SIZE = 1024
_ON_BAD = ("fail", "skip")


def _model_recipe(model: Any, model_kwargs: Mapping[str, Any] | None) -> tuple[Any, ...]:
    """What an actor needs to build the model: ("spec", str, kwargs), or ("model", model, kwargs) — a model
    object travels pickled: its fields (credentials included), never its loaded weights or clients, which
    the actor's copy rebuilds (`BaseEmbedding.__getstate__`)."""
    kwargs = dict(model_kwargs or {})
    if isinstance(model, str):
        return ("spec", model, kwargs)
    if isinstance(model, BaseEmbedding):
        return ("model", model, kwargs)
    raise TypeError(
        f"embed_dataset takes a model spec string ('local', 'fake:16', ...) or a BaseEmbedding, "
        f"not {type(model).__name__}"
    )


def _build(recipe: tuple[Any, ...]) -> BaseEmbedding:
    """The actor's own model (built from a spec, or its unpickled copy), with the job's settings."""
    if recipe[0] == "spec":
        from embedstack.registry import resolve_dense_model

        model: BaseEmbedding = resolve_dense_model(recipe[1])
    else:
        model = recipe[1]
    for name, value in recipe[2].items():
        setattr(model, name, value)  # validated, and the model's derived state follows
    return model


def _sparse_recipe(sparse: Any) -> tuple[Any, ...]:
    """What an actor needs to build the sparse model: ("spec", str) or ("model", a BaseSparseEmbedding)."""
    from embedstack.sparse import BaseSparseEmbedding

    if isinstance(sparse, str):
        return ("spec", sparse)
    if isinstance(sparse, BaseSparseEmbedding):
        return ("model", sparse)
    raise TypeError(
        f"sparse takes a sparse model spec ('bm25', 'splade:<model>') or a BaseSparseEmbedding, "
        f"not {type(sparse).__name__}"
    )


def _build_sparse(recipe: tuple[Any, ...], stats: str | None) -> Any:  # a BaseSparseEmbedding
    """The actor's own sparse model; a BM25 model scores with the job's statistics (`stats`, JSON)."""
    from embedstack.jobs._sparse_write import resolve_sparse

    model: Any = resolve_sparse(recipe[1]) if recipe[0] == "spec" else recipe[1]
    if stats is not None:
        from embedstack.providers.bm25 import BM25Stats

        model.use_stats(BM25Stats.from_json(stats, "the job's BM25 statistics"))
    return model


def _count_terms(table: Any, recipe: tuple[Any, ...], column: str) -> Any:
    """One block's BM25 statistics (a one-row table of their JSON; none for a block without texts)."""
    import pyarrow as pa

    texts = [t for t in table.column(column).to_pylist() if isinstance(t, str)] if column in table.column_names else []
    stats = [_build_sparse(recipe, None).count(texts).to_json()] if texts else []
    return pa.table({"stats": pa.array(stats, type=pa.string())})


def fit_sparse(ds: Any, sparse: Any, column: str = "text") -> Any:
    """The sparse model of a Ray job, ready to score: a BM25 model without statistics gets those of the whole
    dataset (counted block by block on Ray, merged here); others are returned as they are."""
    from embedstack.jobs._sparse_write import resolve_sparse
    from embedstack.providers.bm25 import BM25Embedding, BM25Stats

    recipe = _sparse_recipe(sparse)
    model = resolve_sparse(sparse)
    if isinstance(model, BM25Embedding) and not model.fitted:
        parts = ds.map_batches(_count_terms, fn_args=(recipe, column), batch_format="pyarrow").take_all()
        if not parts:
            raise InputError(f"no texts in column {column!r} to fit BM25 on")
        model.use_stats(BM25Stats.merge(BM25Stats.from_json(p["stats"], "a block's BM25 statistics") for p in parts))
    return model


class _Embedder:
    """The callable class each actor holds: builds the model(s) once, embeds one Arrow batch per call."""

    def __init__(
        self,
        recipe: tuple[Any, ...] | None,
        column: str,
        output_column: str,
        cache: Any,
        on_bad: str,
        id_column: str | None,
        role: str,
        sparse: tuple[Any, ...] | None = None,
        stats: str | None = None,
    ) -> None:
        store = open_store(cache)
        self.pipeline = _build(recipe).pipeline.with_options(cache=store) if recipe is not None else None
        self.sparse = _build_sparse(sparse, stats).pipeline.with_options(cache=store) if sparse is not None else None
        self.column = column
        self.output_column = output_column
        self.on_bad = on_bad
        self.id_column = id_column
        self.role = Role(role)
        self.dim: int | None = None

    def __call__(self, table: Any) -> Any:
        import pyarrow as pa

        if self.column not in table.column_names:
            raise InputError(
                f"the dataset has no column {self.column!r} (columns: {', '.join(table.column_names)}); "
                "pass column=<the text column>"
            )
        texts = table.column(self.column).to_pylist()
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
        if bad:
            table, texts = self._bad_rows(table, texts, bad)
        if self.sparse is not None:
            from embedstack.jobs._output import SPARSE_COLUMNS, _sparse_arrays

            rows = list(self.sparse.embed(texts, self.role).values) if texts else []
            for name, array in zip(SPARSE_COLUMNS, _sparse_arrays(pa, rows)):
                table = _put(table, name, array)
        if self.pipeline is None:
            return table
        if texts:
            mat = self.pipeline.embed(texts, self.role).values
            self.dim = int(mat.shape[1])
        else:  # every row was skipped: an empty block still carries the vector type
            if self.dim is None:
                self.dim = int(self.pipeline.embed(["dimension probe"], self.role).values.shape[1])
            mat = np.zeros((0, self.dim), np.float32)
        flat = pa.array(np.ascontiguousarray(mat, dtype=np.float32).reshape(-1), type=pa.float32())
        return _put(table, self.output_column, pa.FixedSizeListArray.from_arrays(flat, self.dim))

    def _bad_rows(self, table: Any, texts: list[Any], bad: list[int]) -> tuple[Any, list[Any]]:
        first = bad[0]
        where = f"row {first} of a batch"
        if self.id_column and self.id_column in table.column_names:
            where = f"the row with {self.id_column}={table.column(self.id_column)[first].as_py()!r}"
        what = "is missing" if texts[first] is None else f"is {type(texts[first]).__name__}, not a string"
        if self.on_bad == "fail":
            raise InputError(
                f"{where}: {self.column!r} {what} ({len(bad)} bad rows in this batch); "
                "fix the data or pass on_bad='skip' (CLI: --skip-bad)"
            )
        logger.warning("skipped %d rows whose %r is not a string (first: %s %s)", len(bad), self.column, where, what)
        bad_set = set(bad)
        keep = [i for i in range(len(texts)) if i not in bad_set]
        return table.take(keep), [texts[i] for i in keep]


def _put(table: Any, name: str, array: Any) -> Any:
    """`table` with column `name` set to `array` (replaced, or added at the end)."""
    if name in table.column_names:
        return table.set_column(table.column_names.index(name), name, array)
    return table.append_column(name, array)


def default_num_cpus(concurrency: int, num_gpus: float) -> float:
    """CPUs reserved per actor: 1, or less where `concurrency` whole CPUs would leave none for reading.

    On a 2-CPU machine two 1-CPU actors would take every CPU, the read tasks would never be scheduled,
    and the job would hang; fractional reservations leave one CPU for them.
    """
    from embedstack._optional import require

    ray = require("ray", extra="ray")
    if num_gpus:
        return 1.0
    total = float(ray.cluster_resources().get("CPU", 1.0))
    if concurrency + 1 <= total:
        return 1.0
    return max(0.1, round(max(total - 1.0, total / 2) / concurrency, 2))


#: An input of unknown row count whose files are at most this size is read before it is split (`spread`).
SMALL_INPUT_BYTES = 64 << 20


def _known(ds: Any) -> tuple[int | None, int | None, int | None]:
    """(rows, blocks, bytes) of the dataset where Ray knows them without running anything (else None)."""
    rows = size = blocks = None
    try:
        rows = ds._meta_count()  # metadata only: never triggers a computation
        size = ds._logical_plan.dag.infer_metadata().size_bytes
    except Exception:  # an API this Ray lacks, or a plan it cannot infer: unknown
        pass
    if type(ds).__name__ == "MaterializedDataset":
        try:
            blocks = int(ds.num_blocks())
        except Exception:
            blocks = None
    return (None if rows is None else int(rows)), blocks, (None if size is None else int(size))


def spread(ds: Any, concurrency: int, batch_size: int) -> tuple[Any, int]:
    """`ds` and a batch size that give every actor of a `concurrency`-actor pool work.

    Ray Data hands each actor whole bundles of blocks (about `batch_size` rows; a block is never split
    between tasks), and an actor that is ready first takes up to two of them: 300 rows in 256-row batches
    are two tasks of 256 and 44 rows, and a single block is one task, so other actors wait idle. An input
    of fewer than two batches per actor is cut into `2 x concurrency` equal batches, split into that many
    blocks when it has fewer (a copy of an input this small only); a materialized input with fewer blocks
    than actors is split into one block per actor. The row count comes from Ray's metadata (from_items,
    materialized datasets, Parquet footers); an unread input of at most SMALL_INPUT_BYTES (a small JSON
    Lines or CSV file) is read first to learn it. Larger inputs of unknown row count are left as they are
    (Ray's reads make many blocks of large inputs).
    """
    if concurrency <= 1:
        return ds, batch_size
    rows, blocks, size = _known(ds)
    if rows is None and size is not None and size <= SMALL_INPUT_BYTES and hasattr(ds, "materialize"):
        ds = ds.materialize()
        rows, blocks, _ = _known(ds)
    if not rows:
        return ds, batch_size
    target = 2 * concurrency
    small = rows < target * batch_size
    if small:
        batch_size = max(1, -(-rows // target))
        tasks = min(target, rows)
    else:
        tasks = concurrency
    if (blocks is None and small) or (blocks is not None and blocks < tasks):
        ds = ds.repartition(tasks)
    return ds, batch_size


def embed_dataset(
    ds: Any,
    model: Any = "local",
    *,
    column: str = "text",
    output_column: str = "embedding",
    batch_size: int | None = None,
    concurrency: int = 1,
    num_cpus: float | None = None,
    num_gpus: float = 0,
    cache: Any = None,
    on_bad: str = "fail",
    model_kwargs: Mapping[str, Any] | None = None,
    id_column: str | None = "id",
    role: Role | str = Role.TEXT,
    resources: Mapping[str, float] | None = None,
    sparse: Any = None,
) -> Any:
    """A lazy `ray.data.Dataset`: `ds` with `output_column` added (a fixed-size float32 list per row).

    `model`: a spec string ("local", "openai:...", "fake:16") built on each actor with `model_kwargs`
    set on it, or a BaseEmbedding, pickled with its fields and credentials (never its weights) and
    rebuilt on each actor. `concurrency` actors (`ActorPoolStrategy(size=concurrency)`) each get `batch_size`
    rows per call and reserve `num_cpus` / `num_gpus` (GPU actors: `num_gpus=1`, bigger batches).
    `cache`: None, a store, "redis://..." or a SQLite path, shared by all actors. Rows whose `column`
    is missing or not a string fail the job (`on_bad="fail"`, naming the row by `id_column`) or are
    dropped with a warning from the actor (`on_bad="skip"`). Every other column is kept; row order is not.
    `resources`: custom Ray resources each actor needs (to pin actors to a kind of node).
    Every actor of the pool gets work: a small input is cut into at least two batches per actor, and a
    materialized one with fewer blocks than actors is split first (`spread`).
    `sparse`: a sparse model spec ("bm25", "bm25:<stats.json>", "splade:<model>") or a BaseSparseEmbedding whose
    vectors are added as list columns `sparse_indices` (int32) / `sparse_values` (float32); BM25 without
    statistics is fitted on the whole of `ds` first (`fit_sparse`: a counting pass on Ray). `model=None` with
    a sparse model adds the sparse columns only.
    """
    from embedstack._optional import require

    ray_data = require("ray.data", extra="ray", package="ray")
    if on_bad not in _ON_BAD:
        raise ValueError(f"on_bad must be 'fail' or 'skip', got {on_bad!r}")
    if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1:
        raise ValueError(f"concurrency must be a positive integer, got {concurrency!r}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if model is None and sparse is None:
        raise ValueError("nothing to embed: pass a model, a sparse model (sparse='bm25', 'splade:<model>'), or both")
    recipe = _model_recipe(model, model_kwargs) if model is not None else None
    sparse_recipe, stats = None, None
    if sparse is not None:
        sparse_recipe = _sparse_recipe(sparse)
        fitted = fit_sparse(ds, sparse, column)
        from embedstack.providers.bm25 import BM25Embedding

        if isinstance(fitted, BM25Embedding):
            stats = fitted.stats.to_json()  # every actor scores with the statistics of the whole dataset
    if isinstance(cache, BaseKVStore) and type(cache).__name__ == "SimpleKVStore":
        logger.warning("a SimpleKVStore lives in one process: each actor gets its own copy; use Redis to share")
    if batch_size is None:
        batch_size = DEFAULT_RAY_GPU_BATCH_SIZE if num_gpus else DEFAULT_RAY_BATCH_SIZE
    if num_cpus is None:
        num_cpus = default_num_cpus(concurrency, num_gpus)
    ds, batch_size = spread(ds, concurrency, batch_size)
    return ds.map_batches(
        _Embedder,
        fn_constructor_args=(
            recipe,
            column,
            output_column,
            cache,
            on_bad,
            id_column,
            Role(role).value,
            sparse_recipe,
            stats,
        ),
        batch_size=batch_size,
        batch_format="pyarrow",
        compute=ray_data.ActorPoolStrategy(size=concurrency),
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        resources=dict(resources) if resources else None,
    )  # Ray's actor pools restart killed actors and retry their batches by default (max_restarts=-1)


# -- the CLI's --ray path: files in, a Parquet dataset directory out ------------------------------------
_READERS = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "json",
    ".ndjson": "json",
    ".json": "json",
    ".csv": "csv",
    ".tsv": "tsv",
    ".txt": "text",
}


def init_ray(address: str | None = "auto") -> Any:
    """Connect to Ray: "auto" (RAY_ADDRESS or a running cluster, else a new local one), "local", or an address."""
    from embedstack._optional import require

    ray = require("ray", extra="ray")
    if not ray.is_initialized():
        if address in (None, "auto"):
            ray.init(configure_logging=False)
        else:
            ray.init(address=address, configure_logging=False)
    return ray


def _reader_format(inputs: list[str], input_format: str | None) -> str:
    if input_format:
        return {"jsonl": "json", "txt": "text"}.get(input_format, input_format)
    first = inputs[0].removesuffix(".gz")
    fmt = _READERS.get(os.path.splitext(first)[1].lower())
    if fmt is None:
        raise InputError(f"{inputs[0]}: cannot tell the format with --ray; pass --format parquet|jsonl|csv|tsv|txt")
    return fmt


def read_inputs(inputs: list[str], input_format: str | None = None) -> Any:
    """A Ray dataset over files or folders (local paths or any filesystem pyarrow supports)."""
    from embedstack._optional import require

    ray_data = require("ray.data", extra="ray", package="ray")
    if "-" in inputs:
        raise InputError("stdin (-) cannot be read with --ray; give files or folders")
    fmt = _reader_format(inputs, input_format)
    paths = [os.fspath(p) for p in inputs]
    if fmt == "parquet":
        return ray_data.read_parquet(paths)
    if fmt == "json":
        return ray_data.read_json(paths)
    if fmt == "csv":
        return ray_data.read_csv(paths)
    if fmt == "tsv":
        import pyarrow.csv as pacsv

        return ray_data.read_csv(paths, parse_options=pacsv.ParseOptions(delimiter="\t"))
    if fmt == "text":
        return ray_data.read_text(paths, include_paths=True)
    raise InputError(f"--format {input_format} is not supported with --ray")


class _Shape:
    """Output rows as `embed_files` writes them: id (string), vector, sparse_indices / sparse_values (each where
    the job makes it), kept columns; runs as a Ray task."""

    def __init__(self, field: str, id_field: str | None, keep: Any) -> None:
        self.field, self.id_field, self.keep = field, id_field, keep

    def __call__(self, table: Any) -> Any:
        import pyarrow as pa

        names = table.column_names
        id_col = self.id_field or ("id" if "id" in names else None)
        if id_col is not None and id_col not in names:
            raise InputError(f"no {id_col!r} column (columns: {', '.join(names)}); drop --id-field or fix the data")
        if id_col is not None:
            ids = [None if v is None else str(v) for v in table.column(id_col).to_pylist()]
        else:  # Ray keeps no line numbers: FILE:HASH of the text (identical texts of one file share an id)
            paths = table.column("path").to_pylist() if "path" in names else [""] * table.num_rows
            texts = table.column(self.field).to_pylist() if self.field in names else [""] * table.num_rows
            ids = [f"{os.path.basename(p or '')}:{_digest(t)}" for p, t in zip(paths, texts)]
        from embedstack.jobs._output import SPARSE_COLUMNS

        vectors = [n for n in ("vector", *SPARSE_COLUMNS) if n in names]
        drop = {"id", *vectors, "path" if id_col is None else id_col}
        if self.keep == "all":
            kept = [n for n in names if n not in drop]
        elif self.keep == "none":
            kept = []
        else:
            kept = [n for n in self.keep if n in names and n not in drop]
        arrays = [pa.array(ids, type=pa.string())] + [table.column(n) for n in (*vectors, *kept)]
        return pa.Table.from_arrays(arrays, names=["id", *vectors, *kept])


def _digest(text: Any) -> str:
    import hashlib

    return hashlib.sha256(str(text).encode("utf-8", "surrogatepass")).hexdigest()[:16]


def embed_files_ray(
    inputs: str | os.PathLike[str] | list[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    model: str | None = "local",
    field: str = "text",
    id_field: str | None = None,
    keep: Any = "all",
    input_format: str | None = None,
    batch_size: int | None = None,
    cache: Any = None,
    skip_bad: bool = False,
    address: str | None = "auto",
    concurrency: int = 2,
    num_gpus: float = 0,
    progress: bool = False,
    sparse: Any = None,
) -> Any:
    """Embed files on Ray into OUT, a Parquet dataset directory with embedstack's metadata (`_embedstack.json`).

    `sparse` adds sparse vectors (`sparse_indices` / `sparse_values`; `model=None`: those only); a BM25 model
    without statistics is fitted on all the inputs (a counting pass on Ray), and its statistics are kept in
    OUT/_embedstack.bm25.json.

    The same rows and metadata as `embed_files` writes to a .parquet file; `embedstack search/info` and
    `load_embeddings` read the directory. OUT appears complete or not at all (written beside it, renamed).
    Returns an EmbedReport (`computed` counts every row: the actors' cache hits are not tallied).
    """
    import json
    import shutil
    import time
    import uuid
    from pathlib import Path

    from embedstack.jobs._embed import EmbedReport, _now, _resolve, _version, model_identity
    from embedstack.jobs._output import DATASET_META, DATASET_STATS, FORMAT_TAG, SPARSE_COLUMNS, OutputError, _pq
    from embedstack.jobs._sparse_write import resolve_sparse, sparse_entry
    from embedstack.providers.bm25 import BM25Embedding
    from embedstack.vectors.formats import VectorFormat

    t0 = time.perf_counter()
    paths = [os.fspath(p) for p in ([inputs] if isinstance(inputs, (str, os.PathLike)) else inputs)]
    target = Path(out)
    if target.exists() and not (target / DATASET_META).is_file():
        raise OutputError(f"{target}: exists and is not an embedstack dataset directory; choose a new OUT")
    ray = init_ray(address)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = bool(progress)
    ctx.print_on_execution_start = bool(progress)
    emb = _resolve(model)[0] if model is not None else None
    ds = read_inputs(paths, input_format)
    total = ds.count() if skip_bad else None
    fitted, entry = None, None
    if sparse is not None:
        fitted = resolve_sparse(sparse)
        source = ("given" if fitted.fitted else "corpus") if isinstance(fitted, BM25Embedding) else None
        fitted = fit_sparse(ds, fitted, field)
        entry = sparse_entry(sparse, fitted, fitted.pipeline, source)
    embedded = embed_dataset(
        ds,
        model,
        column=field,
        output_column="vector",
        batch_size=batch_size,
        concurrency=concurrency,
        num_gpus=num_gpus,
        cache=cache,
        on_bad="skip" if skip_bad else "fail",
        id_column=id_field or "id",
        sparse=fitted,
    )
    shaped = embedded.map_batches(_Shape(field, id_field, keep), batch_format="pyarrow", batch_size=None)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        shaped.write_parquet(os.fspath(tmp))
        files = sorted(p for p in tmp.rglob("*.parquet"))
        pq = _pq()
        count = sum(pq.read_metadata(f).num_rows for f in files)
        if count == 0:
            raise InputError(f"{', '.join(paths)}: no texts to embed")
        schema = pq.read_schema(files[0])
        dim = int(schema.field("vector").type.list_size) if emb is not None else None
        meta: dict[str, Any] = {
            "format": FORMAT_TAG,
            "version": 1,
            "embedstack": _version(),
            "model": model,
            "model_class": emb.class_name() if emb is not None else None,
            "model_name": getattr(emb, "model_name", None),
            "model_identity": model_identity(emb) if emb is not None else None,
            "dim": dim,
            "count": count,
            "text_field": field,
            "id_field": id_field,
            "columns": [n for n in schema.names if n not in ("id", "vector", *SPARSE_COLUMNS)],
            "inputs": paths,
            "created": _now(),
            "ray": {"concurrency": concurrency, "num_gpus": num_gpus},
        }
        if dim is not None:  # float32, full length: as a plain file output
            meta.update(VectorFormat(dim=dim, source_dim=dim).to_meta())
        else:
            meta["dense"] = False
        if entry is not None:
            meta["sparse"] = entry
            if isinstance(fitted, BM25Embedding):
                (tmp / DATASET_STATS).write_text(fitted.stats.to_json(), encoding="utf-8")
        (tmp / DATASET_META).write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        if target.exists():
            old = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.old")
            target.rename(old)
            tmp.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    skipped = [] if total is None or total == count else [f"{total - count} rows whose {field!r} is not a string"]
    return EmbedReport(
        out=target,
        count=count,
        total_rows=count,
        computed=count,
        cached=cache is not None,
        model=model or str(sparse),
        dim=dim or 0,
        skipped=skipped,
        seconds=time.perf_counter() - t0,
        sparse=(entry["model"] or entry["model_class"]) if entry is not None else None,
        dense=emb is not None,
    )
