"""A saved, searchable set of labelled key embeddings: a ``datasets.Dataset`` with a faiss index beside it.

BIOSCAN-CLIP / CLIBD classify a query specimen by the labels of its nearest keys (``CLIBD_REFERENCE.md`` §4): keys and
queries are L2-normalised and searched exactly with ``faiss.IndexFlatIP`` (inner product = cosine). :class:`KeyIndex`
keeps that as the default and adds approximate indexes (IVF-Flat, HNSW, IVF-PQ) for millions of keys, together with
:meth:`KeyIndex.recall_at_k` to measure what they lose against exact search on the same data. What each index type is
(its parameters, its faiss index, its search settings) lives in the table of
:mod:`bioscan_clip.retrieval.index_types`; the folder format in :mod:`bioscan_clip.retrieval.storage`.

faiss pads results with id -1 when it finds fewer than k neighbours, and ``labels[-1]`` in Python silently returns the
last key's label (the original ``make_prediction`` did exactly that). This module never lets a -1 through: k larger
than the searchable key count is refused up front, and any padding left by an approximate index raises.

Memory at BIOSCAN-5M scale (5.15M keys of 768 floats = 15.8 GB per feature): :meth:`KeyIndex.build` validates and
normalises the caller's vectors in float32 chunks (:mod:`bioscan_clip.retrieval.vectors`). A flat index is normalised
straight into faiss's own storage (about 1x the raw bytes in all); an approximate index streams the normalised vectors
to an unlinked temporary ``.npy`` file and keeps only its compressed codes in RAM. Saved vectors are a plain
``vectors.npy`` that :meth:`KeyIndex.load` memory-maps, so an IVF-PQ index needs its codes in RAM and reads from disk
only the rows it re-ranks: each query's ``rerank`` best PQ candidates are re-scored exactly from those vectors, which
recovers exact recall@1 at a fraction of flat search's memory.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import faiss
import numpy as np
import pyarrow as pa
from datasets.utils.logging import get_logger
from tqdm.auto import tqdm

from modeling_bioscanclip.constants_bioscanclip import TAXONOMIC_RANKS
from modeling_bioscanclip.errors_bioscanclip import BioscanInputError

from .index_types import (
    INDEX_TYPES,
    IndexParams,
    IndexTypeEntry,
    check_index_type,
    resolve_index_params,
    search_setting,
)
from .key_table import DEFAULT_ID_COLUMN, detached, key_table
from .storage import EMBEDDING_COLUMN, new_manifest, read_folder, write_folder
from .vectors import VectorFile, as_embedding_matrix, checked_matrix, l2_normalize, large_blas_blocks, prepared_chunks

logger = get_logger(__name__)

# Keys are added to faiss in chunks of this many rows so a progress bar can follow large builds.
ADD_BATCH_SIZE = 65_536
# Builds of at least this many keys show a progress bar unless told otherwise.
PROGRESS_MIN_KEYS = 100_000


@dataclass
class RetrievalResult:
    """Nearest keys of each query.

    Attributes:
        scores (`np.ndarray`): ``(queries, k)`` float32 similarities, best first (cosine when normalised).
        indices (`np.ndarray`): ``(queries, k)`` int64 row numbers into :attr:`KeyIndex.keys`; never -1.
        labels (`dict[str, list[list[Any]]]`): column -> per query, the neighbours' values, nearest first. With the
            taxonomy columns this is exactly the column-oriented ``predictions`` input of
            ``compute_taxonomic_accuracy``.
    """

    scores: np.ndarray
    indices: np.ndarray
    labels: dict[str, list[list[Any]]]


class KeyIndex:
    """Labelled key embeddings with a faiss index, saved and loaded as one folder.

    Build with :meth:`build`, reopen with :meth:`load`; the constructor is for those two.

    Args:
        keys (`datasets.Dataset`): One row per key: the id column, the taxonomy columns and any string metadata.
        index (`faiss.Index`): The faiss index over the same rows, in the same order.
        manifest (`dict`): The JSON manifest (see :meth:`save`).
        vectors (`np.ndarray`, *optional*): ``(keys, dim)`` float32, the indexed vectors (normalised when
            ``normalize`` is set), usually a ``np.memmap``; defaults to the ``"embedding"`` column of ``keys``
            (format version 2 folders).
    """

    def __init__(
        self,
        keys: datasets.Dataset,
        index: faiss.Index,
        manifest: dict[str, Any],
        vectors: np.ndarray | None = None,
        *,
        _vector_file: VectorFile | None = None,
    ) -> None:
        if index.ntotal != len(keys):
            raise BioscanInputError(f"the faiss index holds {index.ntotal} vectors but the key table {len(keys)} rows")
        if index.d != manifest["dim"]:
            raise BioscanInputError(f"the faiss index has dimension {index.d} but the manifest says {manifest['dim']}")
        if vectors is None:
            if EMBEDDING_COLUMN not in keys.column_names:
                raise BioscanInputError(
                    f"no key vectors: pass vectors or a key table with an {EMBEDDING_COLUMN!r} column"
                )
            # Zero-copy from the memory-mapped Arrow file when it is one chunk without nulls.
            column = keys.with_format("arrow", columns=[EMBEDDING_COLUMN])[:][EMBEDDING_COLUMN].combine_chunks()
            vectors = column.values.to_numpy(zero_copy_only=False).reshape(len(keys), manifest["dim"])
        if vectors.shape != (len(keys), manifest["dim"]) or vectors.dtype != np.float32:
            raise BioscanInputError(
                f"the key vectors are {vectors.dtype} of shape {vectors.shape}, expected float32 of shape "
                f"({len(keys)}, {manifest['dim']})"
            )
        self.keys = keys
        self.index = index
        self.manifest = manifest
        # Re-ranking hands faiss a raw pointer to the rows: saved and built vectors are already C-ordered (no copy).
        self.vectors = vectors if vectors.flags.c_contiguous else np.ascontiguousarray(vectors)
        self._vector_file = _vector_file  # the build's temporary .npy behind `vectors`, copied by save
        self._column_cache: dict[str, np.ndarray] = {}

    # ------------------------------------------------------------------ properties

    @property
    def dim(self) -> int:
        """Embedding dimension."""
        return int(self.manifest["dim"])

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def index_type(self) -> str:
        """A name in :data:`~bioscan_clip.retrieval.INDEX_TYPES`, e.g. ``"flat"`` or ``"ivfpq"``."""
        return str(self.manifest["index_type"])

    @property
    def _entry(self) -> IndexTypeEntry:
        return INDEX_TYPES[self.index_type]

    @property
    def exact(self) -> bool:
        """Whether this index's search is exact (its recall against :meth:`exact_search` is 1.0 up to ties)."""
        return self._entry.exact

    @property
    def normalize(self) -> bool:
        """Whether keys were, and queries are, L2-normalised (cosine similarity)."""
        return self.manifest["normalization"] == "l2"

    @property
    def extra(self) -> dict[str, Any]:
        """The caller's free-form JSON data saved with the index (e.g. calibration thresholds)."""
        return self.manifest["extra"]

    def __repr__(self) -> str:
        return (
            f"KeyIndex(count={len(self)}, dim={self.dim}, index_type={self.index_type!r}, "
            f"modality={self.manifest.get('modality')!r}, columns={self.keys.column_names})"
        )

    # ------------------------------------------------------------------ building

    @classmethod
    def build(
        cls,
        embeddings: np.ndarray,
        metadata: Mapping[str, Sequence[Any]] | datasets.Dataset,
        *,
        index_type: str = "flat",
        params: IndexParams | None = None,
        normalize: bool = True,
        id_column: str = DEFAULT_ID_COLUMN,
        required_columns: Sequence[str] = TAXONOMIC_RANKS,
        modality: str | None = None,
        embedding_name: str | None = None,
        extra: Mapping[str, Any] | None = None,
        seed: int = 0,
        show_progress: bool | None = None,
        vectors_dir: str | os.PathLike[str] | None = None,
        **options: Any,
    ) -> KeyIndex:
        """Embeds nothing: indexes the given key embeddings with their ids and taxonomy.

        Memory: besides the caller's ``embeddings``, a flat build holds the index (1x the float32 bytes) and an
        approximate build its codes plus a training sample; the normalised vectors of an approximate index go to an
        unlinked temporary file in ``vectors_dir`` (memory-mapped afterwards), never to a full copy in RAM.

        Args:
            embeddings (`np.ndarray`): ``(keys, dim)`` floats, finite and (with ``normalize``) non-zero; a
                ``np.memmap`` is read in chunks.
            metadata (`dict[str, list]` or `datasets.Dataset`): One row per key, in the order of ``embeddings``; must
                hold ``id_column`` and ``required_columns`` as strings (``None`` allowed for a missing taxon). Must not
                hold an ``"embedding"`` column.
            index_type (`str`, *optional*, defaults to `"flat"`): A name in
                :data:`~bioscan_clip.retrieval.INDEX_TYPES`: ``"flat"`` (exact ``IndexFlatIP``), ``"ivf"`` (IVF-Flat),
                ``"hnsw"`` (HNSW-Flat), ``"ivfpq"`` (IVF-PQ, compressed for memory, re-ranked exactly); or ``"auto"``
                (flat below 200 000 keys, else IVF-PQ fast scan with re-ranking; see :func:`resolve_index_params`).
            params (`IndexParams`, *optional*): The index settings (IVF lists, HNSW degree, PQ codes, re-ranking,
                ...; see :class:`~bioscan_clip.retrieval.IndexParams` for each and its default); each index type reads
                its own and ignores the others. Defaults to ``IndexParams()``.
            normalize (`bool`, *optional*, defaults to `True`): L2-normalise keys (and later queries) so the inner
                product is cosine similarity, as the original does.
            id_column (`str`, *optional*, defaults to `"processid"`): The key id column. Ids are not required to be
                unique (the paper's "all keys" setting stacks image, DNA and text embeddings of each specimen).
            required_columns (`Sequence[str]`, *optional*, defaults to `TAXONOMIC_RANKS`): Columns that must exist.
            modality (`str`, *optional*): What the keys embed (``"image"``, ``"dna"``, ...), saved in the manifest.
            embedding_name (`str`, *optional*): Which model / feature made the embeddings, saved in the manifest.
            extra (`dict`, *optional*): Free-form JSON-serialisable data saved in the manifest.
            seed (`int`, *optional*, defaults to 0): Seed of the training sample and of IVF / PQ k-means.
            show_progress (`bool`, *optional*): Progress bar while adding; defaults to on from 100 000 keys.
            vectors_dir (`str` or `os.PathLike`, *optional*): Where an approximate build keeps its temporary vector
                file (as large as the float32 keys); defaults to the system temporary folder (``TMPDIR``).
            **options: :class:`~bioscan_clip.retrieval.IndexParams` fields by name (``nlist=16``), replacing those of
                ``params``.

        Returns:
            `KeyIndex`

        Raises:
            `BioscanInputError`: bad embeddings (empty, NaN/inf, zero rows, wrong dtype), row-count mismatch, missing or
            non-string id / taxonomy columns, unknown ``index_type``, or index parameters the data cannot support
            (named with the value).
            `TypeError`: an option that is not an :class:`~bioscan_clip.retrieval.IndexParams` field.

        Example:

        >>> import numpy as np
        >>> keys = KeyIndex.build(
        ...     np.array([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7]]),
        ...     {"processid": ["K1", "K2", "K3"], "order": ["Diptera", "Diptera", "Odonata"],
        ...      "family": ["Culicidae", "Culicidae", "Libellulidae"], "genus": ["Aedes", "Culex", "Acisoma"],
        ...      "species": ["Aedes aegypti", "Culex pipiens", None]},
        ... )
        >>> result = keys.search_labels(np.array([[0.9, 0.1]]), k=2, columns=["processid", "genus"])
        >>> result.labels["processid"], result.indices.tolist()
        ([['K1', 'K3']], [[0, 2]])
        """
        record = IndexParams.from_options(params, **options)
        check_index_type(index_type)
        matrix = checked_matrix(embeddings, "key embeddings")
        count, dim = matrix.shape
        table = key_table(metadata, count, id_column, required_columns)
        extra_dict = dict(extra or {})
        try:
            json.dumps(extra_dict)
        except (TypeError, ValueError) as error:
            raise BioscanInputError(f"extra must be JSON-serialisable: {error}") from None
        index_type, index_params = resolve_index_params(index_type, count, dim, record)
        entry = INDEX_TYPES[index_type]
        index = entry.new_index(dim, index_params, seed)

        progress = count >= PROGRESS_MIN_KEYS if show_progress is None else show_progress
        vector_file = None
        with tqdm(total=count, desc=f"Indexing keys ({index_type})", unit="key", disable=not progress) as bar:
            if entry.own_storage is not None:  # normalised straight into faiss's storage, chunk by chunk
                vectors: np.ndarray = entry.own_storage(index, count)
                for _, chunk in prepared_chunks(matrix, "key embeddings", normalize, out=vectors):
                    bar.update(len(chunk))
            else:
                vector_file = VectorFile(count, dim, vectors_dir)
                train_rows = np.sort(
                    np.random.default_rng(seed).choice(count, index_params.get("train_size", 0), replace=False)
                )
                sample = np.empty((train_rows.size, dim), dtype=np.float32)
                for start, chunk in prepared_chunks(matrix, "key embeddings", normalize):
                    vector_file.write(chunk)
                    lo, hi = np.searchsorted(train_rows, [start, start + len(chunk)])
                    sample[lo:hi] = chunk[train_rows[lo:hi] - start]
                if sample.size:
                    index.train(sample)
                del sample
                for start in range(0, count, ADD_BATCH_SIZE):
                    chunk = vector_file.read(start, min(count, start + ADD_BATCH_SIZE))
                    index.add(chunk)
                    bar.update(len(chunk))
                vectors = vector_file.mapped()

        manifest = new_manifest(
            dim=dim, count=count, index_type=index_type, index_params=index_params, normalize=normalize,
            id_column=id_column, modality=modality, embedding_name=embedding_name, extra=extra_dict,
        )  # fmt: skip
        logger.info(f"Built a {index_type} key index over {count} keys of dimension {dim} ({index_params})")
        return cls(detached(table), index, manifest, vectors, _vector_file=vector_file)

    # ------------------------------------------------------------------ persistence

    def save(self, directory: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Writes the key table, the faiss index and the manifest to ``directory`` atomically.

        Everything is written to a temporary sibling folder that is then renamed into place, so a crash never leaves a
        half-written index where a reader would find it.

        Args:
            directory (`str` or `os.PathLike`): Target folder; must not exist unless ``overwrite``.
            overwrite (`bool`, *optional*, defaults to `False`): Replace an existing key index folder (one that holds a
                ``manifest.json``); any other existing path is refused.

        Returns:
            `Path`: the target folder.
        """
        target = Path(directory)
        return write_folder(target, self.manifest, self.keys, self.index, self._write_vectors, overwrite=overwrite)

    def _write_vectors(self, path: Path) -> None:
        if self._vector_file is not None:  # the build's temporary .npy, copied as it is
            self._vector_file.copy_to(path)
        else:  # a file-backed or in-memory array, written without an intermediate copy
            np.save(path, self.vectors, allow_pickle=False)

    @classmethod
    def load(cls, directory: str | os.PathLike[str], *, verify: bool = True) -> KeyIndex:
        """Opens a folder written by :meth:`save`; nothing is re-embedded, and the key table, the vectors (and a flat
        index) are memory-mapped: an approximate index reads into RAM only its own (compressed) structure.

        Args:
            directory: the folder.
            verify (`bool`, *optional*, defaults to `True`): check every file's size and sha256 against the manifest
                first (a key folder that has already verified its own manifest passes False).

        Raises:
            `BioscanInputError`: a missing, resized or changed file, an unknown format version or index type, unreadable
            parts, or parts that disagree on count or dim; the message names the folder.
        """
        keys, index, manifest, vectors = read_folder(Path(directory), verify=verify)
        return cls(keys, index, manifest, vectors)

    # ------------------------------------------------------------------ search

    def embeddings(self) -> np.ndarray:
        """The indexed key vectors as a read-only ``(keys, dim)`` float32 array (normalised when :attr:`normalize`).

        Not a copy: after :meth:`load` it is a ``np.memmap`` of ``vectors.npy``, paged in only where it is read.
        """
        view = self.vectors.view()
        view.flags.writeable = False
        return view

    def _arrow_column(self, name: str) -> pa.ChunkedArray:
        # Through the arrow formatter: whole columns without per-row Python objects, honouring any indices mapping.
        return self.keys.with_format("arrow", columns=[name])[:][name]

    def prepare_queries(self, queries: np.ndarray) -> np.ndarray:
        """Validates queries (2-D, finite, matching dim, non-zero when normalising) and normalises them like keys."""
        matrix = as_embedding_matrix(queries, "queries")
        if matrix.shape[1] != self.dim:
            raise BioscanInputError(f"queries have dimension {matrix.shape[1]} but the keys have {self.dim}")
        return l2_normalize(matrix, "queries") if self.normalize else matrix

    def column(self, name: str) -> np.ndarray:
        """One key column (e.g. ``"species"``) as an object array, one value per key row (read once, cached)."""
        if name not in self._column_cache:
            if name not in self.keys.column_names or name == EMBEDDING_COLUMN:
                raise BioscanInputError(f"unknown key column {name!r}; columns are {self.keys.column_names}")
            values = np.empty(len(self.keys), dtype=object)
            values[:] = self._arrow_column(name).to_pylist()
            self._column_cache[name] = values
        return self._column_cache[name]

    def restrict_ids(self, restrict: Mapping[str, str | Sequence[str]]) -> np.ndarray:
        """Row numbers of the keys whose columns take one of the given values (columns combined with AND).

        Args:
            restrict (`dict[str, str | list[str]]`): e.g. ``{"order": ["Diptera"]}``; a bare string is one value.

        Returns:
            `np.ndarray`: sorted int64 row numbers.

        Raises:
            `BioscanInputError`: an unknown column, an empty value list, or no key matching.
        """
        if not isinstance(restrict, Mapping) or not restrict:
            raise BioscanInputError(f"restrict must be a non-empty dict column -> values, got {restrict!r}")
        selected = np.ones(len(self.keys), dtype=bool)
        for column, values in restrict.items():
            allowed = [values] if isinstance(values, str) else list(values)
            if not allowed:
                raise BioscanInputError(f"restrict[{column!r}] is empty; give at least one value")
            selected &= np.isin(self.column(column), np.asarray(allowed, dtype=object))
        ids = np.flatnonzero(selected).astype(np.int64)
        if ids.size == 0:
            raise BioscanInputError(f"no key matches restrict={dict(restrict)!r}")
        return ids

    def search(
        self,
        queries: np.ndarray,
        k: int,
        *,
        restrict: Mapping[str, str | Sequence[str]] | None = None,
        rows: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest keys of each query.

        Args:
            queries (`np.ndarray`): ``(queries, dim)`` floats, finite and non-zero (normalised here when keys were).
            k (`int`): Neighbours per query; at most the number of searchable keys.
            restrict (`dict[str, str | list[str]]`, *optional*): Search only keys matching these column values, e.g.
                ``{"order": ["Diptera"]}`` (a faiss ``IDSelector``; returned indices are rows of the full key table).
            rows (`np.ndarray`, *optional*): Search only these key rows (sorted int64), e.g. the keys left when some
                labels are held out; instead of ``restrict``.

        Returns:
            `tuple[np.ndarray, np.ndarray]`: ``scores`` ``(queries, k)`` float32, best first, and ``indices``
            ``(queries, k)`` int64 rows of :attr:`keys`. Never contains faiss's -1 padding.

        Raises:
            `BioscanInputError`: bad queries (see :meth:`prepare_queries`), k < 1 or k above the searchable key count,
            a restriction that matches nothing, or an approximate index that found fewer than k neighbours (raise
            ``nprobe`` / ``ef_search`` or lower k).

        With ``rerank`` set (see :meth:`build`), the index is asked for ``max(k, rerank)`` candidates, which are
        re-scored exactly from the stored vectors; the scores returned are then exact inner products.
        """
        vectors = self.prepare_queries(queries)
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise BioscanInputError(f"k must be a positive int, got {k!r}")
        k = int(k)
        params = None
        searchable = len(self.keys)
        if restrict is not None or rows is not None:
            allowed = self.restrict_ids(restrict) if rows is None else np.asarray(rows, dtype=np.int64)
            searchable = int(allowed.size)
            selector = faiss.IDSelectorBatch(allowed)
            params = self._entry.search_parameters(self.index, selector)
        if k > searchable:
            scope = f"keys matching {dict(restrict)!r}" if restrict is not None else "keys"
            scope = "keys of the rows given" if rows is not None else scope
            raise BioscanInputError(f"k={k} is larger than the {searchable} searchable {scope}")
        rerank = int(self.manifest["index_params"].get("rerank", 0))
        candidates = min(max(k, rerank), searchable) if rerank else k
        with large_blas_blocks():
            scores, indices = self.index.search(vectors, candidates, params=params)
        if rerank:
            scores, indices = self._rerank(vectors, indices, k)
        padded = indices < 0
        if padded.any():
            row = int(np.flatnonzero(padded.any(axis=1))[0])
            raise BioscanInputError(
                f"the {self.index_type} index found fewer than k={k} neighbours for query {row} "
                f"({int(padded.sum())} missing in all); raise nprobe / ef_search or lower k"
            )
        return scores, indices.astype(np.int64, copy=False)

    def _rerank(self, queries: np.ndarray, candidates: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact scores of each query's candidates from :attr:`vectors`; the best k, best first (-1 stays last)."""
        valid = candidates >= 0
        rows = np.ascontiguousarray(np.where(valid, candidates, 0), dtype=np.int64)
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        exact = np.empty(candidates.shape, dtype=np.float32)
        # faiss reads each candidate's row in place (threads over queries): no gathered copy of the candidate vectors,
        # which cost 6-7x the time at 330 candidates (memory traffic of queries x candidates x dim floats, twice).
        faiss.fvec_inner_products_by_idx(
            faiss.swig_ptr(exact),
            faiss.swig_ptr(queries),
            faiss.swig_ptr(self.vectors),
            faiss.swig_ptr(rows),
            self.dim,
            len(queries),
            candidates.shape[1],
        )
        exact[~valid] = -np.inf
        best = np.argsort(-exact, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(exact, best, axis=1), np.take_along_axis(candidates, best, axis=1)

    def set_search_params(self, **settings: Any) -> None:
        """Changes how this index searches (not what it holds); saved with it by :meth:`save`.

        Each index type has its own settings (``search_settings`` of its
        :class:`~bioscan_clip.retrieval.IndexTypeEntry`); a setting given as ``None`` is left as it is. Every value is
        checked before any is applied.

        Args:
            nprobe (`int`, *optional*): IVF lists visited per query (``"ivf"`` / ``"ivfpq"``), at most ``nlist``.
            ef_search (`int`, *optional*): HNSW search beam width (``"hnsw"``).
            rerank (`int`, *optional*): Candidates re-scored exactly per query; 0 turns re-ranking off.

        Raises:
            `BioscanInputError`: a parameter this index type does not have, or a value out of range (named).
            `TypeError`: a setting no index type has.
        """
        params = self.manifest["index_params"]
        checked = {}
        for name, value in settings.items():
            if value is not None:
                setting = search_setting(self.index_type, name)
                checked[name] = (setting, setting.check(value, params, len(self)))
        for name, (setting, value) in checked.items():
            params[name] = value
            setting.apply(self.index, value)

    def search_labels(
        self,
        queries: np.ndarray,
        k: int,
        *,
        columns: Sequence[str] | None = None,
        restrict: Mapping[str, str | Sequence[str]] | None = None,
        rows: np.ndarray | None = None,
    ) -> RetrievalResult:
        """:meth:`search`, plus the neighbours' metadata.

        Args:
            queries (`np.ndarray`): As for :meth:`search`.
            k (`int`): As for :meth:`search`.
            columns (`Sequence[str]`, *optional*): Key columns to return; defaults to the taxonomic ranks present.
            restrict (`dict`, *optional*): As for :meth:`search`.
            rows (`np.ndarray`, *optional*): As for :meth:`search`.

        Returns:
            `RetrievalResult`: ``labels[column][query]`` lists the neighbours' values, nearest first.
        """
        scores, indices = self.search(queries, k, restrict=restrict, rows=rows)
        if columns is None:
            columns = [rank for rank in TAXONOMIC_RANKS if rank in self.keys.column_names]
        labels = {column: self.column(column)[indices].tolist() for column in columns}
        return RetrievalResult(scores=scores, indices=indices, labels=labels)

    def exact_search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact inner-product search over the stored key vectors, whatever :attr:`index_type` is."""
        vectors = self.prepare_queries(queries)
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= len(self.keys):
            raise BioscanInputError(f"k must be an int in [1, {len(self.keys)}], got {k!r}")
        # Blocked sgemm + heap over the (memory-mapped) vectors as they are: no copy of the keys into an index.
        with large_blas_blocks():
            scores, indices = faiss.knn(vectors, self.vectors, int(k), metric=faiss.METRIC_INNER_PRODUCT)
        return scores, indices.astype(np.int64, copy=False)

    def recall_at_k(self, queries: np.ndarray, k: int) -> float:
        """Recall@k of this index against exact search on the same keys: the mean fraction of each query's exact
        k nearest keys that this index also returns. 1.0 for ``"flat"`` (up to ties).

        Args:
            queries (`np.ndarray`): ``(queries, dim)`` query vectors (e.g. held-out embeddings).
            k (`int`): Neighbours compared per query.

        Returns:
            `float` in [0, 1].
        """
        _, exact = self.exact_search(queries, k)
        _, approximate = self.search(queries, k)
        found = [len(set(a.tolist()) & set(e.tolist())) for a, e in zip(approximate, exact, strict=True)]
        return float(np.sum(found) / exact.size)


def compare_index_types(
    embeddings: np.ndarray,
    queries: np.ndarray,
    k: int,
    *,
    index_types: Sequence[str] | None = None,
    **index_kwargs: Any,
) -> dict[str, float]:
    """Recall@k against exact search of each approximate index type, built on the same keys.

    Args:
        embeddings (`np.ndarray`): ``(keys, dim)`` key vectors.
        queries (`np.ndarray`): ``(queries, dim)`` query vectors.
        k (`int`): Neighbours compared per query.
        index_types (`Sequence[str]`, *optional*): Which types to build; defaults to every approximate type in
            :data:`~bioscan_clip.retrieval.INDEX_TYPES` (``"ivf"``, ``"hnsw"``, ``"ivfpq"``).
        **index_kwargs: Passed to :meth:`KeyIndex.build` (``nlist``, ``nprobe``, ``pq_nbits``, ...).

    Returns:
        `dict[str, float]`: index type -> recall@k.
    """
    count = np.asarray(embeddings).shape[0]
    metadata = {DEFAULT_ID_COLUMN: [str(row) for row in range(count)]}
    if index_types is None:
        index_types = [name for name, entry in INDEX_TYPES.items() if not entry.exact]
    recalls = {}
    for index_type in index_types:
        key_index = KeyIndex.build(embeddings, metadata, index_type=index_type, required_columns=(), **index_kwargs)
        recalls[index_type] = key_index.recall_at_k(queries, k)
    return recalls
