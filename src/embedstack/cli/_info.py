"""`embedstack info OUT`: an output's model, dimensions, vector format, count and files."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from embedstack.cli._args import Parents

__all__ = ["add_parser", "cmd_info"]


def add_parser(sub: Any, parents: Parents) -> argparse.ArgumentParser:
    """Register `info` on the command line's subparsers."""
    info: argparse.ArgumentParser = sub.add_parser(
        "info", parents=[parents.common], help="show an output's model, dims and count"
    )
    info.add_argument("output", metavar="OUT")
    info.add_argument("--json", action="store_true", help="print the metadata as JSON")
    info.set_defaults(handler=cmd_info)
    return info


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _sparse_line(sparse: dict[str, Any], where: str) -> str:
    """The "sparse" line: the model, its kind and dimensions, and for BM25 its statistics and where they are."""
    model_name = sparse.get("model") or sparse.get("model_class")
    kind = "bm25" if sparse.get("model_class") == "BM25Embedding" else "splade"
    if sparse.get("model_class") not in ("BM25Embedding", "SpladeEmbedding"):
        kind = "sparse"
    line = f"{model_name} ({kind}: {sparse.get('model_class')}, {sparse.get('dims')} dims"
    if kind == "bm25":
        ident = sparse.get("model_identity") or {}
        line += f"; k1={ident.get('k1')} b={ident.get('b')}"
        stats = sparse.get("stats")
        if stats:
            how = "fitted on this corpus" if stats.get("from") == "corpus" else "given"
            line += (
                f"; statistics {how}: {stats.get('documents')} documents, mean length {stats.get('avgdl')}, "
                f"{stats.get('terms')} terms, in {where}"
            )
        else:
            line += f"; statistics in {where}"
    return line + ")"


def cmd_info(args: argparse.Namespace) -> int:
    """embedstack info OUT."""
    from embedstack.jobs import VectorFormat, read_meta
    from embedstack.jobs._output import (
        is_dense,
        meta_path,
        offsets_path,
        output_format,
        rescore_path,
        rows_path,
        sparse_path,
        stats_path,
    )

    path = Path(args.output)
    meta = read_meta(path)
    fmt = output_format(path)
    dense = is_dense(meta)
    vf = VectorFormat.from_meta(meta) if dense else None
    sparse = meta.get("sparse")
    files = [path] + ([rows_path(path), offsets_path(path)] if fmt == "npy" else [])
    files += [meta_path(path)] if fmt != "parquet" else []
    if fmt == "npy" and vf is not None and vf.rescore:
        files.append(rescore_path(path))
    if fmt == "npy" and sparse:
        files.append(sparse_path(path))
    stats_where = "the Parquet schema metadata" if fmt == "parquet" else stats_path(path).name
    if fmt in ("npy", "jsonl") and sparse and sparse.get("model_class") == "BM25Embedding":
        files.append(stats_path(path))
    if path.is_dir():  # a Parquet dataset directory (embed --ray)
        files = [f for f in path.rglob("*") if f.is_file()]
    size = sum(f.stat().st_size for f in files if f.exists())
    if args.json:
        shape = vf.to_meta() if vf is not None else {}
        print(
            json.dumps(
                {"file": str(path), "bytes": size, **meta, **shape, "output_format": fmt},
                ensure_ascii=False,
                indent=1,
            )
        )
        return 0
    rows = [("file", f"{path} ({fmt}, {_size(size)})")]
    if vf is not None:
        model = meta.get("model") or "(a model object)"
        identity = meta.get("model_identity") or {}
        parts = (meta.get("model_class"), meta.get("model_name"), identity.get("precision"))
        detail = ", ".join(str(x) for x in parts if x)
        rows += [
            ("model", f"{model} ({detail})" if detail else model),
            ("dims", f"{vf.dim} (of the model's {vf.source_dim})" if vf.truncated else str(vf.dim)),
            ("vectors", vf.describe()),
        ]
    else:
        rows += [("model", "none (sparse vectors only)")]
    rows += [
        ("count", str(meta.get("count"))),
        ("text", f"{meta.get('text_field')} (id field: {meta.get('id_field')})"),
        ("columns", ", ".join(meta.get("columns") or []) or "(none)"),
        ("inputs", ", ".join(meta.get("inputs") or [])),
        ("created", str(meta.get("created"))),
    ]
    if meta.get("updated"):
        rows.append(("updated", str(meta["updated"])))
    options = meta.get("model_options") or {}
    if options.get("long_inputs") == "chunk":
        overlap = options.get("chunk_overlap")
        shown = "the default" if overlap is None else f"{overlap} tokens"
        rows.append(("long", f"texts past the limit embedded whole (--long-inputs chunk, overlap {shown})"))
    if meta.get("late_chunks"):
        rows.append(("chunks", f"late chunks of {meta['late_chunks']} tokens, one row per chunk (--late-chunks)"))
    if sparse:
        rows.append(("sparse", _sparse_line(sparse, stats_where)))
    if vf is not None and vf.ranges is not None:
        low, high = vf.ranges
        where = meta.get("ranges_from") or "the corpus"
        rows.insert(
            4,
            (
                "ranges",
                f"min {low.min():.4f}..{low.max():.4f}, max {high.min():.4f}..{high.max():.4f} per dimension "
                f"(from {where}; --json lists them)",
            ),
        )
    for key, value in rows:
        print(f"{key:<8} {value}")
    return 0
