"""The one progress reporter: a bar over input items that also counts what the model computed.

Every long call reports through it — `embed(show_progress=True)`, `embed_iter`, the CLI's embed jobs —
so bars move the same way everywhere: per finished batch, cache hits and repeated items included.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Union

__all__ = ["Progress", "ProgressArg"]


class Progress:
    """Items done (`done`) and items the model embedded (`computed`), shown on a tqdm bar when asked.

    `show`: True for a tqdm bar, a callable `show(total) -> bar` (anything with `update(n)` and
    optionally `close()`) for your own, False to count only. Thread-safe: batches finish in threads.
    """

    def __init__(
        self,
        total: int | None,
        show: bool | Callable[[Any], Any] = True,
        *,
        desc: str = "Generating embeddings",
        unit: str = "item",
    ) -> None:
        self.total = total
        self.done = 0
        self.computed = 0
        self._lock = threading.Lock()
        self._bar: Any = None
        if callable(show):
            self._bar = show(total)
        elif show:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, smoothing=0.1)

    @property
    def shown(self) -> bool:
        """Whether a bar is drawn (the pipeline skips per-batch bookkeeping otherwise)."""
        return self._bar is not None

    def advance(self, items: int, computed: int = 0) -> None:
        """`items` input items finished, `computed` of them embedded by the model (the rest: cache, repeats)."""
        with self._lock:
            self.done += items
            self.computed += computed
            if self._bar is not None and items:
                self._bar.update(items)

    def close(self) -> None:
        """Close the bar (idempotent)."""
        bar, self._bar = self._bar, None
        if bar is not None and hasattr(bar, "close"):
            bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: What `show_progress` accepts: a bool (a bar of this call) or a Progress shared by several calls.
ProgressArg = Union[bool, Progress]
