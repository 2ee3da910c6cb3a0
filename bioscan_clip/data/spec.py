"""Where a job's records come from (:class:`DataSpec`, declared once: every command line and training parse their
data options from its fields) and which splits play each retrieval role."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from dataset_scripts import RETRIEVAL_SPLITS, load_bioscan
from modeling_bioscanclip import BioscanInputError

logger = logging.getLogger(__name__)


@dataclass
class DataSpec:
    """Where a job's records come from: a builder and its data root, or a ``DatasetDict`` saved on disk.

    Args:
        source (`str`, *optional*): a builder name (``mini``, ``bioscan5m``, ``bioscan1m``, ``bold``). With
            ``dataset_path``, it names the split layout of the saved dataset (default ``mini``: BIOSCAN-5M's).
        data_dir (`str`, *optional*): the builder's data root (the export file for ``bold``).
        dataset_path (`str`, *optional*): instead of a builder, a ``DatasetDict`` saved with ``save_to_disk``.
        cache_dir (`str`, *optional*): where builders keep their Arrow cache.
        partition (`str`, *optional*): BOLD exports: ``none`` (the default) makes every record a training record
            and a key (a reference library); ``clibd`` splits species into seen/unseen queries and keys.
        image_policy (`str`, *optional*): a missing or corrupt image ``fail``s (the builders' default), is
            ``skip``ped, or ``keep``s the record without image (metadata-only tables).
        image_package (`str`, *optional*): the image folder under ``images/`` (builder default ``cropped_256``);
            ``none`` reads the metadata only (barcodes and taxonomy, no images).
        keep_provisional_names (`bool`, defaults to `False`): BOLD exports: keep ``sp.``/``cf.``/interim species
            names as labels of their own instead of reading them as missing.
        genus_from_species (`bool`, defaults to `False`): fill a missing genus from the species name, as the
            ``bioscan-dataset`` loader of BIOSCAN-1M does.
        verify_images (`str`, *optional*): how images are checked while preparing: ``header`` (the builders'
            default), ``decode`` (a full decode) or ``none``.
        num_proc (`int`, *optional*): processes that check the images and write the splits while preparing.
    """

    source: str | None = "mini"
    data_dir: str | None = None
    dataset_path: str | None = None
    cache_dir: str | None = None
    partition: str | None = None
    image_policy: str | None = None
    image_package: str | None = None
    keep_provisional_names: bool = False
    genus_from_species: bool = False
    verify_images: str | None = None
    num_proc: int | None = None

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
