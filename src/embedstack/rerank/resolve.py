"""`resolve_rerank_model`: a reranker from a string, the form the command line and the server take.

- `rerank:<name or path>`: `CrossEncoderReranker`, a local checkpoint.
- `cohere:<model>`: Cohere's API (`https://api.cohere.com/v2/rerank`), key `COHERE_API_KEY` (or `CO_API_KEY`).
- `jina:<model>`: Jina's API (`https://api.jina.ai/v1/rerank`), key `JINA_API_KEY`.
- `cohere:<model>@<url>`: Cohere's shape at a server of your own (vLLM, infinity, `embedstack serve`; a base URL
  gets `/v1/rerank`), key `EMBEDSTACK_RERANK_API_KEY` when set.
- `tei:<url>`: text-embeddings-inference's `/rerank` (or `embedstack serve`'s) at `url` (a base URL gets
  `/rerank`), key `EMBEDSTACK_RERANK_API_KEY` when set.

`api_key=` (and any other keyword) overrides; the hosted services' keys are never sent to a URL of your own.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

from embedstack.providers.remote.credentials import env
from embedstack.rerank.base import BaseReranker

__all__ = [
    "COHERE_URL",
    "JINA_URL",
    "RERANK_FORMS",
    "RERANK_PREFIXES",
    "SELF_HOSTED_KEY_ENV",
    "is_rerank_spec",
    "resolve_rerank_model",
]

COHERE_URL = "https://api.cohere.com/v2/rerank"
JINA_URL = "https://api.jina.ai/v1/rerank"
#: The key sent to a reranking server of your own (`cohere:<model>@<url>`, `tei:<url>`), when set.
SELF_HOSTED_KEY_ENV = "EMBEDSTACK_RERANK_API_KEY"
RERANK_PREFIXES = ("rerank:", "cohere:", "jina:", "tei:")
#: Every reranker spec, as `embedstack models` lists them.
RERANK_FORMS = (
    '"rerank:<model name or path>" (a local cross-encoder; backend and precision in Python)',
    '"cohere:<model>" (Cohere\'s API; COHERE_API_KEY or CO_API_KEY)',
    '"jina:<model>" (Jina\'s API; JINA_API_KEY)',
    f'"cohere:<model>@<server url>" (Cohere\'s shape at a server of your own; {SELF_HOSTED_KEY_ENV} when set)',
    f"\"tei:<server url>\" (TEI's /rerank, or embedstack serve's; {SELF_HOSTED_KEY_ENV} when set)",
)
_HOSTED = {"cohere": (COHERE_URL, ("COHERE_API_KEY", "CO_API_KEY")), "jina": (JINA_URL, ("JINA_API_KEY",))}
_EXAMPLES = (
    "'rerank:<model name or path>' (a local cross-encoder), 'cohere:<model>', 'jina:<model>', "
    "'cohere:<model>@<server url>' or 'tei:<server url>'"
)


def is_rerank_spec(spec: Any) -> bool:
    """Whether `spec` names a reranker (a BaseReranker, or a string with one of `RERANK_PREFIXES`)."""
    return isinstance(spec, BaseReranker) or (isinstance(spec, str) and spec.startswith(RERANK_PREFIXES))


def _endpoint(url: str, default_path: str) -> str:
    """`url` as is when its path ends in /rerank; else with `default_path` appended (after a /v1 or /v2: rerank)."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        raise ValueError("the reranker's URL must be http:// or https:// with a host (e.g. http://127.0.0.1:8080)")
    path = parts.path.rstrip("/")
    if path.endswith("/rerank"):
        return url
    if path.endswith(("/v1", "/v2")):
        path += "/rerank"
    else:
        path += default_path
    return urlunsplit(parts._replace(path=path))


def resolve_rerank_model(spec: Any, **kwargs: Any) -> BaseReranker:
    """A reranker from a spec (see the module's table; a BaseReranker is returned as it is); `kwargs` go to
    the class made (`CrossEncoderReranker`: backend, precision, cache, ...; `RemoteReranker`: api_key, timeout,
    cache, ...)."""
    if isinstance(spec, BaseReranker):
        return spec
    prefix, _, rest = spec.partition(":") if isinstance(spec, str) else ("", "", "")
    rest = rest.strip()
    if not isinstance(spec, str) or f"{prefix}:" not in RERANK_PREFIXES or not rest:
        raise ValueError(f"cannot resolve reranker {spec!r}; pass {_EXAMPLES}, or a reranker object")
    if prefix == "rerank":
        from embedstack.rerank.cross_encoder import CrossEncoderReranker

        return CrossEncoderReranker(rest, **kwargs)
    from embedstack.rerank.remote import RemoteReranker

    if prefix == "tei":
        url = _endpoint(rest, "/rerank")
        kwargs.setdefault("api_key", env(SELF_HOSTED_KEY_ENV))
        kwargs.setdefault("key_hint", f"api_key=... or {SELF_HOSTED_KEY_ENV}")
        return RemoteReranker(url, protocol="tei", **kwargs)
    model, at, server = rest.partition("@http")
    model = model.strip()
    if not model:
        raise ValueError(f"{spec!r} names no model; pass '{prefix}:<model>' or '{prefix}:<model>@<server url>'")
    if at:  # a server of your own speaking Cohere's (and Jina's) shape
        url = _endpoint("http" + server.strip(), "/v1/rerank")
        kwargs.setdefault("api_key", env(SELF_HOSTED_KEY_ENV))
        kwargs.setdefault("key_hint", f"api_key=... or {SELF_HOSTED_KEY_ENV}")
        return RemoteReranker(url, protocol="cohere", model=model, **kwargs)
    url, names = _HOSTED[prefix]
    if kwargs.get("api_key") is None:
        kwargs["api_key"] = env(*names)
        if not kwargs["api_key"]:
            raise ValueError(
                f"no API key for {prefix}:{model}: set the {' or '.join(names)} environment variable or pass "
                f"api_key=...; or rerank locally with 'rerank:<model name or path>'"
            )
    kwargs.setdefault("key_hint", f"api_key=... or {names[0]}")
    return RemoteReranker(url, protocol="cohere", model=model, **kwargs)
