"""The commands behind `embedstack`: thin shells over embedstack.jobs that print results."""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import signal
import sys
import warnings
from pathlib import Path
from typing import Any

from embedstack.cli._models import cmd_models

__all__ = ["run"]


def _err(msg: str) -> None:
    print(f"embedstack: error: {' '.join(msg.splitlines())}", file=sys.stderr)


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def _quiet_libraries(debug: bool) -> None:
    """Warnings as one line each ("embedstack: warning: ...") and once; no Hub loading bars."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if debug:
        logging.basicConfig(level=logging.INFO, format="%(name)s: %(levelname)s: %(message)s")
        return
    shown: set[str] = set()

    def show(message: str) -> None:
        text = " ".join(str(message).split())
        if text not in shown:
            shown.add(text)
            print(f"embedstack: warning: {text}", file=sys.stderr)

    class _OneLine(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            show(record.getMessage())

    log = logging.getLogger("embedstack")
    log.addHandler(_OneLine(logging.WARNING))
    log.propagate = False
    warnings.showwarning = lambda message, *a, **k: show(str(message))


def run(args: argparse.Namespace) -> int:
    """Run one parsed command; errors become one line on stderr (a traceback only with --debug)."""
    from embedstack.jobs import InputError, ModelMismatchError, OutputError

    debug = getattr(args, "debug", False)
    _quiet_libraries(debug)
    signal.signal(signal.SIGTERM, _terminate)  # so temp files are removed as on Ctrl-C
    commands = {
        "embed": cmd_embed,
        "search": cmd_search,
        "info": cmd_info,
        "models": cmd_models,
        "serve": _cmd_serve,
        "map": _cmd_map,
    }
    try:
        return commands[args.command](args)
    except KeyboardInterrupt:
        if debug:
            raise
        hint = ""
        if args.command == "embed" and not args.no_cache:
            hint = "; what was computed is kept in the cache: re-run the same command to resume"
        print(f"\nembedstack: interrupted{hint}", file=sys.stderr)
        return 130
    except (InputError, OutputError, ModelMismatchError, ValueError, ImportError, OSError) as e:
        if debug:
            raise
        _err(str(e) or type(e).__name__)
        return 1
    except Exception as e:
        if debug:
            raise
        _err(f"{type(e).__name__}: {e} (re-run with --debug for the traceback)")
        return 1


def _cmd_serve(args: argparse.Namespace) -> int:
    from embedstack.cli._serve import cmd_serve

    return cmd_serve(args)


def _cmd_map(args: argparse.Namespace) -> int:
    from embedstack.cli._map import cmd_map

    return cmd_map(args)


def _cache_arg(args: argparse.Namespace) -> Any:
    from embedstack.jobs import DEFAULT_CACHE

    if args.no_cache:
        return None
    if args.cache and args.cache.startswith(("redis://", "rediss://", "unix://")):
        return args.cache
    return Path(args.cache) if args.cache else DEFAULT_CACHE


def _job_args(args: argparse.Namespace, keep: Any) -> dict[str, Any]:
    """The embed job's arguments that a file run and a Ray run share."""
    return {
        "inputs": args.inputs,
        "out": args.output,
        "model": args.model,
        "field": args.field,
        "id_field": args.id_field,
        "keep": keep,
        "input_format": args.input_format,
        "batch_size": args.batch_size,
        "skip_bad": args.skip_bad,
    }


def cmd_embed(args: argparse.Namespace) -> int:
    """embedstack embed INPUT... -o OUT."""
    from embedstack.jobs import embed_files

    keep: Any = args.keep if args.keep in ("all", "none") else [k for k in args.keep.split(",") if k.strip()]
    show = args.progress if args.progress is not None else (sys.stderr.isatty() and not args.quiet)
    if getattr(args, "ray", None) is not None:
        return _embed_on_ray(args, keep, bool(show))
    report = embed_files(
        **_job_args(args, keep),
        cache=_cache_arg(args),
        append=args.append,
        chunk_size=args.chunk_size,
        progress=bool(show),
        dimensions=args.dimensions,
        precision=args.precision,
        rescore=args.rescore_vectors,
    )
    if not args.quiet:
        for msg in report.skipped[:5]:
            print(f"embedstack: skipped {msg}", file=sys.stderr)
        if len(report.skipped) > 5:
            print(f"embedstack: skipped {len(report.skipped) - 5} more bad records", file=sys.stderr)
        if report.duplicate_ids:
            print(
                f"embedstack: warning: {report.duplicate_ids} duplicate ids (first: {report.first_duplicate})",
                file=sys.stderr,
            )
        print(report.summary(), file=sys.stderr)
    return 0


def _embed_on_ray(args: argparse.Namespace, keep: Any, show: bool) -> int:
    """embedstack embed --ray: the same job on Ray Data, into a Parquet dataset directory."""
    from embedstack.jobs import DEFAULT_CACHE, default_cache_path
    from embedstack.jobs._ray import embed_files_ray

    if args.append:
        raise ValueError("--append cannot be used with --ray; embed into a new OUT directory")
    compact = [f"--{name}" for name in ("dimensions", "precision") if getattr(args, name, None) is not None]
    if compact or getattr(args, "rescore_vectors", None) is not None:
        raise ValueError(
            f"{' and '.join(compact) or '--no-rescore-vectors'} cannot be used with --ray yet; embed without --ray "
            "for compact vectors (int8 ranges are calibrated once, in one process)"
        )
    cache = _cache_arg(args)
    report = embed_files_ray(
        **_job_args(args, keep),
        cache=str(default_cache_path()) if cache is DEFAULT_CACHE else cache,
        address=args.ray,
        concurrency=args.concurrency,
        progress=show,
    )
    if not args.quiet:
        for msg in report.skipped:
            print(f"embedstack: skipped {msg}", file=sys.stderr)
        print(
            f"embedded {report.count} texts on Ray ({args.concurrency} actors) with {report.model} → {report.out}",
            file=sys.stderr,
        )
    return 0


def _snippet(text: str | None, width: int) -> str:
    flat = " ".join((text or "").split())
    return flat if len(flat) <= width else flat[: max(width - 1, 0)] + "…"


def cmd_search(args: argparse.Namespace) -> int:
    """embedstack search OUT QUERY."""
    from embedstack.jobs import search

    hits = search(
        args.output,
        args.query,
        args.k,
        model=args.model,
        cache=_cache_arg(args),
        rescore=args.rescore,
        index=args.index,
    )
    if not args.quiet:
        print(hits.timing_line(), file=sys.stderr)
    if args.json:
        listed = [h.model_dump() for h in hits]
        doc: Any = {"hits": listed, "timings": hits.timings, "method": hits.method} if args.timings else listed
        print(json.dumps(doc, ensure_ascii=False, indent=1, default=str))
        return 0
    id_width = min(max((len(h.id) for h in hits), default=2), 40)
    columns = shutil.get_terminal_size((120, 24)).columns if sys.stdout.isatty() else 120
    room = max(columns - id_width - 16, 20)
    for h in hits:
        print(f"{h.rank:>3}  {h.score:.4f}  {h.id:<{id_width}}  {_snippet(h.text, room)}")
    return 0


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def cmd_info(args: argparse.Namespace) -> int:
    """embedstack info OUT."""
    from embedstack.jobs import VectorFormat, read_meta
    from embedstack.jobs._output import meta_path, offsets_path, output_format, rescore_path, rows_path

    path = Path(args.output)
    meta = read_meta(path)
    fmt = output_format(path)
    vf = VectorFormat.from_meta(meta)
    files = [path] + ([rows_path(path), offsets_path(path)] if fmt == "npy" else [])
    files += [meta_path(path)] if fmt != "parquet" else []
    if fmt == "npy" and vf.rescore:
        files.append(rescore_path(path))
    if path.is_dir():  # a Parquet dataset directory (embed --ray)
        files = [f for f in path.rglob("*") if f.is_file()]
    size = sum(f.stat().st_size for f in files if f.exists())
    if args.json:
        print(
            json.dumps(
                {"file": str(path), "bytes": size, **meta, **vf.to_meta(), "output_format": fmt},
                ensure_ascii=False,
                indent=1,
            )
        )
        return 0
    model = meta.get("model") or "(a model object)"
    identity = meta.get("model_identity") or {}
    parts = (meta.get("model_class"), meta.get("model_name"), identity.get("precision"))
    detail = ", ".join(str(x) for x in parts if x)
    rows = [
        ("file", f"{path} ({fmt}, {_size(size)})"),
        ("model", f"{model} ({detail})" if detail else model),
        ("dims", f"{vf.dim} (of the model's {vf.source_dim})" if vf.truncated else str(vf.dim)),
        ("vectors", vf.describe()),
        ("count", str(meta.get("count"))),
        ("text", f"{meta.get('text_field')} (id field: {meta.get('id_field')})"),
        ("columns", ", ".join(meta.get("columns") or []) or "(none)"),
        ("inputs", ", ".join(meta.get("inputs") or [])),
        ("created", str(meta.get("created"))),
    ]
    if meta.get("updated"):
        rows.append(("updated", str(meta["updated"])))
    if vf.ranges is not None:
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


def _dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None
