"""A key library: a Hub dataset repository (or its folder) that holds a key folder under ``keys/`` and names, in
:data:`KEY_LIBRARY_FILE`, the model (and revision) its keys were embedded with. Written by
``bioscan-clip push keys`` (:mod:`bioscan_clip.apps.publish`), read by :meth:`Identifier.from_pretrained`, the demo
and the Space. Every name goes through :func:`bioscan_clip.resolve.resolve_folder`, and every path a library names is
kept inside the repository it came from; the model it names must be a Hub repository id, never a local path."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from bioscan_clip.resolve import check_repo_id, inside, resolve_folder
from bioscan_clip.safe_io import read_json
from modeling_bioscanclip import BioscanInputError

from .key_folder import KEY_MANIFEST, is_key_folder

KEY_LIBRARY_FILE = "bioscan_clip_keys.json"  # at the root of a key-library repository
KEY_LIBRARY_FORMAT = "bioscan-clip-key-library"
KEYS_SUBFOLDER = "keys"


def _library(
    spec: str | os.PathLike, revision: str | None, repo_type: str = "dataset"
) -> tuple[Path, dict[str, Any] | None]:
    """The resolved folder and its key-library file (None for a key folder, verified by its reader: a partial or an
    older one is refused there by name)."""
    root = resolve_folder(spec, repo_type=repo_type, revision=revision)
    if is_key_folder(root):
        return root, None
    library_file = root / KEY_LIBRARY_FILE
    if not library_file.is_file():
        raise BioscanInputError(f"{spec}: not a key library (no {KEY_LIBRARY_FILE} nor {KEY_MANIFEST})")
    library = read_json(library_file, "the key library")
    if not isinstance(library, dict) or library.get("format") != KEY_LIBRARY_FORMAT:
        raise BioscanInputError(f"{library_file}: not a {KEY_LIBRARY_FORMAT} file")
    return root, library


def _keys_of(root: Path, library: dict[str, Any], spec: str | os.PathLike) -> Path:
    keys = library.get("keys", KEYS_SUBFOLDER)
    return inside(root, keys, what=f"{spec} ({KEY_LIBRARY_FILE} 'keys')")


def resolve_key_folder(spec: str | os.PathLike, *, revision: str | None = None, repo_type: str = "dataset") -> Path:
    """The key folder of a key folder or key library: local, or a Hub repository by id at ``revision`` (a dataset
    repository, as ``bioscan-clip push keys`` publishes; ``owner/name/sub/folder`` for a key folder inside one)."""
    root, library = _library(spec, revision, repo_type)
    return root if library is None else _keys_of(root, library, spec)


def resolve_key_library(
    spec: str | os.PathLike,
    *,
    revision: str | None = None,
    model: str | os.PathLike | None = None,
    model_revision: str | None = None,
) -> tuple[Path, Path]:
    """``(model_dir, key_dir)`` of a key library: a dataset repository exported by ``bioscan-clip push keys`` (by id
    or as a folder), or a plain key folder (then ``model`` is required). ``model`` overrides the model the library
    names; ``model_revision`` its pinned revision."""
    root, library = _library(spec, revision)
    if library is None:
        if model is None:
            raise BioscanInputError(f"{spec}: a key folder names no model repository; pass the model as well")
        return resolve_folder(model, revision=model_revision), root
    named = library.get("model") or {}
    if not isinstance(named, dict):
        raise BioscanInputError(f"{root / KEY_LIBRARY_FILE}: 'model' must be an object with a repo_id")
    if model is None:
        model, model_revision = named.get("repo_id"), model_revision or named.get("revision")
        if model:  # a Hub id only: a library must not point the loader at a folder of the machine reading it
            check_repo_id(model, what=f"{root / KEY_LIBRARY_FILE} 'model' repo_id")
    if not model or not isinstance(model, (str, os.PathLike)):
        raise BioscanInputError(f"{root / KEY_LIBRARY_FILE}: names no model repository; pass the model as well")
    return resolve_folder(model, revision=model_revision), _keys_of(root, library, spec)
