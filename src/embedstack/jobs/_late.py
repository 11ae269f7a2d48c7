"""`embed --late-chunks TOKENS`: each text a document, cut into chunks of TOKENS tokens, each chunk's vector by
late chunking (the document encoded once, the chunk's token vectors pooled), one output row per chunk.

A row's id is `<document id>#<chunk index>`; its columns are the document's kept fields (the text field holding
the chunk's text) plus `doc_id`, `chunk_index`, `chunk_start` and `chunk_end` (character offsets into the
document). The chunks are counted in a first pass over the input (tokenising only), so the output's row count
is known before any row is written; the output is written atomically, as every embed output is.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from embedstack.base import BaseEmbedding
from embedstack.jobs._output import Writer, open_writer
from embedstack.jobs._readers import InputError, Record, RecordReader, ScanResult
from embedstack.progress import Progress

__all__ = ["LATE_COLUMNS", "write_late_chunks"]

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
) -> int:
    """Write one row per chunk of each text (see the module's docstring); returns the rows written. `shaper_for(writer)`
    makes what shapes vectors (dimensions, precision) and hands them to the writer (`write`, `flush`)."""
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
            if doc_spans:
                vectors.append(np.asarray(embed_chunks(record.text, doc_spans), dtype=np.float32))
                pending.extend(_rows(record, doc_spans, reader.field))
            progress.advance(1, 1)
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
    return written


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
