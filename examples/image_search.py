"""Search a folder of images by text (or by another image) with CLIP.

    python examples/image_search.py PHOTOS "a dog on a beach"
    python examples/image_search.py PHOTOS --like PHOTOS/cat.jpg --top-k 3
    python examples/image_search.py PHOTOS "sunset" --model /models/clip --cache clip.sqlite

--model takes a Hugging Face CLIP id, an OpenAI name ("ViT-B/32", "ViT-L/14") or a local
directory (default: openai/clip-vit-base-patch32, from the Hugging Face cache or downloaded).
With --cache the image vectors are kept in SQLite, so a second search re-reads nothing but
the files' bytes. Unreadable images are reported and skipped.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from embedstack.kvstore import SimpleKVStore, SQLiteKVStore
from embedstack.providers.clip import DEFAULT_CLIP_MODEL, ClipEmbedding, ImageDecodeError
from embedstack.vectors import cosine_top_k

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"}


def find_images(folder: Path) -> list[Path]:
    """Image files under `folder` (recursively), by suffix, in a stable order."""
    found = (p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    return sorted(found)


def embed_images(model: ClipEmbedding, paths: list[Path], progress: bool) -> tuple[list[Path], Any]:
    """Embed `paths`, reporting and dropping images that cannot be decoded: (kept, vectors).

    The model has a cache, so each retry embeds only what is left after the bad image.
    """
    kept = list(paths)
    while True:
        try:
            return kept, model.embed(kept, role="image", show_progress=progress)
        except ImageDecodeError as e:
            if e.index is None:
                raise
            print(f"skipping {kept[e.index]}: {e.reason}", file=sys.stderr)
            del kept[e.index]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the search; prints rank, score and path of the best matches."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", type=Path, help="folder of images (searched recursively)")
    parser.add_argument("query", nargs="?", help="text to search for")
    parser.add_argument("--like", type=Path, help="search by this image instead of a text")
    parser.add_argument("--model", default=DEFAULT_CLIP_MODEL, help="CLIP id, OpenAI name or path")
    parser.add_argument("--top-k", type=int, default=5, help="how many matches to print")
    parser.add_argument("--batch-size", type=int, default=16, help="images per model call")
    parser.add_argument("--device", default=None, help="torch device (default: cuda, mps or cpu)")
    parser.add_argument("--cache", type=Path, help="SQLite file keeping image vectors between runs")
    parser.add_argument("--progress", action="store_true", help="show a progress bar")
    args = parser.parse_args(argv)
    if (args.query is None) == (args.like is None):
        parser.error("give either a text query or --like IMAGE")

    paths = find_images(args.folder)
    if not paths:
        parser.error(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {args.folder}")

    cache = SQLiteKVStore(args.cache) if args.cache is not None else SimpleKVStore()
    model = ClipEmbedding(
        model_name=args.model,
        device=args.device,
        embed_batch_size=args.batch_size,
        embeddings_cache=cache,
    )
    kept, vectors = embed_images(model, paths, args.progress)
    if args.like is not None:
        query = model.get_image_embedding(args.like)
        what = f"images like {args.like}"
    else:
        query = model.get_query_embedding(args.query)
        what = repr(args.query)

    print(f"{len(kept)} images, nearest to {what}:")
    print("| rank | score | image |\n|---:|---:|---|")
    for rank, (i, score) in enumerate(cosine_top_k(query, vectors, k=args.top_k), start=1):
        print(f"| {rank} | {score:.4f} | {kept[i]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
