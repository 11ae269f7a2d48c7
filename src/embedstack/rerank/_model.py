"""A cross-encoder checkpoint's facts and its backends: files, labels, activation, pair tokens, logits.

The files are found by `embedstack.providers.hub.locate_model` (a path, the Hugging Face cache, the Hub
when reachable); the tokenizer and its token limit are the local text models' (`TorchTokenizer`), fed
(query, document) pairs the way sentence-transformers' `CrossEncoder` feeds them (`truncation=
"longest_first"`, token type ids); the activation is the one `CrossEncoder` would apply by default.
Backends turn padded pairs into raw logits: `TorchScorer` (transformers' *ForSequenceClassification) and
`OnnxScorer` (embedstack.rerank._onnx).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from embedstack._optional import require
from embedstack.providers.huggingface.tokens import Tokens

__all__ = [
    "ACTIVATIONS",
    "CheckpointInfo",
    "PairTokenizer",
    "Scorer",
    "TorchScorer",
    "activate",
    "read_checkpoint",
]

logger = logging.getLogger("embedstack")

#: Activations by name: what `CrossEncoderReranker(activation=...)` accepts.
ACTIVATIONS = ("sigmoid", "identity", "tanh")
#: sentence-transformers' saved activation paths (torch.nn classes) → our names.
_TORCH_ACTIVATIONS = {
    "torch.nn.modules.activation.Sigmoid": "sigmoid",
    "torch.nn.Sigmoid": "sigmoid",
    "torch.nn.modules.linear.Identity": "identity",
    "torch.nn.Identity": "identity",
    "torch.nn.modules.activation.Tanh": "tanh",
    "torch.nn.Tanh": "tanh",
}

Feeds = dict[str, npt.NDArray[np.int64]]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


@dataclass(frozen=True)
class CheckpointInfo:
    """What a sequence-classification checkpoint is, read from its files without its weights."""

    path: Path
    model_type: str
    num_labels: int
    #: The activation sentence-transformers' CrossEncoder applies by default, and where that was read.
    activation: str
    activation_source: str


def _saved_activation(path: Path, config: dict[str, Any]) -> tuple[str | None, str]:
    """The activation path a CrossEncoder saved, in the order sentence-transformers reads them."""
    st_config = _read_json(path / "config_sentence_transformers.json")
    candidates = [
        (st_config.get("activation_fn"), "config_sentence_transformers.json"),
        ((config.get("sentence_transformers") or {}).get("activation_fn"), "config.json (sentence_transformers)"),
        (config.get("sbert_ce_default_activation_function"), "config.json (sbert_ce_default_activation_function)"),
    ]
    for value, where in candidates:
        if not isinstance(value, str) or not value:
            continue
        if not value.startswith("torch."):
            # sentence-transformers runs only torch.* activations without trust_remote_code, else its default
            logger.warning("rerank: %s names activation %r, which is not torch's; using the default", where, value)
            continue
        return value, where
    return None, ""


def read_checkpoint(path: Path) -> CheckpointInfo:
    """The checkpoint's model type, labels and default activation; ValueError when it is no
    sequence-classification model this package runs (naming what it is and the fix)."""
    if (path / "modules.json").is_file():
        try:
            listed = json.loads((path / "modules.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            listed = None
        ok = (
            isinstance(listed, list)
            and len(listed) == 1
            and isinstance(listed[0], dict)
            and str(listed[0].get("type", "")).endswith("Transformer")
            and str(listed[0].get("path", "")) in ("", ".")
        )
        if not ok:
            raise ValueError(
                f"{path} is a sentence-transformers model with modules {listed!r}; CrossEncoderReranker runs "
                "cross-encoders whose only module is the transformer (a *ForSequenceClassification checkpoint)"
            )
    config = _read_json(path / "config.json")
    if not config:
        raise ValueError(f"{path} has no readable config.json; pass a Hugging Face sequence-classification checkpoint")
    architectures = config.get("architectures") or []
    if not any(str(a).endswith("ForSequenceClassification") for a in architectures):
        raise ValueError(
            f"{path} is not a sequence-classification checkpoint (architectures: {architectures or 'none'}); "
            "CrossEncoderReranker runs *ForSequenceClassification models such as cross-encoder/ms-marco-MiniLM-L6-v2 "
            "(an embedding model belongs in HuggingFaceEmbedding)"
        )
    st_config = _read_json(path / "config_sentence_transformers.json")
    default_prompt = st_config.get("default_prompt_name")
    if default_prompt and (st_config.get("prompts") or {}).get(default_prompt):
        raise ValueError(
            f"{path}/config_sentence_transformers.json sets default_prompt_name={default_prompt!r}: "
            "sentence-transformers' CrossEncoder adds that prompt to every pair and CrossEncoderReranker does not; use "
            "sentence_transformers.CrossEncoder, or set default_prompt_name to null"
        )
    transformers = require("transformers", extra="local")
    cfg = transformers.AutoConfig.from_pretrained(str(path), local_files_only=True)
    num_labels = int(cfg.num_labels)
    saved, where = _saved_activation(path, config)
    if saved is not None:
        name = _TORCH_ACTIVATIONS.get(saved)
        if name is None:
            raise ValueError(
                f"{path} saves activation {saved!r} ({where}), which CrossEncoderReranker does not apply; pass "
                f"activation= one of {list(ACTIVATIONS)}"
            )
        return CheckpointInfo(path, str(config.get("model_type", "")), num_labels, name, where)
    default = "sigmoid" if num_labels == 1 else "identity"
    return CheckpointInfo(path, str(config.get("model_type", "")), num_labels, default, f"num_labels={num_labels}")


def activate(logits: npt.NDArray[np.float32], name: str) -> npt.NDArray[np.float32]:
    """`name` applied to float32 logits, as torch's module would (sigmoid in float32, stable for large |x|)."""
    x = np.asarray(logits, dtype=np.float32)
    if name == "identity":
        return x
    if name == "tanh":
        return np.tanh(x).astype(np.float32)
    if name == "sigmoid":
        with np.errstate(over="ignore"):
            out = np.where(x >= 0, 1.0 / (1.0 + np.exp(-x)), np.exp(x) / (1.0 + np.exp(x)))
        return out.astype(np.float32)
    raise ValueError(f"unknown activation {name!r}; use one of {list(ACTIVATIONS)}")


class PairTokenizer:
    """(query, document) pairs → token ids and type ids, as sentence-transformers' CrossEncoder makes them."""

    def __init__(self, model_dir: Path, *, max_length: int | None = None, trust_remote_code: bool = False) -> None:
        from embedstack.providers.huggingface.st_modules import transformer_settings_problem
        from embedstack.providers.huggingface.torch_encoder import TorchTokenizer

        self.text = TorchTokenizer(model_dir, max_length=max_length, trust_remote_code=trust_remote_code)
        problem = transformer_settings_problem(self.text.st_config, str(self.text.st_config_path), fast_path=True)
        if problem:  # sentence-transformers would tokenise the pairs otherwise than this tokenizer does
            raise ValueError(f"{problem}; use sentence_transformers.CrossEncoder for this model")
        self.hf = self.text.hf
        self.max_length = self.text.max_length
        pad = self.hf.pad_token_id
        self.pad_id = int(pad) if pad is not None else 0
        self.pad_type_id = int(getattr(self.hf, "pad_token_type_id", 0) or 0)

    def tokenize(self, pairs: Sequence[tuple[str, str]]) -> list[Tokens]:
        """Each pair's ids (special tokens included, the longer side cut first to max_length), whether it was
        cut, and its token type ids when the tokenizer makes them."""
        if not pairs:
            return []
        queries = [q for q, _ in pairs]
        documents = [d for _, d in pairs]
        return self.text.encode(queries, documents, truncation="longest_first")

    def pad(self, tokens: Sequence[Tokens]) -> Feeds:
        """Right-padded int64 input_ids, attention_mask and token_type_ids (zeros where the tokenizer makes none)."""
        length = max(len(t.ids) for t in tokens)
        ids = np.full((len(tokens), length), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(tokens), length), dtype=np.int64)
        types = np.full((len(tokens), length), self.pad_type_id, dtype=np.int64)
        for r, t in enumerate(tokens):
            n = len(t.ids)
            ids[r, :n] = t.ids
            mask[r, :n] = 1
            types[r, :n] = t.type_ids if t.type_ids is not None else 0
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


class Scorer(Protocol):
    """A backend: padded pairs → raw float32 logits, (rows, num_labels)."""

    device: str

    def logits(self, feeds: Feeds) -> npt.NDArray[np.float32]:
        """The classifier's raw logits for one padded batch."""
        ...


#: precision name → torch dtype name
TORCH_PRECISIONS = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def load_classifier(
    path: Path, *, trust_remote_code: bool = False, dtype: Any = None, eager: bool = False
) -> tuple[Any, list[str]]:
    """transformers' AutoModelForSequenceClassification of `path` in eval mode at `dtype` (None: float32, whatever
    dtype the checkpoint was saved in, which transformers would load it at), and the inputs its forward takes;
    ValueError when a weight of the model is missing from the files (it would be random: wrong scores)."""
    import inspect

    torch = require("torch", extra="local")
    transformers = require("transformers", extra="local")
    from embedstack.providers.huggingface.torch_encoder import _quiet_loading

    kwargs: dict[str, Any] = {"local_files_only": True, "trust_remote_code": trust_remote_code}
    kwargs["dtype"] = torch.float32 if dtype is None else dtype
    if eager:  # eager attention exports the pattern ONNX Runtime fuses into one Attention op
        kwargs["attn_implementation"] = "eager"
    with _quiet_loading():
        model, info = transformers.AutoModelForSequenceClassification.from_pretrained(
            str(path), output_loading_info=True, **kwargs
        )
    missing = [k for k in info.get("missing_keys", []) if "position_ids" not in k]
    if missing:
        raise ValueError(
            f"{path} lacks weights for {missing[:4]}{'...' if len(missing) > 4 else ''}: its classifier would be "
            "random and its scores meaningless; pass a trained cross-encoder checkpoint"
        )
    model.eval()
    accepted = set(inspect.signature(model.forward).parameters)
    return model, [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in accepted]


class TorchScorer:
    """A checkpoint on torch (transformers' *ForSequenceClassification), on `device` at `precision`."""

    def __init__(
        self, path: Path, *, device: str | None = None, precision: str = "fp32", trust_remote_code: bool = False
    ) -> None:
        if precision not in TORCH_PRECISIONS:
            raise ValueError(
                f"precision {precision!r} is not available with backend='torch'; use one of "
                f"{sorted(TORCH_PRECISIONS)} (int8 needs backend='onnx')"
            )
        from embedstack.providers._device import pick_device

        self.torch = require("torch", extra="local")
        self.device = pick_device(device)
        dtype = getattr(self.torch, TORCH_PRECISIONS[precision])
        self.model, self.inputs = load_classifier(path, trust_remote_code=trust_remote_code, dtype=dtype)
        self.model.to(self.device)

    def logits(self, feeds: Feeds) -> npt.NDArray[np.float32]:
        """Raw logits, upcast to float32 (as sentence-transformers does before its activation)."""
        torch = self.torch
        with torch.inference_mode():
            tensors = {n: torch.from_numpy(feeds[n]).to(self.device) for n in self.inputs}
            out = self.model(**tensors).logits
            return np.asarray(out.float().cpu().numpy(), dtype=np.float32)
