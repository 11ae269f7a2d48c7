"""Embedding outputs: Parquet, .npy (+ rows and metadata sidecars) and .jsonl; written atomically.

Vectors are stored as the output's precision gives them (`vectors.VectorFormat`): float32/float16,
int8/uint8 codes, or packed bits (binary: int8, ubinary: uint8, (n, dim/8)) with int8 rescoring vectors
beside them (.npy: `<OUT>.rescore.npy`; Parquet: a `rescore` column; .jsonl: a `rescore` key).

Sparse vectors (`embed --sparse`) go beside or instead of the dense ones: Parquet list columns
`sparse_indices` / `sparse_values`, .jsonl keys of the same names, and for .npy a CSR triple in
`<OUT>.sparse.npz` (`jobs._csr`). A BM25 model's corpus statistics are kept with the output: in the Parquet
schema metadata (`STATS_KEY`), else in `<OUT>.bm25.json` (a dataset directory: `_embedstack.bm25.json`).
An output without dense vectors (`embed --sparse ... --no-dense`) has `"dense": false` in its metadata.

Every writer writes to hidden temp files next to the target and renames them into place only when
all rows are written, so a killed run never leaves a truncated file that looks complete. Parquet
carries the metadata (model identity, dims, count, ...) in its schema; .npy and .jsonl carry it in
a sidecar `<OUT>.meta.json`, which is removed first and written last: it marks a complete output.
"""

from __future__ import annotations

import glob
import json
import os
import socket
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from embedstack._atomic import atomic_write_text, publish
from embedstack.errors import OutputError
from embedstack.jobs._readers import Record

__all__ = [
    "DATASET_META",
    "META_KEY",
    "OUTPUT_FORMATS",
    "SPARSE_COLUMNS",
    "STATS_KEY",
    "Embeddings",
    "OutputError",
    "SparseBatch",
    "Writer",
    "is_dense",
    "line_offsets",
    "load_embeddings",
    "meta_path",
    "offsets_path",
    "open_writer",
    "output_format",
    "read_meta",
    "read_sparse",
    "read_stats",
    "rescore_path",
    "rows_path",
    "sparse_batches",
    "sparse_path",
    "stats_path",
    "temp_beside",
    "write_offsets",
]

#: Output extension → format.
OUTPUT_FORMATS = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".npy": "npy",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}
#: Key of the embedstack metadata in a Parquet schema.
META_KEY = b"embedstack"
FORMAT_TAG = "embedstack-embeddings"
#: The metadata file of a Parquet dataset directory (`embedstack embed --ray`); Parquet readers skip "_" files.
DATASET_META = "_embedstack.json"
#: The format name of such a directory.
DATASET_FORMAT = "parquet-dataset"
#: The BM25 statistics of a Parquet dataset directory (`embedstack embed --ray --sparse bm25`).
DATASET_STATS = "_embedstack.bm25.json"
#: Schema metadata key of a BM25 model's corpus statistics in a Parquet output.
STATS_KEY = b"embedstack.bm25_stats"


def output_format(path: str | os.PathLike[str]) -> str:
    """The output format of a path, from its extension (an existing directory: a Parquet dataset)."""
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, DATASET_META)):
        return DATASET_FORMAT
    ext = os.path.splitext(os.fspath(path))[1].lower()
    fmt = OUTPUT_FORMATS.get(ext)
    if fmt is None:
        raise OutputError(
            f"{os.fspath(path)}: unknown output extension {ext or '(none)'}; use .parquet, .npy or .jsonl"
        )
    return fmt


def meta_path(path: Path) -> Path:
    """The metadata sidecar of a .npy or .jsonl output."""
    return path.with_name(path.name + ".meta.json")


def rows_path(path: Path) -> Path:
    """The ids-and-columns sidecar of a .npy output (one JSON object per row)."""
    return path.with_name(path.name + ".rows.jsonl")


def offsets_path(path: Path) -> Path:
    """The byte offsets of the rows sidecar's lines beside a .npy output (int64, count + 1: where each row
    starts, then the file's size), so reading k rows is k seeks, not a scan."""
    return path.with_name(path.name + ".rows.offsets.npy")


def line_offsets(path: Path) -> npt.NDArray[np.int64]:
    """Where each line of a file starts, then the file's size (a last line without a newline counts), by a
    scan of 16 MiB blocks for newlines."""
    starts = [np.zeros(1, dtype=np.int64)]
    pos = 0
    with open(path, "rb") as f:
        while True:
            block = f.read(1 << 24)
            if not block:
                break
            ends = np.flatnonzero(np.frombuffer(block, dtype=np.uint8) == 0x0A).astype(np.int64)
            starts.append(ends + (pos + 1))
            pos += len(block)
    offsets = np.concatenate(starts)
    if offsets[-1] != pos:  # a last line without a newline: its end is the file's end
        offsets = np.append(offsets, np.int64(pos))
    return offsets


def write_offsets(offsets: npt.NDArray[np.int64], target: Path) -> None:
    """Write an offsets sidecar atomically (a temp file beside it, renamed)."""
    tmp = temp_beside(target)
    try:
        with open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(offsets, dtype="<i8"))
        publish(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def rescore_path(path: Path) -> Path:
    """The rescoring vectors beside a binary .npy output (int8, (n, dim), memory-mappable)."""
    return path.with_name(path.name + ".rescore.npy")


def sparse_path(path: Path) -> Path:
    """The sparse vectors beside a .npy output: a CSR triple (indptr, indices, values) in an uncompressed .npz."""
    return path.with_name(path.name + ".sparse.npz")


def stats_path(path: Path) -> Path:
    """Where the BM25 statistics of a .npy/.jsonl output (OUT.bm25.json) or a dataset directory are kept."""
    if path.is_dir():
        return path / DATASET_STATS
    return path.with_name(path.name + ".bm25.json")


def is_dense(meta: dict[str, Any]) -> bool:
    """Whether an output holds dense vectors (all but `embed --sparse ... --no-dense` outputs)."""
    return meta.get("dense", True) is not False


# -- atomic files --------------------------------------------------------------------------------
_HOST = socket.gethostname().replace(".", "_")


def temp_beside(target: Path) -> Path:
    """A temp file name next to `target` for an atomic write (made with the usual umask mode, not mkstemp's 0600;
    host and pid in the name, so `remove_stale_temps` can tell a dead run's files)."""
    return target.with_name(f".{target.name}.{_HOST}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def remove_stale_temps(target: Path) -> None:
    """Delete temp files a killed run on this host left for `target` and its sidecars (.rows.jsonl,
    .meta.json) when their process is gone."""
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process there
        return
    npz = sparse_path(target)
    sidecars = [rows_path(target), meta_path(target), rescore_path(target), offsets_path(target), stats_path(target)]
    sidecars += [npz, npz.with_name(npz.name + ".indices"), npz.with_name(npz.name + ".values")]
    for name in (target.name, *(p.name for p in sidecars)):
        for p in target.parent.glob(f".{glob.escape(name)}.*.tmp"):
            parts = p.name[len(name) + 2 : -4].split(".")
            if len(parts) != 3 or parts[0] != _HOST or not parts[1].isdigit():
                continue
            if not _alive(int(parts[1])):
                p.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _publish(tmp: Path, target: Path) -> None:
    """Flush `tmp` to disk and rename it over `target` (atomic on one filesystem)."""
    publish(tmp, target)


def _write_json_atomic(target: Path, data: dict[str, Any]) -> None:
    text = json.dumps(data, indent=1, ensure_ascii=False) + "\n"
    atomic_write_text(target, text, tmp=temp_beside(target))


# -- metadata ------------------------------------------------------------------------------------
def read_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The embedstack metadata of an output (cheap: the Parquet footer or the sidecar)."""
    path = Path(path)
    fmt = output_format(path)
    if not path.exists():
        raise OutputError(f"{path}: no such file; create it with: embedstack embed INPUT -o {path}")
    meta: dict[str, Any]
    if fmt == DATASET_FORMAT:
        try:
            meta = json.loads((path / DATASET_META).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise OutputError(f"{path / DATASET_META}: unreadable metadata ({e}); re-run the embed command") from None
    elif fmt == "parquet":
        pq = _pq()
        try:
            schema = pq.read_schema(path)
        except Exception as e:  # ArrowInvalid for a file that is not (complete) Parquet
            raise OutputError(f"{path}: not a readable Parquet file ({' '.join(str(e).split())})") from None
        raw = (schema.metadata or {}).get(META_KEY)
        if raw is None:
            raise OutputError(f"{path}: has no embedstack metadata; it was not written by `embedstack embed`")
        meta = json.loads(raw)
    else:
        side = meta_path(path)
        if not side.exists():
            raise OutputError(
                f"{path}: no metadata file {side.name}; the run that wrote it did not finish, re-run the embed command"
            )
        try:
            meta = json.loads(side.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise OutputError(f"{side}: unreadable metadata ({e}); re-run the embed command") from None
    if meta.get("format") != FORMAT_TAG:
        raise OutputError(f"{path}: metadata is not embedstack's (format {meta.get('format')!r})")
    return meta


@dataclass
class Embeddings:
    """An embedded corpus read back: metadata, ids, an (n, dim) float32 matrix ((n, 0) for an output without
    dense vectors), kept columns, and the sparse vectors (`SparseVector`s) of an output embedded with them."""

    meta: dict[str, Any]
    ids: list[str]
    vectors: npt.NDArray[np.float32]
    columns: dict[str, list[Any]]
    sparse: list[Any] | None = None

    def __len__(self) -> int:
        return len(self.ids)


def load_embeddings(path: str | os.PathLike[str], columns: bool = True) -> Embeddings:
    """Read an output of `embed_files` / `embedstack embed`, checked against its metadata.

    `vectors` is float32 (n, dim) for every precision: int8/uint8 dequantised with the stored ranges;
    binary: the rescoring vectors kept beside the codes, else the bits as ±1; (n, 0) for an output of
    sparse vectors only. `sparse`: each row's `SparseVector` where the output holds sparse vectors.
    """
    from embedstack.vectors.formats import VectorFormat

    path = Path(path)
    meta = read_meta(path)
    fmt = output_format(path)
    count = int(meta["count"])
    if not is_dense(meta):
        ids, named = _ids_and_columns(path, meta, fmt, columns)
        if len(ids) != count:
            raise OutputError(f"{path}: holds {len(ids)} rows, but its metadata says {count}; re-run the embed command")
        return Embeddings(meta, ids, np.zeros((count, 0), np.float32), named, read_sparse(path, meta))
    vf = VectorFormat.from_meta(meta)
    dim, width = vf.dim, vf.width
    cols: dict[str, list[Any]] = {}
    extra: np.ndarray | None = None
    if fmt in ("parquet", DATASET_FORMAT):
        table = _pq().read_table(
            path, columns=None if columns else ["id", "vector", *(["rescore"] if vf.rescore else [])]
        )
        ids = [str(i) for i in table.column("id").to_pylist()]
        codes = _fixed_list_numpy(table.column("vector"), width, vf.dtype)
        if vf.rescore:
            extra = _fixed_list_numpy(table.column("rescore"), dim, np.dtype(np.int8))
        if columns:
            cols = {name: table.column(name).to_pylist() for name in table.column_names if name not in _VECTOR_COLUMNS}
    elif fmt == "npy":
        codes = np.load(path, mmap_mode="r")
        if vf.rescore:
            extra = np.load(rescore_path(path), mmap_mode="r")
        ids = []
        for row in _jsonl_rows(rows_path(path)):
            ids.append(str(row.pop("id")))
            if columns:
                for k in meta.get("columns", []):
                    cols.setdefault(k, []).append(row.get(k))
    else:
        ids, rows, kept = [], [], []
        for row in _jsonl_rows(path):
            ids.append(str(row.pop("id")))
            rows.append(row.pop("vector"))
            if vf.rescore:
                kept.append(row.pop("rescore", None))
            if columns:
                for k in meta.get("columns", []):
                    cols.setdefault(k, []).append(row.get(k))
        codes = np.asarray(rows, dtype=vf.dtype) if rows else np.zeros((0, width), vf.dtype)
        if vf.rescore:
            extra = np.asarray(kept, dtype=np.int8) if kept else np.zeros((0, dim), np.int8)
    if codes.shape != (count, width) or (extra is not None and extra.shape != (count, dim)):
        raise OutputError(
            f"{path}: holds vectors of shape {codes.shape}, but its metadata says {count} x {width} "
            f"({vf.precision}); re-run the embed command"
        )
    matrix = vf.decode(codes, extra)
    if matrix.shape != (count, dim) or len(ids) != count:
        raise OutputError(
            f"{path}: holds {len(ids)} ids and vectors of shape {matrix.shape}, but its metadata "
            f"says {count} x {dim}; "
            "re-run the embed command"
        )
    sparse = read_sparse(path, meta) if meta.get("sparse") else None
    return Embeddings(meta, ids, matrix, cols, sparse)


def _ids_and_columns(path: Path, meta: dict[str, Any], fmt: str, columns: bool) -> tuple[list[str], dict[str, Any]]:
    """The ids and kept columns of an output without dense vectors (Parquet or .jsonl)."""
    cols: dict[str, list[Any]] = {}
    if fmt in ("parquet", DATASET_FORMAT):
        names = None if columns else ["id"]
        table = _pq().read_table(path, columns=names)
        ids = [str(i) for i in table.column("id").to_pylist()]
        if columns:
            cols = {name: table.column(name).to_pylist() for name in table.column_names if name not in _VECTOR_COLUMNS}
        return ids, cols
    ids = []
    for row in _jsonl_rows(path):
        ids.append(str(row.pop("id")))
        if columns:
            for k in meta.get("columns", []):
                cols.setdefault(k, []).append(row.get(k))
    return ids, cols


#: The list columns of a Parquet output with sparse vectors (`embed --sparse`): indices and values per row.
SPARSE_COLUMNS = ("sparse_indices", "sparse_values")
#: Columns of a Parquet output that hold vectors, not kept fields.
_VECTOR_COLUMNS = ("id", "vector", "rescore", *SPARSE_COLUMNS)


def _fixed_list_numpy(column: Any, width: int, dtype: np.dtype[Any]) -> np.ndarray:
    """A (chunked) fixed-size-list Arrow column as an (n, width) numpy array of `dtype`."""
    chunks = column.chunks if hasattr(column, "chunks") else [column]
    parts = [c.flatten().to_numpy(zero_copy_only=False) for c in chunks if len(c)]
    flat = np.concatenate(parts) if parts else np.zeros(0, dtype)
    return np.asarray(flat, dtype=dtype).reshape(-1, width)


def _jsonl_rows(path: Path) -> Iterator[dict[str, Any]]:
    if not path.exists():
        raise OutputError(f"{path}: missing; re-run the embed command")
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def _pq() -> Any:
    from embedstack._optional import require

    return require("pyarrow.parquet", extra="cli", package="pyarrow")


# -- writers -------------------------------------------------------------------------------------
class Writer:
    """Writes rows to temp files; `commit` renames them into place, `abort` removes them.

    Outputs with sparse vectors (`meta["sparse"]`) take each row's `SparseVector` from `pending_sparse` (in
    order); `stats_text` is a BM25 model's statistics to keep with the output; `reweigh` (texts → sparse
    vectors) recomputes the copied rows' sparse vectors on append (BM25 statistics changed by the new rows:
    their vectors are computed again from the text column, named by `meta["text_field"]`)."""

    def __init__(self, target: Path, meta: dict[str, Any], column_types: dict[str, set[type]], existing: bool) -> None:
        self.target = target
        self.meta = meta
        self.column_types = column_types
        self.existing = existing
        self.temps: list[Path] = []
        self.written = 0
        self.width: int | None = None
        self.dtype: np.dtype[Any] = np.dtype("<f4")
        self.rescore_dim: int | None = None
        self.dense = is_dense(meta)
        self.sparse = bool(meta.get("sparse"))
        #: Sparse rows (`SparseVector`s) for the records written next, in order (outputs with `meta["sparse"]`).
        self.pending_sparse: deque[Any] = deque()
        #: A BM25 model's corpus statistics (JSON) to store with the output.
        self.stats_text: str | None = None
        #: texts → their sparse vectors: recompute the copied rows' sparse vectors on append (None: copy them).
        self.reweigh: Callable[[list[str]], list[Any]] | None = None

    def _temp(self, target: Path) -> Path:
        tmp = temp_beside(target)
        self.temps.append(tmp)
        return tmp

    def write(self, records: Sequence[Record], vectors: np.ndarray | None, rescore: np.ndarray | None = None) -> None:
        """Append rows (one per record) to the temp output: their stored vectors (float, int or packed-bit
        codes, as the output's precision makes them; None for an output without dense vectors), for binary
        outputs their rescoring vectors, and their sparse vectors from `pending_sparse`."""
        if self.width is None:
            if vectors is None:
                if self.dense:
                    raise OutputError("internal error: no dense vectors for a dense output; please report this")
                self.width = 0
            else:
                self.width = int(vectors.shape[1])
                self.dtype = vectors.dtype.newbyteorder("<") if vectors.dtype.itemsize > 1 else vectors.dtype
                self.rescore_dim = None if rescore is None else int(rescore.shape[1])
                if self.meta.get("dim") is None:  # callers that set no format: the stored width is the dim
                    self.meta["dim"] = self.width
            self._open()
        elif vectors is not None and vectors.shape[1] != self.width:
            raise OutputError(f"the model returned {vectors.shape[1]}-dim vectors after {self.width}-dim ones")
        sparse = None
        if self.sparse:
            if len(self.pending_sparse) < len(records):
                raise OutputError(f"internal error: no sparse vectors for {len(records)} rows; please report this")
            sparse = [self.pending_sparse.popleft() for _ in records]
        dense = None if vectors is None else np.ascontiguousarray(vectors, dtype=self.dtype)
        self._write(records, dense, rescore, sparse)
        self.written += len(records)

    def commit(self) -> None:
        """Check the row count and move the finished files into place."""
        if self.written != self.meta["count"]:
            raise OutputError(f"wrote {self.written} rows but expected {self.meta['count']}; output not replaced")
        self._commit()
        self.temps = []

    def abort(self) -> None:
        """Remove the temp files (the target is left as it was)."""
        try:
            self._close()
        except Exception:  # already failing; the temp files go anyway
            pass
        for tmp in self.temps:
            tmp.unlink(missing_ok=True)
        self.temps = []

    def _reweighed(self, rows: list[dict[str, Any]], where: Path, first: int) -> list[Any]:
        """The sparse vectors of copied rows (dicts holding the text field; the first is row `first`),
        recomputed by `reweigh`."""
        assert self.reweigh is not None
        field = self.meta.get("text_field") or "text"
        texts = [r.get(field) for r in rows]
        bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
        if bad is not None:
            raise OutputError(
                f"{where}: row {first + bad} keeps no text in {field!r}, so its BM25 vector cannot be "
                "recomputed with the new statistics; embed the whole corpus into a new output"
            )
        return self.reweigh(texts)  # type: ignore[arg-type]

    def _open(self) -> None:
        raise NotImplementedError

    def _write(
        self,
        records: Sequence[Record],
        vectors: np.ndarray | None,
        rescore: np.ndarray | None,
        sparse: list[Any] | None,
    ) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError

    def _commit(self) -> None:
        raise NotImplementedError


def _sparse_arrays(pa: Any, rows: Sequence[Any]) -> tuple[Any, Any]:
    """Arrow list arrays (int32 indices, float32 values) of sparse rows."""
    offsets = pa.array(np.concatenate([[0], np.cumsum([len(r[0]) for r in rows])]).astype(np.int32), type=pa.int32())
    flat_i = np.concatenate([np.asarray(r[0], np.int32) for r in rows]) if rows else np.zeros(0, np.int32)
    flat_v = np.concatenate([np.asarray(r[1], np.float32) for r in rows]) if rows else np.zeros(0, np.float32)
    return (
        pa.ListArray.from_arrays(offsets, pa.array(flat_i.astype(np.int32))),
        pa.ListArray.from_arrays(offsets, pa.array(flat_v.astype(np.float32))),
    )


def _arrow_type(pa: Any, types: set[type]) -> Any:
    """The Arrow type of a kept column from its values' Python types (mixed, nested: JSON text)."""
    kinds = types - {type(None)}
    if not kinds or kinds == {str}:
        return pa.string()
    if kinds == {bool}:
        return pa.bool_()
    if kinds == {int}:
        return pa.int64()
    if kinds <= {int, float}:
        return pa.float64()
    return pa.string()


def _to_arrow_values(values: list[Any], typ: Any, pa: Any) -> Any:
    if pa.types.is_string(typ) or pa.types.is_large_string(typ):
        values = [
            v if v is None or isinstance(v, str) else json.dumps(v, ensure_ascii=False, default=str) for v in values
        ]
    return pa.array(values, type=typ)


class ParquetWriter(Writer):
    """id (string), vector (fixed-size list of the precision's type; absent without dense vectors), rescore
    (binary outputs: fixed-size list of int8), sparse_indices / sparse_values (list<int32> / list<float32>,
    outputs with sparse vectors), kept columns; metadata in the schema."""

    def _open(self) -> None:
        import pyarrow as pa

        pq = _pq()
        self.pa = pa
        vector_type = pa.list_(pa.from_numpy_dtype(self.dtype), self.width) if self.dense else None
        if self.existing:
            old = pq.ParquetFile(self.target)
            base = old.schema_arrow.remove_metadata()
            extra = set(self.column_types) - set(base.names)
            if extra:
                raise OutputError(
                    f"{self.target}: the input has columns the output lacks "
                    f"({', '.join(sorted(extra))}); "
                    "choose the same columns with --keep, or write a new output"
                )
            if self.dense and base.field("vector").type != vector_type:
                raise OutputError(
                    f"{self.target}: holds vectors of type {base.field('vector').type}, this run makes {vector_type}"
                )
            missing = [c for c in SPARSE_COLUMNS if self.sparse and c not in base.names]
            if missing:
                raise OutputError(f"{self.target}: has no {missing[0]} column; embed into a new output")
        else:
            fields = [pa.field("id", pa.string())]
            if self.dense:
                fields.append(pa.field("vector", vector_type))
            if self.rescore_dim is not None:
                fields.append(pa.field("rescore", pa.list_(pa.int8(), self.rescore_dim)))
            if self.sparse:
                fields += [
                    pa.field(SPARSE_COLUMNS[0], pa.list_(pa.int32())),
                    pa.field(SPARSE_COLUMNS[1], pa.list_(pa.float32())),
                ]
            fields += [pa.field(name, _arrow_type(pa, types)) for name, types in self.column_types.items()]
            base = pa.schema(fields)
        meta = {META_KEY: json.dumps(self.meta, ensure_ascii=False).encode()}
        if self.stats_text is not None:
            meta[STATS_KEY] = self.stats_text.encode()
        self.schema = base.with_metadata(meta)
        self.tmp = self._temp(self.target)
        self.writer = pq.ParquetWriter(self.tmp, self.schema, compression="zstd")
        if self.existing:
            for batch in old.iter_batches(batch_size=8192):
                table = pa.Table.from_batches([batch])
                if self.reweigh is not None:
                    field = self.meta.get("text_field") or "text"
                    if field not in table.column_names:
                        raise OutputError(
                            f"{self.target}: keeps no {field!r} column, so its BM25 vectors cannot be recomputed "
                            "with the new statistics; embed the whole corpus into a new output"
                        )
                    rows = self._reweighed(table.select([field]).to_pylist(), self.target, self.written)
                    for name, array in zip(SPARSE_COLUMNS, _sparse_arrays(pa, rows)):
                        table = table.set_column(table.column_names.index(name), name, array)
                self.writer.write_table(table.cast(self.schema))
                self.written += table.num_rows

    def _write(
        self,
        records: Sequence[Record],
        vectors: np.ndarray | None,
        rescore: np.ndarray | None,
        sparse: list[Any] | None,
    ) -> None:
        pa = self.pa
        arrays = [pa.array([r.id for r in records], type=pa.string())]
        if vectors is not None:
            arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), self.width))
        if rescore is not None:
            arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(rescore.reshape(-1)), rescore.shape[1]))
        if sparse is not None:
            arrays += _sparse_arrays(pa, sparse)
        for f in self.schema:
            if f.name in _VECTOR_COLUMNS:
                continue
            values = [r.columns.get(f.name) for r in records]
            try:
                arrays.append(_to_arrow_values(values, f.type, pa))
            except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as e:
                raise OutputError(
                    f"{records[0].where}: column {f.name!r} does not fit the output's type {f.type} ({e})"
                ) from None
        self.writer.write_table(pa.Table.from_arrays(arrays, schema=self.schema))

    def _close(self) -> None:
        writer = getattr(self, "writer", None)
        if writer is not None:
            writer.close()
            self.writer = None

    def _commit(self) -> None:
        self._close()
        _publish(self.tmp, self.target)


class _SidecarWriter(Writer):
    """Commit for formats with a metadata sidecar: remove old meta, publish data, write meta."""

    def _data_targets(self) -> list[tuple[Path, Path]]:
        raise NotImplementedError

    def _stats_target(self) -> list[tuple[Path, Path]]:
        """The BM25 statistics sidecar (OUT.bm25.json), written to a temp file: [(temp, target)] or []."""
        if self.stats_text is None:
            return []
        target = stats_path(self.target)
        tmp = self._temp(target)
        tmp.write_text(self.stats_text, encoding="utf-8")
        return [(tmp, target)]

    def _commit(self) -> None:
        self._close()
        meta = meta_path(self.target)
        meta.unlink(missing_ok=True)  # from here until the new one lands, readers see "incomplete"
        for tmp, target in self._data_targets():
            _publish(tmp, target)
        _write_json_atomic(meta, self.meta)


def _npy_file(tmp: Path, dtype: np.dtype[Any], shape: tuple[int, int], old: Path | None) -> Any:
    """Open a .npy temp file for `shape` rows of `dtype` (a memory-mappable header), copying `old`'s rows first."""
    f = open(tmp, "wb")
    np.lib.format.write_array_header_1_0(
        f, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    )
    if old is not None:
        rows = np.load(old, mmap_mode="r")
        if rows.ndim != 2 or rows.shape[1] != shape[1] or rows.dtype != dtype:
            f.close()
            raise OutputError(
                f"{old}: holds {rows.dtype} vectors of shape {rows.shape}, this run makes {dtype} x {shape[1]}"
            )
        for i in range(0, len(rows), 65536):
            f.write(np.ascontiguousarray(rows[i : i + 65536]).tobytes())
    return f


#: Rows parsed at a time when an append copies (and re-weighs) the rows of a JSON Lines file.
_COPY_ROWS = 4096


class NpyWriter(_SidecarWriter):
    """OUT.npy (count x width, the precision's dtype), OUT.npy.rows.jsonl (id, kept columns) and
    OUT.npy.rows.offsets.npy (where each of its lines starts), OUT.npy.rescore.npy (binary outputs' int8
    rescoring vectors), OUT.npy.sparse.npz (sparse vectors: CSR indptr, indices, values), OUT.npy.bm25.json
    (BM25 statistics), OUT.npy.meta.json."""

    def _open(self) -> None:
        from embedstack.jobs._csr import CsrSink, open_csr

        count = int(self.meta["count"])
        assert self.width is not None
        self.tmp = self._temp(self.target)
        self.rows_tmp = self._temp(rows_path(self.target))
        self.rows = open(self.rows_tmp, "w", encoding="utf-8")
        self.f = _npy_file(self.tmp, self.dtype, (count, self.width), self.target if self.existing else None)
        self.extra = None
        self.csr = CsrSink(sparse_path(self.target), self._temp) if self.sparse else None
        if self.rescore_dim is not None:
            self.extra_tmp = self._temp(rescore_path(self.target))
            old = rescore_path(self.target) if self.existing else None
            self.extra = _npy_file(self.extra_tmp, np.dtype(np.int8), (count, self.rescore_dim), old)
        if not self.existing:
            return
        old_rows = len(np.load(self.target, mmap_mode="r"))
        reweigh = self.csr is not None and self.reweigh is not None
        lines: list[str] = []
        done = 0
        with open(rows_path(self.target), encoding="utf-8") as f:
            for line in f:
                self.rows.write(line)
                if reweigh:
                    lines.append(line)
                if len(lines) == _COPY_ROWS:
                    self._add_reweighed(lines, done)
                    done, lines = done + len(lines), []
        if lines:
            self._add_reweighed(lines, done)
        if self.csr is not None and not reweigh:
            where = sparse_path(self.target)
            try:
                indptr, indices, values = open_csr(where)
            except (OSError, ValueError) as e:
                raise OutputError(f"{where}: unreadable sparse vectors ({e}); embed into a new output") from None
            if len(indptr) - 1 != old_rows:
                raise OutputError(
                    f"{where}: holds {len(indptr) - 1} sparse rows, {self.target} {old_rows}; embed into a new output"
                )
            for i in range(0, old_rows, 65536):
                self.csr.add_csr(indptr[i : i + 65537], indices, values)
        self.written += old_rows

    def _add_reweighed(self, lines: list[str], first: int) -> None:
        assert self.csr is not None
        self.csr.add(self._reweighed([json.loads(x) for x in lines], rows_path(self.target), first))

    def _write(
        self,
        records: Sequence[Record],
        vectors: np.ndarray | None,
        rescore: np.ndarray | None,
        sparse: list[Any] | None,
    ) -> None:
        assert vectors is not None
        self.f.write(vectors.tobytes())
        if self.extra is not None and rescore is not None:
            self.extra.write(np.ascontiguousarray(rescore, dtype=np.int8).tobytes())
        if self.csr is not None and sparse is not None:
            self.csr.add(sparse)
        self.rows.write(
            "".join(json.dumps({"id": r.id, **r.columns}, ensure_ascii=False, default=str) + "\n" for r in records)
        )

    def _close(self) -> None:
        for name in ("f", "rows", "extra"):
            f = getattr(self, name, None)
            if f is not None and not f.closed:
                f.close()
        csr = getattr(self, "csr", None)
        if csr is not None:
            csr.close()

    def _data_targets(self) -> list[tuple[Path, Path]]:
        offsets_tmp = self._temp(offsets_path(self.target))  # where each row's line starts: k hits, k seeks
        with open(offsets_tmp, "wb") as f:
            np.save(f, line_offsets(self.rows_tmp))
        targets = [(self.tmp, self.target), (self.rows_tmp, rows_path(self.target))]
        if self.rescore_dim is not None:
            targets.append((self.extra_tmp, rescore_path(self.target)))
        if self.csr is not None:
            if self.csr.rows != self.written:
                raise OutputError(
                    f"{rows_path(self.target)}: holds {self.csr.rows} rows, {self.target} {self.written}; "
                    "output not replaced, embed into a new output"
                )
            npz_tmp = self._temp(sparse_path(self.target))
            self.csr.finish(npz_tmp)
            targets.append((npz_tmp, sparse_path(self.target)))
        return [*targets, *self._stats_target(), (offsets_tmp, offsets_path(self.target))]


class JsonlWriter(_SidecarWriter):
    """One JSON object per row: id, vector (floats; ints for int8/uint8/binary codes; absent without dense
    vectors), rescore (binary outputs: int8 ints), sparse_indices / sparse_values (outputs with sparse
    vectors), kept columns; metadata in OUT.meta.json, BM25 statistics in OUT.bm25.json."""

    def _open(self) -> None:
        self.tmp = self._temp(self.target)
        self.f = open(self.tmp, "w", encoding="utf-8")
        if not self.existing:
            return
        lines: list[str] = []
        with open(self.target, encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                if self.dense:
                    row = json.loads(line)
                    if len(row.get("vector", ())) != self.width:
                        raise OutputError(
                            f"{self.target}: holds {len(row.get('vector', ()))}-value vectors, "
                            f"this run makes {self.width}"
                        )
                if self.reweigh is None:
                    self.f.write(line if line.endswith("\n") else line + "\n")
                    self.written += 1
                    continue
                lines.append(line)
                if len(lines) == _COPY_ROWS:
                    self._copy_reweighed(lines)
                    lines = []
        if lines:
            self._copy_reweighed(lines)

    def _copy_reweighed(self, lines: list[str]) -> None:
        rows = [json.loads(x) for x in lines]
        for row, vec in zip(rows, self._reweighed(rows, self.target, self.written), strict=True):
            row[SPARSE_COLUMNS[0]], row[SPARSE_COLUMNS[1]] = vec[0].tolist(), vec[1].tolist()
        self.f.write("".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows))
        self.written += len(rows)

    def _write(
        self,
        records: Sequence[Record],
        vectors: np.ndarray | None,
        rescore: np.ndarray | None,
        sparse: list[Any] | None,
    ) -> None:
        out = []
        n = len(records)
        dense = vectors.tolist() if vectors is not None else [None] * n
        extra = rescore.tolist() if rescore is not None else [None] * n
        rows = sparse if sparse is not None else [None] * n
        for r, v, x, sv in zip(records, dense, extra, rows, strict=True):
            row: dict[str, Any] = {"id": r.id}
            if v is not None:
                row["vector"] = v
            if x is not None:
                row["rescore"] = x
            if sv is not None:
                row[SPARSE_COLUMNS[0]], row[SPARSE_COLUMNS[1]] = sv[0].tolist(), sv[1].tolist()
            out.append(json.dumps({**row, **r.columns}, ensure_ascii=False, default=str) + "\n")
        self.f.write("".join(out))

    def _close(self) -> None:
        f = getattr(self, "f", None)
        if f is not None and not f.closed:
            f.close()

    def _data_targets(self) -> list[tuple[Path, Path]]:
        return [(self.tmp, self.target), *self._stats_target()]


def open_writer(target: Path, meta: dict[str, Any], column_types: dict[str, set[type]], existing: bool) -> Writer:
    """The writer for `target`'s format; `existing` copies the current rows first (append)."""
    fmt = output_format(target)
    cls = {"parquet": ParquetWriter, "npy": NpyWriter, "jsonl": JsonlWriter}[fmt]
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(target)
    return cls(target, meta, column_types, existing)


# -- sparse vectors ------------------------------------------------------------------------------
#: A block of consecutive rows' sparse vectors: (first row, offsets (rows + 1, from 0), indices, values).
SparseBatch = tuple[int, np.ndarray, np.ndarray, np.ndarray]


def sparse_batches(path: Path, meta: dict[str, Any], rows: int = 65536) -> Iterator[SparseBatch]:
    """The sparse vectors of an output in blocks of about `rows` rows, in bounded memory: Parquet's list columns
    a batch at a time, a .npy output's CSR .npz memory-mapped, a .jsonl output streamed; checked against the
    metadata's row count."""
    if not meta.get("sparse"):
        raise OutputError(f"{path}: has no sparse vectors; embed it with --sparse bm25 (or splade:<model>)")
    fmt = output_format(path)
    count = int(meta["count"])
    n = 0
    if fmt in ("parquet", DATASET_FORMAT):
        pq = _pq()
        files = [Path(f) for f in pq.ParquetDataset(path).files] if path.is_dir() else [path]
        for file in files:
            for batch in pq.ParquetFile(file).iter_batches(batch_size=rows, columns=list(SPARSE_COLUMNS)):
                idx_col, val_col = batch.column(0), batch.column(1)
                offsets = np.asarray(idx_col.offsets, dtype=np.int64)
                offsets = offsets - offsets[0]
                indices = np.asarray(idx_col.flatten(), dtype=np.int32)
                values = np.asarray(val_col.flatten(), dtype=np.float32)
                val_offsets = np.asarray(val_col.offsets, dtype=np.int64)
                if len(values) != len(indices) or not np.array_equal(val_offsets - val_offsets[0], offsets):
                    raise OutputError(f"{file}: its sparse_indices and sparse_values differ in shape; re-run the embed")
                yield n, offsets, indices, values
                n += len(offsets) - 1
    elif fmt == "npy":
        from embedstack.jobs._csr import open_csr

        where = sparse_path(path)
        if not where.exists():
            raise OutputError(f"{where}: missing; re-run the embed command")
        try:
            indptr, indices, values = open_csr(where)
        except (OSError, ValueError) as e:
            raise OutputError(f"{where}: unreadable sparse vectors ({e}); re-run the embed command") from None
        for start in range(0, len(indptr) - 1, rows):
            part = np.asarray(indptr[start : start + rows + 1], dtype=np.int64)
            lo, hi = int(part[0]), int(part[-1])
            yield start, part - lo, np.asarray(indices[lo:hi]), np.asarray(values[lo:hi])
            n = start + len(part) - 1
    else:
        chunk: list[dict[str, Any]] = []
        with open(path, encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                chunk.append(json.loads(line))
                if len(chunk) == rows:
                    yield n, *_jsonl_sparse(chunk, path)
                    n, chunk = n + len(chunk), []
        if chunk:
            yield n, *_jsonl_sparse(chunk, path)
            n += len(chunk)
    if n != count:
        raise OutputError(f"{path}: holds {n} sparse rows, but its metadata says {count}; re-run the embed command")


def _jsonl_sparse(rows: list[dict[str, Any]], path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    try:
        idx = [r[SPARSE_COLUMNS[0]] for r in rows]
        val = [r[SPARSE_COLUMNS[1]] for r in rows]
    except KeyError:
        raise OutputError(f"{path}: a row has no sparse vector; re-run the embed command") from None
    lengths = np.fromiter(map(len, idx), dtype=np.int64, count=len(idx))
    if not np.array_equal(lengths, np.fromiter(map(len, val), dtype=np.int64, count=len(val))):
        raise OutputError(f"{path}: a row's sparse_indices and sparse_values differ in length; re-run the embed")
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    flat_i = np.fromiter((i for r in idx for i in r), dtype=np.int32, count=int(offsets[-1]))
    flat_v = np.fromiter((v for r in val for v in r), dtype=np.float32, count=int(offsets[-1]))
    return offsets, flat_i, flat_v


def read_sparse(path: Path, meta: dict[str, Any]) -> list[Any]:
    """Every row's sparse vector (`SparseVector`), in row order."""
    from embedstack.outputs import SparseVector

    out: list[Any] = []
    for _, offsets, indices, values in sparse_batches(path, meta):
        for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist()):
            out.append(SparseVector(np.array(indices[a:b], np.int32), np.array(values[a:b], np.float32)))
    return out


def read_stats(path: Path) -> str | None:
    """The BM25 statistics (JSON) kept with an output: its Parquet schema metadata, else its statistics sidecar
    (OUT.bm25.json; a dataset directory's _embedstack.bm25.json). None when there are none."""
    fmt = output_format(path)
    if fmt == "parquet":
        raw = (_pq().read_schema(path).metadata or {}).get(STATS_KEY)
        return None if raw is None else raw.decode()
    where = stats_path(path)
    return where.read_text(encoding="utf-8") if where.is_file() else None
