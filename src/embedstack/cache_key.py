"""Cache keys, derived in one place: sha256 over schema, model identity, role, instruction and item.

Keys are content hashes, so an entry's value never changes while it exists; two models, two roles
or two instructions never share a key. A second key per model identity records its vector length.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from typing import Any

from embedstack._images import image_bytes
from embedstack.types import Role

__all__ = ["CACHE_COLLECTION", "CACHE_SCHEMA", "DIM_COLLECTION", "dim_key", "identity_prefix", "make_key_factory"]

#: Bumped when the key or value layout changes (old entries then simply miss).
CACHE_SCHEMA = b"embedstack-cache-v1"
#: The store collection holding vectors.
CACHE_COLLECTION = "embeddings"
#: Per model identity, the length of its vectors (a 1-value vector), so a truncated entry is caught.
DIM_COLLECTION = "embedding_dims"


def identity_prefix(identity: Mapping[str, Any]) -> bytes:
    """The model part of every key: the schema and the identity as canonical JSON."""
    return CACHE_SCHEMA + b"\0" + json.dumps(identity, sort_keys=True).encode()


def make_key_factory(prefix: bytes, role: Role, instruction: str | None) -> Callable[[Any], str]:
    """A function item → cache key: sha256 over prefix (schema + model identity), role, instruction, item."""
    base = hashlib.sha256(prefix)
    base.update(b"\0role=" + role.value.encode() + b"\0instruction=" + (instruction or "").encode("utf-8") + b"\0item=")
    to_bytes: Callable[[Any], bytes]
    if role is Role.IMAGE:
        to_bytes = image_bytes
    elif role is Role.PAIR:
        to_bytes = _pair_bytes
    else:
        to_bytes = _text_bytes

    def key(item: Any) -> str:
        h = base.copy()
        h.update(to_bytes(item))
        return h.hexdigest()

    return key


def _text_bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def _pair_bytes(pair: tuple[str, str]) -> bytes:
    """A (query, document) pair, the query's length first, so no two pairs share bytes."""
    query = pair[0].encode("utf-8", "surrogatepass")
    return str(len(query)).encode() + b":" + query + pair[1].encode("utf-8", "surrogatepass")


def dim_key(prefix: bytes) -> str:
    """The key under which a model's vector length is recorded (in DIM_COLLECTION)."""
    return hashlib.sha256(prefix + b"\0dim").hexdigest()
