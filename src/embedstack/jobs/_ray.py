"""Embedding on Ray Data (extra `ray`): `map_batches` with an actor pool, Arrow batches in and out.

The model travels to the actors as data (a spec string and keyword arguments, or a model's class and
`to_dict()`), never as a loaded object: each actor builds it once in `__init__` and keeps it for every
batch. A cache given as a store travels pickled (RedisKVStore and SQLiteKVStore carry their settings,
not their connections), so every actor reads and writes the same cache. Ray retries a batch whose actor
died (kill -9, a lost node) on a restarted actor; row order is not preserved, so match results by id.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from embedstack.base import BaseEmbedding
from embedstack.jobs._readers import InputError
from embedstack.kvstore.base import BaseKVStore
from embedstack.types import Role

__all__ = ["DEFAULT_RAY_BATCH_SIZE", "default_num_cpus", "embed_dataset", "open_store"]

logger = logging.getLogger(__name__)

#: Rows per actor call: large enough to amortise Ray's per-batch overhead, small enough to retry cheaply.
DEFAULT_RAY_BATCH_SIZE = 256
#: Rows per actor call on GPU actors (the device wants bigger batches).
DEFAULT_RAY_GPU_BATCH_SIZE = 1024
_ON_BAD = ("fail", "skip")


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


def _model_recipe(model: Any, model_kwargs: Mapping[str, Any] | None) -> tuple[Any, ...]:
    """What an actor needs to build the model: ("spec", str, kwargs) or ("dict", class, to_dict(), kwargs)."""
    kwargs = dict(model_kwargs or {})
    if isinstance(model, str):
        return ("spec", model, kwargs)
    if isinstance(model, BaseEmbedding):
        return ("dict", type(model), model.to_dict(), kwargs)
    raise TypeError(
        f"embed_dataset takes a model spec string ('local', 'fake:16', ...) or a BaseEmbedding, "
        f"not {type(model).__name__}"
    )


def _build(recipe: tuple[Any, ...]) -> BaseEmbedding:
    if recipe[0] == "spec":
        from embedstack.registry import resolve_embed_model

        model = resolve_embed_model(recipe[1])
        for name, value in recipe[2].items():
            setattr(model, name, value)  # validated, and the model's derived state follows
        return model
    cls, data, kwargs = recipe[1], dict(recipe[2]), recipe[3]
    data.pop("class_name", None)
    built: BaseEmbedding = cls(**{**data, **kwargs})
    return built


class _Embedder:
    """The callable class each actor holds: builds the model once, embeds one Arrow batch per call."""

    def __init__(
        self,
        recipe: tuple[Any, ...],
        column: str,
        output_column: str,
        cache: Any,
        on_bad: str,
        id_column: str | None,
        role: str,
    ) -> None:
        self.model = _build(recipe)
        self.model.embeddings_cache = open_store(cache)
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
        if texts:
            mat = self.model.embed(texts, role=self.role)
            self.dim = int(mat.shape[1])
        else:  # every row was skipped: an empty block still carries the vector type
            if self.dim is None:
                self.dim = int(self.model.embed(["dimension probe"], role=self.role).shape[1])
            mat = np.zeros((0, self.dim), np.float32)
        flat = pa.array(np.ascontiguousarray(mat, dtype=np.float32).reshape(-1), type=pa.float32())
        vectors = pa.FixedSizeListArray.from_arrays(flat, self.dim)
        if self.output_column in table.column_names:
            return table.set_column(table.column_names.index(self.output_column), self.output_column, vectors)
        return table.append_column(self.output_column, vectors)

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
) -> Any:
    """A lazy `ray.data.Dataset`: `ds` with `output_column` added (a fixed-size float32 list per row).

    `model`: a spec string ("local", "openai:...", "fake:16") built on each actor with `model_kwargs`
    set on it, or a BaseEmbedding, rebuilt on each actor from its class and `to_dict()` (never pickled
    with its weights). `concurrency` actors (`ActorPoolStrategy(size=concurrency)`) each get `batch_size`
    rows per call and reserve `num_cpus` / `num_gpus` (GPU actors: `num_gpus=1`, bigger batches).
    `cache`: None, a store, "redis://..." or a SQLite path, shared by all actors. Rows whose `column`
    is missing or not a string fail the job (`on_bad="fail"`, naming the row by `id_column`) or are
    dropped with a warning from the actor (`on_bad="skip"`). Every other column is kept; row order is not.
    `resources`: custom Ray resources each actor needs (to pin actors to a kind of node).
    """
    from embedstack._optional import require

    ray_data = require("ray.data", extra="ray", package="ray")
    if on_bad not in _ON_BAD:
        raise ValueError(f"on_bad must be 'fail' or 'skip', got {on_bad!r}")
    if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1:
        raise ValueError(f"concurrency must be a positive integer, got {concurrency!r}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    recipe = _model_recipe(model, model_kwargs)
    if isinstance(cache, BaseKVStore) and type(cache).__name__ == "SimpleKVStore":
        logger.warning("a SimpleKVStore lives in one process: each actor gets its own copy; use Redis to share")
    if batch_size is None:
        batch_size = DEFAULT_RAY_GPU_BATCH_SIZE if num_gpus else DEFAULT_RAY_BATCH_SIZE
    if num_cpus is None:
        num_cpus = default_num_cpus(concurrency, num_gpus)
    return ds.map_batches(
        _Embedder,
        fn_constructor_args=(recipe, column, output_column, cache, on_bad, id_column, Role(role).value),
        batch_size=batch_size,
        batch_format="pyarrow",
        compute=ray_data.ActorPoolStrategy(size=concurrency),
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        resources=dict(resources) if resources else None,
    )  # Ray's actor pools restart killed actors and retry their batches by default (max_restarts=-1)
