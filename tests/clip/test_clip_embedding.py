"""ClipEmbedding on a tiny real CLIP: one space for texts and images; cache, async, threads."""

from __future__ import annotations

import asyncio
import base64
import io
import pickle
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import PrivateAttr

from embedstack import MultiModalEmbedding, Role
from embedstack.kvstore import SimpleKVStore, SQLiteKVStore
from embedstack.providers.clip import ClipEmbedding

TINY_DIM, TINY_MAX_TOKENS = 24, 16  # as built by conftest.build_tiny_clip


class CountingClip(ClipEmbedding):
    """ClipEmbedding that records every batch that reaches the model."""

    _batches: list[tuple[Role, list[Any]]] = PrivateAttr(default_factory=list)
    _guard: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    def _embed_batch(self, items: list[Any], role: Role) -> Any:
        with self._guard:
            self._batches.append((role, list(items)))
        return super()._embed_batch(items, role)

    @property
    def embedded(self) -> list[Any]:
        return [item for _, items in self._batches for item in items]


def _reference(path: Path, **kwargs: Any) -> tuple[Any, Any]:
    from transformers import CLIPModel, CLIPProcessor

    return CLIPModel.from_pretrained(str(path), **kwargs).eval(), CLIPProcessor.from_pretrained(str(path))


def _pooled(out: Any) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def test_is_a_multimodal_embedding_with_one_dimension(
    tiny_clip: ClipEmbedding, image_dir: Path, tiny_sizes: tuple[int, int]
) -> None:
    assert tiny_sizes == (TINY_DIM, TINY_MAX_TOKENS)
    assert isinstance(tiny_clip, MultiModalEmbedding)
    assert ClipEmbedding.class_name() == "ClipEmbedding"
    text = tiny_clip.embed(["a cat", "a dog"], role="text")
    images = tiny_clip.embed([image_dir / "red.png", image_dir / "blue.png"], role="image")
    assert text.shape == (2, TINY_DIM) and images.shape == (2, TINY_DIM)
    assert text.dtype == np.float32 and images.dtype == np.float32
    assert tiny_clip.embed_dim == TINY_DIM
    np.testing.assert_allclose(np.linalg.norm(text, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(images, axis=1), 1.0, rtol=1e-5)
    assert not np.allclose(text[0], text[1]) and not np.allclose(images[0], images[1])
    # the LlamaIndex methods agree with the bulk path
    assert np.allclose(tiny_clip.get_text_embedding("a cat"), text[0], atol=1e-6)
    assert np.allclose(tiny_clip.get_image_embedding(image_dir / "red.png"), images[0], atol=1e-6)


def test_vectors_match_transformers_clip_directly(
    tiny_clip: ClipEmbedding, tiny_clip_path: Path, image_dir: Path
) -> None:
    """Texts go through the text tower, images through the image tower, then L2-normalised."""
    model, processor = _reference(tiny_clip_path)
    texts = ["a cat", "dog 2 mats!"]
    enc = processor.tokenizer(texts, padding=True, return_tensors="pt")
    images = [Image.open(image_dir / n).convert("RGB") for n in ("red.png", "green.png")]
    pixels = processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        t = torch.nn.functional.normalize(_pooled(model.get_text_features(**enc)), dim=-1).numpy()
        i = torch.nn.functional.normalize(_pooled(model.get_image_features(pixel_values=pixels)), dim=-1)
    np.testing.assert_allclose(tiny_clip.embed(texts), t, atol=1e-5)
    np.testing.assert_allclose(
        tiny_clip.embed([image_dir / "red.png", image_dir / "green.png"], role="image"),
        i.numpy(),
        atol=1e-5,
    )


def test_queries_and_texts_share_the_text_tower(tiny_clip: ClipEmbedding) -> None:
    assert np.allclose(tiny_clip.get_query_embedding("a dog"), tiny_clip.get_text_embedding("a dog"), atol=1e-6)
    assert tiny_clip.provider.instruction(Role.QUERY) is None and tiny_clip.provider.instruction(Role.TEXT) is None


def test_every_image_input_kind_gives_the_same_vector(tiny_clip: ClipEmbedding, image_dir: Path) -> None:
    path = image_dir / "green.png"
    data = path.read_bytes()
    with path.open("rb") as fh:
        inputs: list[Any] = [
            path,
            str(path),
            data,
            bytearray(data),
            io.BytesIO(data),
            fh,
            Image.open(path),
            "data:image/png;base64," + base64.b64encode(data).decode(),
        ]
        vectors = tiny_clip.embed(inputs, role="image")
    for kind, vec in zip(inputs, vectors, strict=True):
        np.testing.assert_allclose(vec, vectors[0], atol=1e-6, err_msg=type(kind).__name__)


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "1", "CMYK", "LA"])
def test_common_modes_are_converted_to_rgb(tiny_clip: ClipEmbedding, mode: str) -> None:
    img = Image.new("RGB", (40, 48), (200, 120, 40)).convert(mode)
    vec = np.asarray(tiny_clip.get_image_embedding(img))
    assert vec.shape == (TINY_DIM,) and np.isfinite(vec).all()


def test_batches_keep_input_order(tiny_clip_path: Path, image_dir: Path) -> None:
    one_by_one = ClipEmbedding(model_name=str(tiny_clip_path), device="cpu", embed_batch_size=1)
    batched = ClipEmbedding(model_name=str(tiny_clip_path), device="cpu", embed_batch_size=2)
    paths = [image_dir / f"{n}.png" for n in ("blue", "red", "green", "blue", "green")]
    texts = ["dog", "a cat on a mat", "x", "cat cat cat", "dog"]
    np.testing.assert_allclose(batched.embed(paths, role="image"), one_by_one.embed(paths, role="image"), atol=1e-5)
    np.testing.assert_allclose(batched.embed(texts), one_by_one.embed(texts), atol=1e-5)


async def test_async_equals_sync(tiny_clip: ClipEmbedding, image_dir: Path) -> None:
    paths = [image_dir / "red.png", image_dir / "blue.png", image_dir / "green.png"]
    texts = ["a cat", "a dog", "a red square"]
    sync_images = tiny_clip.get_image_embedding_batch(paths)
    async_images = await tiny_clip.aget_image_embedding_batch(paths)
    np.testing.assert_allclose(async_images, sync_images, atol=1e-6)
    np.testing.assert_allclose(await tiny_clip.aget_image_embedding(paths[1]), sync_images[1], atol=1e-6)
    np.testing.assert_allclose(
        await tiny_clip.aget_text_embedding_batch(texts),
        tiny_clip.get_text_embedding_batch(texts),
        atol=1e-6,
    )
    np.testing.assert_allclose(
        await tiny_clip.aget_query_embedding("a cat"),
        tiny_clip.get_query_embedding("a cat"),
        atol=1e-6,
    )
    np.testing.assert_allclose(await tiny_clip.aembed(paths, role="image"), sync_images, atol=1e-6)


async def test_concurrent_async_calls_are_safe(tiny_clip: ClipEmbedding, image_dir: Path) -> None:
    paths = [image_dir / "red.png", image_dir / "blue.png"]
    expected = tiny_clip.embed(paths, role="image")
    results = await asyncio.gather(*(tiny_clip.aembed(paths, role="image") for _ in range(4)))
    for r in results:
        np.testing.assert_allclose(r, expected, atol=1e-6)


def test_threads_share_one_model_safely(tiny_clip: ClipEmbedding, image_dir: Path) -> None:
    texts = [f"cat {i}" for i in range(6)]
    expected = tiny_clip.embed(texts)
    out: list[Any] = [None] * 4
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            out[k] = tiny_clip.embed(texts)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for r in out:
        np.testing.assert_allclose(r, expected, atol=1e-6)


def test_same_bytes_under_two_paths_are_embedded_once(tiny_clip_path: Path, image_dir: Path) -> None:
    model = CountingClip(model_name=str(tiny_clip_path), device="cpu", embeddings_cache=SimpleKVStore())
    red, copy, blue = image_dir / "red.png", image_dir / "red_copy.png", image_dir / "blue.png"
    vectors = model.embed([red, copy, blue], role="image")
    assert model.embedded == [red, blue]  # red_copy.png has red.png's bytes: one model input
    np.testing.assert_array_equal(vectors[0], vectors[1])
    again = model.embed([copy], role="image")
    assert len(model._batches) == 1  # a cache hit: no second model call
    np.testing.assert_array_equal(again[0], vectors[0])
    # the same bytes as a PIL-free input (raw bytes) key the same way as the files
    model.embed([red.read_bytes()], role="image")
    assert len(model._batches) == 1


def test_text_and_image_keys_do_not_collide(tiny_clip_path: Path, image_dir: Path) -> None:
    model = CountingClip(model_name=str(tiny_clip_path), device="cpu", embeddings_cache=SimpleKVStore())
    path = str(image_dir / "red.png")
    as_text = model.get_text_embedding(path)
    as_image = model.get_image_embedding(path)
    assert [r for r, _ in model._batches] == [Role.TEXT, Role.IMAGE]
    assert not np.allclose(as_text, as_image)


def test_long_texts_are_truncated_and_counted(tiny_clip: ClipEmbedding, event_recorder: Any) -> None:
    long_a = "a " * (3 * TINY_MAX_TOKENS)
    long_b = "a " * (4 * TINY_MAX_TOKENS)  # the same first tokens: the same vector after truncation
    vectors = tiny_clip.embed([long_a, long_b, "a cat"])
    np.testing.assert_allclose(vectors[0], vectors[1], atol=1e-6)
    ends = event_recorder.of("EmbeddingEndEvent")
    assert ends and ends[-1].truncated == 2
    assert ends[-1].token_count == 2 * TINY_MAX_TOKENS + 4  # <bos> a cat <eos>


def test_image_events_name_the_images(tiny_clip: ClipEmbedding, image_dir: Path, event_recorder: Any) -> None:
    tiny_clip.get_image_embedding_batch([image_dir / "red.png", image_dir / "blue.png"])
    end = event_recorder.of("EmbeddingEndEvent")[-1]
    assert end.chunks == [str(image_dir / "red.png"), str(image_dir / "blue.png")]
    assert end.role == "image" and len(end.embeddings) == 2


def test_normalize_false_returns_raw_projections(tiny_clip: ClipEmbedding, tiny_clip_path: Path) -> None:
    raw = ClipEmbedding(model_name=str(tiny_clip_path), device="cpu", normalize=False)
    r = np.asarray(raw.get_text_embedding("a cat"))
    n = np.asarray(tiny_clip.get_text_embedding("a cat"))
    assert abs(np.linalg.norm(r) - 1.0) > 1e-3
    np.testing.assert_allclose(r / np.linalg.norm(r), n, atol=1e-5)
    assert raw.provider.identity() != tiny_clip.provider.identity()  # different vectors: different cache keys


def test_identity_serialisation_and_repr(tiny_clip_path: Path) -> None:
    a = ClipEmbedding(model_name=str(tiny_clip_path), device="cpu")
    b = ClipEmbedding(model_name=str(tiny_clip_path))
    assert a.provider.identity() == b.provider.identity()  # the device does not change the vectors' cache key
    data = a.to_dict()
    assert data["class_name"] == "ClipEmbedding" and data["model_name"] == str(tiny_clip_path)
    c = ClipEmbedding.from_dict(data)
    assert c.model_name == a.model_name and c.device == "cpu" and c.normalize is True
    assert "ClipEmbedding(model_name=" in repr(a)


def test_changing_the_model_reloads(tiny_clip_path: Path, tmp_path: Path, build_clip: Any) -> None:
    other = build_clip(tmp_path / "other", seed=1)
    model = ClipEmbedding(model_name=str(tiny_clip_path), device="cpu")
    first = model.get_text_embedding("a cat")
    model.model_name = str(other)
    assert model.source.path == other.resolve()
    assert not np.allclose(model.get_text_embedding("a cat"), first)


def test_the_provider_module_imports_no_heavy_dependency() -> None:
    import subprocess
    import sys

    code = (
        "import sys, embedstack.providers.clip, embedstack\n"
        "heavy = [m for m in ('torch', 'transformers', 'PIL') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "assert embedstack.ClipEmbedding is embedstack.providers.clip.ClipEmbedding"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_pickle_and_deepcopy_reload_the_same_model(tiny_clip: ClipEmbedding, image_dir: Path) -> None:
    import copy
    import pickle

    expected = tiny_clip.embed([image_dir / "blue.png"], role="image")
    clone = pickle.loads(pickle.dumps(tiny_clip))
    assert clone._loaded is None and clone.source.path == tiny_clip.source.path
    np.testing.assert_allclose(clone.embed([image_dir / "blue.png"], role="image"), expected, atol=1e-6)
    deep = copy.deepcopy(tiny_clip)
    assert deep._loaded is None and deep._lock is not tiny_clip._lock
    np.testing.assert_allclose(deep.embed([image_dir / "blue.png"], role="image"), expected, atol=1e-6)


def test_model_copy_shares_weights_unless_the_model_changes(tiny_clip: ClipEmbedding) -> None:
    raw = tiny_clip.model_copy(update={"normalize": False})
    assert raw._loaded is tiny_clip._loaded  # same weights, one lock
    assert raw.provider.identity() != tiny_clip.provider.identity()
    assert abs(np.linalg.norm(raw.get_text_embedding("a cat")) - 1.0) > 1e-3
    with pytest.raises(ValueError, match="ResNet CLIP"):
        tiny_clip.model_copy(update={"model_name": "RN50"})


def test_assignment_drops_weights_only_when_name_files_or_device_change(tiny_clip_path: Path, tmp_path: Path) -> None:
    model = ClipEmbedding(model_name=str(tiny_clip_path), device="cpu").load()
    weights, lock = model._loaded, model._lock
    model.normalize = False  # changes the vectors, not the weights
    assert model._loaded is weights and model._lock is lock
    model.device = "cpu"
    assert model._loaded is None and model._lock is lock  # a call in flight may hold it: never swapped
    model.load()
    weights, source = model._loaded, model.source
    for bad, error in [("RN50", "ResNet CLIP"), (str(tmp_path / "nowhere"), "does not exist")]:
        with pytest.raises((ValueError, FileNotFoundError), match=error):
            model.model_name = bad
        assert model.model_name == str(tiny_clip_path)  # a name that cannot be used changes nothing
        assert model.source is source and model._loaded is weights


def test_model_copy_with_another_device_loads_its_own_weights(tiny_clip: ClipEmbedding) -> None:
    moved = tiny_clip.model_copy(update={"device": "cpu"})
    assert moved._loaded is None
    assert tiny_clip._loaded is not None  # the original keeps its weights
    assert moved.source is tiny_clip.source  # same files: not located again
    np.testing.assert_allclose(moved.get_text_embedding("a cat"), tiny_clip.get_text_embedding("a cat"), atol=1e-6)


def test_pickle_carries_the_fields_only(tiny_clip: ClipEmbedding) -> None:
    private = tiny_clip.__getstate__()["__pydantic_private__"]
    assert not {"_source", "_loaded", "_lock"} & set(private)
    assert len(pickle.dumps(tiny_clip)) < 5_000  # no weights, processor or located files travel


def _with_transparency(mode: str) -> Image.Image:
    """A noisy 40x48 image whose top half is fully transparent (hidden pixels keep their colours)."""
    rng = np.random.default_rng(3)
    rgba = rng.integers(0, 256, (48, 40, 4), dtype=np.uint8)
    rgba[:24, :, 3] = 0
    img = Image.fromarray(rgba, "RGBA")
    if mode == "P+tRNS":
        img = img.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
        img.info["transparency"] = 3
        return img
    if mode == "RGB+tRNS":
        img = img.convert("RGB")
        img.info["transparency"] = tuple(int(v) for v in rgba[30, 5, :3])
        return img
    return img.convert(mode)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P+tRNS", "RGB+tRNS"])
def test_transparency_is_composited_onto_white_as_transformers_does(tiny_clip: ClipEmbedding, mode: str) -> None:
    """RGBA/LA and tRNS images: transformers' processor composites onto white; a plain convert('RGB') showed the
    hidden pixels' colours instead (cosine 0.67 to the reference for this RGBA image)."""
    model, processor = _reference(Path(tiny_clip.source.path))
    img = _with_transparency(mode)
    data = io.BytesIO()
    img.save(data, format="PNG")
    with torch.no_grad():
        pixels = processor(images=[img], return_tensors="pt")["pixel_values"]
        want = torch.nn.functional.normalize(_pooled(model.get_image_features(pixel_values=pixels)), dim=-1)[0]
    for item in (img, data.getvalue()):
        np.testing.assert_allclose(tiny_clip.get_image_embedding(item), want.numpy(), atol=1e-5)


def _oriented_jpeg(orientation: int | None) -> Image.Image:
    img = Image.new("RGB", (40, 30), (200, 10, 10))
    img.paste((10, 10, 200), (0, 0, 20, 30))
    buf = io.BytesIO()
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    img.save(buf, format="JPEG", exif=exif)
    out = Image.open(io.BytesIO(buf.getvalue()))
    out.load()
    return out


def test_pil_images_differing_only_in_what_the_decoder_reads_do_not_share_cache_keys(
    tiny_clip_path: Path, tmp_path: Path
) -> None:
    """Same mode, size and pixels, but another EXIF orientation or tRNS colour: other vectors, so other keys (a warm
    cache returned the first image's vector for the second)."""
    pairs = [(_oriented_jpeg(None), _oriented_jpeg(6))]
    plain = Image.new("RGB", (40, 48), (10, 20, 30))
    plain.paste((200, 0, 0), (0, 0, 20, 48))
    keyed = plain.copy()
    keyed.info["transparency"] = (200, 0, 0)
    pairs.append((plain, keyed))
    uncached = ClipEmbedding(model_name=str(tiny_clip_path), device="cpu")
    for a, b in pairs:
        assert a.tobytes() == b.tobytes()
        cached = ClipEmbedding(
            model_name=str(tiny_clip_path), device="cpu", embeddings_cache=SQLiteKVStore(tmp_path / "c.sqlite")
        )
        cached.get_image_embedding(a)
        got, want = cached.get_image_embedding(b), uncached.get_image_embedding(b)
        assert not np.allclose(want, uncached.get_image_embedding(a))
        np.testing.assert_array_equal(got, want)


def _variant(src: Path, dst: Path, **image_processor: Any) -> Path:
    """A copy of the tiny CLIP whose processor config has other image settings."""
    import json
    import shutil

    shutil.copytree(src, dst)
    config = json.loads((dst / "processor_config.json").read_text())
    config["image_processor"].update(image_processor)
    (dst / "processor_config.json").write_text(json.dumps(config))
    return dst


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"do_resize": False},  # center crop of the full image: a shrink first gave cosine 0.89
        {"size": {"height": 32, "width": 32}, "do_center_crop": False},  # squash: shrink-then-resize, max diff 7e-3
        {"size": {"shortest_edge": 48}, "resample": 0},  # nearest: a reduced-scale JPEG decode gave cosine 0.96
    ],
    ids=["default", "no-resize", "height-width", "nearest"],
)
def test_images_match_transformers_for_the_processor_settings(
    tiny_clip_path: Path, tmp_path: Path, settings: dict[str, Any]
) -> None:
    """Large JPEG and PNG inputs: the processor's own resize/crop from the fully decoded image, as CLIPProcessor
    on Image.open(...) does; no pre-shrink or DCT-scaled decode of ours changes the pixels."""
    path = _variant(tiny_clip_path, tmp_path / "clip", **settings)
    model, processor = _reference(path)
    rng = np.random.default_rng(5)
    big = Image.fromarray(rng.integers(0, 256, (500, 400, 3), dtype=np.uint8))
    wide = Image.fromarray(rng.integers(0, 256, (60, 300, 3), dtype=np.uint8))
    data = []
    for img, fmt in ((big, "JPEG"), (wide, "PNG")):
        buf = io.BytesIO()
        img.save(buf, format=fmt)
        data.append(buf.getvalue())
    opened = [Image.open(io.BytesIO(d)) for d in data]
    with torch.no_grad():
        pixels = processor(images=opened, return_tensors="pt")["pixel_values"]
        want = torch.nn.functional.normalize(_pooled(model.get_image_features(pixel_values=pixels)), dim=-1)
    got = ClipEmbedding(model_name=str(path), device="cpu").embed(data, role="image")
    np.testing.assert_allclose(got, want.numpy(), atol=1e-5)


def test_image_keys_change_with_the_decoding_version(tiny_clip_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Vectors cached by an older decoding (no white compositing, a pre-shrink) are other pixels': their keys miss."""
    from embedstack.providers import clip as clip_module

    key = ClipEmbedding(model_name=str(tiny_clip_path), device="cpu").pipeline.key_factory("image")(b"img")
    monkeypatch.setattr(clip_module, "_IMAGE_DECODE", clip_module._IMAGE_DECODE + 1)
    assert ClipEmbedding(model_name=str(tiny_clip_path), device="cpu").pipeline.key_factory("image")(b"img") != key


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_a_checkpoint_saved_in_half_precision_runs_in_fp32(
    tiny_clip_path: Path, tmp_path: Path, image_dir: Path, dtype: str
) -> None:
    """transformers loads a checkpoint at its saved dtype: a CLIP saved in fp16 computed in fp16 (these text
    vectors 4.0e-4 from fp32's, a red image's 2.1e-4; bf16: 6.3e-3 and 2.7e-3) under the key of its fp32 vectors.
    Ours are fp32's, equal to transformers' CLIPModel loaded with dtype float32, and the key names the saved dtype
    (`fp32_from`), so vectors cached when it ran at that dtype miss."""
    import shutil

    from transformers import CLIPModel

    path = tmp_path / dtype
    shutil.copytree(tiny_clip_path, path)
    CLIPModel.from_pretrained(str(tiny_clip_path)).to(getattr(torch, dtype)).save_pretrained(str(path))
    model, processor = _reference(path, dtype=torch.float32)
    texts = ["a cat", "dog 2 mats!"]
    names = [image_dir / "red.png", image_dir / "green.png"]
    enc = processor.tokenizer(texts, padding=True, return_tensors="pt")
    pixels = processor.image_processor(images=[Image.open(n).convert("RGB") for n in names], return_tensors="pt")
    with torch.inference_mode():
        t = torch.nn.functional.normalize(_pooled(model.get_text_features(**enc)), dim=-1).numpy()
        i = torch.nn.functional.normalize(_pooled(model.get_image_features(**pixels)), dim=-1).numpy()
    clip = ClipEmbedding(model_name=str(path), device="cpu")
    np.testing.assert_allclose(clip.embed(texts), t, atol=1e-6)
    np.testing.assert_allclose(clip.embed(names, role="image"), i, atol=1e-6)
    assert clip.provider.identity()["fp32_from"] == dtype and "fp32_from" not in clip.provider.model_identity()
    assert "fp32_from" not in ClipEmbedding(model_name=str(tiny_clip_path), device="cpu").provider.identity()
