"""A tiny, randomly initialised CLIP saved once per session, and images made with Pillow.

Nothing is downloaded: the tokenizer is a CLIP BPE over a vocabulary written here, the image
processor resizes to 32 px, and the weights come from a seeded CLIPConfig with 2-layer towers.
"""

from __future__ import annotations

import io
import string
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

TINY_DIM = 24  # projection_dim: the length of text and image vectors alike
TINY_MAX_TOKENS = 16  # max_position_embeddings: texts are truncated to this many tokens


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Never reach for a model hub in these tests."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _tiny_tokenizer() -> Any:
    from transformers import CLIPTokenizer

    symbols = list(string.ascii_lowercase + string.digits + string.punctuation)
    tokens = ["<|startoftext|>", "<|endoftext|>"]
    for s in symbols:
        tokens += [s, s + "</w>"]
    merges = [("c", "a"), ("ca", "t</w>"), ("d", "o"), ("do", "g</w>")]
    tokens += ["ca", "cat</w>", "do", "dog</w>"]
    vocab = {t: i for i, t in enumerate(tokens)}
    try:
        return CLIPTokenizer(vocab=vocab, merges=merges)  # transformers >= 5
    except TypeError:  # transformers 4: files only
        import json
        import tempfile

        d = Path(tempfile.mkdtemp())
        (d / "vocab.json").write_text(json.dumps(vocab))
        (d / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges))
        return CLIPTokenizer(vocab_file=str(d / "vocab.json"), merges_file=str(d / "merges.txt"))


def build_tiny_clip(path: Path, seed: int = 0) -> Path:
    """Save a tiny random CLIPModel + CLIPProcessor to `path` and return it."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    tok = _tiny_tokenizer()
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tok,
    )
    config = CLIPConfig(
        text_config={
            "vocab_size": len(tok.get_vocab()),
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": TINY_MAX_TOKENS,
            "bos_token_id": tok.bos_token_id,
            "eos_token_id": tok.eos_token_id,
            "pad_token_id": tok.pad_token_id,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=TINY_DIM,
    )
    torch.manual_seed(seed)
    CLIPModel(config).eval().save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_clip_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory of the session's tiny CLIP (built once)."""
    return build_tiny_clip(tmp_path_factory.mktemp("tiny-clip") / "model")


@pytest.fixture(scope="session")
def tiny_clip(tiny_clip_path: Path) -> Any:
    """A loaded ClipEmbedding over the tiny model, shared by read-only tests (no cache)."""
    from embedstack.providers.clip import ClipEmbedding

    return ClipEmbedding(model_name=str(tiny_clip_path), device="cpu").load()


def png_bytes(color: tuple[int, int, int], size: tuple[int, int] = (40, 48), mode: str = "RGB") -> bytes:
    """A PNG of a solid colour with a diagonal stripe (so images differ in more than their mean)."""
    img = Image.new("RGB", size, color)
    for i in range(min(size)):
        img.putpixel((i, i), (255 - color[0], 255 - color[1], 255 - color[2]))
    if mode != "RGB":
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def image_dir(tmp_path: Path) -> Path:
    """red.png, green.png, blue.png and a byte-identical copy of red.png (red_copy.png)."""
    colors = {"red": (220, 20, 20), "green": (20, 200, 40), "blue": (30, 30, 210)}
    for name, color in colors.items():
        (tmp_path / f"{name}.png").write_bytes(png_bytes(color))
    (tmp_path / "red_copy.png").write_bytes((tmp_path / "red.png").read_bytes())
    return tmp_path


@pytest.fixture(scope="session")
def make_png() -> Any:
    """png_bytes(color, size=(40, 48), mode="RGB") → PNG bytes."""
    return png_bytes


@pytest.fixture(scope="session")
def build_clip() -> Any:
    """build_tiny_clip(path, seed=0) → a saved tiny CLIP directory."""
    return build_tiny_clip


@pytest.fixture(scope="session")
def tiny_sizes() -> tuple[int, int]:
    """(vector length, token limit) of the tiny CLIP."""
    return TINY_DIM, TINY_MAX_TOKENS
