"""The on-disk format of a key index: one folder, written atomically and verified when read.

A key index is a folder::

    manifest.json   # format version, dim, count, index type and parameters, normalisation, modality, extra,
                    # and the size and sha256 of every other file (checked on load: a corrupted or mixed folder
                    # is refused by name)
    index.faiss     # faiss.write_index (memory-mapped on load where the index type says so, e.g. flat)
    vectors.npy     # (count, dim) float32, the indexed (normalised) vectors; memory-mapped on load
    keys/           # datasets.Dataset.save_to_disk: id, taxonomy and metadata columns

Format version 2 folders (vectors in an ``embedding`` column of ``keys/``, no ``vectors.npy``) are still read.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import datasets
import faiss
import numpy as np
import pyarrow as pa

from bioscan_clip.safe_io import (
    check_seal,
    file_checksums,
    read_json,
    sealed_json,
    staging_dir,
    swap_in,
    verify_checksums,
)
from modeling_bioscanclip.errors_bioscanclip import BioscanInputError

from .index_file import check_index_file
from .index_types import INDEX_TYPES, IndexParams, IndexTypeEntry, index_option_names, resolve_index_params

logger = logging.getLogger(__name__)

FORMAT = "bioscan-clip-key-index"
MANIFEST_NAME = "manifest.json"
INDEX_NAME = "index.faiss"
VECTORS_NAME = "vectors.npy"
KEYS_DIRNAME = "keys"
# The key vectors' column in a format version 2 key table; a key table given to build must not have one.
EMBEDDING_COLUMN = "embedding"
# 2: the manifest lists every file's size and sha256; 3: vectors in vectors.npy (memory-mapped), not an Arrow column.
FORMAT_VERSION = 3
READABLE_VERSIONS = (2, 3)


def new_manifest(
    *,
    dim: int,
    count: int,
    index_type: str,
    index_params: dict[str, Any],
    normalize: bool,
    id_column: str,
    modality: str | None,
    embedding_name: str | None,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """The manifest of a freshly built key index (the checksums are added by :func:`write_folder`)."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "dim": dim,
        "count": count,
        "index_type": index_type,
        "index_params": index_params,
        "metric": "inner_product",
        "normalization": "l2" if normalize else "none",
        "id_column": id_column,
        "modality": modality,
        "embedding_name": embedding_name,
        "faiss_version": faiss.__version__,
        "extra": extra,
    }


def write_index_file(index: faiss.Index, path: Path) -> None:
    """``faiss.write_index`` through an ordinary Python file: a full disk is then an ``OSError`` naming the file
    (faiss's own file writer raises a ``RuntimeError`` quoting its C++ source instead)."""
    try:
        with path.open("wb") as handle:
            faiss.write_index(index, faiss.PyCallbackIOWriter(handle.write))
    except OSError as error:
        raise OSError(error.errno, error.strerror, str(path)) from None


def write_folder(
    target: Path,
    manifest: Mapping[str, Any],
    keys: datasets.Dataset,
    index: faiss.Index,
    write_vectors: Callable[[Path], None],
    *,
    overwrite: bool,
) -> Path:
    """Writes a key index folder to ``target`` atomically: staged in a temporary sibling, then renamed into place.

    Args:
        target (`Path`): The folder; must not exist unless ``overwrite``.
        manifest (`dict`): The manifest without checksums; written as the current :data:`FORMAT_VERSION`.
        keys (`datasets.Dataset`): The key table.
        index (`faiss.Index`): The faiss index.
        write_vectors (`Callable[[Path], None]`): Writes ``vectors.npy`` to the path it is given.
        overwrite (`bool`): Replace an existing key index folder (one that holds a ``manifest.json``); any other
            existing path is refused.

    Raises:
        `BioscanInputError`: a manifest that is not JSON-serialisable (e.g. ``extra`` edited after the build), or a
        target that exists without ``overwrite`` or is not a key index.
    """
    try:  # extra may have been edited since build (e.g. calibration thresholds added later)
        manifest_text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    except (TypeError, ValueError) as error:
        raise BioscanInputError(f"the manifest's extra must be JSON-serialisable: {error}") from None
    if target.exists():
        if not overwrite:
            raise BioscanInputError(f"{target} already exists; pass overwrite=True to replace it")
        if not (target / MANIFEST_NAME).is_file():
            raise BioscanInputError(f"{target} exists and is not a saved key index; refusing to replace it")
    staging = staging_dir(target)
    try:
        keys.save_to_disk(str(staging / KEYS_DIRNAME))
        write_index_file(index, staging / INDEX_NAME)
        write_vectors(staging / VECTORS_NAME)
        written = json.loads(manifest_text)
        written["format_version"] = FORMAT_VERSION  # a version 2 index re-saved now has its vectors.npy
        written["checksums"] = file_checksums(staging)
        (staging / MANIFEST_NAME).write_text(sealed_json(written))
        swap_in(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def read_folder(
    source: Path, *, verify: bool
) -> tuple[datasets.Dataset, faiss.Index, dict[str, Any], np.ndarray | None]:
    """Opens a folder written by :func:`write_folder`: the key table, the faiss index, the manifest and the vectors.

    The key table and the vectors are memory-mapped (and the index too where its type's ``mmap_on_load`` says so);
    the vectors are ``None`` for a format version 2 folder (they are the key table's ``embedding`` column).

    Raises:
        `BioscanInputError`: a missing, resized or changed file, an unknown format version or index type, unreadable
        parts, or parts that disagree on count or dim; the message names the folder.
    """
    for name in (MANIFEST_NAME, INDEX_NAME, KEYS_DIRNAME):
        if not (source / name).exists():
            raise BioscanInputError(f"{source} is not a saved key index: {name} is missing")
    manifest = read_json(source / MANIFEST_NAME, "the key index manifest")
    if not isinstance(manifest, dict) or (
        manifest.get("format") != FORMAT or manifest.get("format_version") not in READABLE_VERSIONS
    ):
        found = manifest if isinstance(manifest, dict) else {}
        raise BioscanInputError(
            f"{source / MANIFEST_NAME} has format {found.get('format')!r} version "
            f"{found.get('format_version')!r}; expected {FORMAT!r} version {FORMAT_VERSION} "
            "(rebuild it with this version)"
        )
    has_vectors = manifest["format_version"] >= 3
    if has_vectors and not (source / VECTORS_NAME).is_file():
        raise BioscanInputError(f"{source} is not a saved key index: {VECTORS_NAME} is missing")
    if verify:
        check_seal(manifest, source / MANIFEST_NAME, "the key index manifest")
        verify_checksums(source, manifest.get("checksums", {}), "the key index")
    entry = check_manifest(source, manifest)
    if entry.file_layout is None:
        logger.warning(
            "%s: index type %s has no file check; faiss reads index.faiss unchecked", source, manifest["index_type"]
        )
    else:
        check_index_file(
            source / INDEX_NAME, entry.file_layout, manifest["index_type"], manifest["dim"], manifest["count"],
            manifest["index_params"],
        )  # fmt: skip
    try:
        keys = checked_key_table(datasets.load_from_disk(str(source / KEYS_DIRNAME)), manifest)
        # faiss >= 1.11 maps IndexFlat codes; a version 2 flat index is read as before.
        flags = faiss.IO_FLAG_MMAP_IFC if entry.mmap_on_load and has_vectors else 0
        index = faiss.read_index(str(source / INDEX_NAME), flags)
        vectors = np.load(source / VECTORS_NAME, mmap_mode="r", allow_pickle=False) if has_vectors else None
    except MemoryError:
        raise BioscanInputError(f"{source}: the key index does not fit in memory; rebuild it smaller") from None
    except BioscanInputError as error:
        raise BioscanInputError(f"{source}: {error}; rebuild it") from None
    except (RuntimeError, OSError, ValueError, KeyError, TypeError, pa.ArrowException) as error:
        message = " ".join(str(error).split())[:300]
        raise BioscanInputError(f"{source}: the key index cannot be read ({message}); rebuild it") from None
    if len(keys) != manifest["count"] or index.ntotal != manifest["count"] or index.d != manifest["dim"]:
        raise BioscanInputError(
            f"{source}: key table has {len(keys)} rows and the faiss index {index.ntotal} vectors of dim {index.d}, "
            f"but the manifest says {manifest['count']} of dim {manifest['dim']}; rebuild it"
        )
    if vectors is not None and (
        vectors.dtype != np.dtype("<f4") or vectors.shape != (manifest["count"], manifest["dim"])
        or not vectors.flags.c_contiguous
    ):  # fmt: skip
        raise BioscanInputError(
            f"{source / VECTORS_NAME}: holds {vectors.dtype} of shape {vectors.shape}, the manifest declares "
            f"float32 of shape ({manifest['count']}, {manifest['dim']}) in C order; rebuild it"
        )
    return keys, index, manifest, vectors


MAX_DIM = 65_536  # far above any embedding; a manifest declaring more is not one `index` wrote


def check_manifest(source: Path, manifest: dict[str, Any]) -> IndexTypeEntry:
    """The manifest's own declarations, typed and within what ``index`` can write, before any part is opened: the
    index type, the dimension and count, and index parameters that are exactly what
    :func:`~bioscan_clip.retrieval.resolve_index_params` makes of themselves (so every search setting is in range)."""
    where = f"{source / MANIFEST_NAME}"
    index_type = manifest.get("index_type")
    entry = INDEX_TYPES.get(index_type) if isinstance(index_type, str) else None
    if entry is None:
        raise BioscanInputError(f"{source}: index type {index_type!r} is not one of {tuple(INDEX_TYPES)}; rebuild it")
    for name, low, high in (("dim", 1, MAX_DIM), ("count", 1, None)):
        value = manifest.get(name)
        if isinstance(value, bool) or not isinstance(value, int) or value < low or (high and value > high):
            raise BioscanInputError(f"{where}: {name} must be an int in [{low}, {high or 'inf'}], got {value!r}")
    if manifest.get("normalization") not in ("l2", "none") or not isinstance(manifest.get("id_column"), str):
        raise BioscanInputError(f"{where}: normalization must be 'l2' or 'none' and id_column a string; rebuild it")
    if not isinstance(manifest.get("extra", {}), dict):
        raise BioscanInputError(f"{where}: extra must be an object; rebuild it")
    params = manifest.get("index_params")
    if not isinstance(params, dict) or not set(params) <= {*index_option_names(), "auto"}:
        raise BioscanInputError(f"{where}: index_params must be an object of index settings, got {params!r}")
    declared = {name: value for name, value in params.items() if name != "auto"}
    try:
        _, resolved = resolve_index_params(index_type, manifest["count"], manifest["dim"], IndexParams(**declared))
    except BioscanInputError as error:
        raise BioscanInputError(f"{where}: index_params out of range: {error}; rebuild it") from None
    # A flat index saves rerank=0 once set_search_params was given it; resolving a flat index leaves it out.
    unchanged = {**resolved, "rerank": 0} if "rerank" not in resolved and not declared.get("rerank") else resolved
    if {name: unchanged[name] for name in declared if name in unchanged} != declared or not set(resolved) <= set(
        declared
    ):
        changed = sorted(name for name in {*resolved, *declared} if unchanged.get(name) != declared.get(name))
        raise BioscanInputError(
            f"{where}: index_params {', '.join(f'{n}={declared.get(n)!r}' for n in changed)} are not settings "
            f"`index` writes for {manifest['count']} keys of dim {manifest['dim']}; rebuild it"
        )
    return entry


def checked_key_table(keys: datasets.Dataset, manifest: Mapping[str, Any]) -> datasets.Dataset:
    """The key table, its Arrow data fully validated (offsets, UTF-8) before any value is read, with the manifest's
    id column and every string column it should have (refused in one line otherwise)."""
    if keys._indices is not None:
        raise BioscanInputError("the key table has an indices mapping; `index` writes none")
    validate_arrow(keys, "the key table")
    id_column = manifest["id_column"]
    strings = (datasets.Value("string"), datasets.Value("large_string"))
    if keys.features.get(id_column) not in strings:
        raise BioscanInputError(f"the key table's id column {id_column!r} is missing or not strings")
    if manifest["format_version"] >= 3 and EMBEDDING_COLUMN in keys.column_names:
        raise BioscanInputError(f"the key table has an {EMBEDDING_COLUMN!r} column; its vectors are in {VECTORS_NAME}")
    if manifest["format_version"] < 3:
        column = keys.data.column(EMBEDDING_COLUMN) if EMBEDDING_COLUMN in keys.column_names else None
        values = None if column is None or not pa.types.is_list(column.type) else column.type.value_type
        if (
            values != pa.float32()
            or column.null_count
            or sum(len(c.values) for c in column.chunks) != len(keys) * manifest["dim"]
        ):
            raise BioscanInputError(
                f"the key table's {EMBEDDING_COLUMN!r} column is not {manifest['dim']} floats per row"
            )
    return keys


def validate_arrow(table: datasets.Dataset, what: str) -> None:
    """Arrow's own full validation of every buffer (offsets within bounds, UTF-8 strings) of a loaded table: a
    crafted offset is refused here instead of read past its buffer later."""
    try:
        table.data.table.validate(full=True)
    except MemoryError:
        raise BioscanInputError(f"{what} does not fit in memory to be validated") from None
    except (pa.ArrowException, ValueError) as error:
        message = " ".join(str(error).split())[:200]
        raise BioscanInputError(f"{what} is not valid Arrow data ({message})") from None
