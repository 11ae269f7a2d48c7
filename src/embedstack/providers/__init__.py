"""Embedding providers; each heavy one is imported only when used."""

__all__: list[str] = []
