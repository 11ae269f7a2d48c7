"""The PyTorch backend: pooled, un-normalised sentence vectors from a local model directory.

A directory with modules.json runs through sentence-transformers (its own pooling and dense
layers, without its Normalize module); a plain transformers checkpoint runs AutoModel with
embedstack's Pooling. Normalisation and Matryoshka truncation belong to the provider.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from embedstack._optional import require
from embedstack.pooling import Pooling
from embedstack.types import EmbedResult

__all__ = ["TORCH_PRECISIONS", "TorchEncoder", "pick_device"]

#: precision name → torch dtype name
TORCH_PRECISIONS = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def pick_device(device: str | None) -> str:
    """`device` if given, else cuda, then mps, then cpu: whichever this machine has."""
    if device:
        return device
    torch = require("torch", extra="local")
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


@contextmanager
def _quiet_loading() -> Iterator[None]:
    """Hide transformers' "Loading weights" progress bar while a model loads."""
    tlog = require("transformers.utils.logging", extra="local", package="transformers")
    was_on = tlog.is_progress_bar_enabled()
    if was_on:
        tlog.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            tlog.enable_progress_bar()


def _config_max_positions(config: Any) -> int | None:
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    value = getattr(cfg, "max_position_embeddings", None)
    # RoBERTa-style models reserve two positions for the padding offset.
    if value is not None and getattr(cfg, "model_type", "") in {
        "roberta",
        "xlm-roberta",
        "camembert",
    }:
        value -= 2
    return int(value) if value else None


def _count_truncated(tokenizer: Any, texts: list[str], lengths: Any, max_length: int) -> int:
    """How many texts were cut: only rows that filled max_length are re-tokenised in full."""
    full = [i for i, n in enumerate(lengths.tolist()) if n >= max_length]
    if not full:
        return 0
    ids = tokenizer([texts[i] for i in full], add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
    return sum(len(row) > max_length for row in ids)


class TorchEncoder:
    """A model directory loaded with torch: texts → pooled float32 vectors (not normalised)."""

    tokenizer: Any
    st: Any  # a SentenceTransformer, for directories with modules.json
    model: Any  # a transformers PreTrainedModel, for plain checkpoints
    dim: int
    max_length: int

    def __init__(
        self,
        model_dir: Path,
        *,
        device: str | None = None,
        max_length: int | None = None,
        pooling: Pooling | None = None,
        precision: str = "fp32",
        trust_remote_code: bool = False,
    ) -> None:
        if precision not in TORCH_PRECISIONS:
            raise ValueError(
                f"precision {precision!r} is not available with backend='torch'; use one of "
                f"{sorted(TORCH_PRECISIONS)} (int8 needs backend='onnx')"
            )
        self.torch = require("torch", extra="local")
        self.device = pick_device(device)
        self.dtype = getattr(self.torch, TORCH_PRECISIONS[precision])
        self.model_dir = Path(model_dir)
        self.tokenizer = self.st = self.model = None
        self.sentence_transformers = (self.model_dir / "modules.json").is_file()
        if self.sentence_transformers and pooling is not None:
            raise ValueError(
                f"pooling={pooling.value!r} applies to plain transformers checkpoints; "
                f"{self.model_dir} is a sentence-transformers model with its own pooling "
                f"(see its modules.json): leave pooling unset"
            )
        with _quiet_loading():
            if self.sentence_transformers:
                limit = self._load_sentence_transformers(trust_remote_code)
            else:
                limit = self._load_transformers(trust_remote_code)
        self.pooling = pooling or Pooling.MEAN
        self.max_length = self._check_max_length(max_length, limit)
        if self.sentence_transformers:
            self.st.max_seq_length = self.max_length

    # -- loading -------------------------------------------------------------------------------
    def _load_sentence_transformers(self, trust_remote_code: bool) -> int | None:
        st_mod = require("sentence_transformers", extra="local", package="sentence-transformers")
        st = st_mod.SentenceTransformer(
            str(self.model_dir),
            device=self.device,
            trust_remote_code=trust_remote_code,
            local_files_only=True,
        )
        # The provider normalises after Matryoshka truncation: drop the Normalize module.
        for name, module in list(st.named_children()):
            if type(module).__name__ == "Normalize":
                del st._modules[name]
        if self.dtype != self.torch.float32:
            st.to(self.dtype)
        st.eval()
        self.st = st
        first = st[0]
        self.tokenizer = getattr(first, "tokenizer", None)
        auto = getattr(first, "auto_model", None) or getattr(first, "model", None)
        positions = _config_max_positions(auto.config) if auto is not None and hasattr(auto, "config") else None
        dim_fn = getattr(st, "get_embedding_dimension", None) or st.get_sentence_embedding_dimension
        self.dim = int(dim_fn())
        declared = st.max_seq_length
        if declared and positions:
            return min(int(declared), positions)
        return int(declared) if declared else positions

    def _load_transformers(self, trust_remote_code: bool) -> int | None:
        transformers = require("transformers", extra="local")
        path = str(self.model_dir)
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(
            path, trust_remote_code=trust_remote_code, local_files_only=True
        )
        model = transformers.AutoModel.from_pretrained(path, trust_remote_code=trust_remote_code, local_files_only=True)
        model.to(device=self.device, dtype=self.dtype)
        model.eval()
        self.model = model
        self.dim = int(model.config.hidden_size)
        positions = _config_max_positions(model.config)
        declared = getattr(self.tokenizer, "model_max_length", None)
        if declared and declared < 1_000_000 and positions:  # transformers uses ~1e30 for "unset"
            return min(int(declared), positions)
        return positions or (int(declared) if declared and declared < 1_000_000 else None)

    def _check_max_length(self, requested: int | None, limit: int | None) -> int:
        if requested is None:
            if limit is None:
                raise ValueError(f"{self.model_dir} declares no maximum sequence length; pass max_length=")
            return limit
        if limit is not None and requested > limit:
            raise ValueError(f"max_length={requested} exceeds what {self.model_dir} supports ({limit} tokens)")
        return requested

    # -- encoding ------------------------------------------------------------------------------
    def token_counts(self, texts: list[str]) -> list[int]:
        """Tokens each text becomes (special tokens included, after truncation): the batch order key."""
        if self.tokenizer is None:
            return [len(t) for t in texts]
        ids = self.tokenizer(texts, add_special_tokens=True, truncation=True, max_length=self.max_length, verbose=False)
        return [len(row) for row in ids["input_ids"]]

    def encode(self, texts: list[str]) -> EmbedResult:
        """Pooled float32 vectors (not normalised) for `texts`, with token and truncation counts."""
        torch = self.torch
        with torch.inference_mode():
            if self.sentence_transformers:
                prep = getattr(self.st, "preprocess", None) or self.st.tokenize
                features = prep(texts)
                mask = features["attention_mask"]
                moved = {k: v.to(self.device) if hasattr(v, "to") else v for k, v in features.items()}
                pooled = self.st(moved)["sentence_embedding"]
            else:
                enc = self.tokenizer(
                    texts,
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                )
                mask = enc["attention_mask"]
                inputs = {
                    k: v.to(self.device)
                    for k, v in enc.items()
                    if k in ("input_ids", "attention_mask", "token_type_ids")
                }
                hidden = self.model(**inputs).last_hidden_state
                if self.pooling is Pooling.CLS:
                    pooled = hidden[:, 0]
                else:
                    pooled = Pooling.masked_mean(hidden, inputs["attention_mask"])
            vectors = pooled.float().cpu().numpy().astype(np.float32, copy=False)
        lengths = mask.sum(1)
        truncated = (
            _count_truncated(self.tokenizer, texts, lengths, self.max_length) if self.tokenizer is not None else 0
        )
        return EmbedResult(vectors, token_count=int(lengths.sum()), truncated=truncated)
