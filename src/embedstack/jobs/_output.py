"""Embedding outputs: Parquet, .npy (+ rows and metadata sidecars) and .jsonl; written atomically.

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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from embedstack._atomic import atomic_write_text, publish
from embedstack.errors import EmbedstackError
from embedstack.jobs._readers import Record

__all__ = [
    "DATASET_META",
    "META_KEY",
    "OUTPUT_FORMATS",
    "Embeddings",
    "OutputError",
    "Writer",
    "load_embeddings",
    "meta_path",
    "open_writer",
    "output_format",
    "read_meta",
    "rows_path",
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


class OutputError(EmbedstackError, ValueError):
    """An output that cannot be written or read (wrong extension, incomplete, not ours)."""


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


# -- atomic files --------------------------------------------------------------------------------
_HOST = socket.gethostname().replace(".", "_")


def _temp_for(target: Path) -> Path:
    return target.with_name(f".{target.name}.{_HOST}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def remove_stale_temps(target: Path) -> None:
    """Delete temp files a killed run on this host left for `target` and its sidecars (.rows.jsonl,
    .meta.json) when their process is gone."""
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process there
        return
    for name in (target.name, rows_path(target).name, meta_path(target).name):
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
    atomic_write_text(target, text, tmp=_temp_for(target))


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
    """An embedded corpus read back: metadata, ids, an (n, dim) float32 matrix, kept columns."""

    meta: dict[str, Any]
    ids: list[str]
    vectors: npt.NDArray[np.float32]
    columns: dict[str, list[Any]]

    def __len__(self) -> int:
        return len(self.ids)


def load_embeddings(path: str | os.PathLike[str], columns: bool = True) -> Embeddings:
    """Read an output of `embed_files` / `embedstack embed`, checked against its metadata."""
    path = Path(path)
    meta = read_meta(path)
    fmt = output_format(path)
    dim, count = int(meta["dim"]), int(meta["count"])
    cols: dict[str, list[Any]] = {}
    if fmt in ("parquet", DATASET_FORMAT):
        table = _pq().read_table(path, columns=None if columns else ["id", "vector"])
        ids = [str(i) for i in table.column("id").to_pylist()]
        vec = table.column("vector").combine_chunks()
        matrix = vec.values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(-1, dim)
        if columns:
            cols = {name: table.column(name).to_pylist() for name in table.column_names if name not in ("id", "vector")}
    elif fmt == "npy":
        matrix = np.load(path, mmap_mode="r")
        ids = []
        for row in _jsonl_rows(rows_path(path)):
            ids.append(str(row.pop("id")))
            if columns:
                for k in meta.get("columns", []):
                    cols.setdefault(k, []).append(row.get(k))
        matrix = np.asarray(matrix, dtype=np.float32)
    else:
        ids, rows = [], []
        for row in _jsonl_rows(path):
            ids.append(str(row.pop("id")))
            rows.append(np.asarray(row.pop("vector"), dtype=np.float32))
            if columns:
                for k in meta.get("columns", []):
                    cols.setdefault(k, []).append(row.get(k))
        matrix = np.stack(rows) if rows else np.zeros((0, dim), np.float32)
    if matrix.shape != (count, dim) or len(ids) != count:
        raise OutputError(
            f"{path}: holds {len(ids)} ids and vectors of shape {matrix.shape}, but its metadata "
            f"says {count} x {dim}; "
            "re-run the embed command"
        )
    return Embeddings(meta, ids, matrix, cols)


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
    """Writes rows to temp files; `commit` renames them into place, `abort` removes them."""

    def __init__(self, target: Path, meta: dict[str, Any], column_types: dict[str, set[type]], existing: bool) -> None:
        self.target = target
        self.meta = meta
        self.column_types = column_types
        self.existing = existing
        self.temps: list[Path] = []
        self.written = 0
        self.dim: int | None = None

    def _temp(self, target: Path) -> Path:
        tmp = _temp_for(target)
        self.temps.append(tmp)
        return tmp

    def write(self, records: Sequence[Record], vectors: npt.NDArray[np.float32]) -> None:
        """Append rows (one per record) to the temp output."""
        if self.dim is None:
            self.dim = int(vectors.shape[1])
            self.meta["dim"] = self.dim
            self._open()
        elif vectors.shape[1] != self.dim:
            raise OutputError(f"the model returned {vectors.shape[1]}-dim vectors after {self.dim}-dim ones")
        self._write(records, np.ascontiguousarray(vectors, dtype=np.float32))
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

    def _open(self) -> None:
        raise NotImplementedError

    def _write(self, records: Sequence[Record], vectors: npt.NDArray[np.float32]) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError

    def _commit(self) -> None:
        raise NotImplementedError


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
    """id (string), vector (fixed-size list of float32), kept columns; metadata in the schema."""

    def _open(self) -> None:
        import pyarrow as pa

        pq = _pq()
        self.pa = pa
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
            if base.field("vector").type.list_size != self.dim:
                raise OutputError(
                    f"{self.target}: holds {base.field('vector').type.list_size}-dim vectors, the "
                    f"model gives {self.dim}"
                )
        else:
            fields = [
                pa.field("id", pa.string()),
                pa.field("vector", pa.list_(pa.float32(), self.dim)),
            ]
            fields += [pa.field(name, _arrow_type(pa, types)) for name, types in self.column_types.items()]
            base = pa.schema(fields)
        self.schema = base.with_metadata({META_KEY: json.dumps(self.meta, ensure_ascii=False).encode()})
        self.tmp = self._temp(self.target)
        self.writer = pq.ParquetWriter(self.tmp, self.schema, compression="zstd")
        if self.existing:
            for batch in old.iter_batches(batch_size=8192):
                self.writer.write_table(self.pa.Table.from_batches([batch]).cast(self.schema))
            self.written += old.metadata.num_rows

    def _write(self, records: Sequence[Record], vectors: npt.NDArray[np.float32]) -> None:
        pa = self.pa
        arrays = [
            pa.array([r.id for r in records], type=pa.string()),
            pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), self.dim),
        ]
        for f in self.schema:
            if f.name in ("id", "vector"):
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

    def _commit(self) -> None:
        self._close()
        meta = meta_path(self.target)
        meta.unlink(missing_ok=True)  # from here until the new one lands, readers see "incomplete"
        for tmp, target in self._data_targets():
            _publish(tmp, target)
        _write_json_atomic(meta, self.meta)


class NpyWriter(_SidecarWriter):
    """OUT.npy (count x dim float32), OUT.npy.rows.jsonl (id, kept columns), OUT.npy.meta.json."""

    def _open(self) -> None:
        self.tmp = self._temp(self.target)
        self.rows_tmp = self._temp(rows_path(self.target))
        self.f = open(self.tmp, "wb")
        self.rows = open(self.rows_tmp, "w", encoding="utf-8")
        np.lib.format.write_array_header_1_0(
            self.f,
            {"descr": "<f4", "fortran_order": False, "shape": (int(self.meta["count"]), self.dim)},
        )
        if self.existing:
            old = np.load(self.target, mmap_mode="r")
            if old.ndim != 2 or old.shape[1] != self.dim:
                raise OutputError(
                    f"{self.target}: holds vectors of shape {old.shape}, the model gives {self.dim}-dim vectors"
                )
            for i in range(0, len(old), 65536):
                self.f.write(np.ascontiguousarray(old[i : i + 65536], dtype="<f4").tobytes())
            with open(rows_path(self.target), encoding="utf-8") as f:
                for line in f:
                    self.rows.write(line)
            self.written += len(old)

    def _write(self, records: Sequence[Record], vectors: npt.NDArray[np.float32]) -> None:
        self.f.write(vectors.astype("<f4", copy=False).tobytes())
        self.rows.write(
            "".join(json.dumps({"id": r.id, **r.columns}, ensure_ascii=False, default=str) + "\n" for r in records)
        )

    def _close(self) -> None:
        for name in ("f", "rows"):
            f = getattr(self, name, None)
            if f is not None and not f.closed:
                f.close()

    def _data_targets(self) -> list[tuple[Path, Path]]:
        return [(self.tmp, self.target), (self.rows_tmp, rows_path(self.target))]


class JsonlWriter(_SidecarWriter):
    """One JSON object per row: id, vector (floats), kept columns; metadata in OUT.meta.json."""

    def _open(self) -> None:
        self.tmp = self._temp(self.target)
        self.f = open(self.tmp, "w", encoding="utf-8")
        if self.existing:
            with open(self.target, encoding="utf-8") as f:
                for line in f:
                    if line.strip():
                        row = json.loads(line)
                        if len(row.get("vector", ())) != self.dim:
                            raise OutputError(
                                f"{self.target}: holds {len(row.get('vector', ()))}-dim vectors, "
                                f"the model gives {self.dim}"
                            )
                        self.f.write(line if line.endswith("\n") else line + "\n")
                        self.written += 1

    def _write(self, records: Sequence[Record], vectors: npt.NDArray[np.float32]) -> None:
        out = []
        for r, v in zip(records, vectors.tolist(), strict=True):
            out.append(json.dumps({"id": r.id, "vector": v, **r.columns}, ensure_ascii=False, default=str) + "\n")
        self.f.write("".join(out))

    def _close(self) -> None:
        f = getattr(self, "f", None)
        if f is not None and not f.closed:
            f.close()

    def _data_targets(self) -> list[tuple[Path, Path]]:
        return [(self.tmp, self.target)]


def open_writer(target: Path, meta: dict[str, Any], column_types: dict[str, set[type]], existing: bool) -> Writer:
    """The writer for `target`'s format; `existing` copies the current rows first (append)."""
    fmt = output_format(target)
    cls = {"parquet": ParquetWriter, "npy": NpyWriter, "jsonl": JsonlWriter}[fmt]
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(target)
    return cls(target, meta, column_types, existing)
