"""What a search returns: hits (`Hit`), best first, with timings per step (`SearchResult`)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

__all__ = ["TIMING_KEYS", "Hit", "SearchResult"]

#: Seconds per step, the keys of `SearchResult.timings` (steps that did not run are 0).
TIMING_KEYS = (
    "model_load_s",
    "query_embedding_s",
    "index_load_s",
    "index_build_s",
    "candidate_search_s",
    "rescoring_s",
    "read_hits_s",
    "total_s",
)


class Hit(BaseModel):
    """One search result: rank (1 = best), id, cosine score, the text and the other kept columns."""

    rank: int
    id: str
    score: float
    text: str | None = None
    fields: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def from_row(cls, rank: int, score: float, row: dict[str, Any], text_field: str, **extra: Any) -> Hit:
        """A hit from a stored row: its id, its text (the `text_field` column) and the other columns (+ `extra`)."""
        fields = {name: value for name, value in row.items() if name != "id"}
        text = fields.pop(text_field, None)
        fields.update(extra)
        return cls(
            rank=rank, id=str(row.get("id")), score=score, text=text if isinstance(text, str) else None, fields=fields
        )


class SearchResult(list[Hit]):
    """The hits, best first (a list), with where the time went (`timings`, seconds) and how (`method`)."""

    def __init__(self, hits: list[Hit], timings: dict[str, float], method: str) -> None:
        super().__init__(hits)
        self.timings = timings
        self.method = method

    def timing_line(self) -> str:
        """One line for stderr: each step's time and the method."""
        t = self.timings
        steps = [("model load", "model_load_s"), ("query", "query_embedding_s")]
        steps += [("index load", "index_load_s"), ("index build", "index_build_s")]
        steps += [("candidates", "candidate_search_s"), ("rescoring", "rescoring_s"), ("hits", "read_hits_s")]
        shown = ", ".join(f"{name} {t[key]:.3f}s" for name, key in steps if t[key] or not key.startswith("index"))
        return f"search: {shown}; total {t['total_s']:.3f}s ({self.method})"
