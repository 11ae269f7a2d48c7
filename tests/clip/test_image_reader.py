"""The one image reader (embedstack._images.read_image): what keying and decoding both read."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import pytest

from embedstack._images import check_image, image_bytes, read_image
from embedstack.providers._image_decode import ImageDecodeError, decode_image


def test_every_source_reads_to_the_same_bytes(tmp_path: Path, make_png: Any) -> None:
    data = make_png((10, 20, 30))
    path = tmp_path / "a.png"
    path.write_bytes(data)
    uri = "data:image/png;base64," + base64.b64encode(data).decode()
    stream = io.BytesIO(b"xx" + data)
    stream.seek(2)
    assert read_image(str(path)) == path and read_image(path) == path
    assert read_image(uri) == data and read_image(bytearray(data)) == data and read_image(memoryview(data)) == data
    assert read_image(stream) == data and stream.tell() == 2  # read, then put back where it was
    for item in (path, uri, data, stream):
        assert image_bytes(item) == data
    decoded = [decode_image(item).tobytes() for item in (path, uri, data, stream)]
    assert decoded.count(decoded[0]) == 4 and stream.tell() == 2


def test_errors_name_the_item_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"^imgs\[2\]: image file .*missing.png' does not exist"):
        read_image(tmp_path / "missing.png", "imgs[2]")
    with pytest.raises(TypeError, match=r"^imgs\[0\]: the file object returned str .* binary mode \('rb'\)"):
        read_image(io.StringIO("text"), "imgs[0]")
    with pytest.raises(TypeError, match=r"^imgs\[1\] is int, expected an image: a path, bytes"):
        read_image(7, "imgs[1]")
    with pytest.raises(ValueError, match=r"^not a valid base64 data URI \(") as bad:
        read_image("data:image/png;base64,abc")  # wrong padding
    assert not isinstance(bad.value, ImageDecodeError)  # core knows nothing of the decoder's error type
    with pytest.raises(ImageDecodeError, match=r"^imgs\[5\] \(data:image/png;base64,abc\.\.\.\): not a valid base64"):
        decode_image("data:image/png;base64,abc", where="imgs[5]")
    with pytest.raises(FileNotFoundError, match=r"^images\[4\]: image file"):
        check_image(str(tmp_path), 4, "images")  # a folder is not an image file


def test_empty_sources_read_as_empty_and_the_decoder_says_why() -> None:
    assert read_image(b"") == b"" and image_bytes(io.BytesIO()) == b""  # keying an empty source is no error
    with pytest.raises(ImageDecodeError, match="the image data is empty"):
        decode_image(b"")
    spent = io.BytesIO(b"\x89PNG")
    spent.read()
    with pytest.raises(ImageDecodeError, match="already read to the end; pass its bytes instead"):
        decode_image(spent)


@pytest.mark.parametrize("url", ["http://10.255.255.1/x.png", "https://example.com/a.jpg", "s3://bucket/x.png"])
def test_urls_are_refused_by_name_without_network(url: str) -> None:
    """A URL was reported as a missing file named 'http:/10...' (Path collapses the '//'); it is never fetched."""
    with pytest.raises(FileNotFoundError, match="is a URL; images are never fetched") as info:
        check_image(url, 2, "img_file_paths")
    assert url in str(info.value) and "img_file_paths[2]" in str(info.value)
    with pytest.raises(FileNotFoundError, match="download it"):
        read_image(url)
