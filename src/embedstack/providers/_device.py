"""The one device picker for local torch models (Hugging Face text models and CLIP)."""

from __future__ import annotations

from embedstack._optional import require

__all__ = ["pick_device"]


def pick_device(device: str | None, extra: str = "local") -> str:
    """`device` if given, else cuda, then mps, then cpu: whichever this machine has (imports torch only then)."""
    if device:
        return device
    torch = require("torch", extra=extra)
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"
