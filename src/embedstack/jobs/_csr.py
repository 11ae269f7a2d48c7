"""Sparse rows on disk as a CSR triple in one uncompressed .npz (`indptr` int64, `indices` int32, `values` float32).

`np.load` reads the file as any .npz; `open_csr` memory-maps its three arrays (the entries are stored, not
compressed), so a search scans the rows without reading them into memory. `CsrSink` writes one in bounded
memory: indices and values go to raw temp files as rows come, and `finish` streams them into the .npz.
"""

from __future__ import annotations

import struct
import zipfile
from array import array
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["CSR_NAMES", "CsrSink", "open_csr"]

#: The .npz entries, in the order they are written.
CSR_NAMES = ("indptr", "indices", "values")
_DTYPES: dict[str, np.dtype[Any]] = {"indptr": np.dtype("<i8"), "indices": np.dtype("<i4"), "values": np.dtype("<f4")}
_BLOCK = 1 << 24


class CsrSink:
    """Rows appended to raw temp files (named by `temp`, a function of a target path); `finish(npz)` writes the
    .npz to the path `npz` (a temp file the caller publishes). `close` closes the raw files (the caller
    removes them with its other temps)."""

    def __init__(self, target: Path, temp: Callable[[Path], Path]) -> None:
        self.indptr = array("q", [0])
        self.raw = {name: temp(target.with_name(f"{target.name}.{name}")) for name in ("indices", "values")}
        self.files = {name: open(path, "wb") for name, path in self.raw.items()}

    @property
    def rows(self) -> int:
        """Rows added so far."""
        return len(self.indptr) - 1

    def add(self, rows: Iterable[Any]) -> None:
        """Append rows, each an (indices, values) pair (a SparseVector)."""
        rows = list(rows)
        if not rows:
            return
        lengths = [len(r[0]) for r in rows]
        idx = np.concatenate([np.asarray(r[0], dtype="<i4") for r in rows])
        val = np.concatenate([np.asarray(r[1], dtype="<f4") for r in rows])
        self._append(lengths, idx, val)

    def add_csr(self, indptr: npt.NDArray[Any], indices: npt.NDArray[Any], values: npt.NDArray[Any]) -> None:
        """Append the rows of a CSR triple (an existing output's, in blocks)."""
        indptr = np.asarray(indptr, dtype=np.int64)
        lo, hi = int(indptr[0]), int(indptr[-1])
        self._append(np.diff(indptr).tolist(), np.asarray(indices[lo:hi]), np.asarray(values[lo:hi]))

    def _append(self, lengths: Sequence[int], idx: npt.NDArray[Any], val: npt.NDArray[Any]) -> None:
        end = self.indptr[-1]
        for n in lengths:
            end += n
            self.indptr.append(end)
        self.files["indices"].write(np.ascontiguousarray(idx, dtype="<i4").tobytes())
        self.files["values"].write(np.ascontiguousarray(val, dtype="<f4").tobytes())

    def close(self) -> None:
        for f in self.files.values():
            if not f.closed:
                f.close()

    def finish(self, npz: Path) -> None:
        """Write the .npz (uncompressed) from the rows added, then remove the raw temp files."""
        self.close()
        nnz = self.indptr[-1]
        with zipfile.ZipFile(npz, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as z:
            for name in CSR_NAMES:
                dtype = _DTYPES[name]
                count = len(self.indptr) if name == "indptr" else nnz
                with z.open(f"{name}.npy", "w", force_zip64=True) as f:
                    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (count,)}
                    np.lib.format.write_array_header_1_0(f, header)
                    if name == "indptr":
                        f.write(np.frombuffer(self.indptr, dtype=np.int64).astype("<i8").tobytes())
                        continue
                    with open(self.raw[name], "rb") as src:
                        while block := src.read(_BLOCK):
                            f.write(block)
        for raw in self.raw.values():  # streamed into the .npz: the raw files are done with
            raw.unlink(missing_ok=True)


def open_csr(path: Path) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int32], npt.NDArray[np.float32]]:
    """(indptr, indices, values) of a CSR .npz, memory-mapped where its entries are stored uncompressed (else
    read); ValueError saying what is wrong when the file is not such a triple."""
    arrays: dict[str, np.ndarray] = {}
    with zipfile.ZipFile(path) as z, open(path, "rb") as f:
        names = {info.filename: info for info in z.infolist()}
        for name in CSR_NAMES:
            info = names.get(f"{name}.npy")
            if info is None:
                raise ValueError(f"no {name} array (it holds {', '.join(sorted(names)) or 'nothing'})")
            if info.compress_type != zipfile.ZIP_STORED:
                with z.open(info) as entry:
                    arrays[name] = np.lib.format.read_array(entry)
                continue
            f.seek(info.header_offset)
            local = f.read(30)
            name_len, extra_len = struct.unpack("<HH", local[26:30])
            f.seek(info.header_offset + 30 + name_len + extra_len)
            version = np.lib.format.read_magic(f)
            read_header = (
                np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            )
            shape, fortran, dtype = read_header(f)
            if fortran or len(shape) != 1:
                raise ValueError(f"{name} is not a flat array (shape {shape})")
            if shape[0] == 0:
                arrays[name] = np.zeros(0, dtype)
            else:
                arrays[name] = np.memmap(path, dtype=dtype, mode="r", offset=f.tell(), shape=shape)
    indptr, indices, values = (arrays[n] for n in CSR_NAMES)
    if indptr.dtype.kind != "i" or indices.dtype.kind != "i" or values.dtype.kind != "f":
        raise ValueError(f"dtypes {indptr.dtype}, {indices.dtype}, {values.dtype}; expected int64, int32, float32")
    if len(indptr) == 0 or int(indptr[0]) != 0 or int(indptr[-1]) != len(indices) or len(indices) != len(values):
        raise ValueError(f"indptr does not describe its {len(indices)} indices and {len(values)} values")
    return indptr, indices, values  # type: ignore[return-value]
