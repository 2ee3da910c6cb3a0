"""Retrieval: labelled key embeddings with a faiss index (:class:`KeyIndex`), saved and loaded as one folder."""

from .key_index import INDEX_TYPES, KeyIndex, RetrievalResult

__all__ = ["INDEX_TYPES", "KeyIndex", "RetrievalResult"]
