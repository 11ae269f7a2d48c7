"""Local Hugging Face models: `HuggingFaceEmbedding` and the backends it runs on.

Modules: `embedding` (the model class and its defaults), `encoder` (the `Encoder` / `TextTokenizer`
interface every backend implements), `torch_encoder` (sentence-transformers /
transformers on torch), `onnx_encoder` (ONNX Runtime and OpenVINO), `onnx_export` (building and
checking the graphs), `instructions` (query/text prefixes per model family), `tokens`.
"""

from __future__ import annotations

from embedstack.providers.huggingface.embedding import (
    DEFAULT_ACCELERATOR_BATCH_SIZE,
    DEFAULT_LOCAL_BATCH_SIZE,
    DEFAULT_MODEL,
    HuggingFaceEmbedding,
    ModelNotFoundError,
    Tokens,
    from_spec,
)

__all__ = [
    "DEFAULT_ACCELERATOR_BATCH_SIZE",
    "DEFAULT_LOCAL_BATCH_SIZE",
    "DEFAULT_MODEL",
    "HuggingFaceEmbedding",
    "ModelNotFoundError",
    "Tokens",
    "from_spec",
]
