"""A sentence-transformers model's modules after its Transformer, run in numpy: what the fast path
(ONNX Runtime, OpenVINO) applies to the graph's token vectors.

`read_head` reads modules.json and each module's files: `Pooling` (every mode and combination, in both
the old `pooling_mode_*` flags and the newer `pooling_mode` key), `Dense` (weights, bias, activation,
residual), `Normalize` and `Dropout` (nothing at inference). Anything else, or a setting this cannot
compute exactly, raises `UnsupportedModule`, which names the module and the way out (backend='torch'):
the fast path never pools or projects differently from sentence-transformers.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from embedstack.errors import EmbedstackError
from embedstack.pooling import Pooling
from embedstack.vectors.exact import normalize

__all__ = [
    "LEGACY_POOLING_FLAGS",
    "DenseLayer",
    "Head",
    "UnsupportedModule",
    "pooling_modes",
    "read_head",
    "transformer_settings_problem",
]

#: The old boolean keys of 1_Pooling/config.json, in the order sentence-transformers concatenates them.
LEGACY_POOLING_FLAGS: dict[str, Pooling] = {
    "pooling_mode_cls_token": Pooling.CLS,
    "pooling_mode_max_tokens": Pooling.MAX,
    "pooling_mode_mean_tokens": Pooling.MEAN,
    "pooling_mode_mean_sqrt_len_tokens": Pooling.MEAN_SQRT_LEN,
    "pooling_mode_weightedmean_tokens": Pooling.WEIGHTED_MEAN,
    "pooling_mode_lasttoken": Pooling.LAST_TOKEN,
}
_POOLING_KEYS = {"word_embedding_dimension", "embedding_dimension", "pooling_mode", "include_prompt"}
_SKIPPED = {"Dropout"}  # modules that do nothing at inference


class UnsupportedModule(EmbedstackError, ValueError):
    """A module or setting the fast path does not compute; the message names it and the fix."""


def _gelu(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """torch.nn.GELU() (the exact, erf form): scipy's erf when installed, else math.erf per value."""
    try:
        from scipy.special import erf  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        erf = np.vectorize(math.erf, otypes=[np.float64])
    return np.asarray(0.5 * x * (1.0 + erf(x.astype(np.float64) / math.sqrt(2.0))), dtype=np.float32)


#: torch.nn activations a Dense layer may name (their default arguments, as sentence-transformers builds them).
_ACTIVATIONS: dict[str, Any] = {
    "Identity": lambda x: x,
    "Tanh": np.tanh,
    "ReLU": lambda x: np.maximum(x, 0),
    "Sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)),
    "SiLU": lambda x: x / (1.0 + np.exp(-x)),
    "GELU": _gelu,
}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); restore the model's files") from e
    return data if isinstance(data, dict) else {}


def pooling_modes(config: dict[str, Any], where: str = "1_Pooling/config.json") -> tuple[tuple[Pooling, ...], bool]:
    """(modes, include_prompt) of a Pooling module's config, as sentence-transformers reads it: the
    `pooling_mode` key (a name or a list), else the old `pooling_mode_*` flags, else mean."""
    unknown = sorted(k for k in config if k not in _POOLING_KEYS and k not in LEGACY_POOLING_FLAGS)
    if unknown:
        raise UnsupportedModule(f"{where} has settings {unknown} that embedstack does not know")
    declared = config.get("pooling_mode")
    names: list[Any]
    if declared is not None:
        names = [declared] if isinstance(declared, str) else list(declared)
    else:
        names = [mode.value for key, mode in LEGACY_POOLING_FLAGS.items() if config.get(key)] or ["mean"]
    modes: list[Pooling] = []
    for name in names:
        try:
            modes.append(Pooling(name))
        except ValueError:
            raise UnsupportedModule(
                f"{where} asks for pooling mode {name!r}; known: {[p.value for p in Pooling]}"
            ) from None
    if not modes:
        raise UnsupportedModule(f"{where} names no pooling mode")
    return tuple(modes), bool(config.get("include_prompt", True))


@dataclass
class DenseLayer:
    """A sentence-transformers Dense module: activation(x @ W.T + b) (+ a residual), in numpy."""

    weight: npt.NDArray[np.float32]
    bias: npt.NDArray[np.float32] | None
    activation: str
    residual: npt.NDArray[np.float32] | None = None
    identity_residual: bool = False

    @property
    def out_features(self) -> int:
        return int(self.weight.shape[0])

    def __call__(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        y = x @ self.weight.T
        if self.bias is not None:
            y = y + self.bias
        y = _ACTIVATIONS[self.activation](y)
        if self.identity_residual:
            y = y + x
        elif self.residual is not None:
            y = y + x @ self.residual.T
        return np.asarray(y, dtype=np.float32)

    @classmethod
    def load(cls, folder: Path, name: str) -> DenseLayer:
        """The Dense module in `folder` (config.json and its weights)."""
        cfg = _read_json(folder / "config.json")
        where = f"{folder / 'config.json'}"
        for key, default in (("module_input_name", "sentence_embedding"), ("module_output_name", None)):
            value = cfg.get(key, default)
            if value not in (default, "sentence_embedding"):
                raise UnsupportedModule(
                    f"the Dense module {name!r} ({where}) reads or writes {value!r}, not the sentence "
                    f"embedding; the fast path runs Dense layers after pooling only"
                )
        path = str(cfg.get("activation_function", "torch.nn.modules.activation.Tanh"))
        activation = path.rsplit(".", 1)[-1]
        if not path.startswith("torch.") or activation not in _ACTIVATIONS:
            raise UnsupportedModule(
                f"the Dense module {name!r} ({where}) uses activation {path!r}; the fast path computes "
                f"{sorted(_ACTIVATIONS)}"
            )
        tensors = _dense_weights(folder, name)
        try:
            weight = tensors["linear.weight"]
        except KeyError:
            raise UnsupportedModule(f"the Dense module {name!r} in {folder} has no linear.weight") from None
        in_features = int(cfg.get("in_features") or weight.shape[1])
        out_features = int(cfg.get("out_features") or weight.shape[0])
        if weight.shape != (out_features, in_features):
            raise UnsupportedModule(
                f"the Dense module {name!r} in {folder}: weight {weight.shape} does not match "
                f"in_features={in_features}, out_features={out_features}"
            )
        bias = tensors.get("linear.bias") if cfg.get("bias", True) else None
        layer = cls(weight, bias, activation)
        if cfg.get("use_residual"):
            if in_features == out_features:
                layer.identity_residual = True
            elif "residual.weight" in tensors:
                layer.residual = tensors["residual.weight"]
            else:
                raise UnsupportedModule(f"the Dense module {name!r} in {folder} has no residual.weight")
        return layer


def _dense_weights(folder: Path, name: str) -> dict[str, npt.NDArray[np.float32]]:
    """A Dense module's tensors as float32 numpy arrays (safetensors; a .bin needs torch)."""
    safetensors = folder / "model.safetensors"
    if safetensors.is_file():
        from safetensors.numpy import load_file

        return {k: np.asarray(v, dtype=np.float32) for k, v in load_file(str(safetensors)).items()}
    binary = folder / "pytorch_model.bin"
    if binary.is_file():
        try:
            import torch
        except ImportError:
            raise UnsupportedModule(
                f"the Dense module {name!r} keeps its weights in {binary}, which needs torch to read; "
                f"pip install torch, or use backend='torch'"
            ) from None
        state = torch.load(str(binary), map_location="cpu", weights_only=True)
        return {k: v.float().numpy() for k, v in state.items()}
    raise UnsupportedModule(f"the Dense module {name!r} in {folder} has no weights (model.safetensors)")


@dataclass
class Head:
    """What turns token vectors into a sentence vector: pooling modes, then Dense layers and Normalize
    steps in modules.json's order (a trailing Normalize is left to the provider, which normalises after
    Matryoshka truncation)."""

    modes: tuple[Pooling, ...] = (Pooling.MEAN,)
    include_prompt: bool = True
    steps: list[DenseLayer | str] = field(default_factory=list)
    #: Whether the model's files declare its pooling (a sentence-transformers model) or it is a default.
    declared: bool = False

    def dim(self, hidden: int) -> int:
        """Length of the vectors `apply` returns for token vectors of `hidden` dimensions."""
        out = hidden * len(self.modes)
        for step in self.steps:
            if isinstance(step, DenseLayer):
                out = step.out_features
        return out

    def apply(self, token_vectors: npt.NDArray[Any], attention_mask: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
        """Pooled (and projected) float32 vectors, not normalised at the end."""
        vectors = Pooling.pool(token_vectors, attention_mask, self.modes)
        for step in self.steps:
            if isinstance(step, DenseLayer):
                vectors = step(vectors)
            else:  # "normalize" between other steps
                vectors = normalize(vectors)
        return np.ascontiguousarray(vectors, dtype=np.float32)

    @classmethod
    def of(cls, modes: Sequence[Pooling]) -> Head:
        """A head that only pools (a plain transformers checkpoint, or pooling= given explicitly)."""
        return cls(modes=tuple(Pooling(m) for m in modes))


def read_head(model_dir: Path) -> tuple[Path, Head | None]:
    """(the Transformer module's folder, its Head) of a sentence-transformers directory; (model_dir, None)
    for a plain transformers checkpoint (no modules.json). Raises UnsupportedModule for what it cannot run."""
    modules_file = model_dir / "modules.json"
    if not modules_file.is_file():
        return model_dir, None
    try:
        entries = json.loads(modules_file.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ValueError(f"{modules_file} is not valid JSON ({e}); restore the model's files") from e
    if not isinstance(entries, list) or not entries:
        raise UnsupportedModule(f"{modules_file} lists no modules")
    kinds = [str(e.get("type", "")).rsplit(".", 1)[-1] if isinstance(e, dict) else "" for e in entries]
    if kinds[0] != "Transformer":
        raise UnsupportedModule(f"{model_dir} starts with a {kinds[0] or 'nameless'} module, not a Transformer")
    transformer = model_dir / str(entries[0].get("path", ""))
    head: Head | None = None
    for entry, kind in zip(entries[1:], kinds[1:]):
        path = model_dir / str(entry.get("path", ""))
        name = str(entry.get("name", kind))
        if kind == "Pooling" and head is None:
            modes, include_prompt = pooling_modes(_read_json(path / "config.json"), str(path / "config.json"))
            head = Head(modes=modes, include_prompt=include_prompt, declared=True)
        elif kind in _SKIPPED:
            continue
        elif head is not None and kind == "Dense":
            head.steps.append(DenseLayer.load(path, name))
        elif head is not None and kind == "Normalize":
            head.steps.append("normalize")
        else:
            where = "before its Pooling module" if head is None and kind in ("Dense", "Normalize") else ""
            raise UnsupportedModule(
                " ".join(f"{model_dir} has a sentence-transformers {kind or 'nameless'} module {where}".split())
            )
    if head is None:
        raise UnsupportedModule(f"{model_dir} has no Pooling module after its Transformer")
    while head.steps and head.steps[-1] == "normalize":  # the provider normalises (after truncation)
        head.steps.pop()
    return transformer, head


#: sentence_bert_config.json settings (sentence-transformers >= 6) that change a role's tokens and that no
#: embedstack backend applies: per-task token limits and query expansion.
UNAPPLIED_SETTINGS = ("query_length", "document_length", "query_expansion")


def transformer_settings_problem(config: dict[str, Any], where: str, *, fast_path: bool) -> str | None:
    """Why a Transformer module's sentence_bert_config.json settings would give other tokens than
    sentence-transformers makes, or None. The torch backend tokenises through sentence-transformers' own
    preprocessing when it differs (so processing_kwargs and modalities hold there); the fast path does not."""
    for key in UNAPPLIED_SETTINGS:
        if config.get(key) is not None:
            return (
                f"{where} sets {key}={config[key]!r}, which sentence-transformers applies to one role's texts and "
                f"embedstack does not; use sentence-transformers directly, or remove the setting"
            )
    if not fast_path:
        return None
    if config.get("processing_kwargs"):
        return f"{where} sets processing_kwargs={config['processing_kwargs']!r}, which the fast path does not apply"
    modalities = config.get("modality_config")
    if isinstance(modalities, dict) and set(modalities) - {"text"}:
        return f"{where} declares modalities {sorted(modalities)}; the fast path embeds plain text only"
    return None
