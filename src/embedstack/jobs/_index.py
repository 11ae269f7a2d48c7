"""An HNSW index stored beside an output: approximate top-k in milliseconds over millions of vectors.

The graph is usearch's (chosen over faiss by measurement, docs/benchmarks.md#compact-vectors), kept in
`OUT.index` with a small JSON sidecar `OUT.index.json` (fingerprint, metric, sizes) that says what the
index was built from without opening it. Saving is atomic: the sidecar is removed first and written last,
so a sidecar always describes a complete index file. Loading memory-maps the file (usearch's view).
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
from embedstack.jobs._output import OutputError

__all__ = ["METRICS", "VectorIndex", "index_path"]

#: "cos": float vectors by cosine similarity; "hamming": packed binary codes (uint8 bytes) by differing bits.
METRICS = ("cos", "hamming")
#: The sidecar's format tag and version.
_FORMAT = "embedstack-index"
_VERSION = 1
#: HNSW parameters (docs/benchmarks.md#compact-vectors): graph degree, candidate lists at build and at search.
CONNECTIVITY = 16
EXPANSION_ADD = 128
EXPANSION_SEARCH = 64
#: How each metric's vectors are stored in the graph: int8 for cosine (4x less memory than float32, recall
#: unchanged on unit vectors), one bit per dimension for Hamming.
_SCALAR = {"cos": "i8", "hamming": "b1"}
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


def _usearch() -> Any:
    return require("usearch.index", "index", "usearch")


def _ubinary(codes: npt.ArrayLike, what: str) -> npt.NDArray[np.uint8]:
    """Packed codes as ubinary bytes: int8 ('binary') codes are ubinary's ^ 0x80 (embedstack.quantize)."""
    arr = np.asarray(codes)
    if arr.dtype == np.int8:
        flipped: npt.NDArray[np.uint8] = arr.view(np.uint8) ^ np.uint8(0x80)
        return flipped
    if arr.dtype != np.uint8:
        raise ValueError(f"{what} for a hamming index must be packed binary codes (uint8 or int8), got {arr.dtype}")
    return np.ascontiguousarray(arr)


class VectorIndex:
    """An HNSW graph over an output's rows: `search` returns row numbers and scores, best first."""

    backend = "usearch"

    def __init__(self, index: Any, *, metric: str, fingerprint: str, dims: int) -> None:
        self._index = index
        self.metric = metric
        self.fingerprint = fingerprint
        #: Vector length: dimensions for "cos", bytes per code for "hamming".
        self.dims = dims

    def __len__(self) -> int:
        return len(self._index)

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
                "(embedstack.quantize.dequantize)"
            )
        dims = int(data.shape[1])
        ndim = dims * 8 if metric == "hamming" else dims
        index = _usearch().Index(
            ndim=ndim,
            metric=metric,
            dtype=_SCALAR[metric],
            connectivity=CONNECTIVITY,
            expansion_add=EXPANSION_ADD,
            expansion_search=EXPANSION_SEARCH,
        )
        n = len(data)
        for start in range(0, n, _CHUNK):
            block = data[start : start + _CHUNK]
            rows: npt.NDArray[Any]
            if metric == "hamming":
                rows = _ubinary(block, "vectors")
            else:
                rows = np.asarray(block, dtype=np.float32)
                if not np.isfinite(rows).all():
                    bad = start + int(np.flatnonzero(~np.isfinite(rows).all(axis=1))[0])
                    raise ValueError(f"vectors[{bad}] has NaN or infinite values; an index needs finite vectors")
                rows = rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), np.float32(1e-12))
            index.add(np.arange(start, start + len(rows), dtype=np.uint64), np.ascontiguousarray(rows))
            if progress:
                print(f"\rindexing: {start + len(rows):,}/{n:,} rows", end="", file=sys.stderr, flush=True)
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
            self._index.save(os.fspath(temp))
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
        usearch = _usearch()
        try:
            meta = usearch.Index.metadata(os.fspath(path))
            index = usearch.Index.restore(os.fspath(path), view=True) if meta else None
        except Exception as e:  # usearch raises RuntimeError/ValueError kinds on damaged files
            raise OutputError(f"{path}: unreadable index ({e}); {fix}") from e
        metric, dims, count = info["metric"], int(info["dims"]), int(info["count"])
        ndim = dims * 8 if metric == "hamming" else dims
        if index is None or int(index.ndim) != ndim or len(index) != count:
            raise OutputError(f"{path}: index does not match its sidecar (damaged file); {fix}")
        index.expansion_search = int(info.get("expansion_search", EXPANSION_SEARCH))
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
            q = _ubinary(query, "the query").reshape(-1)
        else:
            q = np.asarray(query, dtype=np.float32).reshape(-1)
            q = q / max(float(np.linalg.norm(q)), 1e-12)
        if q.shape[0] != self.dims:
            raise ValueError(f"query has {q.shape[0]} values, the index has {self.dims} per vector")
        k = min(int(k), len(self))
        if k <= 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        matches = self._index.search(q, k)
        keys = np.asarray(matches.keys, dtype=np.int64)
        distances = np.asarray(matches.distances, dtype=np.float32)
        scores = -distances if self.metric == "hamming" else np.float32(1) - distances
        return keys, scores.astype(np.float32)
