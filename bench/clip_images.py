"""Image embedding throughput: ClipEmbedding vs hand-written transformers code on the same model.

    flock /tmp/embedstack-cpu.lock .venv/bin/python bench/clip_images.py [--n 48] [--large 8]

The model is a ViT-B/32-sized CLIP (transformers' default CLIPConfig) with random weights, so
nothing is downloaded and the compute matches openai/clip-vit-base-patch32. Peers, same process:
  per-image  — one image per forward pass, as LlamaIndex's ClipEmbedding does (Image.open →
               preprocess → encode_image);
  batched    — the hand-written batched loop (PIL open + convert, processor, get_image_features);
  embedstack — ClipEmbedding.embed(paths, role="image"), cold, then with a warm cache.
"Photos" are 640x480 JPEGs; "large" are 4000x3000 JPEGs (phone-camera size).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from _common import best_of

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _make_model(path: Path) -> Path:
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "a": 2, "a</w>": 3}
    tok = CLIPTokenizer(vocab=vocab, merges=[])
    CLIPProcessor(image_processor=CLIPImageProcessor(), tokenizer=tok).save_pretrained(path)
    torch.manual_seed(0)
    CLIPModel(CLIPConfig()).eval().save_pretrained(path)
    return path


def _make_images(folder: Path, n: int, size: tuple[int, int], prefix: str) -> list[Path]:
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        small = rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)  # smooth content, realistic JPEG size
        img = Image.fromarray(small).resize(size, Image.Resampling.BILINEAR)
        p = folder / f"{prefix}{i:03d}.jpg"
        img.save(p, quality=90)
        paths.append(p)
    return paths


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=48, help="640x480 photos")
    parser.add_argument("--large", type=int, default=8, help="4000x3000 photos")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()

    import torch
    from PIL import Image
    from transformers import CLIPModel, CLIPProcessor

    from embedstack.kvstore import SimpleKVStore
    from embedstack.providers.clip import ClipEmbedding

    torch.set_grad_enabled(False)
    tmp = Path(tempfile.mkdtemp(prefix="clip-bench-"))
    model_dir = _make_model(tmp / "model")
    sets = {
        "photos 640x480": _make_images(tmp, args.n, (640, 480), "p"),
        "large 4000x3000": _make_images(tmp, args.large, (4000, 3000), "l"),
    }
    model = CLIPModel.from_pretrained(model_dir).eval()
    proc = CLIPProcessor.from_pretrained(model_dir)

    def feats(out: Any) -> Any:
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    def per_image(paths: list[Path]) -> np.ndarray:
        rows = []
        for p in paths:
            px = proc.image_processor(images=[Image.open(p).convert("RGB")], return_tensors="pt")
            rows.append(feats(model.get_image_features(pixel_values=px["pixel_values"]))[0].numpy())
        return np.stack(rows)

    def batched(paths: list[Path]) -> np.ndarray:
        rows = []
        for i in range(0, len(paths), args.batch_size):
            imgs = [Image.open(p).convert("RGB") for p in paths[i : i + args.batch_size]]
            px = proc.image_processor(images=imgs, return_tensors="pt")["pixel_values"]
            rows.append(feats(model.get_image_features(pixel_values=px)).numpy())
        return np.concatenate(rows)

    clip = ClipEmbedding(model_name=str(model_dir), device="cpu", embed_batch_size=args.batch_size).load()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}")
    print("\n| images | peer | seconds | images/s | vs batched |\n|---|---|---:|---:|---:|")
    for name, paths in sets.items():
        t_batched, ref = best_of(lambda p=paths: batched(p), 2)
        results = {"per-image (LlamaIndex style)": best_of(lambda p=paths: per_image(p), 1)[0]}
        results["batched transformers"] = t_batched
        t_es, vec = best_of(lambda p=paths: clip.embed(p, role="image"), 2)
        results["embedstack ClipEmbedding"] = t_es
        cached = ClipEmbedding(
            model_name=str(model_dir),
            device="cpu",
            embed_batch_size=args.batch_size,
            embeddings_cache=SimpleKVStore(),
        ).load()
        cached.embed(paths, role="image")
        results["embedstack, warm cache"] = best_of(lambda p=paths, m=cached: m.embed(p, role="image"), 2)[0]
        ref_n = ref / np.linalg.norm(ref, axis=1, keepdims=True)
        cos = float(np.min(np.sum(ref_n * vec, axis=1)))
        for peer, secs in results.items():
            print(
                f"| {name} (n={len(paths)}) | {peer} | {secs:.2f} | {len(paths) / secs:.1f} | {t_batched / secs:.2f}x |"
            )
        print(f"| {name} | min cosine embedstack vs batched | {cos:.4f} | | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
