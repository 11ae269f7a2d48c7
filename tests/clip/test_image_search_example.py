"""examples/image_search.py: a folder of images searched by text or by image, bad files skipped."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "image_search.py"


@pytest.fixture(scope="module")
def example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("image_search_example", EXAMPLE)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rows(out: str) -> list[tuple[int, float, str]]:
    return [(int(r), float(s), p) for r, s, p in re.findall(r"^\| (\d+) \| ([-\d.]+) \| (.+) \|$", out, re.M)]


def test_search_by_text_ranks_every_image(
    example: ModuleType, tiny_clip_path: Path, image_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (image_dir / "notes.txt").write_text("not an image")
    assert example.main([str(image_dir), "a red square", "--model", str(tiny_clip_path), "--top-k", "3"]) == 0
    out = capsys.readouterr().out
    rows = _rows(out)
    assert out.startswith("4 images, nearest to 'a red square':")
    assert [r[0] for r in rows] == [1, 2, 3]
    assert [r[1] for r in rows] == sorted((r[1] for r in rows), reverse=True)
    assert {Path(r[2]).name for r in rows} <= {"red.png", "red_copy.png", "green.png", "blue.png"}


def test_search_by_image_finds_its_copies_first(
    example: ModuleType,
    tiny_clip_path: Path,
    image_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (image_dir / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    cache = tmp_path / "vectors.sqlite"
    args = [str(image_dir), "--like", str(image_dir / "red.png"), "--model", str(tiny_clip_path)]
    assert example.main([*args, "--cache", str(cache), "--batch-size", "2"]) == 0
    captured = capsys.readouterr()
    rows = _rows(captured.out)
    assert "skipping" in captured.err and "broken.jpg" in captured.err
    assert {Path(p).name for _, _, p in rows[:2]} == {"red.png", "red_copy.png"}
    assert rows[0][1] == pytest.approx(1.0, abs=1e-4) and rows[1][1] == pytest.approx(1.0, abs=1e-4)
    assert len(rows) == 4 and cache.is_file()


def test_usage_errors(example: ModuleType, image_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        example.main([str(image_dir)])  # neither a text nor --like
    with pytest.raises(SystemExit):
        example.main([str(tmp_path / "empty"), "a cat"])
