"""The documentation site builds with `mkdocs build --strict`: every page in the nav, every link and anchor
resolving, every mkdocstrings reference (`::: embedstack....`) rendering from the docstrings. Offline."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # mkdocs build --strict

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "mkdocs.yml"


def test_docs_build_strict(tmp_path: Path) -> None:
    missing = [
        m for m in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers") if not importlib.util.find_spec(m)
    ]
    if missing:
        pytest.fail(f"docs tools missing ({', '.join(missing)}): pip install -c constraints.txt -e '.[dev]'")
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(CONFIG), "-d", str(site)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-8000:]
    assert "WARNING" not in proc.stderr, proc.stderr[-8000:]
    # the API pages were rendered from the docstrings, not left as `:::` lines
    base = (site / "api" / "base" / "index.html").read_text(encoding="utf-8")
    assert 'id="embedstack.base.BaseEmbedding.get_text_embedding_batch"' in base
    providers = (site / "api" / "providers" / "index.html").read_text(encoding="utf-8")
    assert 'id="embedstack.providers.huggingface.HuggingFaceEmbedding"' in providers
    for page in site.rglob("*.html"):
        assert ":::" not in page.read_text(encoding="utf-8"), page
