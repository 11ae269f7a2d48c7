"""Image inputs: check each item before any model call, and read its bytes for the cache key."""

from __future__ import annotations

import base64
import binascii
import os
from io import IOBase
from pathlib import Path
from typing import Any

__all__ = ["check_image", "image_bytes", "image_label", "is_pil_image", "materialize"]


def is_pil_image(item: Any) -> bool:
    """Whether `item` looks like a PIL image (checked without importing Pillow)."""
    return hasattr(item, "mode") and hasattr(item, "size") and hasattr(item, "tobytes") and hasattr(item, "save")


def _is_path(item: Any) -> bool:
    return isinstance(item, os.PathLike) or (isinstance(item, str) and not item.startswith("data:"))


def check_image(item: Any, index: int, label: str) -> None:
    """Raise a clear error naming `label[index]` if `item` is not a readable image input."""
    if _is_path(item):
        path = Path(item)
        if not path.is_file():
            raise FileNotFoundError(f"{label}[{index}]: image file {str(path)!r} does not exist (or is not a file)")
        return
    if isinstance(item, str):  # data: URI
        if ";base64," not in item:
            raise ValueError(f"{label}[{index}]: data URI must be base64-encoded ('data:image/png;base64,...')")
        return
    if isinstance(item, (bytes, bytearray, memoryview)) or is_pil_image(item):
        return
    if isinstance(item, IOBase) or hasattr(item, "read"):
        return
    raise TypeError(
        f"{label}[{index}] is {type(item).__name__}, expected an image: a path, bytes, a binary file, "
        "a PIL image or a data: URI"
    )


def image_bytes(item: Any) -> bytes:
    """The bytes that identify an image: file contents, decoded data URI, or PIL mode+size+pixels."""
    if _is_path(item):
        return Path(item).read_bytes()
    if isinstance(item, str):
        try:
            return base64.b64decode(item.split(";base64,", 1)[1], validate=False)
        except (binascii.Error, IndexError) as e:
            raise ValueError(f"malformed data URI: {e}") from e
    if isinstance(item, (bytes, bytearray, memoryview)):
        return bytes(item)
    if is_pil_image(item):
        head = f"{item.mode}:{item.size}:".encode()
        if item.mode in ("P", "PA"):  # pixels are palette indexes: the palette is part of the image
            head += bytes(item.getpalette() or ()) + repr(item.info.get("transparency")).encode() + b":"
        return head + bytes(item.tobytes())
    pos = item.tell() if hasattr(item, "seekable") and item.seekable() else None
    data = item.read()
    if pos is not None:
        item.seek(pos)
    if not isinstance(data, (bytes, bytearray)):
        raise TypeError(f"image file object returned {type(data).__name__} from read(); open it in binary mode ('rb')")
    return bytes(data)


def materialize(item: Any) -> Any:
    """A non-seekable binary stream as its bytes (read once), so keying and decoding both see it."""
    if hasattr(item, "read") and not isinstance(item, (str, bytes, bytearray, memoryview, os.PathLike)):
        seekable = getattr(item, "seekable", None)
        if not (callable(seekable) and seekable()):
            return image_bytes(item)
    return item


def image_label(item: Any) -> str:
    """A short text naming an image in events and errors."""
    if _is_path(item):
        return str(item)
    if isinstance(item, str):
        return item[:40] + "..."
    if isinstance(item, (bytes, bytearray, memoryview)):
        return f"<image bytes: {len(item)}>"
    name = getattr(item, "name", None) or getattr(item, "filename", None)
    return str(name) if name else f"<image {type(item).__name__}>"
