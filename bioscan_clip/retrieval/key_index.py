"""A saved, searchable set of labelled key embeddings: a ``datasets.Dataset`` with a faiss index beside it.

BIOSCAN-CLIP / CLIBD classify a query specimen by the labels of its nearest keys (``CLIBD_REFERENCE.md`` §4): keys and
queries are L2-normalised and searched exactly with ``faiss.IndexFlatIP`` (inner product = cosine). :class:`KeyIndex`
keeps that as the default and adds approximate indexes (IVF-Flat, HNSW, IVF-PQ) for millions of keys, together with
:meth:`KeyIndex.recall_at_k` to measure what they lose against exact search on the same data.

faiss pads results with id -1 when it finds fewer than k neighbours, and ``labels[-1]`` in Python silently returns the
last key's label (the original ``make_prediction`` did exactly that). This module never lets a -1 through: k larger
than the searchable key count is refused up front, and any padding left by an approximate index raises.

Memory at BIOSCAN-5M scale (5.15M keys of 768 floats = 15.8 GB per feature): :meth:`KeyIndex.build` validates and
normalises the caller's vectors in float32 chunks, never as a whole-array float64 or float32 copy. A flat index is
normalised straight into faiss's own storage (about 1x the raw bytes in all); an approximate index streams the
normalised vectors to an unlinked temporary ``.npy`` file and keeps only its compressed codes in RAM. Saved vectors
are a plain ``vectors.npy`` that :meth:`KeyIndex.load` memory-maps, so an IVF-PQ index needs its codes in RAM and
reads from disk only the rows it re-ranks: each query's ``rerank`` best PQ candidates are re-scored exactly from
those vectors, which recovers exact recall@1 at a fraction of flat search's memory.

On disk a key index is a folder::

    manifest.json   # format version, dim, count, index type and parameters, normalisation, modality, extra,
                    # and the size and sha256 of every other file (checked on load: a corrupted or mixed folder
                    # is refused by name)
    index.faiss     # faiss.write_index (a flat index is memory-mapped on load)
    vectors.npy     # (count, dim) float32, the indexed (normalised) vectors; memory-mapped on load
    keys/           # datasets.Dataset.save_to_disk: id, taxonomy and metadata columns
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
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
# What build accepts: "auto" picks exact flat search below AUTO_FLAT_MAX_KEYS keys and IVF-PQ (fast scan) with exact
# re-ranking from there up, where a flat index's RAM and per-query time grow past what a user can hold.
BUILD_INDEX_TYPES: tuple[str, ...] = ("auto", *INDEX_TYPES)
AUTO_FLAT_MAX_KEYS = 200_000
EMBEDDING_COLUMN = "embedding"
DEFAULT_ID_COLUMN = "processid"
MANIFEST_NAME = "manifest.json"
INDEX_NAME = "index.faiss"
VECTORS_NAME = "vectors.npy"
KEYS_DIRNAME = "keys"
# 2: the manifest lists every file's size and sha256; 3: vectors in vectors.npy (memory-mapped), not an Arrow column.
FORMAT_VERSION = 3
READABLE_VERSIONS = (2, 3)
# Keys are added to faiss in chunks of this many rows so a progress bar can follow large builds.
ADD_BATCH_SIZE = 65_536
# Rows validated / normalised at a time: the only full-width temporaries a build makes are this many rows.
NORMALIZE_CHUNK_ROWS = 16_384
# Builds of at least this many keys show a progress bar unless told otherwise.
PROGRESS_MIN_KEYS = 100_000
# IVF-PQ candidates re-scored exactly per query when the caller does not say: DEFAULT_RERANK per RERANK_PER_KEYS keys,
# at least DEFAULT_RERANK. The true neighbour's rank among the 4-bit PQ scores grows with the key count, and the
# candidates, not nprobe, are what recall needs: on 2M clustered 768-d keys, nprobe 16/32/64 all gave recall@1 0.925
# with 64 candidates and 0.985 with 128 (benchmarks/bench_index.py measures the defaults from 200k to 5.15M keys).
DEFAULT_RERANK = 64
RERANK_PER_KEYS = 1_000_000
# faiss's exhaustive search multiplies 4096 queries by 1024 keys at a time: at 768-d that small key block runs sgemm
# at ~0.6x of its large-block rate. 1024 x 16384 blocks (a 64 MiB score block) measured 1.7x faster on 2 cores.
BLAS_QUERY_BLOCK, BLAS_KEY_BLOCK = 1024, 16_384


@contextlib.contextmanager
def _large_blas_blocks() -> Iterator[None]:
    """faiss's (process-wide) sgemm block sizes raised for the duration of one search, then put back."""
    previous = (faiss.cvar.distance_compute_blas_query_bs, faiss.cvar.distance_compute_blas_database_bs)
    faiss.cvar.distance_compute_blas_query_bs, faiss.cvar.distance_compute_blas_database_bs = (
        BLAS_QUERY_BLOCK,
        BLAS_KEY_BLOCK,
    )
    try:
        yield
    finally:
        faiss.cvar.distance_compute_blas_query_bs, faiss.cvar.distance_compute_blas_database_bs = previous


def _checked_matrix(values: Any, name: str) -> np.ndarray:
    """The shape and dtype checks of :func:`as_embedding_matrix`, without converting or copying anything."""
    array = values if isinstance(values, np.ndarray) else np.asarray(values)
    if array.ndim != 2:
        raise BioscanInputError(f"{name} must be a 2-D (rows, dim) array, got shape {array.shape}")
    if array.shape[0] == 0:
        raise BioscanInputError(f"{name} is empty (shape {array.shape}): there is nothing to index or search")
    if array.shape[1] == 0:
        raise BioscanInputError(f"{name} has dimension 0 (shape {array.shape})")
    if not np.issubdtype(array.dtype, np.floating):
        raise BioscanInputError(f"{name} must be floating point, got dtype {array.dtype}")
    return array


def _prepared_chunks(
    matrix: np.ndarray, name: str, normalize: bool, out: np.ndarray | None = None
) -> Iterator[tuple[int, np.ndarray]]:
    """Yields ``(first row, float32 chunk)``: rows checked finite and (with ``normalize``) scaled to unit length.

    With ``out`` (a ``(rows, dim)`` float32 array, which may be ``matrix`` itself) the chunks are slices of it, written
    in place; without it they share one reusable buffer, so a caller must use each chunk before asking for the next.
    Norms are summed in float64 one chunk at a time (no float64 copy of the matrix): float32 squares of very large or
    tiny values would overflow or underflow.
    """
    count, dim = matrix.shape
    buffer = None if out is not None else np.empty((min(count, NORMALIZE_CHUNK_ROWS), dim), dtype=np.float32)
    for start in range(0, count, NORMALIZE_CHUNK_ROWS):
        stop = min(count, start + NORMALIZE_CHUNK_ROWS)
        chunk = out[start:stop] if out is not None else buffer[: stop - start]
        if out is not matrix:
            with np.errstate(over="ignore"):  # float64 values beyond float32 range become inf, refused below
                chunk[...] = matrix[start:stop]
        finite = np.isfinite(chunk).all(axis=1)
        if not finite.all():
            bad = start + int(np.flatnonzero(~finite)[0])
            raise BioscanInputError(
                f"{name} row {bad} contains NaN or inf ({_count_rows(matrix, 'bad')} bad rows in all)"
            )
        if normalize:
            norms = np.sqrt(np.einsum("ij,ij->i", chunk, chunk, dtype=np.float64))
            zero = norms == 0
            if zero.any():
                bad = start + int(np.flatnonzero(zero)[0])
                raise BioscanInputError(
                    f"{name} row {bad} is a zero vector and has no direction ({_count_rows(matrix, 'zero')} in all)"
                )
            chunk /= norms.astype(np.float32)[:, None]
        yield start, chunk


def _count_rows(matrix: np.ndarray, kind: str) -> int:
    # Only on the error path: one more chunked pass for the message's total of non-finite or all-zero rows.
    total = 0
    for start in range(0, matrix.shape[0], NORMALIZE_CHUNK_ROWS):
        chunk = matrix[start : start + NORMALIZE_CHUNK_ROWS]
        bad = ~np.isfinite(chunk).all(axis=1) if kind == "bad" else ~(chunk != 0).any(axis=1)
        total += int(bad.sum())
    return total


def as_embedding_matrix(values: Any, name: str = "embeddings") -> np.ndarray:
    """Checks a 2-D float array of embeddings and returns it as C-contiguous float32.

    Args:
        values (`np.ndarray` or array-like): A ``(rows, dim)`` floating-point array.
        name (`str`, *optional*, defaults to `"embeddings"`): Used in error messages.

    Returns:
        `np.ndarray`: ``(rows, dim)`` float32, C-contiguous (faiss needs both); ``values`` itself when it already is.

    Raises:
        `BioscanInputError`: not 2-D, no rows or no columns, not floating point, or any NaN / inf (the first bad row is
        named).
    """
    matrix = np.ascontiguousarray(_checked_matrix(values, name), dtype=np.float32)
    for _ in _prepared_chunks(matrix, name, normalize=False, out=matrix):
        pass  # checks finiteness chunk by chunk (no full-size boolean temporary)
    return matrix


def l2_normalize(embeddings: np.ndarray, name: str = "embeddings", *, inplace: bool = False) -> np.ndarray:
    """Returns ``embeddings`` as float32 with unit-length rows; zero rows are an error, not a silent 0 score.

    Normalises in float32 chunks (norms summed in float64 per chunk), so the only full-size array is the result.

    Args:
        embeddings (`np.ndarray`): ``(rows, dim)`` finite floats.
        name (`str`, *optional*, defaults to `"embeddings"`): Used in error messages.
        inplace (`bool`, *optional*, defaults to `False`): Normalise ``embeddings`` itself and return it when it is a
            writable C-contiguous float32 array (no copy at all); any other input gets a new array either way.

    Raises:
        `BioscanInputError`: a row with zero norm (named), or anything :func:`as_embedding_matrix` refuses.
    """
    matrix = _checked_matrix(embeddings, name)
    writable = inplace and matrix.dtype == np.float32 and matrix.flags["C_CONTIGUOUS"] and matrix.flags["WRITEABLE"]
    out = matrix if writable else np.empty(matrix.shape, dtype=np.float32)
    for _ in _prepared_chunks(matrix, name, normalize=True, out=out):
        pass
    return out


def _int_param(value: Any, name: str, low: int, high: int | None = None) -> int:
    """``value`` as an int in ``[low, high]``, or one error naming the parameter and the value."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, np.integer))
        or value < low
        or (high is not None and value > high)
    ):
        span = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise BioscanInputError(f"{name} must be an int {span}, got {value!r}")
    return int(value)


def _largest_divisor(dim: int, at_most: int) -> int:
    return max(m for m in range(1, max(1, at_most) + 1) if dim % m == 0)


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


def default_rerank(count: int) -> int:
    """IVF-PQ candidates re-ranked exactly per query for ``count`` keys: 64 per million keys, at least 64."""
    return max(DEFAULT_RERANK, round(DEFAULT_RERANK * count / RERANK_PER_KEYS))


def resolve_index_params(
    index_type: str,
    count: int,
    dim: int,
    *,
    nlist: int | None = None,
    nprobe: int = 16,
    hnsw_m: int = 32,
    ef_construction: int = 80,
    ef_search: int = 64,
    pq_m: int | None = None,
    pq_nbits: int | None = None,
    pq_fast_scan: bool | None = None,
    rerank: int | None = None,
    train_size: int | None = None,
) -> tuple[str, dict[str, Any]]:
    """The index type and parameters :meth:`KeyIndex.build` uses for ``count`` keys of ``dim``, every one validated.

    ``"auto"`` becomes ``"flat"`` (exact) below :data:`AUTO_FLAT_MAX_KEYS` keys and ``"ivfpq"`` from there up, with
    4-bit fast-scan codes of ``dim / 8`` sub-quantisers and candidates re-ranked exactly (:func:`default_rerank`).

    Returns:
        `tuple[str, dict]`: the concrete index type and its parameters (what the manifest's ``index_params`` holds).

    Raises:
        `BioscanInputError`: an unknown type or a parameter out of range, naming the parameter and the value.
    """
    if index_type not in BUILD_INDEX_TYPES:
        raise BioscanInputError(f"index_type must be one of {BUILD_INDEX_TYPES}, got {index_type!r}")
    params: dict[str, Any] = {}
    if index_type == "auto":
        index_type = "flat" if count < AUTO_FLAT_MAX_KEYS else "ivfpq"
        params["auto"] = True
        if index_type == "ivfpq" and pq_fast_scan is None:
            pq_fast_scan = True
    if index_type == "flat":
        if rerank:
            raise BioscanInputError(
                f"rerank applies to approximate indexes; a flat index is exact, got rerank={rerank!r}"
            )
        return index_type, params
    rerank = (default_rerank(count) if index_type == "ivfpq" else 0) if rerank is None else rerank
    params["rerank"] = min(_int_param(rerank, "rerank", 0), count)
    if index_type == "hnsw":
        params["hnsw_m"] = _int_param(hnsw_m, "hnsw_m", 2, 1024)
        params["ef_construction"] = _int_param(ef_construction, "ef_construction", 1)
        params["ef_search"] = _int_param(ef_search, "ef_search", 1)
        return index_type, params
    nlist = _default_nlist(count) if nlist is None else nlist
    if isinstance(nlist, bool) or not isinstance(nlist, (int, np.integer)) or not 1 <= nlist <= count:
        raise BioscanInputError(f"nlist must be in [1, {count}] (the key count), got {nlist!r}")
    params["nlist"] = int(nlist)
    params["nprobe"] = min(_int_param(nprobe, "nprobe", 1), params["nlist"])
    minimum_train = params["nlist"]
    if index_type == "ivfpq":
        fast_scan = bool(pq_fast_scan)
        if pq_nbits is None:
            pq_nbits = 4 if fast_scan else 8
        pq_nbits = _int_param(pq_nbits, "pq_nbits", 1, 16)
        if fast_scan and pq_nbits != 4:
            raise BioscanInputError(f"pq_fast_scan codes are 4-bit: pq_nbits must be 4, got {pq_nbits}")
        if pq_m is None:
            pq_m = _largest_divisor(dim, dim // (8 if fast_scan else 4))
        pq_m = _int_param(pq_m, "pq_m", 1, dim)
        if dim % pq_m != 0:
            raise BioscanInputError(f"pq_m must divide the dimension {dim}, got {pq_m}")
        if count < 2**pq_nbits:
            raise BioscanInputError(
                f"IVF-PQ with pq_nbits={pq_nbits} needs at least {2**pq_nbits} keys to train, got {count}"
            )
        params.update({"pq_m": pq_m, "pq_nbits": pq_nbits, "pq_fast_scan": fast_scan})
        minimum_train = max(minimum_train, 2**pq_nbits)
    elif pq_fast_scan:
        raise BioscanInputError(f"pq_fast_scan applies to index_type 'ivfpq', got index_type {index_type!r}")
    # k-means gains little past ~64 points per list; training on a sample keeps build time and memory bounded.
    train_size = min(count, max(64 * params["nlist"], 16_384)) if train_size is None else train_size
    params["train_size"] = _int_param(train_size, "train_size", minimum_train, count)
    return index_type, params


def _new_faiss_index(index_type: str, dim: int, params: Mapping[str, Any], seed: int) -> faiss.Index:
    if index_type == "flat":
        return faiss.IndexFlatIP(dim)
    if index_type == "hnsw":
        index = faiss.IndexHNSWFlat(dim, params["hnsw_m"], faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = params["ef_construction"]
        index.hnsw.efSearch = params["ef_search"]
        return index
    quantizer = faiss.IndexFlatIP(dim)
    if index_type == "ivf":
        index = faiss.IndexIVFFlat(quantizer, dim, params["nlist"], faiss.METRIC_INNER_PRODUCT)
    elif params["pq_fast_scan"]:
        index = faiss.IndexIVFPQFastScan(
            quantizer, dim, params["nlist"], params["pq_m"], params["pq_nbits"], faiss.METRIC_INNER_PRODUCT
        )
        index.pq.cp.seed = seed
    else:
        index = faiss.IndexIVFPQ(
            quantizer, dim, params["nlist"], params["pq_m"], params["pq_nbits"], faiss.METRIC_INNER_PRODUCT
        )
        index.pq.cp.seed = seed
    index.cp.seed = seed
    index.nprobe = params["nprobe"]
    return index


def _flat_storage(index: faiss.IndexFlat, count: int) -> np.ndarray:
    """Sizes a flat index for ``count`` vectors at once and returns its storage as a ``(count, dim)`` float32 view.

    Filling the view is adding the keys: no second copy, and no growth of faiss's vector by doubling on repeated add
    (which briefly holds old and new buffers, up to 3x the bytes).
    """
    index.codes.resize(count * index.code_size)
    index.ntotal = count
    return faiss.rev_swig_ptr(index.get_xb(), count * index.d).reshape(count, index.d)


class _VectorFile:
    """An unlinked temporary ``.npy`` of ``(count, dim)`` float32, written in order, read back by rows or mapped.

    The build of an approximate index streams the normalised keys here instead of holding them in RAM; reads go
    through the file (not a mapping) so that they do not count as the process's resident memory.
    """

    def __init__(self, count: int, dim: int, directory: str | os.PathLike[str] | None) -> None:
        self.count, self.dim = count, dim
        # Unlinked at once on POSIX (a crash leaves nothing); open for as long as the index that maps it.
        self.file = tempfile.TemporaryFile(dir=directory)  # noqa: SIM115
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype("<f4")), "fortran_order": False, "shape": (count, dim)}
        np.lib.format.write_array_header_1_0(self.file, header)
        self.offset = self.file.tell()

    def write(self, chunk: np.ndarray) -> None:
        self.file.write(memoryview(np.ascontiguousarray(chunk, dtype="<f4")).cast("B"))

    def read(self, start: int, stop: int) -> np.ndarray:
        rows = np.empty((stop - start, self.dim), dtype=np.float32)
        self.file.seek(self.offset + start * self.dim * 4)
        self.file.readinto(memoryview(rows).cast("B"))
        return rows

    def mapped(self) -> np.ndarray:
        self.file.flush()
        return np.memmap(self.file, dtype="<f4", mode="r", offset=self.offset, shape=(self.count, self.dim))

    def copy_to(self, path: Path) -> None:
        self.file.flush()
        self.file.seek(0)
        with path.open("wb") as out:
            shutil.copyfileobj(self.file, out, 16 << 20)


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
        _vector_file: _VectorFile | None = None,
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
        index_type: IndexType | Literal["auto"] = "flat",
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
        pq_nbits: int | None = None,
        pq_fast_scan: bool | None = None,
        rerank: int | None = None,
        train_size: int | None = None,
        seed: int = 0,
        show_progress: bool | None = None,
        vectors_dir: str | os.PathLike[str] | None = None,
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
            index_type (`str`, *optional*, defaults to `"flat"`): ``"flat"`` (exact ``IndexFlatIP``), ``"ivf"``
                (IVF-Flat), ``"hnsw"`` (HNSW-Flat), ``"ivfpq"`` (IVF-PQ, compressed for memory, re-ranked exactly) or
                ``"auto"`` (flat below 200 000 keys, else IVF-PQ fast scan with re-ranking; see
                :func:`resolve_index_params`).
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
                ``dim`` that is at most ``dim / 4`` (``dim / 8`` with fast scan).
            pq_nbits (`int`, *optional*): Bits per IVF-PQ code: 8 by default, 4 (the only choice) with fast scan;
                training needs ``2**pq_nbits`` keys.
            pq_fast_scan (`bool`, *optional*): IVF-PQ as ``faiss.IndexIVFPQFastScan`` (4-bit codes scanned with SIMD
                lookups: several times faster to build and search); on by default only for ``"auto"``.
            rerank (`int`, *optional*): Approximate candidates per query re-scored exactly from the stored vectors,
                the best k of them returned; defaults to :func:`default_rerank` (64 per million keys, at least 64)
                for IVF-PQ and 0 (off) for IVF-Flat / HNSW, whose scores are already exact.
            train_size (`int`, *optional*): Keys (a seeded random sample) that IVF / PQ k-means trains on; defaults to
                ``64 * nlist``, at least 16 384, at most all keys.
            seed (`int`, *optional*, defaults to 0): Seed of the training sample and of IVF / PQ k-means.
            show_progress (`bool`, *optional*): Progress bar while adding; defaults to on from 100 000 keys.
            vectors_dir (`str` or `os.PathLike`, *optional*): Where an approximate build keeps its temporary vector
                file (as large as the float32 keys); defaults to the system temporary folder (``TMPDIR``).

        Returns:
            `KeyIndex`

        Raises:
            `BioscanInputError`: bad embeddings (empty, NaN/inf, zero rows, wrong dtype), row-count mismatch, missing or
            non-string id / taxonomy columns, unknown ``index_type``, or index parameters the data cannot support
            (named with the value).

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
        if index_type not in BUILD_INDEX_TYPES:
            raise BioscanInputError(f"index_type must be one of {BUILD_INDEX_TYPES}, got {index_type!r}")
        matrix = _checked_matrix(embeddings, "key embeddings")
        count, dim = matrix.shape
        table = cls._metadata_table(metadata, count, id_column, required_columns)
        extra_dict = dict(extra or {})
        try:
            json.dumps(extra_dict)
        except (TypeError, ValueError) as error:
            raise BioscanInputError(f"extra must be JSON-serialisable: {error}") from None
        index_type, params = resolve_index_params(
            index_type, count, dim, nlist=nlist, nprobe=nprobe, hnsw_m=hnsw_m, ef_construction=ef_construction,
            ef_search=ef_search, pq_m=pq_m, pq_nbits=pq_nbits, pq_fast_scan=pq_fast_scan, rerank=rerank,
            train_size=train_size,
        )  # fmt: skip
        index = _new_faiss_index(index_type, dim, params, seed)

        progress = count >= PROGRESS_MIN_KEYS if show_progress is None else show_progress
        vector_file = None
        with tqdm(total=count, desc=f"Indexing keys ({index_type})", unit="key", disable=not progress) as bar:
            if index_type == "flat":  # normalised straight into faiss's storage, chunk by chunk
                vectors: np.ndarray = _flat_storage(index, count)
                for _, chunk in _prepared_chunks(matrix, "key embeddings", normalize, out=vectors):
                    bar.update(len(chunk))
            else:
                vector_file = _VectorFile(count, dim, vectors_dir)
                train_rows = np.sort(
                    np.random.default_rng(seed).choice(count, params.get("train_size", 0), replace=False)
                )
                sample = np.empty((train_rows.size, dim), dtype=np.float32)
                for start, chunk in _prepared_chunks(matrix, "key embeddings", normalize):
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

        keys = datasets.Dataset(table.with_format("arrow")[:])  # honours any select/shuffle indices mapping
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
        if keys.features != table.features:
            keys = keys.cast(table.features)
        logger.info(f"Built a {index_type} key index over {count} keys of dimension {dim} ({params})")
        return cls(keys, index, manifest, vectors, _vector_file=vector_file)

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
            if self._vector_file is not None:  # the build's temporary .npy, copied as it is
                self._vector_file.copy_to(staging / VECTORS_NAME)
            else:  # a file-backed or in-memory array, written without an intermediate copy
                np.save(staging / VECTORS_NAME, self.vectors, allow_pickle=False)
            manifest = json.loads(manifest_text)
            manifest["format_version"] = FORMAT_VERSION  # a version 2 index re-saved now has its vectors.npy
            manifest["checksums"] = file_checksums(staging)
            (staging / MANIFEST_NAME).write_text(sealed_json(manifest))
            swap_in(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return target

    @classmethod
    def load(cls, directory: str | os.PathLike[str], *, verify: bool = True) -> KeyIndex:
        """Opens a folder written by :meth:`save`; nothing is re-embedded, and the key table, the vectors (and a flat
        index) are memory-mapped: an approximate index reads into RAM only its own (compressed) structure.

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
            manifest.get("format") != "bioscan-clip-key-index"
            or manifest.get("format_version") not in READABLE_VERSIONS
        ):
            found = manifest if isinstance(manifest, dict) else {}
            raise BioscanInputError(
                f"{source / MANIFEST_NAME} has format {found.get('format')!r} version "
                f"{found.get('format_version')!r}; expected 'bioscan-clip-key-index' version {FORMAT_VERSION} "
                "(rebuild it with this version)"
            )
        has_vectors = manifest["format_version"] >= 3
        if has_vectors and not (source / VECTORS_NAME).is_file():
            raise BioscanInputError(f"{source} is not a saved key index: {VECTORS_NAME} is missing")
        if verify:
            check_seal(manifest, source / MANIFEST_NAME, "the key index manifest")
            verify_checksums(source, manifest.get("checksums", {}), "the key index")
        try:
            keys = datasets.load_from_disk(str(source / KEYS_DIRNAME))
            # A flat index is the vectors themselves: mapped, not read (faiss >= 1.11 maps IndexFlat codes).
            flags = faiss.IO_FLAG_MMAP_IFC if manifest.get("index_type") == "flat" and has_vectors else 0
            index = faiss.read_index(str(source / INDEX_NAME), flags)
            vectors = np.load(source / VECTORS_NAME, mmap_mode="r", allow_pickle=False) if has_vectors else None
        except (RuntimeError, OSError, ValueError, KeyError) as error:
            message = " ".join(str(error).split())[:300]
            raise BioscanInputError(f"{source}: the key index cannot be read ({message}); rebuild it") from None
        if len(keys) != manifest["count"] or index.ntotal != manifest["count"] or index.d != manifest["dim"]:
            raise BioscanInputError(
                f"{source}: key table has {len(keys)} rows and the faiss index {index.ntotal} vectors of dim {index.d}, "
                f"but the manifest says {manifest['count']} of dim {manifest['dim']}; rebuild it"
            )
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

        With ``rerank`` set (see :meth:`build`), the index is asked for ``max(k, rerank)`` candidates, which are
        re-scored exactly from the stored vectors; the scores returned are then exact inner products.
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
        rerank = int(self.manifest["index_params"].get("rerank", 0))
        candidates = min(max(k, rerank), searchable) if rerank else k
        with _large_blas_blocks():
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

    def set_search_params(
        self, *, nprobe: int | None = None, ef_search: int | None = None, rerank: int | None = None
    ) -> None:
        """Changes how this index searches (not what it holds); saved with it by :meth:`save`.

        Args:
            nprobe (`int`, *optional*): IVF lists visited per query (``"ivf"`` / ``"ivfpq"``), at most ``nlist``.
            ef_search (`int`, *optional*): HNSW search beam width (``"hnsw"``).
            rerank (`int`, *optional*): Candidates re-scored exactly per query; 0 turns re-ranking off.

        Raises:
            `BioscanInputError`: a parameter this index type does not have, or a value out of range (named).
        """
        params = self.manifest["index_params"]
        if nprobe is not None:
            if self.index_type not in ("ivf", "ivfpq"):
                raise BioscanInputError(f"nprobe applies to IVF indexes, not to this {self.index_type} index")
            params["nprobe"] = _int_param(nprobe, "nprobe", 1, params["nlist"])
            faiss.extract_index_ivf(self.index).nprobe = params["nprobe"]
        if ef_search is not None:
            if self.index_type != "hnsw":
                raise BioscanInputError(f"ef_search applies to HNSW indexes, not to this {self.index_type} index")
            params["ef_search"] = _int_param(ef_search, "ef_search", 1)
            self.index.hnsw.efSearch = params["ef_search"]
        if rerank is not None:
            if self.index_type == "flat" and rerank:
                raise BioscanInputError(f"rerank applies to approximate indexes; a flat index is exact, got {rerank!r}")
            params["rerank"] = min(_int_param(rerank, "rerank", 0), len(self))

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
        # Blocked sgemm + heap over the (memory-mapped) vectors as they are: no copy of the keys into an index.
        with _large_blas_blocks():
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
