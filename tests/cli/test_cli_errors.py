"""Bad inputs and outputs: one stderr line naming file and line, a non-zero exit, no traceback."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from tests.conftest import Run

from embedstack.jobs import load_embeddings

pytestmark = pytest.mark.slow  # `embedstack` in subprocesses

GOOD = '{"id": "a", "text": "first"}\n'


def cut_gzip(data: bytes) -> bytes:
    """`data` gzipped, then cut in half: the compressed stream ends early."""
    packed = gzip.compress(data)
    return packed[: len(packed) // 2]


def one_line_error(r: object, *needles: str) -> str:
    rc, err = r.returncode, r.stderr  # type: ignore[attr-defined]
    assert rc == 1, err
    assert err.startswith("embedstack: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for n in needles:
        assert n in err, err
    return str(err)


@pytest.mark.parametrize(
    ("name", "content", "needles"),
    [
        (
            "bad.jsonl",
            GOOD + '{"id": "b", "text": "second"\n' + GOOD,
            ["bad.jsonl:2: not valid JSON", "--skip-bad"],
        ),
        (
            "bad.jsonl",
            GOOD + "[1, 2]\n",
            ["bad.jsonl:2: expected a JSON object or string, got an array"],
        ),
        (
            "nofield.jsonl",
            GOOD + '{"id": "b", "body": "x"}\n',
            ["nofield.jsonl:2: no 'text' field (fields: id, body)", "--field"],
        ),
        (
            "nulltext.jsonl",
            '{"id": "b", "text": null}\n',
            ["nulltext.jsonl:1: field 'text' is null"],
        ),
        (
            "numtext.jsonl",
            '{"id": "b", "text": 5}\n',
            ["numtext.jsonl:1: field 'text' is int, expected a string"],
        ),
        ("blank.jsonl", GOOD + '{"id": "b", "text": "  "}\n', ["blank.jsonl:2: the text is empty"]),
        (
            "latin.txt",
            b"ok line\nna\xefve caf\xe9\n",
            ["latin.txt:2: bytes that are not UTF-8 (0xef at byte 3", "iconv"],
        ),
        (
            "latin.jsonl",
            GOOD.encode() + b'{"id": "b", "text": "caf\xe9"}\n',
            ["latin.jsonl:2: bytes that are not UTF-8"],
        ),
        (
            "latin.csv",
            b'id,text\n1,fine\n2,"multi\nline caf\xe9"\n3,ok\n',
            ["latin.csv:4: bytes that are not UTF-8"],
        ),
        ("wide.csv", "id,text\n1,a,b\n", ["wide.csv:2: 3 fields but the header has 2"]),
        (
            "data.json",
            '[{"id": "a", "text": "x"},\n {"id": "b"}]',
            ["data.json item 2: no 'text' field"],
        ),
        ("broken.json", '[{"id": "a",\n "text": }]', ["broken.json:2: not valid JSON"]),
        ("scalar.json", "42", ["scalar.json: expected a JSON array"]),
        ("empty.jsonl", "", ["empty.jsonl: no texts to embed (empty input)"]),
        ("blank.txt", "\n  \n", ["blank.txt: no texts to embed (empty input)"]),
        ("header-only.csv", "id,text\n", ["header-only.csv: no texts to embed"]),
        ("notes.xml", "<a/>", ["notes.xml: unknown extension .xml", "--format"]),
        ("fake.parquet", "not parquet", ["fake.parquet: not a readable Parquet file"]),
        # a JSON escape of half a surrogate pair: a str that is not Unicode, which no model can take
        (
            "surrogate.jsonl",
            GOOD + '{"id": "b", "text": "bad \\ud800 half"}\n',
            ["surrogate.jsonl:2: field 'text' has a lone surrogate (\\ud800) at character 5", "--skip-bad"],
        ),
        (
            "surrogate-str.jsonl",
            '"ok"\n"\\udfff"\n',
            ["surrogate-str.jsonl:2: the text has a lone surrogate (\\udfff)"],
        ),
        ("surrogate-id.jsonl", '{"id": "\\udc80", "text": "x"}\n', ["surrogate-id.jsonl:1: id field 'id' has a lone"]),
        (
            "surrogate-col.jsonl",
            '{"id": "a", "text": "x", "meta": {"k": ["\\ud83d"]}}\n',
            ["surrogate-col.jsonl:1: field 'meta' has a lone surrogate (\\ud83d)"],
        ),
        (
            "surrogate.json",
            '[{"text": "a"}, {"text": "\\ud800"}]',
            ["surrogate.json item 2: field 'text' has a lone surrogate"],
        ),
        # an unclosed quote would swallow every later line into one text
        (
            "unclosed.csv",
            'id,text\n1,fine\n2,"never closed\n3,swallowed\n4,too\n',
            ["unclosed.csv:3: a quoted field that starts in this record is never closed", '""'],
        ),
        ("unclosed-header.csv", '"id,text\n1,fine\n', ["unclosed-header.csv:1: a quoted field"]),
        ("plain.jsonl.gz", GOOD, ["plain.jsonl.gz: not gzip data", "without .gz"]),
        (
            "cut.jsonl.gz",
            cut_gzip("".join(f'{{"text": "line {i}"}}\n' for i in range(3000)).encode()),
            ["cut.jsonl.gz: truncated gzip file"],
        ),
        (
            "cut.csv.gz",
            cut_gzip(b"id,text\n" + b"".join(b"%d,text %d\n" % (i, i) for i in range(3000))),
            ["cut.csv.gz: truncated gzip file"],
        ),
    ],
)
def test_bad_input_is_one_line_naming_file_and_line(
    cli: Run, tmp_path: Path, name: str, content: str | bytes, needles: list[str]
) -> None:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    r = cli("embed", name, "-o", "out.parquet", "-m", "fake:16", "--no-cache")
    one_line_error(r, *needles)
    assert not (tmp_path / "out.parquet").exists()


def test_other_usage_errors(cli: Run, tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text(GOOD)
    one_line_error(
        cli("embed", "missing.jsonl", "-o", "o.parquet", "-m", "fake"),
        "missing.jsonl: no such file or directory",
    )
    one_line_error(cli("embed", "a.jsonl", "-o", "o.csv", "-m", "fake"), "o.csv: unknown output extension .csv")
    one_line_error(
        cli("embed", "a.jsonl", "-o", "o.parquet", "-m", "nosuch"),
        "unknown embed_model 'nosuch'; accepted forms:",
        '"local"',
    )
    one_line_error(
        cli("embed", "a.jsonl", "-o", "o.parquet", "-m", "fake", "--id-field", "key", "--no-cache"),
        "a.jsonl:1: no 'key' field",
    )
    one_line_error(
        cli("embed", "a.jsonl", "-o", "o.parquet", "-m", "fake", "--keep", "vector"),
        "--keep 'vector'",
    )
    one_line_error(cli("search", "none.parquet", "q"), "none.parquet: no such file")
    (tmp_path / "cut.parquet").write_bytes(b"PAR1\x00\x00")
    one_line_error(cli("search", "cut.parquet", "q"), "cut.parquet: not a readable Parquet file")
    (tmp_path / "half.npy").write_bytes(b"\x93NUMPY")
    one_line_error(
        cli("info", "half.npy"),
        "half.npy: no metadata file half.npy.meta.json",
        "re-run the embed command",
    )
    one_line_error(
        cli("embed", "a.jsonl", "-o", "a.jsonl", "-m", "fake"),
        "a.jsonl: is both an input and the output",
    )
    usage = cli("embed", "a.jsonl", "-o", "o.parquet", "--batch-size", "0")
    assert usage.returncode == 2 and "expected a positive integer" in usage.stderr


def test_skip_bad_skips_and_reports_each_bad_record(cli: Run, tmp_path: Path) -> None:
    lines = [
        GOOD,
        "not json\n",
        '{"id": "c", "body": "no text"}\n',
        '{"id": "d", "text": "fourth"}\n',
        '{"id": "e", "text": "half a pair \\ud83d"}\n',
    ]
    (tmp_path / "mixed.jsonl").write_bytes("".join(lines).encode() + b'{"text": "\xff"}\n')
    r = cli("embed", "mixed.jsonl", "-o", "out.jsonl", "-m", "fake:16", "--cache", "c.sqlite", "--skip-bad")
    assert r.returncode == 0, r.stderr
    assert "embedstack: skipped mixed.jsonl:2: not valid JSON" in r.stderr
    assert "embedstack: skipped mixed.jsonl:3: no 'text' field" in r.stderr
    assert "embedstack: skipped mixed.jsonl:5: field 'text' has a lone surrogate (\\ud83d)" in r.stderr
    assert "embedstack: skipped mixed.jsonl:6: bytes that are not UTF-8" in r.stderr
    assert "embedded 2 texts (2 computed, 0 from cache)" in r.stderr
    assert load_embeddings(tmp_path / "out.jsonl").ids == ["a", "d"]

    (tmp_path / "allbad.jsonl").write_text("nope\nnope\n")
    one_line_error(
        cli("embed", "allbad.jsonl", "-o", "o.parquet", "-m", "fake", "--skip-bad", "--no-cache"),
        "allbad.jsonl: no texts to embed (all 2 records were bad and skipped)",
    )


def test_debug_shows_the_traceback(cli: Run, tmp_path: Path) -> None:
    (tmp_path / "bad.jsonl").write_text("{oops\n")
    r = cli("embed", "bad.jsonl", "-o", "o.parquet", "-m", "fake", "--debug")
    assert r.returncode == 1 and "Traceback" in r.stderr and "InputError: bad.jsonl:1: not valid JSON" in r.stderr


def test_duplicate_ids_are_kept_and_warned_about(cli: Run, tmp_path: Path) -> None:
    rows = [{"id": "x", "text": "one"}, {"id": "x", "text": "two"}]
    (tmp_path / "dup.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = cli("embed", "dup.jsonl", "-o", "o.parquet", "-m", "fake", "--no-cache")
    assert r.returncode == 0 and "1 duplicate ids (first: 'x' at dup.jsonl:2)" in r.stderr
    assert load_embeddings(tmp_path / "o.parquet").ids == ["x", "x"]
