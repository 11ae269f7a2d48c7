"""Image inputs: check each item before any model call, and read an image source once.

`read_image` is the one reader of a source (path, data: URI, bytes, binary file object): the cache
key (`image_bytes`) and the providers' decoders both read through it, so they see the same bytes and
raise the same errors. Core module: it imports no provider and no imaging library.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from io import IOBase
from pathlib import Path
from typing import Any

__all__ = ["check_image", "image_bytes", "image_label", "is_pil_image", "materialize", "read_image"]


def is_pil_image(item: Any) -> bool:
    """Whether `item` looks like a PIL image (checked without importing Pillow)."""
    return hasattr(item, "mode") and hasattr(item, "size") and hasattr(item, "tobytes") and hasattr(item, "save")


def _kind(item: Any) -> str:
    """What sort of image input `item` is: "path", "uri", "bytes", "pil", "file", or "" (none)."""
    if isinstance(item, os.PathLike) or (isinstance(item, str) and not item.startswith("data:")):
        return "path"
    if isinstance(item, str):
        return "uri"
    if isinstance(item, (bytes, bytearray, memoryview)):
        return "bytes"
    if is_pil_image(item):
        return "pil"
    if isinstance(item, IOBase) or hasattr(item, "read"):
        return "file"
    return ""


def _not_an_image(item: Any, where: str) -> TypeError:
    return TypeError(
        f"{where} is {type(item).__name__}, expected an image: a path, bytes, a binary file, a PIL image or a data: URI"
    )


def _existing_file(item: Any, where: str) -> Path:
    if isinstance(item, str) and re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", item):
        raise FileNotFoundError(
            f"{where}: {item!r} is a URL; images are never fetched over the network: download it and pass the file's "
            "path or its bytes"
        )
    path = Path(item)
    if not path.is_file():
        raise FileNotFoundError(f"{where}: image file {str(path)!r} does not exist (or is not a file)")
    return path


def _seekable(item: Any) -> bool:
    seekable = getattr(item, "seekable", None)
    return bool(callable(seekable) and seekable())


def check_image(item: Any, index: int, label: str) -> None:
    """Raise a clear error naming `label[index]` if `item` is not a readable image input (reads nothing)."""
    where = f"{label}[{index}]"
    kind = _kind(item)
    if kind == "path":
        _existing_file(item, where)
    elif kind == "uri" and ";base64," not in item:
        raise ValueError(f"{where}: data URI must be base64-encoded ('data:image/png;base64,...')")
    elif not kind:
        raise _not_an_image(item, where)


def read_image(item: Any, where: str = "image") -> Path | bytes:
    """An image source as a path (checked to be a file) or its bytes, read once.

    A data: URI is base64-decoded, bytes are copied and a binary file object is read and put back
    where it was. The bytes may be empty (the decoder says why that is wrong). Raises
    FileNotFoundError (no such file), TypeError (not a source, or a text-mode file object; both
    name `where`) or ValueError (a data: URI that is not base64: its reason only, for the caller
    to wrap). A PIL image is not a source: see `image_bytes`.
    """
    kind = _kind(item)
    if kind == "path":
        return _existing_file(item, where)
    if kind == "uri":
        try:
            return base64.b64decode(item.split(";base64,", 1)[1], validate=False)
        except (IndexError, binascii.Error, ValueError) as e:
            raise ValueError(f"not a valid base64 data URI ({e})") from e
    if kind == "bytes":
        return bytes(item)
    if kind == "file":
        pos = item.tell() if _seekable(item) else None
        data = item.read()
        if pos is not None:
            item.seek(pos)
        if not isinstance(data, (bytes, bytearray)):
            raise TypeError(
                f"{where}: the file object returned {type(data).__name__} from read(); open it in binary mode ('rb')"
            )
        return bytes(data)
    raise _not_an_image(item, where)


def image_bytes(item: Any) -> bytes:
    """The bytes that identify an image: file contents, decoded data URI, or a PIL image's mode, size, pixels
    and what else the decoder reads (palette, transparency, EXIF orientation)."""
    if is_pil_image(item):
        head = f"{item.mode}:{item.size}:".encode()
        if item.mode in ("P", "PA"):  # pixels are palette indexes: the palette is part of the image
            head += bytes(item.getpalette() or ()) + repr(item.info.get("transparency")).encode() + b":"
        elif item.info.get("transparency") is not None:  # a tRNS colour: those pixels are composited onto white
            head += b"transparency=" + repr(item.info["transparency"]).encode() + b":"
        orientation = _orientation(item)
        if orientation not in (None, 1):  # decoders apply EXIF orientation: a turned image is another image
            head += f"orientation={orientation}:".encode()
        return head + bytes(item.tobytes())
    source = read_image(item)
    return source.read_bytes() if isinstance(source, Path) else source


def _orientation(img: Any) -> Any:
    """A PIL image's EXIF orientation tag (274), or None (no EXIF, or an unreadable block)."""
    try:
        return img.getexif().get(0x0112)
    except Exception:  # a malformed EXIF block: the decoder skips it too
        return None


def materialize(item: Any) -> Any:
    """A non-seekable binary stream as its bytes (read once), so keying and decoding both see it."""
    if _kind(item) == "file" and not _seekable(item):
        return image_bytes(item)
    return item


def image_label(item: Any) -> str:
    """A short text naming an image in events and errors."""
    kind = _kind(item)
    if kind == "path":
        return str(item)
    if kind == "uri":
        return str(item)[:40] + "..."
    if kind == "bytes":
        return f"<image bytes: {len(item)}>"
    name = getattr(item, "name", None) or getattr(item, "filename", None)
    return str(name) if name else f"<image {type(item).__name__}>"
