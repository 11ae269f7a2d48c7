"""Vectors at rest: stored precisions, quantisation, exact search and the HNSW index, one of each.

- `precision`: the one vocabulary of stored precisions (`float32` ... `ubinary`) and the rescoring default;
- `compact`: Matryoshka truncation, scalar and binary codes, Hamming and int8 scoring;
- `exact`: the one `normalize` and the one top-k (ties to the lower row);
- `formats`: `VectorFormat`, how an output stores its vectors;
- `index`: `VectorIndex`, the HNSW index beside an output (needs the `index` extra: faiss).

from embedstack.vectors import quantize, top_k
codes = quantize(vectors, "int8", ranges)
"""

from embedstack.vectors.compact import (
    binary_top_k,
    calibration_ranges,
    dequantize,
    hamming_distances,
    quantize,
    rescore,
    scalar_cosines,
    truncate_dimensions,
)
from embedstack.vectors.exact import RunningTopK, cosine_top_k, normalize, top_k
from embedstack.vectors.formats import VectorFormat
from embedstack.vectors.precision import BINARY, DEFAULT_RESCORE, FLOAT, PRECISIONS, SCALAR, Precision

__all__ = [
    "BINARY",
    "DEFAULT_RESCORE",
    "FLOAT",
    "PRECISIONS",
    "SCALAR",
    "Precision",
    "RunningTopK",
    "VectorFormat",
    "binary_top_k",
    "calibration_ranges",
    "cosine_top_k",
    "dequantize",
    "hamming_distances",
    "normalize",
    "quantize",
    "rescore",
    "scalar_cosines",
    "top_k",
    "truncate_dimensions",
]
