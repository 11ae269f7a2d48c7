"""Query/text instructions for well-known embedding model families (BGE, E5, GTE, Instructor, ...).

Retrieval models trained with prefixes ("query: ", "search_document: ", ...) lose accuracy without
them. The table is matched on the model's repository name without its organisation, lower-cased,
so a local directory named like the repository (".../bge-small-en-v1.5") matches too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePath

__all__ = ["KNOWN_FAMILIES", "InstructionSet", "instructions_for"]

_BGE_EN = "Represent this sentence for searching relevant passages: "
_BGE_ZH = "为这个句子生成表示以用于检索相关文章\uff1a"  # ends in a full-width colon
_WEB_SEARCH = "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery: "


@dataclass(frozen=True)
class InstructionSet:
    """The prefixes one model family was trained with; None where it uses none."""

    family: str
    pattern: str
    query: str | None
    text: str | None

    def matches(self, base_name: str) -> bool:
        """Whether a lower-cased repository name (no organisation) belongs to this family."""
        return re.fullmatch(self.pattern, base_name) is not None


#: First match wins; families listed with (None, None) are known to take no instruction.
KNOWN_FAMILIES: tuple[InstructionSet, ...] = (
    InstructionSet(
        "instructor",
        r"instructor-(base|large|xl)",
        "Represent the question for retrieving supporting documents: ",
        "Represent the document for retrieval: ",
    ),
    InstructionSet("bge-zh", r"bge-(small|base|large)-zh(-v1\.5)?", _BGE_ZH, None),
    InstructionSet("bge-en", r"bge-(small|base|large)-en(-v1\.5)?", _BGE_EN, None),
    InstructionSet("bge-m3", r"bge-m3", None, None),
    InstructionSet("e5-instruct", r"(multilingual-e5-large-instruct|e5-mistral-7b-instruct)", _WEB_SEARCH, None),
    InstructionSet("e5", r"(multilingual-)?e5-(small|base|large)(-v2)?", "query: ", "passage: "),
    InstructionSet("gte-qwen", r"gte-qwen(1\.5|2)-[0-9.]+b-instruct", _WEB_SEARCH, None),
    InstructionSet("gte", r"gte-(small|base|large)(-en-v1\.5|-zh)?|gte-multilingual-base", None, None),
    InstructionSet("nomic", r"nomic-embed-text-v(1|1\.5|2-moe)", "search_query: ", "search_document: "),
    InstructionSet("mxbai", r"mxbai-embed-(large|2d-large)-v1", _BGE_EN, None),
    InstructionSet("arctic-embed-v2", r"snowflake-arctic-embed-(m|l)-v2\.0", "query: ", None),
    InstructionSet("arctic-embed", r"snowflake-arctic-embed-(xs|s|m|m-long|l)(-v1\.5)?", _BGE_EN, None),
)


def _base_name(model_name: str) -> str:
    name = model_name.rstrip("/\\")
    return PurePath(name.replace("\\", "/")).name.lower()


def instructions_for(model_name: str | None) -> InstructionSet | None:
    """The family entry for `model_name` (repository id or directory path), or None if unknown."""
    if not model_name:
        return None
    base = _base_name(model_name)
    for entry in KNOWN_FAMILIES:
        if entry.matches(base):
            return entry
    return None
