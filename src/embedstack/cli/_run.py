"""Running one parsed command: warnings as one line each, SIGTERM as an exit, errors as one line on stderr."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import warnings
from typing import Any

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
    try:
        return int(args.handler(args))  # set by the command's add_parser
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
