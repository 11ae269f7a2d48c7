"""The PyTorch backend: pooled, un-normalised sentence vectors from a local model directory.

A directory with modules.json runs through sentence-transformers (its own pooling and dense
layers, without its Normalize module); a plain transformers checkpoint runs AutoModel with
embedstack's Pooling. Normalisation and Matryoshka truncation belong to the provider.

Texts are tokenised by a TorchTokenizer, which reads only the tokenizer and config files (no
weights), so the provider can order a call's texts by token count and hand the same tokens to
`encode`: each text is tokenised once.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from embedstack._optional import require
from embedstack.pooling import Pooling
from embedstack.providers._device import pick_device
from embedstack.providers.huggingface.st_modules import transformer_settings_problem
from embedstack.providers.huggingface.tokens import Tokens, add_lowercase, encode_tokens, pad_tokens
from embedstack.types import EmbedResult

__all__ = ["TORCH_PRECISIONS", "TorchEncoder", "TorchTokenizer"]

logger = logging.getLogger("embedstack")

#: precision name → torch dtype name
TORCH_PRECISIONS = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


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


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


#: Texts that show whether the provider's tokenizer feeds a sentence-transformers model exactly as its
#: own preprocessing does (case, spacing, accents, padding, truncation).
_PROBE = ["  The Quick BROWN fox, déjà vu!  ", "a", "word " * 600]


class TorchTokenizer:
    """A model directory's transformers tokenizer and token limit, read without loading its weights.

    Safe to call from several threads: a transformers fast tokenizer sets its truncation on the Rust
    tokenizer in each call ("Already borrowed" when two threads meet), so calls into it take turns
    on a lock of the tokenizer's own (never the model's: a server tokenises arrivals while a batch runs).
    """

    def __init__(self, model_dir: Path, *, max_length: int | None = None, trust_remote_code: bool = False) -> None:
        transformers = require("transformers", extra="local")
        self.model_dir = Path(model_dir)
        self.sentence_transformers = (self.model_dir / "modules.json").is_file()
        folder, st_config = self._transformer_module()
        #: The Transformer module's sentence_bert_config.json settings, and where they were read.
        self.st_config, self.st_config_path = st_config, folder / "sentence_bert_config.json"
        problem = transformer_settings_problem(st_config, str(self.st_config_path), fast_path=False)
        if problem:
            raise ValueError(problem)
        with _quiet_loading():
            self.hf = transformers.AutoTokenizer.from_pretrained(
                str(folder), trust_remote_code=trust_remote_code, local_files_only=True
            )
            config = transformers.AutoConfig.from_pretrained(
                str(folder), trust_remote_code=trust_remote_code, local_files_only=True
            )
        self.lowercase = bool(st_config.get("do_lower_case"))
        if self.lowercase:  # in the tokenizer, as sentence-transformers does (a literal "[MASK]" stays special)
            add_lowercase(self.hf)
        self._lock = threading.Lock()
        positions = _config_max_positions(config)
        declared = getattr(self.hf, "model_max_length", None)
        declared = int(declared) if declared and declared < 1_000_000 else None  # transformers uses ~1e30 for "unset"
        if self.sentence_transformers and st_config.get("max_seq_length"):
            declared = int(st_config["max_seq_length"])
        limit = min(declared, positions) if declared and positions else (declared or positions)
        self.max_length = _check_max_length(self.model_dir, max_length, limit)

    @classmethod
    def for_model(
        cls, model_dir: Path, *, max_length: int | None = None, trust_remote_code: bool = False
    ) -> TorchTokenizer | None:
        """The tokenizer, or None for a sentence-transformers model whose first module is no Transformer."""
        try:
            return cls(model_dir, max_length=max_length, trust_remote_code=trust_remote_code)
        except _NoTextTokenizer:
            return None

    def _transformer_module(self) -> tuple[Path, dict[str, Any]]:
        """The folder of the (first) Transformer module and its sentence-transformers config."""
        if not self.sentence_transformers:
            return self.model_dir, {}
        try:
            modules = json.loads((self.model_dir / "modules.json").read_text(encoding="utf-8"))
            first = modules[0]
        except (OSError, ValueError, IndexError, KeyError, TypeError) as e:
            raise _NoTextTokenizer(str(e)) from e
        if not isinstance(first, dict) or not str(first.get("type", "")).endswith("Transformer"):
            raise _NoTextTokenizer(f"{self.model_dir} starts with a {first!r} module")
        folder = self.model_dir / str(first.get("path", ""))
        return folder, _read_json(folder / "sentence_bert_config.json")

    @property
    def backend_tokenizer(self) -> Any:
        """The underlying `tokenizers` object of a fast tokenizer (None for a slow one)."""
        return getattr(self.hf, "backend_tokenizer", None)

    def tokenize(self, texts: list[str]) -> list[Tokens]:
        """Token ids (special tokens included, truncated to max_length) and whether each text was cut."""
        return self.encode(texts, truncation=True)

    def encode(
        self, firsts: list[str], seconds: list[str] | None = None, truncation: bool | str = True
    ) -> list[Tokens]:
        """Tokens of texts, or of (first, second) pairs when `seconds` is given, cut to max_length as `truncation`
        says (transformers' values), with whether each was cut and its token type ids when the tokenizer makes them.
        The texts are taken as they are (lower-casing is the caller's)."""
        sides = [firsts] if seconds is None else [firsts, seconds]
        return encode_tokens(self.hf, sides, self.max_length, truncation=truncation, lock=self._lock)

    def pad(self, tokens: Sequence[Tokens]) -> dict[str, Any]:
        """input_ids, attention_mask (and token_type_ids when the tokenizer makes them) as padded tensors."""
        torch = require("torch", extra="local")
        return {name: torch.from_numpy(array) for name, array in pad_tokens(tokens, self.hf).items()}


class _NoTextTokenizer(ValueError):
    """The directory's first sentence-transformers module is not a Transformer (no text tokenizer to read)."""


def _check_max_length(model_dir: Path, requested: int | None, limit: int | None) -> int:
    if requested is None:
        if limit is None:
            raise ValueError(f"{model_dir} declares no maximum sequence length; pass max_length=")
        return limit
    if limit is not None and requested > limit:
        raise ValueError(f"max_length={requested} exceeds what {model_dir} supports ({limit} tokens)")
    return requested


class TorchEncoder:
    """A model directory loaded with torch: texts → pooled float32 vectors (not normalised).

    Implements `embedstack.providers.huggingface.encoder.Encoder`.
    """

    st: Any  # a SentenceTransformer, for directories with modules.json
    model: Any  # a transformers PreTrainedModel, for plain checkpoints
    dim: int
    max_length: int
    device: str
    #: The shared tokenizer (None for a model whose first module is no Transformer).
    text_tokenizer: TorchTokenizer | None

    def __init__(
        self,
        model_dir: Path,
        *,
        tokenizer: TorchTokenizer | None = None,
        device: str | None = None,
        max_length: int | None = None,
        pooling: Pooling | None = None,
        precision: str = "fp32",
        trust_remote_code: bool = False,
    ) -> None:
        """`tokenizer` (made for the same directory and max_length) is shared with the caller; one is
        made when not given. `max_length` is that tokenizer's when one is passed."""
        if precision not in TORCH_PRECISIONS:
            raise ValueError(
                f"precision {precision!r} is not available with backend='torch'; use one of "
                f"{sorted(TORCH_PRECISIONS)} (int8 needs backend='onnx')"
            )
        self.torch = require("torch", extra="local")
        self.device = pick_device(device)
        self.dtype = getattr(self.torch, TORCH_PRECISIONS[precision])
        self.model_dir = Path(model_dir)
        self.st = self.model = None
        self.sentence_transformers = (self.model_dir / "modules.json").is_file()
        if self.sentence_transformers and pooling is not None:
            raise ValueError(
                f"pooling={pooling.value!r} applies to plain transformers checkpoints; "
                f"{self.model_dir} is a sentence-transformers model with its own pooling "
                f"(see its modules.json): leave pooling unset"
            )
        if tokenizer is None:
            tokenizer = TorchTokenizer.for_model(
                self.model_dir, max_length=max_length, trust_remote_code=trust_remote_code
            )
        self.text_tokenizer = tokenizer
        self.pooling = pooling or Pooling.MEAN
        #: Whether `encode` feeds the shared tokenizer's tokens (else sentence-transformers tokenises).
        self.reuses_tokens = False
        self._extras: dict[str, Any] = {}
        with _quiet_loading():
            if self.sentence_transformers:
                limit = self._load_sentence_transformers(trust_remote_code)
            else:
                limit = self._load_transformers(trust_remote_code)
        if tokenizer is not None and (max_length is not None or limit is None or limit == tokenizer.max_length):
            self.max_length = tokenizer.max_length
        else:  # sentence-transformers settled on another limit than the files say: its own wins
            self.max_length = _check_max_length(self.model_dir, max_length, limit)
        if self.sentence_transformers:
            self.st.max_seq_length = self.max_length
            self.reuses_tokens = self._tokens_match_sentence_transformers()
        else:
            self.reuses_tokens = tokenizer is not None

    @property
    def tokenizer(self) -> Any:
        """The transformers tokenizer texts go through (sentence-transformers' own when it tokenises)."""
        if self.st is not None and not self.reuses_tokens:
            return getattr(self.st[0], "tokenizer", None)
        return self.text_tokenizer.hf if self.text_tokenizer is not None else None

    # -- loading -------------------------------------------------------------------------------
    def _load_sentence_transformers(self, trust_remote_code: bool) -> int | None:
        st_mod = require("sentence_transformers", extra="local", package="sentence-transformers")
        st = st_mod.SentenceTransformer(
            str(self.model_dir),
            device=self.device,
            trust_remote_code=trust_remote_code,
            local_files_only=True,
        )
        # The provider normalises after Matryoshka truncation: drop a trailing Normalize module (one between
        # other modules stays: what follows it sees normalised vectors).
        while len(st) and type(st[-1]).__name__ == "Normalize":
            del st._modules[list(st._modules)[-1]]
        st.to(self.dtype)  # always: a checkpoint saved in fp16 loads as fp16 (dtype "auto"); fp32 means fp32
        st.eval()
        self.st = st
        first = st[0]
        if getattr(getattr(first, "tokenizer", None), "padding_side", "right") != "right":
            first.tokenizer.padding_side = "right"  # as `pad_tokens`: a text's vector never depends on its batch
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
        model = transformers.AutoModel.from_pretrained(path, trust_remote_code=trust_remote_code, local_files_only=True)
        model.to(device=self.device, dtype=self.dtype)
        model.eval()
        self.model = model
        self.dim = int(model.config.hidden_size)
        return None  # the tokenizer read the limit from the same config

    def _st_features(self, texts: list[str]) -> dict[str, Any]:
        prep = getattr(self.st, "preprocess", None) or self.st.tokenize
        return dict(prep(texts))

    def _tokens_match_sentence_transformers(self) -> bool:
        """Whether the shared tokenizer's tokens, padded, are exactly what sentence-transformers' own
        preprocessing makes of the probe texts (then `encode` reuses them instead of tokenising again)."""
        tokenizer = self.text_tokenizer
        if tokenizer is None or tokenizer.max_length != self.max_length:
            return False
        try:
            expected = self._st_features(list(_PROBE))
            ours = tokenizer.pad(tokenizer.tokenize(list(_PROBE)))
        except Exception as e:  # a model whose preprocessing this cannot imitate
            logger.info("torch: %s tokenises its own way (%s); texts are tokenised twice", self.model_dir, e)
            return False
        tensors = {k for k, v in expected.items() if hasattr(v, "shape")}
        same = tensors == set(ours) and all(self.torch.equal(expected[k].cpu(), ours[k]) for k in tensors)
        if same:
            self._extras = {k: v for k, v in expected.items() if k not in tensors}  # e.g. modality="text"
        else:
            logger.info("torch: %s preprocesses texts differently; texts are tokenised twice", self.model_dir)
        return same

    # -- encoding ------------------------------------------------------------------------------
    def encode(self, texts: list[str], tokens: Sequence[Tokens] | None = None) -> EmbedResult:
        """Pooled float32 vectors (not normalised) for `texts`, with token and truncation counts.

        `tokens`: the shared tokenizer's tokens for `texts`, when the caller has them already.
        """
        torch = self.torch
        if self.reuses_tokens and self.text_tokenizer is not None:
            if tokens is None:
                tokens = self.text_tokenizer.tokenize(texts)
            elif len(tokens) != len(texts):
                raise ValueError(f"{len(tokens)} token rows for {len(texts)} texts")
            features = {**self.text_tokenizer.pad(tokens), **self._extras}
            truncated: int | None = sum(t.truncated for t in tokens)
        else:
            features = self._st_features(texts)
            truncated = None
        mask = features["attention_mask"]
        with torch.inference_mode():
            moved = {k: v.to(self.device) if hasattr(v, "to") else v for k, v in features.items()}
            if self.sentence_transformers:
                pooled = self.st(moved)["sentence_embedding"]
            else:
                inputs = {k: v for k, v in moved.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
                hidden = self.model(**inputs).last_hidden_state
                if self.pooling is Pooling.MEAN:
                    pooled = Pooling.masked_mean(hidden, inputs["attention_mask"])
                else:  # by the mask, as sentence-transformers pools (padding on either side)
                    mask_np = inputs["attention_mask"].cpu().numpy()
                    pooled = torch.from_numpy(Pooling.pool(hidden.float().cpu().numpy(), mask_np, [self.pooling]))
            vectors = pooled.float().cpu().numpy().astype(np.float32, copy=False)
        lengths = mask.sum(1)
        if truncated is None:
            hf = getattr(self.st[0], "tokenizer", None) if self.st is not None else None
            truncated = _count_truncated(hf, texts, lengths, self.max_length) if hf is not None else 0
        return EmbedResult(vectors, token_count=int(lengths.sum()), truncated=truncated)

    # -- token vectors (late chunking) ---------------------------------------------------------
    def token_vectors(self, tokens: Sequence[Tokens], rows_per_call: int = 16) -> list[np.ndarray]:
        """Each row's token vectors, (len(row.ids), hidden) float32: the Transformer module's output."""
        if self.text_tokenizer is None or (self.st is not None and not self.reuses_tokens):
            raise ValueError(
                f"{self.model_dir} tokenises its texts its own way in sentence-transformers, so token offsets cannot "
                "be mapped onto its token vectors on backend='torch'; use backend='onnx'"
            )
        torch = self.torch
        out: list[np.ndarray] = []
        for start in range(0, len(tokens), rows_per_call):
            rows = tokens[start : start + rows_per_call]
            features = {**self.text_tokenizer.pad(rows), **self._extras}
            with torch.inference_mode():
                moved = {k: v.to(self.device) if hasattr(v, "to") else v for k, v in features.items()}
                if self.st is not None:
                    hidden = self.st[0](moved)["token_embeddings"]
                else:
                    inputs = {k: v for k, v in moved.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
                    hidden = self.model(**inputs).last_hidden_state
                values = hidden.float().cpu().numpy()
            mask = features["attention_mask"].numpy().astype(bool)
            out.extend(np.ascontiguousarray(values[r][mask[r]], dtype=np.float32) for r in range(len(rows)))
        return out

    def after_pooling(self, pooled: np.ndarray) -> np.ndarray:
        """Mean-pooled token vectors through the modules after the model's Pooling (Dense; not the final Normalize)."""
        if self.st is None:
            return np.asarray(pooled, dtype=np.float32)
        modules = list(self.st)
        kinds = [type(m).__name__ for m in modules]
        if len(kinds) < 2 or kinds[1] != "Pooling":
            raise ValueError(
                f"{self.model_dir} has no Pooling module right after its Transformer ({kinds}); late chunking pools "
                "token vectors by span and cannot place them in this pipeline"
            )
        pool = modules[1]
        width = getattr(pool, "embedding_dimension", None) or getattr(pool, "word_embedding_dimension", None)
        if getattr(pool, "pooling_output_dimension", width) != width:
            raise ValueError(
                f"{self.model_dir} concatenates several pooling modes; late chunking computes one (mean) per span, "
                "which its later modules cannot take"
            )
        torch = self.torch
        with torch.inference_mode():
            features: dict[str, Any] = {
                "sentence_embedding": torch.from_numpy(np.asarray(pooled, dtype=np.float32)).to(self.device, self.dtype)
            }
            for module in modules[2:]:
                features = module(features)
            return np.asarray(features["sentence_embedding"].float().cpu().numpy(), dtype=np.float32)
