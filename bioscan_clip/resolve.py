"""The one resolver under every load: "a local folder, or a Hub repository (type, revision, subfolder)" -> a folder.

Every loader (the model and processor, a key folder, a key library, the demo, the Space) goes through
:func:`resolve_folder`, as transformers resolves every ``from_pretrained`` through ``cached_file``: one rule for
what a name means, one error when it means nothing. A name that is an existing folder is used as it is and
nothing touches the network; otherwise it must be a repository id ``owner/name`` (optionally followed by
``/sub/folder``), downloaded with ``huggingface_hub.snapshot_download`` or found in the Hub cache offline
(``HF_HUB_OFFLINE=1``). :func:`load_pretrained` is the one place a model and its processor are loaded from such a
name.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from modeling_bioscanclip import BioscanClipModel, BioscanClipProcessor, BioscanInputError

REPO_TYPES = ("model", "dataset", "space")
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def check_repo_id(repo_id: str, what: str = "--repo_id") -> str:
    """``repo_id`` when it is a Hub repository id ``owner/name``; else one error naming ``what``."""
    if not isinstance(repo_id, str) or not REPO_ID.match(repo_id) or ".." in repo_id:
        raise BioscanInputError(f"{what} {repo_id!r}: expected a Hub repository id owner/name")
    return repo_id


def split_repo_spec(spec: str) -> tuple[str, str]:
    """``owner/name[/sub/folder]`` -> ``(owner/name, sub/folder)``; refuses anything else (``..`` included)."""
    parts = str(spec).strip("/").split("/")
    repo_id, subfolder = "/".join(parts[:2]), "/".join(parts[2:])
    if len(parts) < 2 or str(spec).startswith((".", "/", "~")) or not REPO_ID.match(repo_id):
        raise BioscanInputError(f"{spec}: no such folder, and not a Hub repository id (owner/name[/subfolder])")
    if any(part in ("", ".", "..") for part in parts[2:]) or ".." in repo_id:
        raise BioscanInputError(f"{spec}: a Hub subfolder must be a plain relative path")
    return repo_id, subfolder


def resolve_folder(
    spec: str | os.PathLike,
    *,
    repo_type: str = "model",
    revision: str | None = None,
    subfolder: str | None = None,
) -> Path:
    """The local folder that ``spec`` names.

    Args:
        spec (`str` or `os.PathLike`): a local folder, or ``owner/name`` / ``owner/name/sub/folder`` on the Hub.
        repo_type (`str`, *optional*, defaults to `"model"`): ``model``, ``dataset`` (key libraries) or ``space``.
        revision (`str`, *optional*): a branch, tag or commit sha of the repository (ignored for a local folder).
        subfolder (`str`, *optional*): a folder inside the repository (or the local folder) to return instead.

    Returns:
        `Path`: an existing folder.

    Raises:
        `BioscanInputError`: ``spec`` is neither a folder nor a repository id, an unknown ``repo_type``, or the
        subfolder is missing, or the Hub (offline: its cache) has no such repository or revision (one line naming
        ``spec``). Other download errors (network, access) are ``huggingface_hub``'s own.
    """
    if repo_type not in REPO_TYPES:
        raise BioscanInputError(f"repo_type must be one of {REPO_TYPES}, got {repo_type!r}")
    path = Path(spec).expanduser()
    if path.is_dir():
        root, inner = path, subfolder or ""
    else:
        repo_id, inner = split_repo_spec(str(spec))
        inner = "/".join(part for part in (inner, subfolder or "") if part)
        root = _download(str(spec), repo_id, repo_type, revision, inner)
    folder = inside(root, inner, what=str(spec)) if inner else root
    if not folder.is_dir():
        raise BioscanInputError(f"{spec}: has no folder {inner!r}")
    return folder


def _download(spec: str, repo_id: str, repo_type: str, revision: str | None, inner: str) -> Path:
    """The snapshot folder of ``repo_id`` (only ``inner`` when given); a repository or revision the Hub (or, offline,
    the cache) does not have is one line naming ``spec``."""
    from huggingface_hub import snapshot_download  # only when the name is not a local folder
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        return Path(
            snapshot_download(
                repo_id, repo_type=repo_type, revision=revision, allow_patterns=[f"{inner}/**"] if inner else None
            )
        )
    except GatedRepoError:
        raise
    except (LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError) as error:
        where = "in the Hub cache (offline)" if isinstance(error, LocalEntryNotFoundError) else "on the Hub"
        at = f" at revision {revision}" if revision else ""
        raise BioscanInputError(
            f"{spec}: no such folder, and no {repo_type} repository {repo_id}{at} {where}"
        ) from None


def load_pretrained(
    spec: str | os.PathLike, *, revision: str | None = None, subfolder: str | None = None
) -> tuple[BioscanClipModel, BioscanClipProcessor]:
    """The model (in eval mode) and the processor saved in the folder ``spec`` names (:func:`resolve_folder`: a
    local folder, or a Hub model repository ``owner/name[/sub/folder]`` at ``revision``)."""
    folder = resolve_folder(spec, repo_type="model", revision=revision, subfolder=subfolder)
    return BioscanClipModel.from_pretrained(folder).eval(), BioscanClipProcessor.from_pretrained(folder)


def inside(root: Path, relative: str, *, what: str) -> Path:
    """``root / relative``, refused when it would leave ``root`` (``..``, an absolute path, a link outside)."""
    if not isinstance(relative, str) or Path(relative).is_absolute():
        raise BioscanInputError(f"{what}: {relative!r} must be a path relative to {root}")
    candidate = root / relative
    base = root.resolve()
    resolved = candidate.resolve()
    if resolved != base and base not in resolved.parents:
        raise BioscanInputError(f"{what}: {relative!r} points outside {root}")
    return candidate
