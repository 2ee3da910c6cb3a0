"""The key-folder format, in one module that building, loading and publishing all import.

A *key folder* (written by :func:`~bioscan_clip.identification.build.build_key_folder`, ``bioscan-clip index``)
holds one :class:`~bioscan_clip.retrieval.KeyIndex` per feature (``image``, ``dna``, ``text``, ``averaged``)
over the same key records, the key records themselves (with their images, for galleries), the calibration of the
confidence thresholds and ``key_folder.json``: the model it was built with (id and config hash) and every file's
size and sha256. It is built in a sibling temporary folder and swapped in by rename, so a reader sees the old folder
or the new one, never parts of both; :func:`verify_key_folder` refuses a partial, mixed or corrupted folder by name,
and a reader that opens the parts inside :func:`key_folder_snapshot` opens those of the build it verified, even while
a rebuild is swapped in.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets

from bioscan_clip.retrieval.storage import validate_arrow
from bioscan_clip.safe_io import (
    check_seal,
    folder_lock,
    read_json,
    verify_checksums,
)
from modeling_bioscanclip import BioscanClipModel, BioscanInputError

logger = logging.getLogger(__name__)


RECORDS_DIRNAME = "records"


CALIBRATION_FILE = "calibration.json"


CALIBRATION_PLOT = "calibration.png"


KEY_MANIFEST = "key_folder.json"


KEY_FOLDER_FORMAT = "bioscan-clip-key-folder"


KEY_FOLDER_VERSION = 1


# What the config hash leaves out, at every level: where the model was loaded from, which library version wrote it,
# the dtype it was loaded in (None in memory, float32 once saved), and the code it names (`auto_map`,
# `custom_pipelines`: written by save_pretrained, so absent from a model that was never saved).
_UNHASHED_CONFIG_KEYS = (
    "_name_or_path", "transformers_version", "_commit_hash", "architectures", "auto_map", "custom_pipelines", "dtype",
    "torch_dtype",
)  # fmt: skip


def config_hash(model: BioscanClipModel) -> str:
    """sha256 of the model's configuration (architecture, vocabularies, projection): keys embedded by a model with
    another hash are not comparable with this model's queries."""

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in _UNHASHED_CONFIG_KEYS}
        return value

    config = strip(model.config.to_dict())
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def is_key_folder(path: Path) -> bool:
    """A folder written by :func:`build_key_folder` (this version's manifest, or an older one's calibration)."""
    return path.is_dir() and ((path / KEY_MANIFEST).is_file() or (path / CALIBRATION_FILE).is_file())


def verify_key_folder(key_dir: str | Path) -> dict[str, Any]:
    """Checks a key folder against its manifest and returns the manifest.

    Raises:
        `BioscanInputError`: one line naming the folder when it is missing, not a key folder, written by an older
        version or half-written (no manifest), or when any file is missing, resized or changed (corrupted, or mixed
        from two builds).
    """
    key_dir = Path(key_dir)
    if not key_dir.is_dir():
        raise BioscanInputError(f"{key_dir}: no such key folder; build it with `bioscan-clip index`")
    if not (key_dir / KEY_MANIFEST).is_file():
        what = "incomplete or written by an older bioscan-clip" if is_key_folder(key_dir) else "not a key folder"
        raise BioscanInputError(f"{key_dir}: {what} (no {KEY_MANIFEST}); build it with `bioscan-clip index`")
    manifest = read_json(key_dir / KEY_MANIFEST, "the key folder manifest")
    if (
        not isinstance(manifest, dict)
        or manifest.get("format") != KEY_FOLDER_FORMAT
        or manifest.get("format_version") != KEY_FOLDER_VERSION
        or not isinstance(manifest.get("files"), dict)
    ):
        raise BioscanInputError(
            f"{key_dir / KEY_MANIFEST}: not a {KEY_FOLDER_FORMAT} manifest version {KEY_FOLDER_VERSION}; rebuild it"
        )
    check_seal(manifest, key_dir / KEY_MANIFEST, "the key folder manifest")
    verify_checksums(key_dir, manifest["files"], "the key folder")
    return manifest


@contextlib.contextmanager
def key_folder_snapshot(key_dir: str | Path) -> Iterator[dict[str, Any]]:
    """Verifies a key folder (:func:`verify_key_folder`) and yields its manifest while no rebuild can be swapped in
    (:func:`~bioscan_clip.safe_io.folder_lock`): every part opened inside the block belongs to the build verified,
    and stays that build after it (the parts are memory-mapped or read; a later swap only renames folders).

    Example::

        with key_folder_snapshot(key_dir) as manifest:
            records = key_records(key_dir)
    """
    key_dir = Path(key_dir)
    with folder_lock(key_dir):
        yield verify_key_folder(key_dir)


def key_records(key_dir: str | Path) -> datasets.Dataset | None:
    """The key records of a key folder (None when it holds none), images kept encoded (decode them with the safe
    loader, as :meth:`Identifier.key_image` does)."""
    key_dir = Path(key_dir)
    if not (key_dir / RECORDS_DIRNAME).exists():
        return None
    try:
        records = datasets.load_from_disk(str(key_dir / RECORDS_DIRNAME))
    except (OSError, ValueError, KeyError) as error:
        raise BioscanInputError(f"{key_dir}: the key records cannot be read ({error}); rebuild it") from None
    validate_arrow(records, f"{key_dir / RECORDS_DIRNAME}: the key records")  # before any value is read
    if "image" in records.column_names:
        records = records.cast_column("image", datasets.Image(decode=False))
    return records


def refuse_foreign_output(out_dir: Path, overwrite: bool) -> None:
    """``--out`` may replace a key folder or an empty folder; anything else only with ``overwrite``."""
    if overwrite or not out_dir.exists() or is_key_folder(out_dir):
        return
    if out_dir.is_dir() and not any(out_dir.iterdir()):
        return
    kind = "folder" if out_dir.is_dir() else "file"
    raise BioscanInputError(
        f"--out {out_dir}: exists and is a {kind} that is not a key folder; refusing to replace it "
        "(choose another --out, or pass --overwrite)"
    )
