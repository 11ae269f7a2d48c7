"""A model directory's vector length, read from its files before anything loads (the declared output size).

sentence-transformers directories say it module by module (modules.json: the transformer's hidden size,
the pooling's embedding dimension times its modes, a Dense layer's out_features); a plain
checkpoint's config.json gives the hidden size. Anything not understood gives None: the pipeline then
learns the length from the model's first answer instead of trusting a guess.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from embedstack.providers.huggingface.st_modules import UnsupportedModule, pooling_modes

__all__ = ["files_dim"]


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _hidden_size(path: Path) -> int | None:
    cfg = _json(path / "config.json")
    if not isinstance(cfg, dict):
        return None
    for key in ("hidden_size", "d_model", "dim"):
        value = cfg.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _positive(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def files_dim(path: Path) -> int | None:
    """The length of the vectors the model in `path` returns, or None when its files do not say it plainly."""
    modules = _json(path / "modules.json")
    if modules is None:
        return _hidden_size(path) if (path / "config.json").is_file() else None
    if not isinstance(modules, list):
        return None
    dim: int | None = None
    for module in sorted(modules, key=lambda m: int(m.get("idx", 0)) if isinstance(m, dict) else 0):
        if not isinstance(module, dict):
            return None
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        where = path / str(module.get("path", ""))
        if kind == "Transformer":
            dim = _hidden_size(where) or _hidden_size(path)
        elif kind == "Pooling":
            cfg = _json(where / "config.json")
            if not isinstance(cfg, dict):
                return None
            width = _positive(cfg.get("word_embedding_dimension", cfg.get("embedding_dimension")))
            try:
                modes, _ = pooling_modes(cfg)  # the one reader of pooling configs (both formats)
            except UnsupportedModule:
                return None
            if width is None:
                return None
            dim = width * len(modes)
        elif kind == "Dense":
            cfg = _json(where / "config.json")
            dim = _positive(cfg.get("out_features")) if isinstance(cfg, dict) else None
            if dim is None:
                return None
        elif kind != "Normalize":
            return None  # a module whose output length these files do not state
    return dim
