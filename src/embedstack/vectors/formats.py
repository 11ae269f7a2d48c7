"""How an output stores its vectors: Matryoshka dimensions, precision, int8 ranges and rescoring vectors.

`VectorFormat` turns model vectors into the stored codes (`encode`) and stored codes back into float32
vectors (`decode`: what `load_embeddings` returns for every precision). Its fields are written to the
output's metadata and read back from it, so an append or a search uses exactly the same encoding.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from embedstack.vectors.compact import calibration_ranges, dequantize, quantize, truncate_dimensions
from embedstack.vectors.precision import BINARY, SCALAR, STORED_DTYPES, check_precision

__all__ = [
    "CALIBRATION_ROWS",
    "VectorFormat",
    "check_compact_args",
    "unsigned_bits",
]

#: int8/uint8 ranges (and binary outputs' rescoring ranges) come from the first this-many vectors of a new output.
CALIBRATION_ROWS = 2048


def check_compact_args(dimensions: int | None, precision: str | None) -> None:
    """Refuse a bad `dimensions` or `precision` before any work is done."""
    if dimensions is not None and (isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions < 1):
        raise ValueError(f"dimensions must be a positive integer, got {dimensions!r}")
    if precision is not None:
        check_precision(precision)


@dataclass(frozen=True)
class VectorFormat:
    """The stored form of an output's vectors.

    `dim` is the vectors' length after truncation (`source_dim`: the model's), `ranges` the (2, dim)
    int8/uint8 calibration ranges (for binary: those of the rescoring vectors), `rescore` how rescoring
    vectors are kept beside binary codes (None: not kept).
    """

    precision: str = "float32"
    dim: int = 0
    source_dim: int = 0
    ranges: npt.NDArray[np.float32] | None = None
    rescore: str | None = None

    @property
    def binary(self) -> bool:
        """Whether the codes are packed bits."""
        return self.precision in BINARY

    @property
    def truncated(self) -> bool:
        """Whether vectors are cut to fewer dimensions than the model gives."""
        return self.dim != self.source_dim

    @property
    def width(self) -> int:
        """Values per stored row: `dim`, or its bytes of packed bits."""
        return (self.dim + 7) // 8 if self.binary else self.dim

    @property
    def dtype(self) -> np.dtype[Any]:
        """The stored codes' numpy dtype (little-endian)."""
        return STORED_DTYPES[self.precision]

    @property
    def needs_ranges(self) -> bool:
        """Whether encoding needs calibration ranges (int8/uint8 codes or int8 rescoring vectors)."""
        return self.precision in SCALAR or self.rescore is not None

    # -- metadata ---------------------------------------------------------------------------------
    def to_meta(self) -> dict[str, Any]:
        """The metadata fields of this format (merged into an output's metadata)."""
        return {
            "dim": self.dim,
            "source_dim": self.source_dim,
            "dimensions": self.dim if self.truncated else None,
            "precision": self.precision,
            "ranges": None if self.ranges is None else self.ranges.tolist(),
            "rescore": self.rescore,
        }

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> VectorFormat:
        """The format recorded in an output's metadata (outputs from before compact vectors: float32)."""
        dim = int(meta["dim"])
        ranges = meta.get("ranges")
        return cls(
            precision=str(meta.get("precision") or "float32"),
            dim=dim,
            source_dim=int(meta.get("source_dim") or dim),
            ranges=None if ranges is None else np.asarray(ranges, dtype=np.float32),
            rescore=meta.get("rescore"),
        )

    def with_ranges(self, sample: npt.NDArray[np.float32]) -> VectorFormat:
        """This format with ranges calibrated on `sample` (model vectors, before truncation), if it needs them."""
        if not self.needs_ranges:
            return self
        vectors = self.shape(sample)
        if len(vectors) >= 2:
            ranges = calibration_ranges(vectors)
        else:  # one vector: unit vectors' values lie in [-1, 1]
            ranges = np.stack([np.full(self.dim, -1.0), np.full(self.dim, 1.0)]).astype(np.float32)
        return VectorFormat(self.precision, self.dim, self.source_dim, ranges, self.rescore)

    # -- encoding ---------------------------------------------------------------------------------
    def shape(self, vectors: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Model vectors cut to `dim` and re-normalised (unchanged when not truncated)."""
        if vectors.shape[1] != self.source_dim:
            raise ValueError(f"the model returned {vectors.shape[1]}-dim vectors after {self.source_dim}-dim ones")
        if not self.truncated:
            return np.asarray(vectors, dtype=np.float32)
        return truncate_dimensions(vectors, self.dim)

    def encode(self, vectors: npt.NDArray[np.float32]) -> tuple[np.ndarray, np.ndarray | None]:
        """Stored codes for model vectors, and their rescoring codes (binary outputs that keep them)."""
        shaped = self.shape(vectors)
        codes = np.ascontiguousarray(quantize(shaped, self.precision, self.ranges), dtype=self.dtype)
        extra = None
        if self.rescore is not None:
            extra = np.ascontiguousarray(quantize(shaped, self.rescore, self.ranges), dtype=np.int8)
        return codes, extra

    def encode_query(self, query: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
        """The query as the corpus was stored: truncated to `dim` and unit length."""
        q = np.asarray(query, dtype=np.float32).reshape(1, -1)
        if q.shape[1] != self.source_dim:
            raise ValueError(f"the query vector has {q.shape[1]} dims, the output's model gives {self.source_dim}")
        unit: npt.NDArray[np.float32] = truncate_dimensions(q, self.dim)[0]
        return unit

    # -- decoding ---------------------------------------------------------------------------------
    def decode(self, codes: np.ndarray, rescore: np.ndarray | None = None) -> npt.NDArray[np.float32]:
        """float32 (n, dim) vectors from stored codes: dequantised int8/uint8; for binary the rescoring
        vectors when given, else the bits as ±1."""
        if self.binary:
            if rescore is not None:
                return self.decode_rescore(rescore)
            bits = np.unpackbits(unsigned_bits(codes), axis=1)[:, : self.dim]
            return (bits.astype(np.float32) * 2 - 1).astype(np.float32)
        if self.precision in SCALAR:
            return dequantize(codes, self.precision, self.ranges)
        return np.asarray(codes, dtype=np.float32)

    def decode_rescore(self, codes: np.ndarray) -> npt.NDArray[np.float32]:
        """float32 vectors from the rescoring codes kept beside binary codes."""
        if self.rescore is None:
            raise ValueError("this output keeps no rescoring vectors")
        return dequantize(codes, self.rescore, self.ranges)

    def describe(self) -> str:
        """One line for `embedstack info`: precision, dimensions, ranges, rescoring vectors."""
        dims = f"{self.dim} of {self.source_dim} dims" if self.truncated else f"{self.dim} dims"
        parts = [f"{self.precision}, {dims}", f"{self.width * self.dtype.itemsize} bytes per vector"]
        if self.ranges is not None:
            parts.append(f"ranges over {self.ranges.shape[1]} dims kept")
        if self.binary:
            parts.append(f"rescoring vectors: {self.rescore}" if self.rescore else "no rescoring vectors")
        return "; ".join(parts)


def unsigned_bits(codes: np.ndarray) -> npt.NDArray[np.uint8]:
    """Packed bits as uint8 whatever the binary precision ('binary' int8 codes are the bits ^ 0x80)."""
    arr = np.asarray(codes)
    bits: npt.NDArray[np.uint8] = np.ascontiguousarray(arr).view(np.uint8)
    return bits ^ np.uint8(0x80) if arr.dtype == np.int8 else bits
