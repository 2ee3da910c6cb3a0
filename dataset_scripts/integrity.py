"""Integrity checks that ``datasets`` 5 no longer performs for us.

Since datasets 4.5 / 5.0 the library neither verifies downloaded-file hashes by default nor rejects duplicate
example keys, and a builder given a ``data_dir`` reuses its cache even when the files there have changed
(``shared/reference/STYLE_AND_RELIABILITY.md`` §2e). The builders therefore:

* hash their metadata file with sha256 and compare against a user-given value, a manifest file, or the table
  :data:`KNOWN_SHA256` (:func:`verify_sha256`);
* refuse duplicate ``processid`` values (:func:`check_unique`);
* put a fingerprint of the source files in the builder config, so a changed file gets a new cache directory
  (:func:`source_fingerprint`);
* validate each image during preparation and apply an explicit policy, counting what was skipped
  (:class:`PrepareSummary`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import pandas as pd

from modeling_bioscanclip.errors_bioscanclip import BioscanInputError

__all__ = [
    "IMAGE_POLICIES",
    "KNOWN_SHA256",
    "DataIntegrityError",
    "PrepareSummary",
    "check_unique",
    "expected_sha256",
    "official_mismatch",
    "read_manifest",
    "sha256_file",
    "source_fingerprint",
    "verify_sha256",
]

# sha256 of the official metadata files, by file name. The publishers give md5 only (bioscan-dataset checks
# md5) and we could not hash the real files offline, so the values are unknown for now: an entry of ``None``
# means "not pinned; pass `sha256=` or a manifest to check it". Fill in when a maintainer has the files.
KNOWN_SHA256: dict[str, str | None] = {
    "BIOSCAN_Insect_Dataset_metadata.tsv": None,
    "BIOSCAN_5M_Insect_Dataset_metadata.csv": None,
}

IMAGE_POLICIES = ("fail", "skip", "keep")
"""What to do with a missing or undecodable image: raise, drop the record, or keep the record with no image."""

_CHUNK = 1 << 20  # stream 1 MiB at a time: the 5M metadata CSV is over a gigabyte


class DataIntegrityError(BioscanInputError):
    """A source file or record failed an integrity check; the message names the file, value or hash."""


def sha256_file(path: str | Path) -> str:
    """Returns the hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(path: str | Path) -> dict[str, str]:
    """Reads a ``sha256sum``-style manifest (``<hex>  <file name>`` per line, ``#`` comments allowed).

    Returns:
        `dict[str, str]`: file name (as written, and its base name) -> lower-case hex digest.
    """
    entries: dict[str, str] = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or len(parts[0]) != 64:
            raise DataIntegrityError(f"{path}:{number}: expected '<64 hex digits>  <file name>', got {line!r}")
        digest, name = parts[0].lower(), parts[1].lstrip("*").strip()
        entries[name] = digest
        entries.setdefault(Path(name).name, digest)
    return entries


def expected_sha256(path: Path, *, sha256: str | None, manifest: str | None) -> str | None:
    """The digest ``path`` must have: the explicit value, else the manifest's entry, else ``None``.

    ``sha256="official"`` asks for the :data:`KNOWN_SHA256` entry of the file name (an error when the table has
    none). The table is not applied by default because mini-BIOSCAN and user files share the official names;
    a mismatch with it is reported as a warning instead (see :func:`official_mismatch`).
    """
    if sha256 == "official":
        known = KNOWN_SHA256.get(path.name)
        if known is None:
            raise DataIntegrityError(f"no official sha256 is recorded for {path.name}; pass sha256=<hex> or manifest=")
        return known
    if sha256:
        return sha256.lower()
    if manifest:
        entries = read_manifest(manifest)
        if path.name not in entries:
            raise DataIntegrityError(f"manifest {manifest} has no entry for {path.name}")
        return entries[path.name]
    return None


def official_mismatch(path: Path, actual: str) -> str | None:
    """A warning when ``path`` has an official name with a recorded digest that ``actual`` does not match."""
    known = KNOWN_SHA256.get(path.name)
    if known is not None and known != actual:
        return f"{path} is not the official {path.name} (sha256 {actual}, official {known})"
    return None


def verify_sha256(path: str | Path, expected: str | None) -> str:
    """Hashes ``path`` and compares with ``expected`` (skipped when ``expected`` is ``None``).

    Returns:
        `str`: the actual digest.

    Raises:
        `DataIntegrityError`: naming the file, the expected and the actual digest, and the file size.
    """
    actual = sha256_file(path)
    if expected is not None and actual != expected.lower():
        size = os.path.getsize(path)
        raise DataIntegrityError(
            f"sha256 mismatch for {path} ({size} bytes): expected {expected.lower()}, got {actual}. "
            "The file is corrupt, truncated or a different version; re-download it or update the expected hash."
        )
    return actual


def source_fingerprint(paths: Iterable[str | Path]) -> str:
    """A short digest of the files' names, sizes and modification times (missing files included as such).

    Stored in the builder config so that datasets derives a new cache directory when a source file changes,
    instead of silently serving a stale cache. Size+mtime is cheap enough to compute on every instantiation;
    the full sha256 is checked during preparation.
    """
    digest = hashlib.sha256()
    for path in sorted(str(Path(p).resolve()) for p in paths):
        try:
            stat = os.stat(path)
            digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        except FileNotFoundError:
            digest.update(f"{path}\0missing\n".encode())
    return digest.hexdigest()[:16]


def check_unique(values: pd.Series, *, column: str, source: str | Path) -> None:
    """Raises :class:`DataIntegrityError` naming the first repeated value (datasets no longer checks keys)."""
    duplicated = values[values.duplicated(keep=False)]
    if len(duplicated):
        first = duplicated.iloc[0]
        count = int((values == first).sum())
        total = int(duplicated.nunique())
        raise DataIntegrityError(
            f"duplicate {column} {first!r} ({count} rows) in {source}; {total} value(s) are repeated in total"
        )


# How a drop or label reason reads in a summary line.
_REASONS = {
    "non_coi_marker": "non-COI marker",
    "no_sequence": "no sequence",
    "not_in_partition_lists": "in no CLIBD list",
    "provisional_species": "provisional species names (sp./cf./codes; --keep_provisional_names keeps them)",
    "genus_from_species": "genus from species",
}


@dataclass
class PrepareSummary:
    """What a builder read, dropped and wrote; stored in ``builder.info.description`` as JSON.

    Attributes:
        source (`str`): the metadata file.
        sha256 (`str`): its digest.
        rows_read (`int`): data rows in the file.
        rows_kept (`int`): rows left after every drop (before images are checked).
        rows_dropped (`dict[str, int]`): rows removed before splitting, by reason (e.g. ``non_coi_marker``).
        labels_cleared (`dict[str, int]`): labels read as missing although the cell held a value, by reason
            (e.g. ``provisional_species``: ``Aus sp. 2ES`` kept as a record of genus ``Aus``).
        labels_filled (`dict[str, int]`): labels filled in from another column (e.g. ``genus_from_species``).
        multi_value_cells (`dict[str, int]`): ``;``-separated cells reduced to one value, by column.
        images_missing (`int`): records whose image file does not exist.
        images_corrupt (`int`): records whose image failed the safe loader.
        images_skipped (`int`): records dropped for either reason (``image_policy="skip"``).
        records (`dict[str, int]`): records written per split.
        warnings (`list[str]`): anything else a user should know (e.g. a missing DNA column).
    """

    source: str = ""
    sha256: str = ""
    rows_read: int = 0
    rows_kept: int = 0
    rows_dropped: dict[str, int] = field(default_factory=dict)
    labels_cleared: dict[str, int] = field(default_factory=dict)
    labels_filled: dict[str, int] = field(default_factory=dict)
    multi_value_cells: dict[str, int] = field(default_factory=dict)
    images_missing: int = 0
    images_corrupt: int = 0
    images_skipped: int = 0
    records: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    MARKER = "Preparation summary (JSON): "

    def describe(self) -> str:
        """One line for a person: rows read, kept, and dropped per reason (and labels cleared or filled).

        Example:

        ```python
        >>> PrepareSummary(source="lib.tsv", rows_read=85, rows_kept=71,
        ...                rows_dropped={"non_coi_marker": 13, "no_sequence": 1}).describe()
        'lib.tsv: read 85 rows, kept 71, dropped 14 (13 non-COI marker, 1 no sequence)'

        ```
        """
        dropped = dict(
            sorted(((r, n) for r, n in self.rows_dropped.items() if n), key=lambda item: (-item[1], item[0]))
        )
        text = f"{self.source}: read {self.rows_read} rows, kept {self.rows_kept}"
        if dropped:
            reasons = ", ".join(
                f"{n} {_REASONS.get(reason, reason.replace('_', ' '))}" for reason, n in dropped.items()
            )
            text += f", dropped {sum(dropped.values())} ({reasons})"
        else:
            text += ", dropped 0"
        for label, counts in (("labels read as missing", self.labels_cleared), ("filled", self.labels_filled)):
            counts = {reason: n for reason, n in counts.items() if n}
            if counts:
                text += f"; {label}: " + ", ".join(
                    f"{n} {_REASONS.get(reason, reason.replace('_', ' '))}" for reason, n in counts.items()
                )
        images = self.images_missing + self.images_corrupt
        if images:
            text += f"; images missing {self.images_missing}, corrupt {self.images_corrupt}, "
            text += f"records skipped for them {self.images_skipped}"
        return text

    def to_description(self, text: str) -> str:
        """``text`` followed by this summary as one JSON line (parsed back by :meth:`from_description`)."""
        return f"{text}\n\n{self.MARKER}{json.dumps(asdict(self), sort_keys=True)}"

    @classmethod
    def from_description(cls, description: str | None) -> PrepareSummary | None:
        """The summary stored in a ``DatasetInfo.description``, or ``None`` when there is none."""
        if not description or cls.MARKER not in description:
            return None
        payload = description.split(cls.MARKER, 1)[1].splitlines()[0]
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in json.loads(payload).items() if k in known})
