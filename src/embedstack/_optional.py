"""Optional dependencies: import at point of use, or fail with the pip command that fixes it."""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["require"]


def require(module: str, extra: str, package: str | None = None) -> ModuleType:
    """Import `module`, or raise ImportError naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        pkg = package or module.split(".")[0]
        raise ImportError(
            f"{pkg} is required for this feature but is not installed; "
            f"install it with: pip install 'embedstack[{extra}]'"
        ) from e
