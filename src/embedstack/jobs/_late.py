"""`embed --late-chunks TOKENS`: each text a document, cut into chunks of TOKENS tokens, each chunk's vector by
late chunking (the document encoded once, the chunk's token vectors pooled), one output row per chunk.

A row's id is `<document id>#<chunk index>`; its columns are the document's kept fields (the text field holding
the chunk's text) plus `doc_id`, `chunk_index`, `chunk_start` and `chunk_end` (character offsets into the
document). The chunks are counted in a first pass over the input (tokenising only), so the output's row count
is known before any row is written; the output is written atomically, as every embed output is.

With a cache, each chunk's vector is kept under a key of its own (the model's identity, its document prompt,
`chunk_overlap`, the span and the whole document), so an interrupted run resumes: a document whose chunks are all
in the cache is not encoded again. A failing cache warns once and the run goes on without it.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from embedstack.base import BaseEmbedding
from embedstack.cache_key import identity_prefix
from embedstack.jobs._output import Writer, open_writer
from embedstack.jobs._readers import InputError, Record, RecordReader, ScanResult
from embedstack.progress import Progress
from embedstack.types import Role

__all__ = ["LATE_COLUMNS", "write_late_chunks"]

logger = logging.getLogger("embedstack")

#: The store collection holding late-chunk vectors.
LATE_COLLECTION = "late_chunks"
#: The columns a late-chunk output adds to the kept fields.
LATE_COLUMNS: dict[str, set[type]] = {"doc_id": {str}, "chunk_index": {int}, "chunk_start": {int}, "chunk_end": {int}}


def write_late_chunks(
    reader: RecordReader,
    scan: ScanResult,
    target: Path,
    emb: BaseEmbedding,
    meta: dict[str, Any],
    existing: dict[str, Any] | None,
    tokens: int,
    chunk_size: int,
    progress_arg: bool | Callable[[int], Any],
    shaper_for: Callable[[Writer], Any],
    store: Any = None,
) -> tuple[int, int]:
    """Write one row per chunk of each text (see the module's docstring); returns the rows written and the documents
    encoded (the rest came from `store`). `shaper_for(writer)` makes what shapes vectors (dimensions, precision) and
    hands them to the writer (`write`, `flush`)."""
    chunk_spans = getattr(emb, "chunk_spans", None)
    embed_chunks = getattr(emb, "embed_chunks", None)
    if not callable(chunk_spans) or not callable(embed_chunks):
        raise ValueError(
            f"--late-chunks needs a local model (local, local:<name or path>, torch:, onnx:, openvino:); "
            f"{type(emb).__name__} cannot encode a document once and pool its chunks"
        )
    clash = sorted(set(LATE_COLUMNS) & set(scan.columns))
    if clash:
        raise InputError(
            f"the input has a field {clash[0]!r}, which --late-chunks writes; leave it out with --keep, or rename it"
        )
    spans: list[list[tuple[int, int]]] = [chunk_spans(record.text, tokens) for record in reader]
    if len(spans) != scan.count:
        raise InputError(f"the input changed while it was read ({scan.count} texts, then {len(spans)}); re-run")
    rows = sum(len(s) for s in spans)
    columns = {**scan.columns, **LATE_COLUMNS}
    prior = int(existing["count"]) if existing else 0
    meta["count"] = prior + rows
    meta["late_chunks"] = tokens
    meta["columns"] = [*meta["columns"], *(c for c in LATE_COLUMNS if c not in meta["columns"])]
    writer = open_writer(target, meta, columns, existing=existing is not None)
    progress = Progress(scan.count, progress_arg, desc="late chunking", unit="doc")
    shaper = shaper_for(writer)
    cache = _LateCache(store, emb) if store is not None else None
    pending: list[Record] = []
    vectors: list[npt.NDArray[np.float32]] = []
    written = 0

    def flush() -> None:
        nonlocal written
        if pending:
            shaper.write(list(pending), np.concatenate(vectors))
            written += len(pending)
            pending.clear()
            vectors.clear()

    try:
        for record, doc_spans in zip(reader, spans):
            computed = 0
            if doc_spans:
                found = cache.read(record.text, doc_spans) if cache is not None else None
                if found is None:
                    found = np.asarray(embed_chunks(record.text, doc_spans), dtype=np.float32)
                    computed = 1
                    if cache is not None:
                        cache.write(record.text, doc_spans, found)
                vectors.append(found)
                pending.extend(_rows(record, doc_spans, reader.field))
            progress.advance(1, computed)
            if len(pending) >= chunk_size:
                flush()
        flush()
        shaper.flush()
        if written != rows:
            raise InputError(f"the input changed while it was read ({rows} chunks, then {written}); re-run")
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    finally:
        progress.close()
    return written, progress.computed


def _rows(record: Record, spans: list[tuple[int, int]], field: str) -> list[Record]:
    """One record per chunk: the document's kept fields, the chunk's text and where it stands."""
    out = []
    for k, (start, end) in enumerate(spans):
        text = record.text[start:end]
        columns = dict(record.columns)
        if field in columns:
            columns[field] = text
        columns.update(doc_id=record.id, chunk_index=k, chunk_start=start, chunk_end=end)
        out.append(Record(f"{record.id}#{k}", text, columns, record.where))
    return out


class _LateCache:
    """Late-chunk vectors in a store, a key per chunk; a failing store warns once and is then left alone."""

    def __init__(self, store: Any, emb: BaseEmbedding) -> None:
        self.store = store
        provider = emb.provider
        base = hashlib.sha256(identity_prefix(provider.identity()))
        overlap = getattr(emb, "chunk_overlap", None)
        base.update(f"\0late-chunk\0overlap={overlap}\0instruction=".encode())
        base.update((provider.instruction(Role.TEXT) or "").encode("utf-8") + b"\0")
        self.base = base
        self.dim: int | None = provider.output.size
        self.failed = False

    def _keys(self, document: str, spans: Sequence[tuple[int, int]]) -> list[str]:
        doc = self.base.copy()
        doc.update(document.encode("utf-8", "surrogatepass") + b"\0span=")
        keys = []
        for start, end in spans:
            h = doc.copy()
            h.update(f"{start}:{end}".encode())
            keys.append(h.hexdigest())
        return keys

    def read(self, document: str, spans: Sequence[tuple[int, int]]) -> npt.NDArray[np.float32] | None:
        """Every span's vector, or None unless all are there, readable, finite and of the model's length."""
        if self.failed:
            return None
        try:
            blobs = self.store.get_vector_blobs(self._keys(document, spans), LATE_COLLECTION)
        except Exception as e:
            self._fail("read", e)
            return None
        if any(not isinstance(b, (bytes, bytearray)) or not b for b in blobs):
            return None
        sizes = {len(b) for b in blobs}
        if len(sizes) != 1 or (self.dim is not None and sizes != {4 * self.dim}):
            return None
        rows = np.frombuffer(b"".join(bytes(b) for b in blobs), dtype="<f4").reshape(len(blobs), -1)
        return rows.astype(np.float32) if np.isfinite(rows).all() else None

    def write(self, document: str, spans: Sequence[tuple[int, int]], vectors: npt.NDArray[np.float32]) -> None:
        """Keep the document's chunk vectors (and learn the model's length from them)."""
        self.dim = self.dim or int(vectors.shape[1])
        if self.failed:
            return
        try:
            self.store.put_vectors(self._keys(document, spans), np.ascontiguousarray(vectors), LATE_COLLECTION)
        except Exception as e:
            self._fail("written", e)

    def _fail(self, op: str, exc: Exception) -> None:
        self.failed = True
        hint = getattr(self.store, "failure_hint", "turn the cache off (--no-cache)")
        msg = (
            f"the embedding cache {self.store!r} could not be {op} ({type(exc).__name__}: {exc}); late chunks are "
            f"still written but not cached. Fix: {hint}"
        )
        logger.warning(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=3)
