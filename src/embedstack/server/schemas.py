"""The API's request and response models: OpenAI's /v1/embeddings shapes, plus `input_type` and `truncate`;
TEI's /tokenize shapes.

They are the API's documentation (FastAPI renders them at /docs and /openapi.json); the routes build
the large embedding responses as bytes directly (see `app.py`), in exactly these shapes.
"""

from __future__ import annotations

from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "EmbeddingData",
    "EmbeddingRequest",
    "EmbeddingResponse",
    "ErrorBody",
    "ErrorDetail",
    "ModelCard",
    "ModelList",
    "SimpleToken",
    "TokenizeRequest",
    "Usage",
]


class EmbeddingRequest(BaseModel):
    """POST /v1/embeddings: OpenAI's request; unknown fields are ignored, as OpenAI-compatible servers do."""

    model_config = ConfigDict(extra="ignore")

    input: Union[str, list[str], list[int], list[list[int]]] = Field(
        description=(
            "A text, or an array of up to 2,048 texts (no empty strings). With input_type='image', "
            "data:image/...;base64, URIs. Token-id arrays are refused (400): send strings."
        ),
        examples=["The food was delicious and the waiter...", ["first text", "second text"]],
    )
    model: str = Field(description="A model this server serves (GET /v1/models).", examples=["all-MiniLM-L6-v2"])
    encoding_format: Literal["float", "base64"] = Field(
        default="float",
        description="'float': arrays of numbers; 'base64': each vector's little-endian float32 bytes, base64-encoded.",
    )
    dimensions: int | None = Field(
        default=None,
        description="Keep the first N dimensions and re-normalise to unit length (1 to the model's dimension).",
    )
    user: str | None = Field(default=None, description="Accepted and ignored.")
    input_type: Literal["query", "document", "image"] = Field(
        default="document",
        description=(
            "embedstack extension: 'query' applies the model's query instruction (e.g. BGE's, E5's 'query: '), "
            "'document' its document one, 'image' embeds data: URIs with an image model (CLIP). URLs are never fetched."
        ),
    )
    truncate: bool = Field(
        default=True,
        description=(
            "embedstack extension: texts over the model's token limit are truncated (and counted in usage as "
            "truncated); false answers 400 instead."
        ),
    )


class EmbeddingData(BaseModel):
    """One vector, at the index of its input."""

    object: Literal["embedding"] = "embedding"
    index: int
    embedding: Union[list[float], str] = Field(description="Numbers, or a base64 string with encoding_format=base64.")


class Usage(BaseModel):
    """Token counts by the model's own tokenizer (instructions and special tokens included, after truncation)."""

    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    """POST /v1/embeddings' answer: one entry per input, in input order."""

    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: Usage


class ModelCard(BaseModel):
    """One served model (GET /v1/models)."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = Field(default="embedstack", description="Always 'embedstack' (clients detect the server by it).")
    kind: Literal["dense", "sparse", "rerank"] = Field(
        default="dense",
        description="What the model serves: dense vectors at /v1/embeddings, sparse ones at /embed_sparse, rerank "
        "scores at /v1/rerank and /rerank (an extra field: OpenAI clients ignore it).",
    )


class ModelList(BaseModel):
    """GET /v1/models' answer."""

    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    """OpenAI's error object."""

    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    """Every error answer: OpenAI's body."""

    error: ErrorDetail


class TokenizeRequest(BaseModel):
    """POST /tokenize: text-embeddings-inference's request, plus `model` (which served model's tokenizer)."""

    model_config = ConfigDict(extra="ignore")

    inputs: Union[str, list[str]] = Field(
        description="A text or an array of up to 2,048 texts.", examples=["What is Deep Learning?"]
    )
    add_special_tokens: bool = Field(default=True, description="Include the model's special tokens ([CLS], [SEP]).")
    model: str | None = Field(
        default=None,
        description="embedstack extension: a served model (GET /v1/models); may be left out when only one is served.",
    )


class SimpleToken(BaseModel):
    """One token: its id, its text, whether it is a special token, and where it is in the input (characters
    `start` to `stop`; null for special tokens). /tokenize answers a list of these per input."""

    id: int = Field(examples=[2774])
    text: str = Field(examples=["what"])
    special: bool = Field(examples=[False])
    start: int | None = Field(examples=[0])
    stop: int | None = Field(examples=[4])
