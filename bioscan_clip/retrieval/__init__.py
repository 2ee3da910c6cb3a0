"""Retrieval: labelled key embeddings with a faiss index (:class:`KeyIndex`), saved and loaded as one folder.

- :mod:`.key_index`: :class:`KeyIndex` (build, save / load, search) and :class:`RetrievalResult`;
- :mod:`.index_types`: the index settings record :class:`IndexParams` and the table :data:`INDEX_TYPES` of what each
  index type is (parameters, faiss index, search settings), with ``"auto"``;
- :mod:`.storage`: the folder format (manifest, :data:`FORMAT_VERSION`, checks on load);
- :mod:`.key_table`: the checked key table (ids, taxonomy, metadata);
- :mod:`.vectors`: vector checks, chunked L2 normalisation, the build's temporary vector file, sgemm block sizes.
"""

from .index_types import (
    AUTO,
    AUTO_FLAT_MAX_KEYS,
    INDEX_TYPES,
    IndexParams,
    IndexTypeEntry,
    SearchSetting,
    build_index_types,
    default_rerank,
    index_option_names,
    resolve_index_params,
)
from .key_index import KeyIndex, RetrievalResult, compare_index_types
from .storage import FORMAT_VERSION
from .vectors import BLAS_KEY_BLOCK, BLAS_QUERY_BLOCK, as_embedding_matrix, l2_normalize

__all__ = [
    "AUTO",
    "AUTO_FLAT_MAX_KEYS",
    "BLAS_KEY_BLOCK",
    "BLAS_QUERY_BLOCK",
    "FORMAT_VERSION",
    "INDEX_TYPES",
    "IndexParams",
    "IndexTypeEntry",
    "KeyIndex",
    "RetrievalResult",
    "SearchSetting",
    "as_embedding_matrix",
    "build_index_types",
    "compare_index_types",
    "default_rerank",
    "index_option_names",
    "l2_normalize",
    "resolve_index_params",
]
