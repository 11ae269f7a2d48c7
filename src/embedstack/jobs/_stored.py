"""An output's stored rows read in bounded memory: vectors in chunks, chosen rows, ids and columns of hits.

.npy outputs are memory-mapped; Parquet outputs are read a batch (and, for chosen rows, a row group) at a
time; .jsonl outputs are streamed. Nothing reads the whole output into memory, so a file larger than RAM
can be searched.
"""

from __future__ import annotations

import bisect
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from embedstack.jobs._output import (
    DATASET_FORMAT,
    DATASET_META,
    SPARSE_COLUMNS,
    OutputError,
    SparseBatch,
    _fixed_list_numpy,
    _pq,
    is_dense,
    line_offsets,
    meta_path,
    offsets_path,
    output_format,
    read_sparse,
    read_stats,
    rescore_path,
    rows_path,
    sparse_batches,
    write_offsets,
)
from embedstack.vectors.formats import VectorFormat

__all__ = ["SparseBatch", "StoredRows", "open_stored", "read_sparse", "read_stats", "sparse_batches"]


class StoredRows:
    """The rows of one output; `column` is "vector" (the stored codes) or "rescore" (binary outputs)."""

    def __init__(self, path: Path, meta: dict[str, Any]) -> None:
        self.path = path
        self.meta = meta
        #: The dense vectors' format (an output of sparse vectors only has none: `fmt` raises).
        self._fmt = VectorFormat.from_meta(meta) if is_dense(meta) else None
        self.count = int(meta["count"])

    @property
    def fmt(self) -> VectorFormat:
        """The dense vectors' format."""
        if self._fmt is None:
            raise OutputError(f"{self.path}: holds sparse vectors only (no dense ones); search it without --hybrid")
        return self._fmt

    def width(self, column: str) -> int:
        """Values per row of `column`."""
        return self.fmt.width if column == "vector" else self.fmt.dim

    def dtype(self, column: str) -> np.dtype[Any]:
        """The numpy dtype of `column`'s values."""
        return self.fmt.dtype if column == "vector" else np.dtype(np.int8)

    def batches(self, column: str, rows: int) -> Iterator[tuple[int, np.ndarray]]:
        """(first row number, codes) for consecutive chunks of about `rows` rows."""
        raise NotImplementedError

    def take(self, positions: Sequence[int] | np.ndarray, column: str) -> np.ndarray:
        """`column`'s codes of the rows at `positions`, in that order."""
        raise NotImplementedError

    def records(self, positions: Sequence[int]) -> list[dict[str, Any]]:
        """The id and kept columns of the rows at `positions`, in that order."""
        raise NotImplementedError

    def data_files(self) -> list[Path]:
        """The files whose change makes an index stale."""
        raise NotImplementedError

    def fingerprint(self) -> str:
        """What the output is now: its metadata's count and times, and its files' sizes and mtimes."""
        parts = [str(self.meta.get(k)) for k in ("count", "dim", "precision", "created", "updated")]
        for f in self.data_files():
            st = f.stat()
            parts.append(f"{f.name}:{st.st_size}:{st.st_mtime_ns}")
        return "|".join(parts)

    def _check(self, found: int, what: str) -> None:
        if found != self.count:
            raise OutputError(
                f"{self.path}: {what} holds {found} rows, but its metadata says {self.count}; re-run the embed command"
            )


def _ordered(positions: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions sorted (unique), and where each original position is in that sorted list."""
    pos = np.asarray(positions, dtype=np.int64)
    uniq, back = np.unique(pos, return_inverse=True)
    return uniq, back


def _wanted_lines(path: Path, positions: Sequence[int]) -> dict[int, dict[str, Any]]:
    """The JSON objects on lines numbered `positions` of a JSON Lines file that embedstack wrote (one row per
    line): the file is scanned in 16 MiB blocks counting newlines, and only the wanted lines are parsed."""
    want = sorted(set(int(p) for p in positions))
    found: dict[int, dict[str, Any]] = {}
    if not path.exists():
        raise OutputError(f"{path}: missing; re-run the embed command")
    row, i, carry = 0, 0, b""
    with open(path, "rb") as f:
        while i < len(want):
            block = f.read(1 << 24)
            if not block:  # a last line without a newline
                if carry.strip() and want[i] == row:
                    found[row] = json.loads(carry)
                break
            data = carry + block
            n = data.count(b"\n")
            if want[i] >= row + n:  # no wanted line ends in this block
                cut = data.rfind(b"\n") + 1
                carry, row = data[cut:], row + n
                continue
            ends = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 0x0A)  # newline offsets, fast
            while i < len(want) and want[i] < row + n:
                line = want[i] - row
                found[want[i]] = json.loads(data[(ends[line - 1] + 1 if line else 0) : ends[line]])
                i += 1
            carry, row = data[ends[-1] + 1 :], row + n
    missing = [p for p in want if p not in found]
    if missing:
        raise OutputError(
            f"{path}: has no row {missing[0]}; it is shorter than its metadata says, re-run the embed command"
        )
    return found


def _lines_at(path: Path, offsets: np.ndarray, positions: Sequence[int]) -> dict[int, dict[str, Any]] | None:
    """The JSON objects on lines `positions`, each read at its offset (one seek and one read per row). None
    when a slice is not exactly one whole line (the offsets belong to another version of the file)."""
    found: dict[int, dict[str, Any]] = {}
    with open(path, "rb") as f:
        for p in sorted(set(int(p) for p in positions)):
            if not 0 <= p < len(offsets) - 1:
                raise OutputError(f"{path}: has no row {p}; it is shorter than its metadata says, re-run the embed")
            start, end = int(offsets[p]), int(offsets[p + 1])
            f.seek(max(start - 1, 0))
            data = f.read(end - start + (1 if start else 0))
            if start:  # the byte before a line is the newline that ends the previous one
                if data[:1] != b"\n":
                    return None
                data = data[1:]
            if len(data) != end - start or data.find(b"\n") not in (-1, len(data) - 1):
                return None
            try:
                found[p] = json.loads(data)
            except ValueError:
                return None
    return found


class _Npy(StoredRows):
    """OUT.npy (memory-mapped), OUT.npy.rescore.npy, ids and columns from OUT.npy.rows.jsonl."""

    def __init__(self, path: Path, meta: dict[str, Any]) -> None:
        super().__init__(path, meta)
        self.arrays: dict[str, np.ndarray] = {}
        self.offsets: np.ndarray | None = None

    def array(self, column: str) -> np.ndarray:
        """The memory-mapped codes of `column` (checked against the metadata)."""
        if column not in self.arrays:
            file = self.path if column == "vector" else rescore_path(self.path)
            if not file.exists():
                raise OutputError(f"{file}: missing; re-run the embed command")
            arr = np.load(file, mmap_mode="r")
            if arr.ndim != 2 or arr.shape[1] != self.width(column) or arr.dtype != self.dtype(column):
                raise OutputError(
                    f"{file}: holds {arr.dtype} vectors of shape {arr.shape}, its metadata says "
                    f"{self.dtype(column)} x {self.width(column)}; re-run the embed command"
                )
            self._check(len(arr), file.name)
            self.arrays[column] = arr
        return self.arrays[column]

    def batches(self, column: str, rows: int) -> Iterator[tuple[int, np.ndarray]]:
        arr = self.array(column)
        for start in range(0, len(arr), rows):
            yield start, np.asarray(arr[start : start + rows])

    def take(self, positions: Sequence[int] | np.ndarray, column: str) -> np.ndarray:
        uniq, back = _ordered(positions)
        rows: np.ndarray = np.asarray(self.array(column)[uniq])[back]
        return rows

    def records(self, positions: Sequence[int]) -> list[dict[str, Any]]:
        """The rows at `positions` from the rows sidecar: k seeks with its offsets sidecar (built and kept
        beside it on first use for an output written without one, or when it no longer fits the file)."""
        rows = rows_path(self.path)
        if not rows.exists():
            raise OutputError(f"{rows}: missing; re-run the embed command")
        found = _lines_at(rows, self._offsets(rows), positions)
        if found is None:  # the offsets do not describe this file (edited by hand?): scan it as before
            found = _wanted_lines(rows, positions)
        return [found[int(p)] for p in positions]

    def _offsets(self, rows: Path) -> np.ndarray:
        """The line offsets of the rows sidecar: the kept ones when they fit its size and the row count,
        else built by one scan and kept (when the folder is writable) for the next search."""
        if self.offsets is not None:
            return self.offsets
        size = rows.stat().st_size
        where = offsets_path(self.path)
        offsets = None
        try:
            kept = np.load(where, mmap_mode="r")
            if kept.dtype == np.int64 and kept.shape == (self.count + 1,) and kept[0] == 0 and kept[-1] == size:
                offsets = kept
        except (OSError, ValueError):
            offsets = None
        if offsets is None:
            offsets = line_offsets(rows)
            if len(offsets) != self.count + 1:
                self._check(len(offsets) - 1, rows.name)
            try:
                write_offsets(offsets, where)
            except OSError:  # a read-only folder: searched with the offsets built for this search
                pass
        self.offsets = offsets
        return offsets

    def data_files(self) -> list[Path]:
        return [self.path, rows_path(self.path)] + ([rescore_path(self.path)] if self.fmt.rescore else [])


class _Jsonl(StoredRows):
    """A .jsonl output, streamed: vectors (and rescore) parsed a line at a time."""

    def batches(self, column: str, rows: int) -> Iterator[tuple[int, np.ndarray]]:
        width, dtype = self.width(column), self.dtype(column)
        start, chunk, n = 0, [], 0
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                chunk.append(json.loads(line)[column])
                n += 1
                if len(chunk) == rows:
                    yield start, _rows_array(chunk, width, dtype, self.path)
                    start, chunk = n, []
        if chunk:
            yield start, _rows_array(chunk, width, dtype, self.path)
        self._check(n, self.path.name)

    def take(self, positions: Sequence[int] | np.ndarray, column: str) -> np.ndarray:
        found = _wanted_lines(self.path, [int(p) for p in positions])
        return _rows_array(
            [found[int(p)][column] for p in positions], self.width(column), self.dtype(column), self.path
        )

    def records(self, positions: Sequence[int]) -> list[dict[str, Any]]:
        found = _wanted_lines(self.path, positions)
        out = []
        for p in positions:
            row = dict(found[int(p)])
            for name in ("vector", "rescore", *SPARSE_COLUMNS):
                row.pop(name, None)
            out.append(row)
        return out

    def data_files(self) -> list[Path]:
        return [self.path]


def _rows_array(rows: list[Any], width: int, dtype: np.dtype[Any], path: Path) -> np.ndarray:
    arr = np.asarray(rows, dtype=dtype)
    if arr.ndim != 2 or arr.shape[1] != width:
        raise OutputError(f"{path}: holds vectors of shape {arr.shape[1:]}, its metadata says {width} values per row")
    return arr


class _Parquet(StoredRows):
    """A .parquet file or a Parquet dataset directory: batches of a column, chosen rows by row group."""

    def __init__(self, path: Path, meta: dict[str, Any]) -> None:
        super().__init__(path, meta)
        pq = _pq()
        self.files = [Path(f) for f in pq.ParquetDataset(path).files] if path.is_dir() else [path]
        self.groups: list[tuple[int, int, int]] = []  # (first row, file number, row group)
        row = 0
        self.handles = [pq.ParquetFile(f) for f in self.files]
        for i, pf in enumerate(self.handles):
            for g in range(pf.metadata.num_row_groups):
                self.groups.append((row, i, g))
                row += pf.metadata.row_group(g).num_rows
        self._check(row, path.name)
        self.starts = [g[0] for g in self.groups]

    def batches(self, column: str, rows: int) -> Iterator[tuple[int, np.ndarray]]:
        start = 0
        for pf in self.handles:
            for batch in pf.iter_batches(batch_size=rows, columns=[column]):
                codes = _fixed_list_numpy(batch.column(0), self.width(column), self.dtype(column))
                yield start, codes
                start += len(codes)

    def _by_group(self, positions: Sequence[int] | np.ndarray) -> dict[int, list[int]]:
        groups: dict[int, list[int]] = {}
        for p in np.unique(np.asarray(positions, dtype=np.int64)):
            groups.setdefault(bisect.bisect_right(self.starts, int(p)) - 1, []).append(int(p))
        return groups

    def take(self, positions: Sequence[int] | np.ndarray, column: str) -> np.ndarray:
        found: dict[int, np.ndarray] = {}
        for g, rows in self._by_group(positions).items():
            first, file, group = self.groups[g]
            table = self.handles[file].read_row_group(group, columns=[column])
            codes = _fixed_list_numpy(table.column(0), self.width(column), self.dtype(column))
            for p in rows:
                found[p] = codes[p - first]
        if not found:
            return np.zeros((0, self.width(column)), self.dtype(column))
        return np.stack([found[int(p)] for p in positions])

    def records(self, positions: Sequence[int]) -> list[dict[str, Any]]:
        found: dict[int, dict[str, Any]] = {}
        for g, rows in self._by_group(positions).items():
            first, file, group = self.groups[g]
            skip = ("vector", "rescore", *SPARSE_COLUMNS)
            names = [n for n in self.handles[file].schema_arrow.names if n not in skip]
            table = self.handles[file].read_row_group(group, columns=names)
            picked = table.take([p - first for p in rows]).to_pylist()
            found.update(zip(rows, picked))
        return [found[int(p)] for p in positions]

    def data_files(self) -> list[Path]:
        return [*self.files, *([self.path / DATASET_META] if self.path.is_dir() else [])]


def open_stored(path: str | os.PathLike[str], meta: dict[str, Any]) -> StoredRows:
    """The stored rows of the output at `path` (whose metadata is `meta`)."""
    p = Path(path)
    fmt = output_format(p)
    if fmt in ("parquet", DATASET_FORMAT):
        return _Parquet(p, meta)
    if fmt == "npy":
        return _Npy(p, meta)
    if not meta_path(p).exists():
        raise OutputError(f"{p}: no metadata file; re-run the embed command")
    return _Jsonl(p, meta)
