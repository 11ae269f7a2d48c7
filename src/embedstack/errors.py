"""embedstack's exceptions: each also derives from the builtin it refines, so `except ValueError` keeps working."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from embedstack.types import Batch, PartialResult

__all__ = [
    "BadVectorsError",
    "EmbeddingAPIError",
    "EmbedstackError",
    "InvalidInputError",
    "ModelMismatchError",
    "OutputError",
]


class EmbedstackError(Exception):
    """Base of every error embedstack raises on purpose."""


class InvalidInputError(EmbedstackError, ValueError):
    """An input item cannot be embedded (e.g. a lone surrogate); `label[index]` names it."""

    def __init__(self, message: str, label: str = "", index: int | None = None) -> None:
        super().__init__(message)
        self.label = label
        self.index = index


class BadVectorsError(EmbedstackError, ValueError):
    """A model returned something that is not a valid vector (NaN/inf, booleans, strings, wrong length).

    `positions` are the input positions (within the call) of the affected items, when known.
    """

    def __init__(self, message: str, positions: Sequence[int] = ()) -> None:
        super().__init__(message)
        self.positions = list(positions)


class _Failure(Protocol):
    """What EmbeddingAPIError reads of a classified failed attempt (the OpenAI provider's `retry.Failure`)."""

    @property
    def status(self) -> int | None: ...

    @property
    def retryable(self) -> bool: ...

    def describe(self) -> str: ...


class EmbeddingAPIError(EmbedstackError, RuntimeError):
    """A request failed for good: which items, after how many attempts, and what the server said.

    `indexes` are the failed items' positions in the caller's input when known (`label[i]`);
    the message never contains the API key.
    """

    def __init__(
        self,
        provider: str,
        failure: _Failure,
        attempts: int,
        items: Sequence[Any],
        endpoint: str = "",
        hint: str = "",
        action: str = "embedding",
    ) -> None:
        self.provider = provider
        #: What failed, as the message says it ("embedding", "reranking").
        self.action = action
        self.failure = failure
        #: What the failed batch did obtain (earlier requests of it); the pipeline caches it.
        self.partial: PartialResult | None = None
        self.status_code = failure.status
        self.attempts = attempts
        self.endpoint = endpoint
        self.hint = hint
        self.items = list(items)
        self.label = "items"
        self.indexes: list[int] | None = None
        super().__init__(self._message())

    def locate(self, batch: Batch) -> None:
        """Name the failed items by every place they have in the caller's input."""
        wanted = {x for x in self.items if isinstance(x, (str, tuple))}
        found = sorted(
            p for i, x in enumerate(batch.items) if isinstance(x, (str, tuple)) and x in wanted for p in batch.where(i)
        )
        label = batch.label
        if found:
            self.indexes = found
            self.label = label
            self.args = (self._message(),)

    def _where(self) -> str:
        n = len(self.items)
        if self.indexes is None:
            return f"{n} item{'s' if n != 1 else ''} of one batch"
        idx = self.indexes
        if idx == list(range(idx[0], idx[-1] + 1)):
            return f"{self.label}[{idx[0]}:{idx[-1] + 1}] ({len(idx)} item{'s' if len(idx) != 1 else ''})"
        shown = ", ".join(map(str, idx[:8])) + (", ..." if len(idx) > 8 else "")
        return f"{self.label}[{shown}] ({len(idx)} items, indexes {idx[0]}..{idx[-1]})"

    def _message(self) -> str:
        tries = f"{self.attempts} attempt{'s' if self.attempts != 1 else ''}"
        retried = "" if self.failure.retryable or self.attempts > 1 else " (not retryable)"
        where = f" from {self.endpoint}" if self.endpoint else ""
        hint = f"; {self.hint}" if self.hint else ""
        what = self.failure.describe()
        return f"{self.provider}: {self.action} {self._where()} failed after {tries}{retried}: {what}{where}{hint}"

    def __reduce__(self) -> tuple[Any, ...]:
        # The message, status and attempts travel; the failure, items and partial result stay behind.
        return (_rebuild_error, (self.args[0], self.status_code, self.attempts))


class _PickledEmbeddingAPIError(EmbeddingAPIError):
    def __init__(self, message: str, status_code: int | None, attempts: int) -> None:
        RuntimeError.__init__(self, message)
        self.status_code = status_code
        self.attempts = attempts
        self.items = []
        self.indexes = None
        self.action = "embedding"


def _rebuild_error(message: str, status_code: int | None, attempts: int) -> EmbeddingAPIError:
    return _PickledEmbeddingAPIError(message, status_code, attempts)


class OutputError(EmbedstackError, ValueError):
    """An output or index file that cannot be written or read (wrong extension, incomplete, not ours)."""


class ModelMismatchError(EmbedstackError, ValueError):
    """The model asked for is not the one an output was embedded with."""
