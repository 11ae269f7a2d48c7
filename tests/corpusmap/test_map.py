"""`embedstack map`: the page in real headless Chromium (over CDP), the PNG, the layout and labels, the errors."""

from __future__ import annotations

import json
import os
import struct
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests.conftest import SAMPLE, Run, cli_env

from embedstack.corpusmap import PNG_SIZE, build_map, render_html
from embedstack.corpusmap._build import TEXT_CHARS
from embedstack.corpusmap._html import script_json
from embedstack.corpusmap._labels import cluster_labels
from embedstack.corpusmap._layout import kmeans, pca_2d, sample_rows

EVIL = "</script><img src=x onerror=alert(1)> <!-- &amp; \u2028 evil"
ROWS = 200


def _wait(b: Any, condition: str) -> None:
    """Wait (frame by frame, never a fixed sleep) until a JS condition holds in the page."""
    b.eval(f"new Promise(r => {{ const t = () => ({condition}) ? r(true) : requestAnimationFrame(t); t(); }})")


def _wait_ready(b: Any) -> None:
    _wait(b, "window.embedstackMap && embedstackMap.ready")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, str]]]:
    """200 package descriptions plus one hostile row, embedded with the fake model (fast, deterministic)."""
    from embedstack.jobs import embed_files

    with open(SAMPLE, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f][:ROWS]
    rows.append({"id": "<b>evil</b>", "text": EVIL})
    d = tmp_path_factory.mktemp("map")
    src = d / "docs.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    embed_files(src, d / "out.parquet", model="fake:32", cache=None)
    return d / "out.parquet", rows


@pytest.fixture(scope="module")
def browser() -> Any:
    from .cdp_browser import Browser, chromium_path

    exe = chromium_path()
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (.ci/run installs it): apt-get install -y chromium")
        pytest.skip("chromium is not installed: apt-get install -y chromium")
    with Browser(exe) as b:
        yield b


def test_page_in_chromium(cli: Run, tmp_path: Path, corpus: tuple[Path, list[dict[str, str]]], browser: Any) -> None:
    from .cdp_browser import file_url

    out, rows = corpus
    page = tmp_path / "map.html"
    r = cli("map", str(out), "-o", str(page), "--method", "pca", "--clusters", "6", "--title", "<i>t</i>")
    assert r.returncode == 0, r.stderr
    assert f"mapped {len(rows)} rows (PCA" in r.stdout
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left
    html = page.read_text(encoding="utf-8")
    assert "<img" not in html and "</script><" not in html.split('id="map-data"')[1].split("</script>")[0]

    url = file_url(page)
    browser.open(url)
    _wait_ready(browser)
    state = browser.eval("({...embedstackMap, screenOf: undefined})")
    assert state["points"] == len(rows) and state["total"] == len(rows)
    assert state["drawn"] == len(rows)  # all points on screen at the start
    assert state["clusters"] == 6 and state["method"] == "pca"
    assert browser.eval("document.title") == "<i>t</i>"  # escaped: shown as text
    assert browser.eval("document.querySelectorAll('i, img').length") == 0
    assert browser.eval("document.querySelectorAll('#legend li').length") == 6

    # typing in the search box highlights the rows whose id or text contains the query
    browser.eval("document.getElementById('search').focus()")
    browser.call("Input.insertText", {"text": "Python"})
    _wait(browser, "embedstackMap.query === 'python'")
    expected = sum("python" in (r["id"] + "\n" + r["text"][:TEXT_CHARS]).lower() for r in rows)
    assert 0 < expected < len(rows)
    assert browser.eval("embedstackMap.highlighted") == expected
    assert browser.eval("document.getElementById('count').textContent") == f"{expected} matches"
    assert browser.eval("embedstackMap.drawn") == len(rows)

    shot = browser.screenshot()
    from io import BytesIO

    from PIL import Image

    img = Image.open(BytesIO(shot)).convert("RGB")
    assert img.size == (1000, 700)
    plot = np.asarray(img)[60:, :700]  # the canvas, left of the legend
    assert len(np.unique(plot.reshape(-1, 3), axis=0)) > 50  # points in several colours, outlines, labels
    assert (plot.min(axis=2) < 200).sum() > len(rows) * 10  # many non-white pixels: the points were drawn

    # the hostile row: its text is shown as text in the tooltip, never parsed as HTML
    browser.eval("document.getElementById('search').select()")
    browser.call("Input.insertText", {"text": "onerror"})
    _wait(browser, "embedstackMap.query === 'onerror'")
    assert browser.eval("embedstackMap.highlighted") == 1
    x, y = browser.eval(
        "(() => { const r = document.getElementById('map').getBoundingClientRect();"
        f" const [a, b] = embedstackMap.screenOf({len(rows) - 1}); return [a + r.left, b + r.top]; }})()"
    )
    browser.call("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": x, "y": y})
    _wait(browser, "embedstackMap.hovered !== null")
    assert browser.eval("embedstackMap.hovered") == "<b>evil</b>"
    tip = browser.eval("document.getElementById('tip').textContent")
    assert tip.startswith("<b>evil</b>") and EVIL.split(" <!--")[0] in tip
    assert browser.eval("document.querySelectorAll('img, b').length") == 0

    # zoom in with the wheel: points leave the view; "fit" brings them all back
    browser.call("Input.dispatchMouseEvent", {"type": "mouseWheel", "x": 350, "y": 380, "deltaX": 0, "deltaY": -2000})
    _wait(browser, "embedstackMap.scale > 5")
    assert browser.eval("embedstackMap.drawn") < len(rows)
    browser.eval("document.getElementById('reset').click()")
    assert browser.eval("embedstackMap.drawn") == len(rows)

    browser.eval("document.getElementById('search').select()")
    browser.call("Input.dispatchKeyEvent", {"type": "keyDown", "key": "Backspace", "code": "Backspace",
                                            "windowsVirtualKeyCode": 8})  # fmt: skip
    _wait(browser, "embedstackMap.query === ''")
    assert browser.eval("embedstackMap.highlighted") == 0
    assert browser.eval("document.getElementById('count').textContent") == f"{len(rows)} points"

    assert browser.problems() == []
    assert browser.requests() == [url]  # the page itself, nothing else: no CDN, no network


def test_png(cli: Run, tmp_path: Path, corpus: tuple[Path, list[dict[str, str]]]) -> None:
    out, _ = corpus
    r = cli("map", str(out), "-o", "map.png", "--method", "pca", "-q")
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""
    data = (tmp_path / "map.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    assert struct.unpack(">II", data[16:24]) == PNG_SIZE
    from io import BytesIO

    from PIL import Image

    img = np.asarray(Image.open(BytesIO(data)).convert("RGB"))
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 50


@pytest.mark.slow  # UMAP (numba compiles)
def test_umap_small(corpus: tuple[Path, list[dict[str, str]]]) -> None:
    pytest.importorskip("umap")
    out, _ = corpus
    a = build_map(out, method="umap", clusters=4, sample=60, seed=3)
    assert a.method == "umap" and len(a) == 60 and a.total == ROWS + 1
    assert a.points.shape == (60, 2) and a.points.min() >= 0 and a.points.max() <= 1
    assert sorted(set(a.clusters.tolist())) == [0, 1, 2, 3]
    b = build_map(out, method="umap", clusters=4, sample=60, seed=3)
    np.testing.assert_array_equal(a.points, b.points)  # one seed, one picture


def test_sample_and_auto(corpus: tuple[Path, list[dict[str, str]]]) -> None:
    out, rows = corpus
    m = build_map(out, method="pca", sample=50, seed=1)
    assert len(m) == 50 and m.total == len(rows)
    assert set(m.ids) <= {r["id"] for r in rows} and len(set(m.ids)) == 50
    assert any("50 of 201" in n for n in m.notes)
    assert build_map(out, method="pca", sample=50, seed=1).ids == m.ids
    assert build_map(out, method="pca", sample=50, seed=2).ids != m.ids
    full = build_map(out, method="pca", sample=0)
    assert len(full) == len(rows) and full.notes == []
    assert sum(c.size for c in full.legend) == len(rows)


def test_escaping() -> None:
    value = {"t": EVIL, "ids": ["</SCRIPT>", "a\u2029b"]}
    text = script_json(value)
    assert "<" not in text and ">" not in text and "\u2028" not in text and "\u2029" not in text
    assert json.loads(text) == value


def test_page_without_text_column(tmp_path: Path, corpus: tuple[Path, list[dict[str, str]]]) -> None:
    from embedstack.jobs import embed_files

    _, rows = corpus
    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows[:40]), encoding="utf-8")
    out = tmp_path / "out.npy"
    embed_files(src, out, model="fake:16", cache=None, keep="none")
    m = build_map(out, method="pca", clusters=3)
    assert m.texts == [""] * 40 and any("no 'text' column" in n for n in m.notes)
    page = render_html(m)
    assert page.count('<script id="map-data"') == 1


def test_labels_are_distinctive_words() -> None:
    texts = [f"the haskell package {w} lazy" for w in "abcde"] + [f"a ruby package {w} gems" for w in "fghij"]
    texts += ["the package tool"] * 5
    labels = cluster_labels(texts, [0] * 5 + [1] * 5 + [2] * 5)
    assert set(labels[0]) == {"haskell", "lazy"} and set(labels[1]) == {"ruby", "gems"}
    assert all("package" not in words and "the" not in words for words in labels)


def test_layout_pieces() -> None:
    rng = np.random.default_rng(0)
    centres = np.eye(8, dtype=np.float32)[:3] * 10
    x = np.concatenate([c + rng.standard_normal((30, 8)).astype(np.float32) for c in centres])
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    for labels in (kmeans(unit, 3, seed=0), kmeans(x, 3, seed=0, spherical=False)):
        groups = [set(labels[i * 30 : (i + 1) * 30].tolist()) for i in range(3)]
        assert all(len(g) == 1 for g in groups) and len(set.union(*groups)) == 3
    p = pca_2d(x)
    assert p.shape == (90, 2)
    np.testing.assert_array_equal(p, pca_2d(x.copy()))
    assert np.var(p[:, 0]) >= np.var(p[:, 1]) > 0
    s = sample_rows(1000, 10, seed=5)
    assert len(set(s.tolist())) == 10 and list(s) == sorted(s) and (sample_rows(1000, 10, seed=5) == s).all()
    assert len(sample_rows(5, 10, seed=0)) == 5


def _blocked(tmp_path: Path, module: str) -> dict[str, str]:
    """An environment where importing `module` fails, as when its extra is not installed."""
    shim = tmp_path / "shim" / module
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text(f'raise ImportError("No module named {module}")\n')
    return cli_env(tmp_path, PYTHONPATH=os.pathsep.join([str(shim.parent), *sys.path]))


def test_errors(cli: Run, tmp_path: Path, corpus: tuple[Path, list[dict[str, str]]]) -> None:
    out, _ = corpus
    r = cli("map", "missing.parquet", "-o", "map.html")
    assert r.returncode == 1 and "missing.parquet: no such file" in r.stderr and "embedstack embed" in r.stderr
    r = cli("map", "missing.parquet", "-o", "map.svg")
    assert r.returncode == 1 and "map.svg: unknown map extension .svg; use .html or .png" in r.stderr
    r = cli("map", str(out), "-o", "map.png", env=_blocked(tmp_path, "matplotlib"))
    assert r.returncode == 1 and "pip install 'embedstack[map]'" in r.stderr, r.stderr
    r = cli("map", str(out), "-o", "map.html", "--method", "umap", env=_blocked(tmp_path, "umap"))
    assert r.returncode == 1 and "pip install 'embedstack[umap]'" in r.stderr, r.stderr
    r = cli("map", str(out), "-o", "map.html", "--sample", "-3")
    assert r.returncode == 2 and "expected a positive integer" in r.stderr
    assert not [p.name for p in tmp_path.iterdir() if "map" in p.name]  # a failed run writes nothing


def test_compact_outputs_and_tiny_ones(tmp_path: Path, corpus: tuple[Path, list[dict[str, str]]]) -> None:
    """Maps read int8 and binary outputs as float32 (load_embeddings); one row still makes a page and a picture."""
    from embedstack.jobs import embed_files

    _, rows = corpus
    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows[:40]), encoding="utf-8")
    for precision in ("int8", "binary"):
        out = tmp_path / f"{precision}.parquet"
        embed_files(src, out, model="fake:64", cache=None, precision=precision)
        m = build_map(out, method="pca", clusters=3)
        assert len(m) == 40 and sorted(set(m.clusters.tolist())) == [0, 1, 2]
        assert np.isfinite(m.points).all() and np.ptp(m.points, axis=0).max() == pytest.approx(1.0)
    src.write_text(json.dumps({"id": "a", "text": "a lone text"}) + "\n", encoding="utf-8")
    embed_files(src, tmp_path / "one.npy", model="fake:8", cache=None)
    one = build_map(tmp_path / "one.npy")
    assert one.method == "pca" and one.points.tolist() == [[0.5, 0.5]] and len(one.legend) == 1
    assert '"ids":["a"]' in render_html(one)
