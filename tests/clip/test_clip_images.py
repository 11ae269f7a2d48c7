"""Bad image inputs fail clearly, naming the item, before the model runs; huge images stay small."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from embedstack.providers._image_decode import ImageDecodeError, decode_image
from embedstack.providers.clip import ClipEmbedding


@pytest.fixture
def forward_calls(tiny_clip: ClipEmbedding, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Batch sizes that reached the image tower (its forward pass), recorded for this test."""
    loaded = tiny_clip._model()
    calls: list[int] = []
    real = loaded.model.get_image_features

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(int(kwargs["pixel_values"].shape[0]))
        return real(*args, **kwargs)

    monkeypatch.setattr(loaded.model, "get_image_features", spy)
    return calls


def _embed_expecting(model: ClipEmbedding, items: list[Any], exc: type[BaseException]) -> str:
    with pytest.raises(exc) as info:
        model.get_image_embedding_batch(items)
    return str(info.value)


def test_missing_file_fails_before_the_model_loads(tiny_clip_path: Path, image_dir: Path) -> None:
    model = ClipEmbedding(model_name=str(tiny_clip_path), device="cpu")
    msg = _embed_expecting(model, [image_dir / "red.png", image_dir / "nope.png"], FileNotFoundError)
    assert "img_file_paths[1]" in msg and "nope.png" in msg
    assert model._loaded is None  # checked by the pipeline before any model work


def test_wrong_type_names_the_item(tiny_clip: ClipEmbedding, image_dir: Path) -> None:
    msg = _embed_expecting(tiny_clip, [image_dir / "red.png", 42], TypeError)
    assert "img_file_paths[1] is int" in msg


def test_corrupt_file_is_named_and_no_image_reaches_the_model(
    tiny_clip: ClipEmbedding, image_dir: Path, forward_calls: list[int]
) -> None:
    bad = image_dir / "corrupt.png"
    bad.write_bytes(b"this is not an image at all")
    items = [image_dir / "red.png", image_dir / "blue.png", bad]
    with pytest.raises(ImageDecodeError) as info:
        tiny_clip.get_image_embedding_batch(items)
    err = info.value
    assert err.index == 2 and err.where == "img_file_paths[2]"
    assert str(bad) in str(err) and "cannot identify" in str(err)
    assert forward_calls == []  # the good images of that batch were not embedded either


def test_error_names_the_callers_index_across_batches(tiny_clip_path: Path, image_dir: Path, make_png: Any) -> None:
    model = ClipEmbedding(model_name=str(tiny_clip_path), device="cpu", embed_batch_size=2)
    truncated = make_png((10, 200, 10), size=(64, 64))[:-40]
    items: list[Any] = [image_dir / "red.png", image_dir / "blue.png", image_dir / "green.png"]
    items.append(truncated)
    with pytest.raises(ImageDecodeError) as info:
        model.embed(items, role="image")
    assert info.value.index == 3 and "images[3]" in str(info.value)
    assert "corrupt or truncated" in str(info.value)


async def test_async_errors_name_the_item_too(tiny_clip: ClipEmbedding, image_dir: Path) -> None:
    with pytest.raises(ImageDecodeError, match=r"img_file_paths\[1\] \(<image bytes: 3>\)"):
        await tiny_clip.aget_image_embedding_batch([image_dir / "red.png", b"abc"])


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda: Image.new("F", (40, 40), 0.5), "unsupported image mode 'F'"),
        (lambda: Image.new("I", (40, 40), 7), "unsupported image mode 'I'"),
    ],
)
def test_unsupported_pil_modes_are_refused(tiny_clip: ClipEmbedding, make: Any, fragment: str) -> None:
    msg = _embed_expecting(tiny_clip, [make()], ImageDecodeError)
    assert fragment in msg and "img_file_paths[0]" in msg and "convert" in msg


def test_sixteen_bit_file_is_refused_with_its_path(tiny_clip: ClipEmbedding, tmp_path: Path) -> None:
    path = tmp_path / "depth.png"
    Image.new("I;16", (40, 40), 1000).save(path)
    msg = _embed_expecting(tiny_clip, [path], ImageDecodeError)
    assert "unsupported image mode 'I;16" in msg and str(path) in msg


def test_decompression_bomb_guard_stays_on(
    tiny_clip: ClipEmbedding,
    image_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    forward_calls: list[int],
) -> None:
    assert Image.MAX_IMAGE_PIXELS == 89478485  # importing and using the provider left Pillow's guard alone
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # red.png has 40x48 = 1920 > 2 * 500 pixels
    msg = _embed_expecting(tiny_clip, [image_dir / "red.png"], ImageDecodeError)
    assert "MAX_IMAGE_PIXELS" in msg and "red.png" in msg
    assert forward_calls == []


@pytest.mark.parametrize(
    ("item", "exc", "fragment"),
    [
        (b"", ImageDecodeError, "empty"),
        ("data:image/png;base64,aGVsbG8=", ImageDecodeError, "cannot identify"),
        ("data:image/png;base64,!!!!", ImageDecodeError, "empty"),
        ("data:image/png,rawdata", ValueError, "base64"),
        (io.StringIO("text"), TypeError, "binary mode"),
    ],
)
def test_bad_bytes_uris_and_streams(tiny_clip: ClipEmbedding, item: Any, exc: type, fragment: str) -> None:
    msg = _embed_expecting(tiny_clip, [item], exc)
    assert fragment in msg and "img_file_paths[0]" in msg


def test_a_stream_already_read_to_the_end_is_reported(tiny_clip: ClipEmbedding, make_png: Any) -> None:
    stream = io.BytesIO(make_png((1, 2, 3)))
    stream.read()
    msg = _embed_expecting(tiny_clip, [stream], ImageDecodeError)
    assert "already read" in msg


def test_streams_are_left_where_they_were(tiny_clip: ClipEmbedding, make_png: Any) -> None:
    stream = io.BytesIO(make_png((1, 2, 3)))
    tiny_clip.get_image_embedding(stream)
    assert stream.tell() == 0
    tiny_clip.get_image_embedding(stream)  # and can be embedded again


def test_images_are_not_resampled_before_the_processor() -> None:
    src = Image.new("RGB", (400, 300), (1, 2, 3))  # far over the model's input size: the processor resizes it
    out = decode_image(src)
    assert out.size == (400, 300) and out is not src
    assert np.array_equal(np.asarray(out), np.asarray(src))


def test_exif_orientation_is_applied() -> None:
    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    Image.new("RGB", (40, 30), (200, 10, 10)).save(buf, format="JPEG", exif=exif)
    assert decode_image(buf.getvalue()).size == (30, 40)


def test_pil_images_are_not_modified(tiny_clip: ClipEmbedding) -> None:
    img = Image.new("P", (50, 60), 1)
    before = img.tobytes()
    tiny_clip.get_image_embedding(img)
    assert img.mode == "P" and img.size == (50, 60) and img.tobytes() == before
