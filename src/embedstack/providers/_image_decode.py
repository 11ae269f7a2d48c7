"""Decode image inputs for a vision model: a whole batch up front, bounded memory, named errors.

Pillow's decompression-bomb guard (Image.MAX_IMAGE_PIXELS) stays on. A provider passes `prepare`
(its processor on one image) so each image becomes model input right after decoding and a batch
never holds full-size pixels; pixels are the ones the reference decodes (full scale: a reduced
DCT-scale decode or a shrink of our own gives other pixels, so other vectors).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from io import BytesIO
from pathlib import Path
from typing import Any

from embedstack._images import image_label, is_pil_image, read_image
from embedstack._optional import require
from embedstack.errors import EmbedstackError

__all__ = ["SUPPORTED_MODES", "ImageDecodeError", "decode_image", "decode_images"]

#: Pillow modes that convert to RGB faithfully. 16/32-bit ("I", "I;16", "F") would be clipped to
#: white and "LAB" has no colour conversion in Pillow, so those are refused with a fix instead.
SUPPORTED_MODES = frozenset({"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr", "HSV"})


class ImageDecodeError(EmbedstackError, ValueError):
    """An image input could not be decoded.

    `where` names it in the call ("img_file_paths[3]"), `index` is that position (None when
    unknown), `image` is its label (path or kind) and `reason` says what is wrong.
    """

    def __init__(self, where: str, image: str, reason: str, index: int | None = None) -> None:
        super().__init__(f"{where} ({image}): {reason}")
        self.where = where
        self.image = image
        self.reason = reason
        self.index = index


def _open_arg(item: Any, where: str, label: str) -> Path | BytesIO:
    """What Image.open should read: the item's path, or a BytesIO over its bytes (read by read_image)."""
    try:
        source = read_image(item, where)
    except ValueError as e:  # a data: URI that is not base64
        raise ImageDecodeError(where, label, str(e)) from e
    if isinstance(source, Path):
        return source
    if not source:
        reason = (
            "the file object is empty or was already read to the end; pass its bytes instead"
            if hasattr(item, "read")
            else "the image data is empty"
        )
        raise ImageDecodeError(where, label, reason)
    return BytesIO(source)


def decode_image(item: Any, *, where: str = "image") -> Any:
    """One image input as an RGB PIL image, at full scale.

    Raises FileNotFoundError (missing file), TypeError (not an image input) or ImageDecodeError
    (corrupt, truncated, unsupported mode, over the decompression-bomb limit), naming `where`.
    """
    Image = require("PIL.Image", extra="clip", package="pillow")
    ImageOps = require("PIL.ImageOps", extra="clip", package="pillow")
    label = image_label(item)
    try:
        if is_pil_image(item):
            return _finish(ImageOps, item, where, label)
        with Image.open(_open_arg(item, where, label)) as img:
            out = _finish(ImageOps, img, where, label)
            # leaving the `with` closes `img`: hand back an independent image, never that one
            return out.copy() if out is img else out
    except Image.DecompressionBombError as e:
        raise ImageDecodeError(
            where,
            label,
            f"{e} Pillow's decompression-bomb guard (PIL.Image.MAX_IMAGE_PIXELS = "
            f"{Image.MAX_IMAGE_PIXELS}) refused it; downscale the image first, or raise "
            "Image.MAX_IMAGE_PIXELS only if you trust its source",
        ) from e
    except Image.UnidentifiedImageError as e:
        raise ImageDecodeError(where, label, "not a readable image (Pillow cannot identify its format)") from e
    except (ImageDecodeError, FileNotFoundError, TypeError):
        raise
    except (OSError, ValueError, SyntaxError, EOFError) as e:  # truncated or corrupt data
        raise ImageDecodeError(where, label, f"corrupt or truncated image ({type(e).__name__}: {e})") from e


def _finish(ImageOps: Any, img: Any, where: str, label: str) -> Any:
    """Check the mode, load the pixels, apply EXIF orientation, flatten transparency onto white, convert to RGB."""
    if img.mode not in SUPPORTED_MODES:
        raise ImageDecodeError(
            where,
            label,
            f"unsupported image mode {img.mode!r} (supported: {', '.join(sorted(SUPPORTED_MODES))}"
            "); convert it to 8-bit first, e.g. scale its values to 0-255 and .convert('RGB')",
        )
    img.load()
    try:
        img = ImageOps.exif_transpose(img) or img
    except Exception:  # a malformed EXIF block must not lose an otherwise good image
        pass
    img = _flatten(img)
    return img if img.mode == "RGB" else img.convert("RGB")


def _flatten(img: Any) -> Any:
    """An image with transparency (an alpha band, or a tRNS colour/palette index) composited onto white, as
    transformers' CLIP processor does (convert_to_rgb); plain convert("RGB") would keep the hidden pixels' colours."""
    if "A" not in img.getbands() and img.info.get("transparency") is None:
        return img
    Image = require("PIL.Image", extra="clip", package="pillow")
    rgba = img.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")


def decode_images(
    items: Sequence[Any],
    *,
    wheres: Sequence[str] | None = None,
    indexes: Sequence[int | None] | None = None,
    prepare: Callable[[Any], Any] | None = None,
) -> list[Any]:
    """Decode every item of a batch (before any model call), each through `prepare` if given (the processor on
    that one image: only its output is kept); the first bad one raises, named."""
    out = []
    for i, item in enumerate(items):
        where = wheres[i] if wheres else f"image {i} of the batch"
        try:
            img = decode_image(item, where=where)
            out.append(prepare(img) if prepare is not None else img)
        except (TypeError, ValueError, OSError) as e:
            if isinstance(e, ImageDecodeError):
                e.index = indexes[i] if indexes else None
            setattr(e, "batch_index", i)  # noqa: B010  # so a caller that knows the batch can name the item its own way
            raise
    return out
