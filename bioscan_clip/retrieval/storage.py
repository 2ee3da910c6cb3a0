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
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import datasets
import faiss
import numpy as np

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

from .index_types import INDEX_TYPES

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
    index_type = manifest.get("index_type")
    entry = INDEX_TYPES.get(index_type) if isinstance(index_type, str) else None
    if entry is None:
        raise BioscanInputError(f"{source}: index type {index_type!r} is not one of {tuple(INDEX_TYPES)}; rebuild it")
    try:
        keys = datasets.load_from_disk(str(source / KEYS_DIRNAME))
        # faiss >= 1.11 maps IndexFlat codes; a version 2 flat index is read as before.
        flags = faiss.IO_FLAG_MMAP_IFC if entry.mmap_on_load and has_vectors else 0
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
    return keys, index, manifest, vectors
