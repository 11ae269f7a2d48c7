"""Nodes (text and image chunks with metadata) and TransformComponent, shaped as in LlamaIndex."""

from __future__ import annotations

import uuid
from abc import abstractmethod
from collections.abc import Sequence
from enum import Enum
from typing import Any

from pydantic import Field

from embedstack._component import BaseComponent

__all__ = ["BaseComponent", "BaseNode", "ImageNode", "MetadataMode", "TextNode", "TransformComponent"]

DEFAULT_TEXT_NODE_TMPL = "{metadata_str}\n\n{content}"
DEFAULT_METADATA_TMPL = "{key}: {value}"


class MetadataMode(str, Enum):
    """Which metadata a node's content includes: all, what the embedder sees, the LLM's, or none."""

    ALL = "all"
    EMBED = "embed"
    LLM = "llm"
    NONE = "none"


class BaseNode(BaseComponent):
    """A chunk of content with metadata and, once embedded, its embedding."""

    id_: str = Field(default_factory=lambda: str(uuid.uuid4()), description="Unique id of the node.")
    embedding: list[float] | None = Field(default=None, description="The node's embedding.")
    metadata: dict[str, Any] = Field(default_factory=dict)
    excluded_embed_metadata_keys: list[str] = Field(default_factory=list)
    excluded_llm_metadata_keys: list[str] = Field(default_factory=list)
    relationships: dict[str, Any] = Field(default_factory=dict)
    metadata_template: str = Field(default=DEFAULT_METADATA_TMPL)
    metadata_separator: str = Field(default="\n")

    @property
    def node_id(self) -> str:
        """The node's id."""
        return self.id_

    @node_id.setter
    def node_id(self, value: str) -> None:
        self.id_ = value

    @abstractmethod
    def get_content(self, metadata_mode: MetadataMode = MetadataMode.ALL) -> str:
        """The node's content as the given reader sees it."""

    def get_metadata_str(self, mode: MetadataMode = MetadataMode.ALL) -> str:
        """Metadata rendered with metadata_template, minus the keys excluded for `mode`."""
        if mode == MetadataMode.NONE:
            return ""
        keys = set(self.metadata)
        if mode == MetadataMode.LLM:
            keys -= set(self.excluded_llm_metadata_keys)
        elif mode == MetadataMode.EMBED:
            keys -= set(self.excluded_embed_metadata_keys)
        return self.metadata_separator.join(
            self.metadata_template.format(key=k, value=str(v)) for k, v in self.metadata.items() if k in keys
        )

    def get_embedding(self) -> list[float]:
        """The embedding; ValueError when the node has not been embedded yet."""
        if self.embedding is None:
            raise ValueError(f"node {self.id_} has no embedding yet; run an embed model over it")
        return self.embedding


class TextNode(BaseNode):
    """A text chunk."""

    text: str = Field(default="", description="The text of the node.")
    text_template: str = Field(default=DEFAULT_TEXT_NODE_TMPL)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if args:  # LlamaIndex allows TextNode("some text")
            kwargs.setdefault("text", args[0])
            args = args[1:]
        super().__init__(*args, **kwargs)

    def get_content(self, metadata_mode: MetadataMode = MetadataMode.NONE) -> str:
        """Text with the metadata of `metadata_mode` in front, as text_template lays it out."""
        metadata_str = self.get_metadata_str(mode=metadata_mode).strip()
        if metadata_mode == MetadataMode.NONE or not metadata_str:
            return self.text
        return self.text_template.format(content=self.text, metadata_str=metadata_str).strip()

    def set_content(self, value: str) -> None:
        """Replace the text."""
        self.text = value


class ImageNode(TextNode):
    """An image (base64, path or URL) with optional text."""

    image: str | None = None
    image_path: str | None = None
    image_url: str | None = None
    image_mimetype: str | None = None
    text_embedding: list[float] | None = None

    def resolve_image(self) -> Any:
        """The image as something the image pipeline reads: bytes, a path or a data: URI."""
        if self.image:
            import base64

            return base64.b64decode(self.image)
        if self.image_path:
            return self.image_path
        if self.image_url and self.image_url.startswith("data:"):
            return self.image_url
        raise ValueError(f"image node {self.id_} has no image, image_path or data: image_url")


class TransformComponent(BaseComponent):
    """Something that transforms a list of nodes (parsers, embedders)."""

    @abstractmethod
    def __call__(self, nodes: Sequence[BaseNode], **kwargs: Any) -> Sequence[BaseNode]:
        """Transform nodes."""

    async def acall(self, nodes: Sequence[BaseNode], **kwargs: Any) -> Sequence[BaseNode]:
        """Async transform; defaults to the sync one."""
        return self.__call__(nodes, **kwargs)
