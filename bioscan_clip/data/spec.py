"""Where a job's records come from (:class:`DataSpec`, declared once: every command line and training parse their
data options from its fields) and which splits play each retrieval role."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from bioscan_clip.option_fields import option
from dataset_scripts import load_bioscan
from dataset_scripts.images import VERIFY_MODES
from dataset_scripts.integrity import IMAGE_POLICIES
from dataset_scripts.sources import RETRIEVAL_SPLITS
from modeling_bioscanclip import BioscanInputError

logger = logging.getLogger(__name__)


@dataclass
class DataSpec:
    """Where a job's records come from: a builder and its data root, or a ``DatasetDict`` saved on disk.

    Each field is a data option of every command line (``bioscan-clip evaluate/index/embed``, ``train_accelerate.py``);
    its help text and choices are declared here, in the field's metadata, and nowhere else. ``TrainConfig`` inherits
    these fields. Options left ``None``/``False`` keep the builder's default (see :meth:`builder_options`).
    """

    source: str | None = option(
        "mini",
        "dataset builder (default: %(default)s; mini is generated, synthetic); with --dataset_path, the split layout "
        "of the saved dataset",
        choices=tuple(sorted(RETRIEVAL_SPLITS)),
    )
    data_dir: str | None = option(
        None,
        "the builder's data root, or its metadata CSV/TSV file (for bold: the export, tab, comma or ';'); mini "
        "needs none",
    )
    dataset_path: str | None = option(None, "instead of a builder, a DatasetDict saved with save_to_disk")
    cache_dir: str | None = option(None, "where builders keep their Arrow cache (unset: the datasets cache)")
    partition: str | None = option(
        None,
        "BOLD exports: 'none' (default) makes every record a key and a training record; 'clibd' splits species "
        "into seen/unseen queries and keys. BIOSCAN-1M: auto, official or rebuild",
    )
    image_policy: str | None = option(
        None, "a missing or corrupt image: fail (default), skip the record, or keep it without image",
        choices=IMAGE_POLICIES,
    )  # fmt: skip
    image_package: str | None = option(
        None, "image folder under images/ (default cropped_256); 'none' reads the metadata only (barcodes, no images)"
    )
    keep_provisional_names: bool = option(
        False,
        "BOLD exports: keep 'sp.'/'cf.'/interim species names as their own labels (default: read as missing)",
    )
    genus_from_species: bool = option(
        False, "fill a missing genus from the species name, as the bioscan-dataset loader does"
    )
    verify_images: str | None = option(
        None,
        "how images are checked while preparing: header (the builders' default: format, size, truncation), "
        "decode (a full decode), none",
        choices=VERIFY_MODES,
    )
    num_proc: int | None = option(None, "processes that check the images and write the splits while preparing")

    @classmethod
    def from_options(cls, options: Any) -> DataSpec:
        """The data options of a command line or a ``TrainConfig``: any object with these fields as attributes
        (a field it lacks keeps its default)."""
        return cls(**{item.name: getattr(options, item.name, item.default) for item in dataclasses.fields(cls)})

    @property
    def name(self) -> str:
        """A short name for reports: the builder, or the saved dataset's folder."""
        return Path(self.dataset_path).name if self.dataset_path else str(self.source)

    def load(self) -> tuple[datasets.DatasetDict, dict[str, tuple[str, ...]]]:
        """Every split, and the split names that make up each retrieval role."""
        return load_splits(self.source, self.data_dir, self.dataset_path, self.cache_dir, **self.builder_options())

    def builder_options(self) -> dict[str, Any]:
        """The builder-config options this spec sets (those left ``None``/``False`` keep the builder's default)."""
        options: dict[str, Any] = {
            name: getattr(self, name)
            for name in ("partition", "image_policy", "image_package", "verify_images", "num_proc")
            if getattr(self, name) is not None
        }
        if self.genus_from_species:
            options["genus_from_species"] = True
        if self.keep_provisional_names:
            if self.source != "bold":
                raise BioscanInputError(f"keep_provisional_names applies to BOLD exports, not to {self.source!r}")
            options["keep_provisional_names"] = True
        return options


def load_splits(
    source: str | None = None,
    data_dir: str | None = None,
    dataset_path: str | None = None,
    cache_dir: str | None = None,
    **builder_options: Any,
) -> tuple[datasets.DatasetDict, dict[str, tuple[str, ...]]]:
    """Loads every split of a dataset and the split names that make up each retrieval role (see :class:`DataSpec`;
    ``builder_options`` are options of the builder's config, e.g. ``partition="clibd"`` for BOLD exports)."""
    if dataset_path is not None:
        splits = datasets.load_from_disk(dataset_path)
        if not isinstance(splits, datasets.DatasetDict):
            raise BioscanInputError(f"{dataset_path}: expected a DatasetDict saved with save_to_disk")
        return splits, RETRIEVAL_SPLITS[source or "mini"]
    if source is None:
        raise BioscanInputError("expected a builder name (source) or a dataset_path")
    if source not in RETRIEVAL_SPLITS:
        raise BioscanInputError(f"unknown source {source!r}; expected one of {sorted(RETRIEVAL_SPLITS)}")
    return load_bioscan(source, data_dir, cache_dir=cache_dir, **builder_options), RETRIEVAL_SPLITS[source]


def has_role(splits: datasets.DatasetDict, roles: dict[str, tuple[str, ...]], role: str) -> bool:
    """Whether any split of ``role`` (e.g. ``val_queries_unseen``) is in the dataset."""
    return any(name in splits for name in roles[role])


def role_records(splits: datasets.DatasetDict, roles: dict[str, tuple[str, ...]], role: str) -> datasets.Dataset:
    """The records of one retrieval role (e.g. ``keys``), images left undecoded (decoded later, safely)."""
    names = [name for name in roles[role] if name in splits]
    if not names:
        raise BioscanInputError(f"no split for role {role!r}: expected {roles[role]}, have {sorted(splits)}")
    parts = [splits[name] for name in names]
    records = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
    if "image" in records.column_names:
        records = records.cast_column("image", datasets.Image(decode=False))
    return records
