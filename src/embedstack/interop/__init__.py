"""Adapters between embedstack models and LangChain / LlamaIndex."""

__all__: list[str] = []
