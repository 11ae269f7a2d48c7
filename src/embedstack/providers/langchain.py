"""LangchainEmbedding: any LangChain `Embeddings` as an embedstack model (batching, cache, events).

The LangChain object is duck-typed (embed_documents / embed_query and their async twins), so this
module never imports langchain_core itself. This is the LangChain → embedstack direction (a provider);
the other one, an embedstack model as a LangChain `Embeddings` (`model.as_langchain()`), is
`embedstack.interop.langchain`, which needs langchain-core to import.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Mapping
from enum import Enum
from typing import Any

from pydantic import Field, PrivateAttr, SecretBytes, SecretStr
from typing_extensions import Self

from embedstack.base import DEFAULT_EMBED_BATCH_SIZE, BaseEmbedding, BatchEmbedding
from embedstack.providers.remote.redact import header_identity
from embedstack.types import Role, Vectors

__all__ = ["LangchainEmbedding", "langchain_identity"]

logger = logging.getLogger("embedstack")

# A name holding one of these anywhere names a credential (openai_api_key, client_secret, db_password, ...).
_SECRET_SUBSTRINGS = tuple(
    (
        "api_key apikey access_key secret_key private_key secret password passwd credential cookie auth_header "
        "authorization bearer jwt"
    ).split()
)
# A name ending with one of these parts names a credential (hf_token, huggingfacehub_api_token, subscription_key,
# auth, sas, ...); where the part is elsewhere (token_limit, key_column) it names a setting.
_SECRET_LAST_PARTS = frozenset("key token auth pwd signature sig sas".split())
# Tokenizer settings named like credentials: their values are special tokens ("[PAD]"), never secrets.
_NOT_SECRET_NAMES = frozenset(
    "pad_token eos_token bos_token unk_token cls_token sep_token mask_token add_bos_token add_eos_token".split()
)
# Fields of LangChain embeddings that never change a vector: clients, retries, batching, progress.
_RUNTIME_NAMES = frozenset(
    (
        "client async_client http_client http_async_client session max_retries retry_min_seconds "
        "retry_max_seconds request_timeout timeout show_progress show_progress_bar chunk_size "
        "batch_size embed_batch_size num_workers max_concurrency verbose callbacks cache_folder "
        "default_headers default_query headers proxy openai_proxy skip_empty tiktoken_model_name "
        "multi_process rate_limiter device devices"
    ).split()
)
# Extra HTTP headers: in the identity as names and value hashes, credentials left out (see header_identity).
_HEADER_NAMES = frozenset({"default_headers", "headers"})
_URL_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")
_MODEL_NAME_ATTRS = ("model_name", "model", "model_id", "deployment", "deployment_name", "repo_id")


def _secret_name(name: str) -> bool:
    """Whether `name` names a credential (see _SECRET_SUBSTRINGS and _SECRET_LAST_PARTS)."""
    low = name.lower()
    if low in _NOT_SECRET_NAMES:
        return False
    if any(s in low for s in _SECRET_SUBSTRINGS):
        return True
    parts = [p for p in re.split(r"[_\-.]", low) if p]
    return bool(parts) and parts[-1] in _SECRET_LAST_PARTS


def _is_secret(name: str, value: Any) -> bool:
    """Whether the setting `name` = `value` is a credential, left out of the identity: a SecretStr/SecretBytes
    value whatever its name, and a credential-named setting unless its value is a number or a flag (those are
    settings: max_token=512), so a key set or not, or rotated, never changes the identity."""
    if isinstance(value, (SecretStr, SecretBytes)):
        return True
    return _secret_name(name) and (value is None or not isinstance(value, (bool, int, float)))


def _plain(value: Any, depth: int = 0) -> tuple[bool, Any]:
    """(True, JSON-safe value) for primitives and containers of them; (False, None) otherwise."""
    if isinstance(value, (SecretStr, SecretBytes)) or depth > 4:
        return False, None
    if value is None or isinstance(value, (bool, int, float)):
        return True, value
    if isinstance(value, str):
        return True, _URL_USERINFO.sub("", value)
    if isinstance(value, (list, tuple)):
        items = [_plain(v, depth + 1) for v in value]
        return True, [v for ok, v in items if ok]
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str) or k.lower() in _RUNTIME_NAMES or _is_secret(k, v):
                continue
            ok, pv = _plain(v, depth + 1)
            if ok:
                out[k] = pv
        return True, out
    if isinstance(value, Enum):
        return _plain(value.value, depth + 1)
    if isinstance(value, BaseEmbedding):  # e.g. model.as_langchain(): the inner model's identity
        return True, dict(value.provider.identity())
    return False, None


def _public_fields(obj: Any) -> tuple[dict[str, Any], bool]:
    """The object's settings, and whether declared: pydantic fields, else public attributes."""
    fields = getattr(type(obj), "model_fields", None)
    if isinstance(fields, Mapping):
        return {name: getattr(obj, name, None) for name in fields}, True
    try:
        attrs = vars(obj)
    except TypeError:
        return {}, False
    return {k: v for k, v in attrs.items() if not k.startswith("_")}, False


def langchain_identity(obj: Any) -> dict[str, Any]:
    """What identifies a LangChain object's vectors: its class and its plain, non-secret settings.

    Credentials (SecretStr values, credential-named settings such as api_key or hf_token: see `_is_secret`),
    clients and runtime knobs (timeouts, retries, chunk sizes) are left out; only JSON-safe values are kept, never
    a repr. Of a plain (non-pydantic) object only scalar attributes (and embedstack models) count: its lists and
    dicts are more often state.
    """
    cls = type(obj)
    config: dict[str, Any] = {}
    fields, declared = _public_fields(obj)
    for name, value in fields.items():
        if name.lower() in _HEADER_NAMES and isinstance(value, Mapping):  # a header can select a model
            headers = header_identity(value)
            if headers:  # none, or only credentials and tracing: the key stays as it was
                config[name] = headers
            continue
        if name.lower() in _RUNTIME_NAMES or _is_secret(name, value):
            continue
        scalar = value is None or isinstance(value, (str, bool, int, float, Enum, BaseEmbedding))
        if not declared and not scalar:
            continue
        ok, plain = _plain(value)
        if ok:
            config[name] = plain
    return {"class": f"{cls.__module__}.{cls.__qualname__}", "config": config}


def _guess_model_name(obj: Any) -> str:
    for attr in _MODEL_NAME_ATTRS:
        value = getattr(obj, attr, None)
        if isinstance(value, str) and value:
            return value
    return type(obj).__name__


class LangchainEmbedding(BatchEmbedding):
    """A LangChain Embeddings (OpenAIEmbeddings, HuggingFaceEmbeddings, ...) as an embedstack model.

    Texts go to `embed_documents` in batches of embed_batch_size, queries to `embed_query`; the
    embedstack pipeline adds caching (keyed by the LangChain class and its non-secret settings),
    dedupe, ordering and events. The LangChain object itself is never serialised.
    """

    langchain_class: str = Field(default="", description="Import path of the wrapped LangChain class.")
    _langchain_embedding: Any = PrivateAttr()

    def __init__(
        self,
        langchain_embeddings: Any,
        model_name: str | None = None,
        embed_batch_size: int = DEFAULT_EMBED_BATCH_SIZE,
        **kwargs: Any,
    ) -> None:
        missing = [
            m for m in ("embed_documents", "embed_query") if not callable(getattr(langchain_embeddings, m, None))
        ]
        if missing:
            raise TypeError(
                "LangchainEmbedding needs a LangChain Embeddings object (with embed_documents and "
                f"embed_query); {type(langchain_embeddings).__name__} lacks {', '.join(missing)}"
            )
        cls = type(langchain_embeddings)
        kwargs.pop("langchain_class", None)  # always derived from the object (from_dict passes it back)
        super().__init__(
            model_name=model_name or _guess_model_name(langchain_embeddings),
            embed_batch_size=embed_batch_size,
            langchain_class=f"{cls.__module__}.{cls.__qualname__}",
            **kwargs,
        )
        self._langchain_embedding = langchain_embeddings

    @classmethod
    def class_name(cls) -> str:
        """Name stored in to_dict()."""
        return "LangchainEmbedding"

    @classmethod
    def from_dict(cls, data: dict[str, Any], **kwargs: Any) -> Self:
        """Rebuild from to_dict(); pass the LangChain object again as `langchain_embeddings`."""
        if "langchain_embeddings" not in kwargs:
            raise TypeError(
                "LangchainEmbedding.from_dict needs the LangChain object, which to_dict() never stores: "
                "call from_dict(data, langchain_embeddings=<your Embeddings>)"
            )
        return super().from_dict(data, **kwargs)

    @property
    def langchain_embeddings(self) -> Any:
        """The wrapped LangChain Embeddings object."""
        return self._langchain_embedding

    def _identity(self) -> dict[str, Any]:
        identity = super()._identity()
        identity["langchain"] = langchain_identity(self._langchain_embedding)
        return identity

    def _embed_batch(self, items: list[Any], role: Role) -> Vectors:
        lc = self._langchain_embedding
        if role is Role.QUERY:
            return [lc.embed_query(q) for q in items]
        if role is Role.TEXT:
            return lc.embed_documents(list(items))  # type: ignore[no-any-return]
        raise TypeError(f"LangchainEmbedding ({self.langchain_class}) does not embed images; use a ClipEmbedding")

    async def _aembed_batch(self, items: list[Any], role: Role) -> Vectors:
        lc = self._langchain_embedding
        if role is Role.IMAGE or not hasattr(lc, "aembed_documents"):
            return await asyncio.to_thread(self._embed_batch, items, role)
        try:
            if role is Role.QUERY:
                return list(await asyncio.gather(*(lc.aembed_query(q) for q in items)))
            return await lc.aembed_documents(list(items))  # type: ignore[no-any-return]
        except NotImplementedError:
            logger.debug("%s has no async embedding; running the sync one in a thread", self.langchain_class)
            return await asyncio.to_thread(self._embed_batch, items, role)
