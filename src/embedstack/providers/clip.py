"""ClipEmbedding: texts and images in one vector space, on transformers' CLIPModel + CLIPProcessor.

Needs the `clip` extra (transformers, torch, pillow). The model is found like the local text
models (a directory, the Hugging Face cache, the Hub only when online) and loaded on first use.
"""

from __future__ import annotations

import json
import threading
from typing import Any, ClassVar

import numpy as np
from pydantic import Field, PrivateAttr, field_validator

from embedstack._optional import require
from embedstack.base import DEFAULT_EMBED_BATCH_SIZE, BatchEmbedding, MultiModalEmbedding
from embedstack.providers._device import pick_device
from embedstack.providers._image_decode import ImageDecodeError, decode_images
from embedstack.providers.catalog import MODELS
from embedstack.providers.hub import ModelSource, locate_model, stamp_fp32_from, stamp_identity
from embedstack.types import Batch, EmbedResult, Role

__all__ = [
    "DEFAULT_CLIP_MODEL",
    "OPENAI_CLIP_MODELS",
    "ClipEmbedding",
    "ImageDecodeError",
    "from_spec",
    "hf_clip_name",
]

DEFAULT_CLIP_MODEL = "openai/clip-vit-base-patch32"

#: LlamaIndex's OpenAI-CLIP names (the `clip` package's) → Hugging Face copies of those weights (from the
#: model facts table, `providers.catalog`, where each CLIP lists its OpenAI name as an alias).
OPENAI_CLIP_MODELS = {alias: m.name for m in MODELS if m.provider == "clip" for alias in m.aliases}
#: OpenAI's ResNet CLIPs: transformers' CLIPModel has no ResNet image tower; nothing to map to.
_RESNET_CLIP = ("RN50", "RN101", "RN50x4", "RN50x16", "RN50x64")

# Fields that change which files are used, and which change how the weights are loaded.
_RELOCATE = frozenset({"model_name", "cache_folder", "revision"})
_RELOAD = _RELOCATE | {"device"}
#: Bumped when our decoding gives other pixels to the processor (cached image vectors of the old one then miss).
_IMAGE_DECODE = 2


def hf_clip_name(name: str) -> str:
    """A LlamaIndex/OpenAI CLIP name ("ViT-B/32") as its Hugging Face id; other names unchanged."""
    key = name.strip()
    for openai_name, hf_id in OPENAI_CLIP_MODELS.items():
        if key.lower() == openai_name.lower():
            return hf_id
    if key.upper() in {n.upper() for n in _RESNET_CLIP}:
        raise ValueError(
            f"CLIP model {name!r} is a ResNet CLIP, which transformers' CLIPModel cannot load; "
            f"use a ViT CLIP such as 'ViT-B/32' ({OPENAI_CLIP_MODELS['ViT-B/32']}) "
            f"or 'ViT-L/14' ({OPENAI_CLIP_MODELS['ViT-L/14']})"
        )
    return key


def _features(out: Any) -> Any:
    """get_*_features' result as a tensor (transformers 5 wraps it in an output's pooler_output)."""
    return out if hasattr(out, "shape") else out.pooler_output


class _Loaded:
    """The loaded torch model, its processor and what a batch needs to know about them."""

    def __init__(self, source: ModelSource, device: str | None) -> None:
        torch = require("torch", extra="clip")
        transformers = require("transformers", extra="clip")
        require("PIL.Image", extra="clip", package="pillow")
        self.torch = torch
        self.device = pick_device(device, extra="clip")
        path = str(source.path)
        # fp32 whatever the checkpoint was saved in (transformers loads an fp16/bf16 checkpoint at that dtype)
        model = transformers.CLIPModel.from_pretrained(path, local_files_only=True, dtype=torch.float32)
        self.model = model.to(self.device).eval()
        processor = transformers.CLIPProcessor.from_pretrained(path, local_files_only=True)
        self.tokenizer = processor.tokenizer
        self.image_processor = processor.image_processor
        text_max = int(self.model.config.text_config.max_position_embeddings)
        tok_max = getattr(self.tokenizer, "model_max_length", None)
        self.max_length = min(text_max, tok_max) if isinstance(tok_max, int) and 0 < tok_max < 1_000_000 else text_max
        self.dim = int(self.model.config.projection_dim)

    def encode_texts(self, texts: list[str]) -> tuple[Any, int, int]:
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        encodings = getattr(enc, "encodings", None) or []
        truncated = sum(1 for e in encodings if getattr(e, "overflowing", None))
        token_count = int(enc["attention_mask"].sum())
        with self.torch.inference_mode():
            feats = _features(
                self.model.get_text_features(
                    input_ids=enc["input_ids"].to(self.device),
                    attention_mask=enc["attention_mask"].to(self.device),
                )
            )
        return feats, token_count, truncated

    def prepare(self, image: Any) -> Any:
        """One decoded image as the processor's pixel values (its own resize, crop and normalisation, as read
        from the model's processor config), so a batch holds model inputs, never full-size pixels."""
        return self.image_processor(images=[image], return_tensors="pt")["pixel_values"]

    def encode_images(self, prepared: list[Any]) -> Any:
        pixels = self.torch.cat(prepared)
        with self.torch.inference_mode():
            return _features(self.model.get_image_features(pixel_values=pixels.to(self.device, dtype=self.model.dtype)))


class ClipEmbedding(BatchEmbedding, MultiModalEmbedding):
    """CLIP: texts (queries and documents alike) and images in one space, for multimodal search.

    Vectors are L2-normalised by default (`normalize=True`), so a dot product is the cosine
    similarity; LlamaIndex's ClipEmbedding returns the raw projections, whose cosine is the same.
    Texts over the model's limit (77 tokens) are truncated, counted on EmbeddingEndEvent.truncated.
    Images are decoded and checked, all of a batch before the model runs; see ImageDecodeError.
    """

    model_name: str = Field(
        default=DEFAULT_CLIP_MODEL,
        description="Hugging Face CLIP id, OpenAI name ('ViT-B/32', 'ViT-L/14', ...) or directory.",
    )
    embed_batch_size: int = Field(default=DEFAULT_EMBED_BATCH_SIZE, gt=0, le=2048, description="Items per model call.")
    device: str | None = Field(default=None, description="torch device; None picks cuda, mps or cpu.")
    normalize: bool = Field(default=True, description="L2-normalise the vectors (cosine = dot product).")
    cache_folder: str | None = Field(default=None, description="Hugging Face cache directory to look in / download to.")
    revision: str | None = Field(default=None, description="Hub revision (branch, tag or commit).")

    _identity_exclude: ClassVar[frozenset[str]] = frozenset({"device", "cache_folder"})
    max_concurrency: ClassVar[int | None] = 1
    catalog_name: ClassVar[str | None] = "clip"

    _derived: ClassVar[frozenset[str]] = frozenset({"_source", "_loaded", "_lock"})
    _source: ModelSource | None = PrivateAttr(default=None)
    _loaded: _Loaded | None = PrivateAttr(default=None)
    _lock: threading.RLock = PrivateAttr(default_factory=threading.RLock)

    def __init__(self, model_name: str = DEFAULT_CLIP_MODEL, **kwargs: Any) -> None:
        super().__init__(model_name=model_name, **kwargs)

    @classmethod
    def class_name(cls) -> str:
        """Name stored in to_dict()."""
        return "ClipEmbedding"

    @field_validator("model_name", mode="before")
    @classmethod
    def _map_model_name(cls, v: Any) -> Any:
        return hf_clip_name(v) if isinstance(v, str) else v

    def _refresh(self, changed: frozenset[str], fresh: bool) -> None:
        """Map an OpenAI CLIP name, find the files (a bad name fails here, undoing an assignment) and
        drop loaded weights whose name, files or device changed; they load again on first use."""
        if "model_name" in changed and isinstance(self.model_name, str):  # assignment and model_copy skip validation
            self.__dict__["model_name"] = hf_clip_name(self.model_name)
        if fresh or changed & _RELOCATE:
            self._locate()
        if not fresh and changed & _RELOAD:
            with self._lock:  # kept, never swapped: a call in flight holds it (a shallow copy shares it: serialised)
                self._loaded = None

    def _locate(self) -> None:
        source = locate_model(self.model_name, self.cache_folder, self.revision)
        config = source.path / "config.json"
        try:
            model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot read {config} for CLIP model {self.model_name!r}: {e}") from e
        if model_type != "clip":
            raise ValueError(
                f"{self.model_name!r} is not a CLIP model (config.json model_type is "
                f"{model_type!r}, expected 'clip'); use a CLIP checkpoint such as "
                f"{DEFAULT_CLIP_MODEL!r}, or HuggingFaceEmbedding for text-only models"
            )
        self._source = source

    def _identity(self) -> dict[str, Any]:
        """The fields that change vectors, a stamp of a local directory's files (see files_stamp), the version of
        our image decoding (2: transparency onto white, full-scale decode, the processor's own resize) and, for a
        checkpoint saved in fp16/bf16, that dtype (`fp32_from`: it ran at that dtype before it was cast to fp32)."""
        data = stamp_fp32_from(stamp_identity(super()._identity(), self.source), self.source.path)
        data["image_decode"] = _IMAGE_DECODE
        return data

    @property
    def source(self) -> ModelSource:
        """Where this model's files were found (directory and origin)."""
        if self._source is None:  # only before model_post_init has run
            raise RuntimeError("ClipEmbedding is not initialised")
        return self._source

    def _model(self) -> _Loaded:
        with self._lock:
            if self._loaded is None:
                self._loaded = _Loaded(self.source, self.device)
            return self._loaded

    def load(self) -> ClipEmbedding:
        """Load the weights now rather than on the first call; returns self."""
        self._model()
        return self

    @property
    def embed_dim(self) -> int:
        """Length of the vectors (text and image alike); loads the model."""
        return self._model().dim

    # -- the pipeline's hooks ------------------------------------------------------------------
    def _embed(self, batch: Batch) -> Any:
        try:
            return self._embed_batch(batch.items, batch.role)
        except (TypeError, ValueError, OSError) as e:
            raise _named(e, batch) from None

    async def _aembed(self, batch: Batch) -> Any:
        try:
            return await super()._aembed(batch)
        except (TypeError, ValueError, OSError) as e:
            raise _named(e, batch) from None

    def _embed_batch(self, items: list[Any], role: Role) -> EmbedResult:
        """Texts and queries through the text tower; images (all decoded first) the image tower."""
        model = self._model()
        if role is Role.IMAGE:
            wheres, indexes = [f"image {i} of the batch" for i in range(len(items))], [None] * len(items)
            images = decode_images(items, wheres=wheres, indexes=indexes, prepare=model.prepare)
            with self._lock:
                feats = model.encode_images(images)
            token_count, truncated = None, 0
        else:
            with self._lock:
                feats, token_count, truncated = model.encode_texts(list(items))
        if self.normalize:
            feats = model.torch.nn.functional.normalize(feats.float(), dim=-1)
        vectors = np.ascontiguousarray(feats.float().cpu().numpy(), dtype=np.float32)
        return EmbedResult(vectors, token_count=token_count, truncated=truncated)


def _named(e: Exception, batch: Batch) -> Exception:
    """A bad image's error naming it as the caller passed it ("img_file_paths[3]"), not by its batch place."""
    i = getattr(e, "batch_index", None)
    if i is None:
        return e
    if isinstance(e, ImageDecodeError):
        return ImageDecodeError(batch.name(i), e.image, e.reason, batch.positions[i])
    try:
        return type(e)(str(e).replace(f"image {i} of the batch", batch.name(i), 1))
    except TypeError:  # an exception type with another signature: keep it as it is
        return e


def from_spec(arg: str | None) -> ClipEmbedding:
    """The registry's factory for "clip" and "clip:<name or path>" (or 'ViT-L/14')."""
    return ClipEmbedding(model_name=arg or DEFAULT_CLIP_MODEL)
