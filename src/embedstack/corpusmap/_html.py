"""The corpus map as one self-contained HTML page: data as inert JSON, a small canvas renderer, no network."""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
from importlib import resources
from typing import Any

import numpy as np

from embedstack.corpusmap._build import CorpusMap

__all__ = ["render_html", "script_json"]

# Inside <script type="application/json"> only "</script" (or "<!--") could end the block early: escaping every
# "<", ">" and "&" (and the JS line separators) as \uXXXX keeps the JSON valid and the block unbreakable.
_UNSAFE = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
_UNSAFE_RE = re.compile("[<>&\u2028\u2029]")
_SLOT = re.compile(r"__(TITLE|STYLE|SCRIPT|SCRIPT_HASH|DATA)__")


def script_json(value: Any) -> str:
    """JSON that is safe to place inside a <script> element whatever strings it holds."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return _UNSAFE_RE.sub(lambda m: _UNSAFE[m.group()], text)


def _asset(name: str) -> str:
    return resources.files("embedstack.corpusmap").joinpath(name).read_text(encoding="utf-8")


def _data(m: CorpusMap) -> dict[str, Any]:
    pts = np.round(m.points.astype(np.float64), 5)
    return {
        "title": m.title,
        "method": m.method,
        "total": m.total,
        "ids": m.ids,
        "texts": m.texts,
        "x": pts[:, 0].tolist() if len(pts) else [],
        "y": pts[:, 1].tolist() if len(pts) else [],
        "c": m.clusters.tolist(),
        "clusters": [
            {"label": c.label, "color": c.color, "size": c.size, "x": round(c.x, 5), "y": round(c.y, 5)}
            for c in m.legend
        ],
    }


def render_html(m: CorpusMap) -> str:
    """The page: corpus text only as escaped JSON (shown with textContent); a CSP that allows only its own script."""
    script = _asset("page.js")
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")
    slots = {
        "TITLE": html.escape(m.title),
        "STYLE": _asset("page.css"),
        "SCRIPT": script,
        "SCRIPT_HASH": f"sha256-{digest}",
        "DATA": script_json(_data(m)),
    }
    return _SLOT.sub(lambda s: slots[s.group(1)], _asset("page.html"))  # one pass: no slot fills another
