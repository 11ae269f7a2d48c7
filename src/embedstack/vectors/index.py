"""An HNSW index stored beside an output: approximate top-k in milliseconds over millions of vectors.

The graph is faiss's (chosen over usearch by measurement: faster and better recall at the same memory,
docs/benchmarks.md#compact-vectors): cosine over 8-bit scalar-quantised vectors (ranges trained on the
vectors), or Hamming over packed binary codes. It lives in `OUT.index` with a small JSON sidecar
`OUT.index.json` (fingerprint, metric, sizes) that says what the index was built from without opening it.
Saving is atomic: the sidecar is removed first and written last, so a sidecar always describes a complete
index file. Loading memory-maps the file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from embedstack._atomic import atomic_write_text, publish
from embedstack._optional import require
from embedstack.errors import OutputError
from embedstack.vectors.exact import normalize

__all__ = ["METRICS", "VectorIndex", "index_path"]

#: "cos": float vectors by cosine similarity; "hamming": packed binary codes (uint8 bytes) by differing bits.
METRICS = ("cos", "hamming")
#: The sidecar's format tag and version.
_FORMAT = "embedstack-index"
_VERSION = 1
#: HNSW parameters (docs/benchmarks.md#compact-vectors): links per node (2x on the base layer), candidate
#: lists at build and at search (faiss's M, efConstruction, efSearch).
CONNECTIVITY = 16
EXPANSION_ADD = 128
EXPANSION_SEARCH = 64
_TRAIN_ROWS = 100_000  # rows (spread over the input) that set the 8-bit quantiser's per-dimension ranges
_EDGE = 1 << 20  # bytes hashed at each end of the index file
_CHUNK = 65_536  # rows converted and added at a time: bounded extra memory over memory-mapped inputs


def index_path(out: Path) -> Path:
    """The index file beside an output: `OUT.index`, or `OUT/_embedstack.index` in a dataset directory."""
    out = Path(out)
    if out.is_dir():
        return out / "_embedstack.index"
    return out.with_name(out.name + ".index")


def _sidecar(path: Path) -> Path:
    return Path(path).with_name(Path(path).name + ".json")


def _digest(path: Path) -> str:
    """SHA-256 of the file's first and last MiB: cheap on a GB index, and catches a replaced or cut file."""
    with open(path, "rb") as fh:
        h = hashlib.sha256(fh.read(_EDGE))
        size = fh.seek(0, os.SEEK_END)
        fh.seek(max(_EDGE, size - _EDGE))
        h.update(fh.read(_EDGE))
    return h.hexdigest()


def _read_sidecar(path: Path) -> dict[str, Any] | None:
    """The sidecar's fields when it describes the index file as it is now (same size), else None."""
    try:
        info = json.loads(_sidecar(path).read_text(encoding="utf-8"))
        size = os.path.getsize(path)
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or info.get("format") != _FORMAT or info.get("bytes") != size:
        return None
    return info


#: faiss, imported with the module: importing embedstack.vectors.index raises ImportError (naming the extra to
#: install) when it is missing, so a caller can fall back to exact search with one try/except around the import.
_FAISS: Any = require("faiss", "index", "faiss-cpu")


def _faiss() -> Any:
    return _FAISS


def _write(index: Any, metric: str, path: str) -> None:
    """Serialise a faiss index to `path` (the binary and float kinds have separate writers)."""
    faiss = _faiss()
    (faiss.write_index_binary if metric == "hamming" else faiss.write_index)(index, path)


def _ubinary(codes: npt.ArrayLike, what: str) -> npt.NDArray[np.uint8]:
    """Packed codes as ubinary bytes: int8 ('binary') codes are ubinary's ^ 0x80 (embedstack.vectors)."""
    arr = np.asarray(codes)
    if arr.dtype == np.int8:
        flipped: npt.NDArray[np.uint8] = arr.view(np.uint8) ^ np.uint8(0x80)
        return flipped
    if arr.dtype != np.uint8:
        raise ValueError(f"{what} for a hamming index must be packed binary codes (uint8 or int8), got {arr.dtype}")
    return np.ascontiguousarray(arr)


def _unit_rows(block: npt.ArrayLike, start: int, rows: npt.NDArray[np.int64] | None = None) -> npt.NDArray[np.float32]:
    """Contiguous float32 unit rows; ValueError naming the first row with NaN or infinite values."""
    out = np.ascontiguousarray(block, dtype=np.float32)
    finite = np.isfinite(out).all(axis=1)
    if not finite.all():
        bad = int(np.flatnonzero(~finite)[0])
        row = int(rows[bad]) if rows is not None else start + bad
        raise ValueError(f"vectors[{row}] has NaN or infinite values; an index needs finite vectors")
    return normalize(out)


class VectorIndex:
    """An HNSW graph over an output's rows: `search` returns row numbers and scores, best first."""

    backend = "faiss"

    def __init__(self, index: Any, *, metric: str, fingerprint: str, dims: int) -> None:
        self._index = index
        self.metric = metric
        self.fingerprint = fingerprint
        #: Vector length: dimensions for "cos", bytes per code for "hamming".
        self.dims = dims

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def __repr__(self) -> str:
        return f"VectorIndex({len(self)} rows, metric={self.metric!r}, dims={self.dims}, backend={self.backend!r})"

    @classmethod
    def build(cls, vectors: npt.ArrayLike, *, metric: str, fingerprint: str, progress: bool = False) -> VectorIndex:
        """Index `vectors` (n, dim): float vectors for "cos" (dequantise int8 codes first), packed codes for "hamming".

        Row i gets key i, so search returns row numbers of the output. Accepts np.memmap inputs (added in chunks).
        """
        if metric not in METRICS:
            raise ValueError(f"unknown index metric {metric!r}; use one of {', '.join(METRICS)}")
        data = np.asarray(vectors) if not isinstance(vectors, np.ndarray) else vectors
        if data.ndim != 2 or len(data) == 0:
            raise ValueError(f"an index needs a non-empty 2-D (n, dim) matrix, got shape {data.shape}")
        if metric == "cos" and not np.issubdtype(data.dtype, np.floating):
            raise ValueError(
                f"a cos index takes float vectors, got {data.dtype} codes; dequantize them first "
                "(embedstack.vectors.dequantize)"
            )
        dims = int(data.shape[1])
        faiss = _faiss()
        n = len(data)
        index: Any
        if metric == "hamming":
            index = faiss.IndexBinaryHNSW(dims * 8, CONNECTIVITY)
        else:
            index = faiss.IndexHNSWSQ(dims, faiss.ScalarQuantizer.QT_8bit, CONNECTIVITY, faiss.METRIC_INNER_PRODUCT)
            sample = np.linspace(0, n - 1, min(n, _TRAIN_ROWS)).astype(np.int64)
            index.train(_unit_rows(data[sample], 0, sample))
        index.hnsw.efConstruction = EXPANSION_ADD
        index.hnsw.efSearch = EXPANSION_SEARCH
        for start in range(0, n, _CHUNK):
            block = data[start : start + _CHUNK]
            index.add(_ubinary(block, "vectors") if metric == "hamming" else _unit_rows(block, start))
            if progress:
                print(f"\rindexing: {start + len(block):,}/{n:,} rows", end="", file=sys.stderr, flush=True)
        if progress:
            print(file=sys.stderr)
        return cls(index, metric=metric, fingerprint=fingerprint, dims=dims)

    def save(self, path: Path) -> None:
        """Write the index and its sidecar (with the fingerprint) atomically; on failure the old pair stays."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        temp = Path(name)
        try:
            _write(self._index, self.metric, os.fspath(temp))
            size, digest = temp.stat().st_size, _digest(temp)
            with contextlib.suppress(FileNotFoundError):
                _sidecar(path).unlink()  # from here until the new sidecar lands, the index reads as missing
            publish(temp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                temp.unlink()
            raise
        info = {
            "format": _FORMAT,
            "version": _VERSION,
            "backend": self.backend,
            "metric": self.metric,
            "dims": self.dims,
            "count": len(self),
            "connectivity": CONNECTIVITY,
            "expansion_add": EXPANSION_ADD,
            "expansion_search": EXPANSION_SEARCH,
            "bytes": size,
            "sha256_edges": digest,
            "fingerprint": self.fingerprint,
        }
        atomic_write_text(_sidecar(path), json.dumps(info, indent=1) + "\n")

    @classmethod
    def load(cls, path: Path) -> VectorIndex:
        """Open a saved index, memory-mapped (read-only); OutputError when it is missing, incomplete or not ours."""
        path = Path(path)
        info = _read_sidecar(path)
        fix = "delete it and rebuild (embedstack search --index)"
        if info is None:
            why = "missing" if not path.exists() else "incomplete or not an embedstack index (no matching sidecar)"
            raise OutputError(f"{path}: index {why}; {fix}")
        if info.get("version") != _VERSION or info.get("backend") != cls.backend or info.get("metric") not in METRICS:
            raise OutputError(f"{path}: index written by another embedstack version or backend; {fix}")
        try:
            damaged = _digest(path) != info.get("sha256_edges")
        except OSError as e:
            raise OutputError(f"{path}: cannot read the index ({e}); {fix}") from e
        if damaged:
            raise OutputError(f"{path}: index file changed since it was saved (damaged or replaced); {fix}")
        faiss = _faiss()
        metric, dims, count = info["metric"], int(info["dims"]), int(info["count"])
        read = faiss.read_index_binary if metric == "hamming" else faiss.read_index
        try:
            index = read(os.fspath(path), faiss.IO_FLAG_MMAP_IFC)  # pages come from the file as searches touch them
        except Exception as e:  # faiss raises RuntimeError on damaged or foreign files
            raise OutputError(f"{path}: unreadable index ({str(e).splitlines()[0][:200]}); {fix}") from e
        if int(index.d) != (dims * 8 if metric == "hamming" else dims) or int(index.ntotal) != count:
            raise OutputError(f"{path}: index does not match its sidecar (damaged file); {fix}")
        index.hnsw.efSearch = int(info.get("expansion_search", EXPANSION_SEARCH))
        return cls(index, metric=metric, fingerprint=str(info.get("fingerprint", "")), dims=dims)

    @staticmethod
    def stored_fingerprint(path: Path) -> str | None:
        """The fingerprint a saved index was built with, read from its sidecar; None if missing or unreadable."""
        info = _read_sidecar(Path(path))
        fingerprint = None if info is None else info.get("fingerprint")
        return fingerprint if isinstance(fingerprint, str) else None

    def search(self, query: npt.ArrayLike, k: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        """Row numbers (int64) and scores (float32) of the approximate top `k`, best first.

        Scores: cosine similarity for "cos" (query: float (dim,)); minus the Hamming distance for "hamming"
        (query: packed codes (dim/8,) uint8, or int8 'binary' codes), higher is better in both.
        """
        q: npt.NDArray[Any]
        if self.metric == "hamming":
            q = np.ascontiguousarray(_ubinary(query, "the query").reshape(-1))
        else:
            q = np.asarray(query, dtype=np.float32).reshape(-1)
            q = normalize(q[None, :])[0]
        if q.shape[0] != self.dims:
            raise ValueError(f"query has {q.shape[0]} values, the index has {self.dims} per vector")
        k = min(int(k), len(self))
        if k <= 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        distances, labels = self._index.search(q[None], k)
        found = labels[0] >= 0  # faiss pads with -1 when fewer than k rows are reachable
        keys = labels[0][found].astype(np.int64)
        values = distances[0][found].astype(np.float32)
        scores = -values if self.metric == "hamming" else values  # inner product of unit vectors: cosine
        return keys, scores.astype(np.float32)
