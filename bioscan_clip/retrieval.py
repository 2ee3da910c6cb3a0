"""A saved, searchable set of labelled key embeddings: a ``datasets.Dataset`` with a faiss index beside it.

BIOSCAN-CLIP / CLIBD classify a query specimen by the labels of its nearest keys (``CLIBD_REFERENCE.md`` §4): keys and
queries are L2-normalised and searched exactly with ``faiss.IndexFlatIP`` (inner product = cosine). :class:`KeyIndex`
keeps that as the default and adds approximate indexes (IVF-Flat, HNSW, IVF-PQ) for millions of keys, together with
:meth:`KeyIndex.recall_at_k` to measure what they lose against exact search on the same data.

faiss pads results with id -1 when it finds fewer than k neighbours, and ``labels[-1]`` in Python silently returns the
last key's label (the original ``make_prediction`` did exactly that). This module never lets a -1 through: k larger
than the searchable key count is refused up front, and any padding left by an approximate index raises.

On disk a key index is a folder::

    manifest.json   # format version, dim, count, index type and parameters, normalisation, modality, extra,
                    # and the size and sha256 of every other file (checked on load: a corrupted or mixed folder
                    # is refused by name)
    index.faiss     # faiss.write_index
    keys/           # datasets.Dataset.save_to_disk: id, taxonomy, metadata and "embedding" columns
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import datasets
import faiss
import numpy as np
import pyarrow as pa
from datasets.utils.logging import get_logger
from tqdm.auto import tqdm

from bioscan_clip.safe_io import (
    check_seal,
    file_checksums,
    read_json,
    sealed_json,
    staging_dir,
    swap_in,
    verify_checksums,
)
from modeling_bioscanclip.constants_bioscanclip import TAXONOMIC_RANKS
from modeling_bioscanclip.errors_bioscanclip import BioscanInputError

logger = get_logger(__name__)

IndexType = Literal["flat", "ivf", "hnsw", "ivfpq"]
INDEX_TYPES: tuple[str, ...] = ("flat", "ivf", "hnsw", "ivfpq")
EMBEDDING_COLUMN = "embedding"
DEFAULT_ID_COLUMN = "processid"
MANIFEST_NAME = "manifest.json"
INDEX_NAME = "index.faiss"
KEYS_DIRNAME = "keys"
FORMAT_VERSION = 2  # 2: the manifest lists every file's size and sha256
# Keys are added to faiss in chunks of this many rows so a progress bar can follow large builds.
ADD_BATCH_SIZE = 65_536
# Builds of at least this many keys show a progress bar unless told otherwise.
PROGRESS_MIN_KEYS = 100_000


def as_embedding_matrix(values: Any, name: str = "embeddings") -> np.ndarray:
    """Checks a 2-D float array of embeddings and returns it as C-contiguous float32.

    Args:
        values (`np.ndarray` or array-like): A ``(rows, dim)`` floating-point array.
        name (`str`, *optional*, defaults to `"embeddings"`): Used in error messages.

    Returns:
        `np.ndarray`: ``(rows, dim)`` float32, C-contiguous (faiss needs both).

    Raises:
        `BioscanInputError`: not 2-D, no rows or no columns, not floating point, or any NaN / inf (the first bad row is
        named).
    """
    array = np.asarray(values)
    if array.ndim != 2:
        raise BioscanInputError(f"{name} must be a 2-D (rows, dim) array, got shape {array.shape}")
    if array.shape[0] == 0:
        raise BioscanInputError(f"{name} is empty (shape {array.shape}): there is nothing to index or search")
    if array.shape[1] == 0:
        raise BioscanInputError(f"{name} has dimension 0 (shape {array.shape})")
    if not np.issubdtype(array.dtype, np.floating):
        raise BioscanInputError(f"{name} must be floating point, got dtype {array.dtype}")
    finite = np.isfinite(array).all(axis=1)
    if not finite.all():
        bad = int(np.flatnonzero(~finite)[0])
        raise BioscanInputError(f"{name} row {bad} contains NaN or inf ({int((~finite).sum())} bad rows in all)")
    return np.ascontiguousarray(array, dtype=np.float32)


def l2_normalize(embeddings: np.ndarray, name: str = "embeddings") -> np.ndarray:
    """Returns a float32 copy of ``embeddings`` with unit-length rows; zero rows are an error, not a silent 0 score.

    Args:
        embeddings (`np.ndarray`): ``(rows, dim)`` finite floats.
        name (`str`, *optional*, defaults to `"embeddings"`): Used in error messages.

    Raises:
        `BioscanInputError`: a row with zero norm (named), or anything :func:`as_embedding_matrix` refuses.
    """
    matrix = as_embedding_matrix(embeddings, name)
    norms = np.linalg.norm(matrix.astype(np.float64), axis=1)
    zero = norms == 0
    if zero.any():
        bad = int(np.flatnonzero(zero)[0])
        raise BioscanInputError(f"{name} row {bad} is a zero vector and has no direction ({int(zero.sum())} in all)")
    return np.ascontiguousarray(matrix / norms[:, None].astype(np.float32), dtype=np.float32)


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


def _default_nlist(count: int) -> int:
    # About sqrt(n) lists, but at least 39 training points per list (below that faiss warns and k-means is poor).
    return max(1, min(int(round(math.sqrt(count))), count // 39))


class KeyIndex:
    """Labelled key embeddings with a faiss index, saved and loaded as one folder.

    Build with :meth:`build`, reopen with :meth:`load`; the constructor is for those two.

    Args:
        keys (`datasets.Dataset`): One row per key: the id column, the taxonomy columns, any string metadata and the
            ``"embedding"`` column (the vectors that are in the index, already normalised when ``normalize`` is set).
        index (`faiss.Index`): The faiss index over the same rows, in the same order.
        manifest (`dict`): The JSON manifest (see :meth:`save`).
    """

    def __init__(self, keys: datasets.Dataset, index: faiss.Index, manifest: dict[str, Any]) -> None:
        if index.ntotal != len(keys):
            raise BioscanInputError(f"the faiss index holds {index.ntotal} vectors but the key table {len(keys)} rows")
        if index.d != manifest["dim"]:
            raise BioscanInputError(f"the faiss index has dimension {index.d} but the manifest says {manifest['dim']}")
        self.keys = keys
        self.index = index
        self.manifest = manifest
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
        """One of ``"flat"``, ``"ivf"``, ``"hnsw"``, ``"ivfpq"``."""
        return str(self.manifest["index_type"])

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
        index_type: IndexType = "flat",
        normalize: bool = True,
        id_column: str = DEFAULT_ID_COLUMN,
        required_columns: Sequence[str] = TAXONOMIC_RANKS,
        modality: str | None = None,
        embedding_name: str | None = None,
        extra: Mapping[str, Any] | None = None,
        nlist: int | None = None,
        nprobe: int = 16,
        hnsw_m: int = 32,
        ef_construction: int = 80,
        ef_search: int = 64,
        pq_m: int | None = None,
        pq_nbits: int = 8,
        seed: int = 0,
        show_progress: bool | None = None,
    ) -> KeyIndex:
        """Embeds nothing: indexes the given key embeddings with their ids and taxonomy.

        Args:
            embeddings (`np.ndarray`): ``(keys, dim)`` floats, finite and (with ``normalize``) non-zero.
            metadata (`dict[str, list]` or `datasets.Dataset`): One row per key, in the order of ``embeddings``; must
                hold ``id_column`` and ``required_columns`` as strings (``None`` allowed for a missing taxon). Must not
                hold an ``"embedding"`` column.
            index_type (`str`, *optional*, defaults to `"flat"`): ``"flat"`` (exact ``IndexFlatIP``), ``"ivf"``
                (IVF-Flat), ``"hnsw"`` (HNSW-Flat) or ``"ivfpq"`` (IVF-PQ, compressed for memory).
            normalize (`bool`, *optional*, defaults to `True`): L2-normalise keys (and later queries) so the inner
                product is cosine similarity, as the original does.
            id_column (`str`, *optional*, defaults to `"processid"`): The key id column. Ids are not required to be
                unique (the paper's "all keys" setting stacks image, DNA and text embeddings of each specimen).
            required_columns (`Sequence[str]`, *optional*, defaults to `TAXONOMIC_RANKS`): Columns that must exist.
            modality (`str`, *optional*): What the keys embed (``"image"``, ``"dna"``, ...), saved in the manifest.
            embedding_name (`str`, *optional*): Which model / feature made the embeddings, saved in the manifest.
            extra (`dict`, *optional*): Free-form JSON-serialisable data saved in the manifest.
            nlist (`int`, *optional*): IVF lists; defaults to about sqrt(keys), at most keys / 39.
            nprobe (`int`, *optional*, defaults to 16): IVF lists visited per query (clipped to ``nlist``).
            hnsw_m (`int`, *optional*, defaults to 32): HNSW graph degree.
            ef_construction (`int`, *optional*, defaults to 80): HNSW build-time beam width.
            ef_search (`int`, *optional*, defaults to 64): HNSW search-time beam width.
            pq_m (`int`, *optional*): IVF-PQ sub-quantisers; must divide ``dim``; defaults to the largest divisor of
                ``dim`` that is at most ``dim / 4``.
            pq_nbits (`int`, *optional*, defaults to 8): Bits per IVF-PQ code; training needs ``2**pq_nbits`` keys.
            seed (`int`, *optional*, defaults to 0): k-means seed for IVF / PQ training.
            show_progress (`bool`, *optional*): Progress bar while adding; defaults to on from 100 000 keys.

        Returns:
            `KeyIndex`

        Raises:
            `BioscanInputError`: bad embeddings (empty, NaN/inf, zero rows, wrong dtype), row-count mismatch, missing or
            non-string id / taxonomy columns, unknown ``index_type``, or index parameters the data cannot support.

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
        if index_type not in INDEX_TYPES:
            raise BioscanInputError(f"index_type must be one of {INDEX_TYPES}, got {index_type!r}")
        vectors = (
            l2_normalize(embeddings, "key embeddings")
            if normalize
            else as_embedding_matrix(embeddings, "key embeddings")
        )
        count, dim = vectors.shape
        table = cls._metadata_table(metadata, count, id_column, required_columns)
        extra_dict = dict(extra or {})
        try:
            json.dumps(extra_dict)
        except (TypeError, ValueError) as error:
            raise BioscanInputError(f"extra must be JSON-serialisable: {error}") from None

        params: dict[str, Any] = {}
        if index_type == "flat":
            index: faiss.Index = faiss.IndexFlatIP(dim)
        elif index_type == "hnsw":
            index = faiss.IndexHNSWFlat(dim, int(hnsw_m), faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = int(ef_construction)
            index.hnsw.efSearch = int(ef_search)
            params = {"hnsw_m": int(hnsw_m), "ef_construction": int(ef_construction), "ef_search": int(ef_search)}
        else:
            nlist = _default_nlist(count) if nlist is None else int(nlist)
            if not 1 <= nlist <= count:
                raise BioscanInputError(f"nlist must be in [1, {count}] (the key count), got {nlist}")
            quantizer = faiss.IndexFlatIP(dim)
            if index_type == "ivf":
                index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
            else:
                if pq_m is None:
                    pq_m = max(m for m in range(1, max(1, dim // 4) + 1) if dim % m == 0)
                if dim % pq_m != 0:
                    raise BioscanInputError(f"pq_m must divide the dimension {dim}, got {pq_m}")
                if count < 2**pq_nbits:
                    raise BioscanInputError(
                        f"IVF-PQ with pq_nbits={pq_nbits} needs at least {2**pq_nbits} keys to train, got {count}"
                    )
                index = faiss.IndexIVFPQ(quantizer, dim, nlist, int(pq_m), int(pq_nbits), faiss.METRIC_INNER_PRODUCT)
                index.pq.cp.seed = seed
                params = {"pq_m": int(pq_m), "pq_nbits": int(pq_nbits)}
            index.cp.seed = seed
            index.train(vectors)
            index.nprobe = min(int(nprobe), nlist)
            params.update({"nlist": nlist, "nprobe": int(index.nprobe)})

        progress = count >= PROGRESS_MIN_KEYS if show_progress is None else show_progress
        with tqdm(total=count, desc=f"Indexing keys ({index_type})", unit="key", disable=not progress) as bar:
            for start in range(0, count, ADD_BATCH_SIZE):
                chunk = vectors[start : start + ADD_BATCH_SIZE]
                index.add(chunk)
                bar.update(len(chunk))

        # A fixed-size Arrow list column: zero-copy from numpy here, and a (keys, dim) numpy array when read back.
        column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim)
        arrow_table = table.with_format("arrow")[:]  # honours any select/shuffle indices mapping of the input
        features = table.features.copy()
        features[EMBEDDING_COLUMN] = datasets.List(datasets.Value("float32"), length=dim)
        keys = datasets.Dataset(arrow_table.append_column(EMBEDDING_COLUMN, column))
        keys = keys.cast(features) if keys.features != features else keys
        manifest = {
            "format": "bioscan-clip-key-index",
            "format_version": FORMAT_VERSION,
            "dim": dim,
            "count": count,
            "index_type": index_type,
            "index_params": params,
            "metric": "inner_product",
            "normalization": "l2" if normalize else "none",
            "id_column": id_column,
            "modality": modality,
            "embedding_name": embedding_name,
            "faiss_version": faiss.__version__,
            "extra": extra_dict,
        }
        logger.info(f"Built a {index_type} key index over {count} keys of dimension {dim}")
        return cls(keys, index, manifest)

    @staticmethod
    def _metadata_table(
        metadata: Mapping[str, Sequence[Any]] | datasets.Dataset,
        count: int,
        id_column: str,
        required_columns: Sequence[str],
    ) -> datasets.Dataset:
        if isinstance(metadata, datasets.Dataset):
            table = metadata
        elif isinstance(metadata, Mapping):
            lengths = {name: len(values) for name, values in metadata.items()}
            if len(set(lengths.values())) > 1:
                raise BioscanInputError(f"metadata columns have different lengths: {lengths}")
            try:
                table = datasets.Dataset.from_dict({name: list(values) for name, values in metadata.items()})
            except (pa.ArrowInvalid, pa.ArrowTypeError) as error:  # e.g. str and int mixed in one column
                raise BioscanInputError(f"metadata columns must each hold one type: {error}") from None
        else:
            raise BioscanInputError(f"metadata must be a dict of columns or a datasets.Dataset, got {type(metadata)}")
        if EMBEDDING_COLUMN in table.column_names:
            raise BioscanInputError(
                f"metadata must not have an {EMBEDDING_COLUMN!r} column; pass embeddings separately"
            )
        if len(table) != count:
            raise BioscanInputError(f"metadata has {len(table)} rows but embeddings have {count}")
        string_columns = (id_column, *required_columns)
        string_features = (datasets.Value("string"), datasets.Value("large_string"), datasets.Value("null"))
        for column in string_columns:
            if column not in table.column_names:
                raise BioscanInputError(f"metadata has no {column!r} column; it has {table.column_names}")
            if table.features[column] not in string_features:
                first = next((value for value in table[column] if value is not None), None)
                raise BioscanInputError(
                    f"metadata column {column!r} must hold str or None, got {table.features[column]} values such as "
                    f"{type(first).__name__} {first!r}"
                )
        # An all-missing column is inferred as Arrow "null"; declare it string so saved schemas do not vary.
        null_columns = [c for c in string_columns if table.features[c] == datasets.Value("null")]
        for column in null_columns:
            table = table.cast_column(column, datasets.Value("string"))
        return table

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
        try:  # extra may have been edited since build (e.g. calibration thresholds added later)
            manifest_text = json.dumps(self.manifest, indent=2, sort_keys=True) + "\n"
        except (TypeError, ValueError) as error:
            raise BioscanInputError(f"the manifest's extra must be JSON-serialisable: {error}") from None
        if target.exists():
            if not overwrite:
                raise BioscanInputError(f"{target} already exists; pass overwrite=True to replace it")
            if not (target / MANIFEST_NAME).is_file():
                raise BioscanInputError(f"{target} exists and is not a saved key index; refusing to replace it")
        staging = staging_dir(target)
        try:
            self.keys.save_to_disk(str(staging / KEYS_DIRNAME))
            faiss.write_index(self.index, str(staging / INDEX_NAME))
            manifest = json.loads(manifest_text)
            manifest["checksums"] = file_checksums(staging)
            (staging / MANIFEST_NAME).write_text(sealed_json(manifest))
            swap_in(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return target

    @classmethod
    def load(cls, directory: str | os.PathLike[str], *, verify: bool = True) -> KeyIndex:
        """Opens a folder written by :meth:`save`; nothing is re-embedded and the key table is memory-mapped.

        Args:
            directory: the folder.
            verify (`bool`, *optional*, defaults to `True`): check every file's size and sha256 against the manifest
                first (a key folder that has already verified its own manifest passes False).

        Raises:
            `BioscanInputError`: a missing, resized or changed file, an unknown format version, unreadable parts, or
            parts that disagree on count or dim; the message names the folder.
        """
        source = Path(directory)
        for name in (MANIFEST_NAME, INDEX_NAME, KEYS_DIRNAME):
            if not (source / name).exists():
                raise BioscanInputError(f"{source} is not a saved key index: {name} is missing")
        manifest = read_json(source / MANIFEST_NAME, "the key index manifest")
        if not isinstance(manifest, dict) or (
            manifest.get("format") != "bioscan-clip-key-index" or manifest.get("format_version") != FORMAT_VERSION
        ):
            found = manifest if isinstance(manifest, dict) else {}
            raise BioscanInputError(
                f"{source / MANIFEST_NAME} has format {found.get('format')!r} version "
                f"{found.get('format_version')!r}; expected 'bioscan-clip-key-index' version {FORMAT_VERSION} "
                "(rebuild it with this version)"
            )
        if verify:
            check_seal(manifest, source / MANIFEST_NAME, "the key index manifest")
            verify_checksums(source, manifest.get("checksums", {}), "the key index")
        try:
            keys = datasets.load_from_disk(str(source / KEYS_DIRNAME))
            index = faiss.read_index(str(source / INDEX_NAME))
        except (RuntimeError, OSError, ValueError, KeyError) as error:
            message = " ".join(str(error).split())[:300]
            raise BioscanInputError(f"{source}: the key index cannot be read ({message}); rebuild it") from None
        if len(keys) != manifest["count"] or index.ntotal != manifest["count"] or index.d != manifest["dim"]:
            raise BioscanInputError(
                f"{source}: key table has {len(keys)} rows and the faiss index {index.ntotal} vectors of dim {index.d}, "
                f"but the manifest says {manifest['count']} of dim {manifest['dim']}; rebuild it"
            )
        return cls(keys, index, manifest)

    # ------------------------------------------------------------------ search

    def embeddings(self) -> np.ndarray:
        """The indexed key vectors as a ``(keys, dim)`` float32 array (normalised when :attr:`normalize`)."""
        column = self._arrow_column(EMBEDDING_COLUMN).combine_chunks()
        return column.values.to_numpy(zero_copy_only=False).reshape(len(self.keys), self.dim).astype(np.float32)

    def _arrow_column(self, name: str) -> pa.ChunkedArray:
        # Through the arrow formatter: whole columns without per-row Python objects, honouring any indices mapping.
        return self.keys.with_format("arrow", columns=[name])[:][name]

    def prepare_queries(self, queries: np.ndarray) -> np.ndarray:
        """Validates queries (2-D, finite, matching dim, non-zero when normalising) and normalises them like keys."""
        matrix = as_embedding_matrix(queries, "queries")
        if matrix.shape[1] != self.dim:
            raise BioscanInputError(f"queries have dimension {matrix.shape[1]} but the keys have {self.dim}")
        return l2_normalize(matrix, "queries") if self.normalize else matrix

    def _column(self, name: str) -> np.ndarray:
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
            selected &= np.isin(self._column(column), np.asarray(allowed, dtype=object))
        ids = np.flatnonzero(selected).astype(np.int64)
        if ids.size == 0:
            raise BioscanInputError(f"no key matches restrict={dict(restrict)!r}")
        return ids

    def _search_parameters(self, selector: faiss.IDSelector) -> faiss.SearchParameters:
        if self.index_type in ("ivf", "ivfpq"):
            return faiss.SearchParametersIVF(sel=selector, nprobe=int(faiss.extract_index_ivf(self.index).nprobe))
        if self.index_type == "hnsw":
            return faiss.SearchParametersHNSW(sel=selector, efSearch=int(self.index.hnsw.efSearch))
        return faiss.SearchParameters(sel=selector)

    def search(
        self, queries: np.ndarray, k: int, *, restrict: Mapping[str, str | Sequence[str]] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest keys of each query.

        Args:
            queries (`np.ndarray`): ``(queries, dim)`` floats, finite and non-zero (normalised here when keys were).
            k (`int`): Neighbours per query; at most the number of searchable keys.
            restrict (`dict[str, str | list[str]]`, *optional*): Search only keys matching these column values, e.g.
                ``{"order": ["Diptera"]}`` (a faiss ``IDSelector``; returned indices are rows of the full key table).

        Returns:
            `tuple[np.ndarray, np.ndarray]`: ``scores`` ``(queries, k)`` float32, best first, and ``indices``
            ``(queries, k)`` int64 rows of :attr:`keys`. Never contains faiss's -1 padding.

        Raises:
            `BioscanInputError`: bad queries (see :meth:`prepare_queries`), k < 1 or k above the searchable key count,
            a restriction that matches nothing, or an approximate index that found fewer than k neighbours (raise
            ``nprobe`` / ``ef_search`` or lower k).
        """
        vectors = self.prepare_queries(queries)
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise BioscanInputError(f"k must be a positive int, got {k!r}")
        k = int(k)
        params = None
        searchable = len(self.keys)
        if restrict is not None:
            allowed = self.restrict_ids(restrict)
            searchable = int(allowed.size)
            selector = faiss.IDSelectorBatch(allowed)
            params = self._search_parameters(selector)
        if k > searchable:
            scope = f"keys matching {dict(restrict)!r}" if restrict is not None else "keys"
            raise BioscanInputError(f"k={k} is larger than the {searchable} searchable {scope}")
        scores, indices = self.index.search(vectors, k, params=params)
        padded = indices < 0
        if padded.any():
            row = int(np.flatnonzero(padded.any(axis=1))[0])
            raise BioscanInputError(
                f"the {self.index_type} index found fewer than k={k} neighbours for query {row} "
                f"({int(padded.sum())} missing in all); raise nprobe / ef_search or lower k"
            )
        return scores, indices.astype(np.int64, copy=False)

    def search_labels(
        self,
        queries: np.ndarray,
        k: int,
        *,
        columns: Sequence[str] | None = None,
        restrict: Mapping[str, str | Sequence[str]] | None = None,
    ) -> RetrievalResult:
        """:meth:`search`, plus the neighbours' metadata.

        Args:
            queries (`np.ndarray`): As for :meth:`search`.
            k (`int`): As for :meth:`search`.
            columns (`Sequence[str]`, *optional*): Key columns to return; defaults to the taxonomic ranks present.
            restrict (`dict`, *optional*): As for :meth:`search`.

        Returns:
            `RetrievalResult`: ``labels[column][query]`` lists the neighbours' values, nearest first.
        """
        scores, indices = self.search(queries, k, restrict=restrict)
        if columns is None:
            columns = [rank for rank in TAXONOMIC_RANKS if rank in self.keys.column_names]
        labels = {column: self._column(column)[indices].tolist() for column in columns}
        return RetrievalResult(scores=scores, indices=indices, labels=labels)

    def exact_search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact inner-product search over the stored key vectors, whatever :attr:`index_type` is."""
        vectors = self.prepare_queries(queries)
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= len(self.keys):
            raise BioscanInputError(f"k must be an int in [1, {len(self.keys)}], got {k!r}")
        exact = faiss.IndexFlatIP(self.dim)
        exact.add(self.embeddings())
        scores, indices = exact.search(vectors, int(k))
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
    index_types: Sequence[IndexType] = ("ivf", "hnsw", "ivfpq"),
    **index_kwargs: Any,
) -> dict[str, float]:
    """Recall@k against exact search of each approximate index type, built on the same keys.

    Args:
        embeddings (`np.ndarray`): ``(keys, dim)`` key vectors.
        queries (`np.ndarray`): ``(queries, dim)`` query vectors.
        k (`int`): Neighbours compared per query.
        index_types (`Sequence[str]`, *optional*): Which types to build; defaults to the three approximate ones.
        **index_kwargs: Passed to :meth:`KeyIndex.build` (``nlist``, ``nprobe``, ``pq_nbits``, ...).

    Returns:
        `dict[str, float]`: index type -> recall@k.
    """
    count = np.asarray(embeddings).shape[0]
    metadata = {DEFAULT_ID_COLUMN: [str(row) for row in range(count)]}
    recalls = {}
    for index_type in index_types:
        key_index = KeyIndex.build(embeddings, metadata, index_type=index_type, required_columns=(), **index_kwargs)
        recalls[index_type] = key_index.recall_at_k(queries, k)
    return recalls
