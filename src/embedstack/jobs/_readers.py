"""Input readers: .txt, .jsonl, .json, .csv/.tsv, .parquet (optionally .gz), folders and stdin.

Each reader yields one `Record` per text, or an `InputError` for a record that is bad (so the
caller can stop or skip it); problems with a whole file raise `InputError` at once. Every message
names the file and line (or row) and says how to fix it.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import re
import shutil
import sys
import tempfile
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO

from embedstack.errors import EmbedstackError

__all__ = [
    "FORMATS",
    "InputError",
    "Record",
    "RecordReader",
    "ScanResult",
    "Source",
    "find_sources",
]

#: File extension → input format.
FORMATS: dict[str, str] = {
    ".txt": "txt",
    ".text": "txt",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
}
_FORMAT_NAMES = ("txt", "jsonl", "json", "csv", "tsv", "parquet")
_EXTS = ", ".join(sorted(set(FORMATS)))
#: Output columns that input fields may not take over.
RESERVED = frozenset({"id", "vector"})


class InputError(EmbedstackError, ValueError):
    """Bad input; the message names the file and line (or row) and the fix."""


@dataclass(frozen=True)
class Record:
    """One text to embed: its id, the text, the input fields kept, and where it came from."""

    id: str
    text: str
    columns: dict[str, Any]
    where: str


class Source:
    """One input: a file (format from its extension, or forced) or stdin (spooled: read twice)."""

    def __init__(self, name: str, fmt: str, path: Path | None = None, spool: IO[bytes] | None = None) -> None:
        self.name = name
        self.fmt = fmt
        self.path = path
        self._spool = spool
        self.gzipped = path is not None and path.name.lower().endswith(".gz")

    def __repr__(self) -> str:
        return f"Source({self.name!r}, {self.fmt!r})"

    def open(self) -> BinaryIO:
        """A fresh binary stream over the whole input (decompressed)."""
        if self._spool is not None:
            self._spool.seek(0)
            return _Unclosable(self._spool)  # type: ignore[return-value]
        assert self.path is not None
        try:
            if self.gzipped:  # owns its file: closing it closes both
                return gzip.GzipFile(filename=self.path, mode="rb")  # type: ignore[return-value]
            return open(self.path, "rb")
        except OSError as e:
            raise InputError(f"{self.name}: cannot open ({e.strerror})") from None


class _Unclosable(io.BufferedIOBase):
    """Wraps the stdin spool so readers may close what they opened without losing it."""

    def __init__(self, inner: IO[bytes]) -> None:
        self._inner = inner

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, n: int | None = -1) -> bytes:
        return self._inner.read(-1 if n is None else n)

    def read1(self, n: int = -1) -> bytes:
        return self._inner.read(n)

    def readline(self, n: int | None = -1) -> bytes:
        return self._inner.readline(-1 if n is None else n)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._inner.seek(offset, whence)

    def tell(self) -> int:
        return self._inner.tell()

    def close(self) -> None:
        pass

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._inner)


def _format_of(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    return FORMATS.get(os.path.splitext(name)[1])


#: How much of stdin is looked at to tell its format.
_SNIFF_BYTES = 65536
#: A CSV header cell that names a column (no spaces: prose with commas is not a header).
_HEADER_CELL = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*\Z")


def _sniff(head: bytes, field: str = "text") -> str:
    stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if head.startswith(b"PAR1"):
        return "parquet"
    if stripped.startswith(b"{"):
        return "jsonl"
    if stripped.startswith(b"["):
        return "json"
    return _sniff_table(head, field) or "txt"


def _sniff_table(head: bytes, field: str) -> str | None:
    """ "tsv" or "csv" when the first line is a header: it names `field`, or is all column names
    with the next rows as wide; else None (plain text, one text per line)."""
    text = head.decode("utf-8", "replace").lstrip("\ufeff")
    if len(head) >= _SNIFF_BYTES:  # the last line may be cut
        text = text[: text.rfind("\n") + 1]
    for fmt, delimiter in (("tsv", "\t"), ("csv", ",")):
        try:
            rows = [row for row in csv.reader(io.StringIO(text), delimiter=delimiter) if row][:6]
        except csv.Error:
            continue
        if not rows or len(rows[0]) < 2:
            continue
        header = rows[0]
        if field in (h.strip() for h in header):
            return fmt
        if len(rows) > 1 and all(_HEADER_CELL.match(h) for h in header) and all(len(r) == len(header) for r in rows):
            return fmt
    return None


def _check_format(fmt: str | None) -> None:
    if fmt is not None and fmt not in _FORMAT_NAMES:
        raise InputError(f"unknown input format {fmt!r}; expected one of {', '.join(_FORMAT_NAMES)}")


def find_sources(
    inputs: Sequence[str | os.PathLike[str]],
    fmt: str | None = None,
    stdin: BinaryIO | None = None,
    field: str = "text",
) -> list[Source]:
    """Expand inputs (files, folders, "-": stdin) into sources; bad ones raise InputError.

    The format of stdin is sniffed: Parquet, JSON Lines, JSON, CSV/TSV (a header line naming
    `field`, or column names over rows as wide), else text.
    """
    _check_format(fmt)
    if not inputs:
        raise InputError("no input given; pass files, folders or - for stdin")
    sources: list[Source] = []
    for given in inputs:
        name = os.fspath(given)
        if name == "-":
            sources.append(_stdin_source(fmt, stdin, field))
            continue
        path = Path(name)
        if path.is_dir():
            found = [
                Source(str(p), fmt or _format_of(p) or "", p)
                for p in sorted(path.rglob("*"))
                if p.is_file() and _format_of(p) and not any(part.startswith(".") for part in p.relative_to(path).parts)
            ]
            if not found:
                raise InputError(f"{name}: folder has no input files ({_EXTS}, optionally .gz)")
            sources.extend(found)
        elif path.exists():
            if not path.is_file():
                raise InputError(f"{name}: not a regular file")
            detected = fmt or _format_of(path)
            if detected is None:
                ext = "".join(path.suffixes[-2:]) or "(none)"
                raise InputError(
                    f"{name}: unknown extension {ext}; expected one of {_EXTS} (optionally .gz), or pass --format"
                )
            sources.append(Source(name, detected, path))
        else:
            raise InputError(f"{name}: no such file or directory")
    return sources


def _stdin_source(fmt: str | None, stdin: BinaryIO | None, field: str) -> Source:
    stream = stdin if stdin is not None else sys.stdin.buffer
    spool = tempfile.TemporaryFile()
    shutil.copyfileobj(stream, spool)
    spool.seek(0)
    detected = fmt or _sniff(spool.read(_SNIFF_BYTES), field)
    return Source("<stdin>", detected, spool=spool)


# -- raw readers: yield (where, default id, value); value: dict, str (bare text) or InputError
def _lines(src: Source, stream: BinaryIO) -> Iterator[tuple[int, str | InputError]]:
    """Decoded lines with their numbers; a line that is not UTF-8 comes back as an InputError."""
    for lineno, raw in enumerate(stream, 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            yield lineno, _not_utf8(f"{src.name}:{lineno}", raw, e)
            continue
        if lineno == 1 and line.startswith("\ufeff"):
            line = line[1:]
        yield lineno, line


def _not_utf8(where: str, raw: bytes, e: UnicodeDecodeError) -> InputError:
    return InputError(
        f"{where}: bytes that are not UTF-8 (0x{raw[e.start]:02x} at byte {e.start + 1} of the "
        "line); "
        "re-encode the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
    )


def _read_txt(src: Source, stream: BinaryIO) -> Iterator[tuple[str, str, Any]]:
    for lineno, line in _lines(src, stream):
        where = f"{src.name}:{lineno}"
        if isinstance(line, InputError):
            yield where, where, line
            continue
        text = line.rstrip("\r\n")
        if text.strip():
            yield where, where, text


def _read_jsonl(src: Source, stream: BinaryIO) -> Iterator[tuple[str, str, Any]]:
    for lineno, line in _lines(src, stream):
        where = f"{src.name}:{lineno}"
        if isinstance(line, InputError):
            yield where, where, line
            continue
        if not line.strip():
            continue
        try:
            value = json.loads(line.rstrip("\r\n"))
        except json.JSONDecodeError as e:
            yield (
                where,
                where,
                InputError(f"{where}: not valid JSON ({e.msg} at column {e.pos + 1}); fix the line or pass --skip-bad"),
            )
            continue
        if isinstance(value, (dict, str)):
            yield where, where, value
        else:
            yield (
                where,
                where,
                InputError(f"{where}: expected a JSON object or string, got {_json_type(value)}"),
            )


def _read_json(src: Source, stream: BinaryIO) -> Iterator[tuple[str, str, Any]]:
    data = stream.read()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        lineno = data.count(b"\n", 0, e.start) + 1
        start = data.rfind(b"\n", 0, e.start) + 1
        raise _not_utf8(
            f"{src.name}:{lineno}",
            data[start:],
            UnicodeDecodeError("utf-8", data, e.start - start, e.end - start, e.reason),
        ) from None
    if not text.strip():
        return
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{src.name}:{e.lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
    if isinstance(value, dict) and len(value) == 1 and isinstance(next(iter(value.values())), list):
        value = next(iter(value.values()))  # {"data": [...]}: the one list inside
    if not isinstance(value, list):
        raise InputError(
            f"{src.name}: expected a JSON array of objects or strings, got {_json_type(value)}; "
            "use .jsonl for one object per line"
        )
    for i, item in enumerate(value, 1):
        where, ident = f"{src.name} item {i}", f"{src.name}:{i}"
        if isinstance(item, (dict, str)):
            yield where, ident, item
        else:
            yield (
                where,
                ident,
                InputError(f"{where}: expected a JSON object or string, got {_json_type(item)}"),
            )


def _read_csv(src: Source, stream: BinaryIO) -> Iterator[tuple[str, str, Any]]:
    bad: list[tuple[int, InputError]] = []
    state = {"line": 0, "eof": False}

    def lines() -> Iterator[str]:
        for lineno, line in _lines(src, stream):
            state["line"] = lineno
            if isinstance(line, InputError):
                bad.append((lineno, line))
                yield "\n"
            else:
                yield line
        state["eof"] = True

    def unclosed(first: int) -> InputError:
        # csv asks for another line only inside a quoted field; a row that ends at EOF never closed it
        return InputError(
            f"{src.name}:{first}: a quoted field that starts in this record is never closed, so lines "
            f"{first}-{state['line']} would be read as one field; close the quote, or write a quote "
            'inside a field as "" (not skippable: where the record ends is unknown)'
        )

    reader = csv.reader(lines(), delimiter="\t" if src.fmt == "tsv" else ",")
    try:
        header = next(reader, None)
        while header == [] and not bad:
            header = next(reader, None)
        if bad:
            raise bad[0][1]
        if header is None:
            return
        if state["eof"]:
            raise unclosed(1)
        header = [h.strip() for h in header]
        prev = reader.line_num
        for row in reader:
            first = prev + 1
            prev = reader.line_num
            where = f"{src.name}:{first}"
            if bad:
                errors, bad[:] = list(bad), []
                if state["eof"]:  # the bad line was inside a quoted field: the rest of the file is lost
                    raise errors[0][1]
                yield (where if row else f"{src.name}:{errors[0][0]}"), where, errors[0][1]
                continue
            if state["eof"]:
                raise unclosed(first)
            if not row:
                continue
            if len(row) > len(header):
                yield (
                    where,
                    where,
                    InputError(
                        f"{where}: {len(row)} fields but the header has {len(header)}; quote "
                        "fields that contain the delimiter"
                    ),
                )
                continue
            yield (
                where,
                where,
                dict(zip(header, row + [None] * (len(header) - len(row)), strict=True)),
            )
    except csv.Error as e:
        raise InputError(f"{src.name}:{state['line']}: malformed CSV ({e})") from None


def _read_parquet(src: Source, stream: BinaryIO, text_field: str) -> Iterator[tuple[str, str, Any]]:
    from embedstack._optional import require

    pq = require("pyarrow.parquet", extra="cli", package="pyarrow")
    try:
        pf = pq.ParquetFile(stream)
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError for files that are not Parquet
        raise InputError(f"{src.name}: not a readable Parquet file ({_one_line(e)})") from None
    names = pf.schema_arrow.names
    if text_field not in names:
        raise InputError(
            f"{src.name}: no column {text_field!r} (columns: {', '.join(names)}); choose the text column with --field"
        )
    row = 0
    for batch in pf.iter_batches(batch_size=2048):
        for item in batch.to_pylist():
            row += 1
            yield f"{src.name} row {row}", f"{src.name}:{row}", item


def _gzip_error(src: Source, e: BaseException) -> InputError:
    if isinstance(e, EOFError):
        return InputError(
            f"{src.name}: truncated gzip file (the compressed data ends early: an interrupted download or "
            "copy?); re-create or re-download it, and check it with: gzip -t"
        )
    return InputError(
        f"{src.name}: not gzip data ({_one_line(e)}); rename the file without .gz if it is not "
        "compressed, or re-create it with gzip"
    )


def _surrogate_at(text: str) -> int | None:
    """Index of the first lone surrogate in `text` (not Unicode: no model or file can take it)."""
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return e.start
    return None


def _surrogate_in(value: Any) -> str | None:
    """The first lone surrogate in a string, or in the keys and strings of nested lists and dicts."""
    if isinstance(value, str):
        at = _surrogate_at(value)
        return None if at is None else value[at]
    if isinstance(value, dict):
        return next((s for k, v in value.items() for s in (_surrogate_in(k), _surrogate_in(v)) if s), None)
    if isinstance(value, (list, tuple)):
        return next((s for s in map(_surrogate_in, value) if s), None)
    return None


def _surrogate_error(where: str, what: str, char: str, at: int | None = None) -> InputError:
    pos = "" if at is None else f" at character {at + 1}"
    return InputError(
        f"{where}: {what} has a lone surrogate ({char.encode('unicode_escape').decode()}){pos}: half of a "
        "UTF-16 pair (in JSON an unpaired \\ud800-\\udfff escape), which is not Unicode; fix the "
        "source, or pass --skip-bad"
    )


def _json_type(value: Any) -> str:
    return {
        dict: "an object",
        list: "an array",
        str: "a string",
        bool: "a boolean",
        type(None): "null",
    }.get(type(value), "a number")


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


# -- records ----------------------------------------------------------------------------------
@dataclass
class ScanResult:
    """A first pass over the input: text count, column value types, skipped records."""

    count: int = 0
    columns: dict[str, set[type]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    duplicate_ids: int = 0
    first_duplicate: str | None = None


class RecordReader:
    """Turns sources (or in-memory items) into Records: the text, the id and the kept columns.

    keep: "all" (every input field but the id), "none", or a list of field names.
    """

    def __init__(
        self,
        sources: Sequence[Source] | None = None,
        *,
        items: Sequence[Any] | None = None,
        field: str = "text",
        id_field: str | None = None,
        keep: str | Sequence[str] = "all",
        skip_bad: bool = False,
    ) -> None:
        self.sources = list(sources or [])
        self.items = items
        self.field = field
        self.id_field = id_field or "id"
        self.id_required = id_field is not None
        self.skip_bad = skip_bad
        #: The id of the first item of a Python iterable whose items carry none (ids are positions): an append
        #: continues from the rows the output has, so that every id names one row.
        self.first_id = 0
        if isinstance(keep, str) and keep in ("all", "none"):
            self.keep: str | tuple[str, ...] = keep
        else:
            names = tuple(k.strip() for k in ([keep] if isinstance(keep, str) else keep) if k.strip())
            clash = [k for k in names if k in RESERVED and k != self.id_field]
            if clash:
                raise InputError(
                    f"--keep {clash[0]!r}: the output already has columns 'id' and 'vector'; drop it from --keep"
                )
            self.keep = tuple(k for k in names if k != self.id_field)
        self.skipped: list[str] = []

    def describe_inputs(self) -> list[str]:
        """The inputs' names, for the output's metadata."""
        return [s.name for s in self.sources] if self.items is None else ["<python iterable>"]

    def _raw(self) -> Iterator[tuple[str, str, Any]]:
        if self.items is not None:
            for i, item in enumerate(self.items):
                if isinstance(item, (str, Mapping)):
                    yield f"item {i}", str(self.first_id + i), item
                else:
                    yield (
                        f"item {i}",
                        str(self.first_id + i),
                        InputError(f"item {i}: expected a str or a mapping, got {type(item).__name__}"),
                    )
            return
        for src in self.sources:
            try:
                with src.open() as stream:
                    if src.fmt == "txt":
                        yield from _read_txt(src, stream)
                    elif src.fmt == "jsonl":
                        yield from _read_jsonl(src, stream)
                    elif src.fmt == "json":
                        yield from _read_json(src, stream)
                    elif src.fmt in ("csv", "tsv"):
                        yield from _read_csv(src, stream)
                    else:
                        yield from _read_parquet(src, stream, self.field)
            except (EOFError, gzip.BadGzipFile, zlib.error) as e:
                if not src.gzipped:
                    raise
                raise _gzip_error(src, e) from None

    def __iter__(self) -> Iterator[Record]:
        """Records in order; bad ones raise InputError, or are skipped and listed (skip_bad)."""
        self.skipped = []
        for where, ident, value in self._raw():
            rec = value if isinstance(value, InputError) else self._record(where, ident, value)
            if isinstance(rec, InputError):
                if not self.skip_bad:
                    raise rec
                self.skipped.append(str(rec))
                continue
            yield rec

    def _record(self, where: str, ident: str, value: Any) -> Record | InputError:
        if isinstance(value, str):
            text = value
            cols = (
                {self.field: value} if self.keep == "all" or (self.keep != "none" and self.field in self.keep) else {}
            )
            if self.id_required:
                return InputError(
                    f"{where}: a bare text has no {self.id_field!r} field; drop --id-field or give objects with ids"
                )
        else:
            text = value.get(self.field)
            if text is None:
                if self.field not in value:
                    fields = ", ".join(str(k) for k in value) or "none"
                    return InputError(
                        f"{where}: no {self.field!r} field (fields: {fields}); choose the text field with --field"
                    )
                return InputError(f"{where}: field {self.field!r} is null, expected a string")
            if not isinstance(text, str):
                return InputError(f"{where}: field {self.field!r} is {type(text).__name__}, expected a string")
            raw_id = value.get(self.id_field)
            if raw_id is not None:
                if isinstance(raw_id, (dict, list)):
                    return InputError(
                        f"{where}: id field {self.id_field!r} is {_json_type(raw_id)}, expected a string or number"
                    )
                ident = str(raw_id)
            elif self.id_required:
                return InputError(f"{where}: no {self.id_field!r} field (the id field given by --id-field)")
            if self.keep == "all":
                cols = {str(k): v for k, v in value.items() if k not in RESERVED and k != self.id_field}
            elif self.keep == "none":
                cols = {}
            else:
                cols = {k: value.get(k) for k in self.keep}
        if not text.strip():
            return InputError(f"{where}: the text is empty; remove the record or pass --skip-bad")
        return self._check_unicode(where, value, text, ident, cols) or Record(ident, text, cols, where)

    def _check_unicode(self, where: str, value: Any, text: str, ident: str, cols: dict[str, Any]) -> InputError | None:
        """An error for a lone surrogate in the text, the id or a kept field (none can be written)."""
        at = _surrogate_at(text)
        if at is not None:
            what = "the text" if isinstance(value, str) else f"field {self.field!r}"
            return _surrogate_error(where, what, text[at], at)
        at = _surrogate_at(ident)
        if at is not None:
            return _surrogate_error(where, f"id field {self.id_field!r}", ident[at], at)
        for name, col in cols.items():
            char = None if col is text else _surrogate_in(name) or _surrogate_in(col)
            if char:
                return _surrogate_error(where, f"field {name!r}", char)
        return None

    def scan(self) -> ScanResult:
        """Read everything once, embedding nothing: count, column types, bad records, dup ids."""
        result = ScanResult()
        seen: set[str] = set()
        for rec in self:
            result.count += 1
            for k, v in rec.columns.items():
                result.columns.setdefault(k, set()).add(type(v))
            if rec.id in seen:
                result.duplicate_ids += 1
                result.first_duplicate = result.first_duplicate or f"{rec.id!r} at {rec.where}"
            else:
                seen.add(rec.id)
        if self.keep not in ("all", "none"):
            result.columns = {k: result.columns.get(k, {type(None)}) for k in self.keep}
        result.skipped = list(self.skipped)
        return result
