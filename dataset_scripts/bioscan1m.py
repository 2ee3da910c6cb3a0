"""BIOSCAN-1M builder with the CLIBD partition, reading the official on-disk layout.

Layout (as the ``bioscan-dataset`` package reads it)::

    {data_dir}/bioscan1m/BIOSCAN_Insect_Dataset_metadata.tsv
    {data_dir}/bioscan1m/images/{image_package}/part{chunk_number}/{image_file}
    {data_dir}/bioscan1m/CLIBD_partitioning/{split}.txt        # optional: official sampleid lists

or the layout of ``bioscan-dataset`` <= 1.1, which its loader still finds when ``bioscan1m/`` is absent::

    {data_dir}/BIOSCAN_Insect_Dataset_metadata.tsv              # or {data_dir}/bioscan/BIOSCAN_...tsv
    {data_dir}/bioscan/images/{image_package}/part{chunk_number}/{image_file}
    {data_dir}/bioscan/CLIBD_partitioning/{split}.txt          # or beside the metadata file

``data_dir`` may also be the metadata TSV itself (images and lists are then looked for beside it).

Columns are renamed to the record schema: ``nucraw`` -> ``dna_barcode``, ``uri`` -> ``dna_bin``. A metadata file
without ``nucraw`` (e.g. the 8,273-row validation sample of the BIOSCAN-1M repository) yields ``dna_barcode=None``
with a warning, or an error with ``require_dna=True``. Without ``chunk_number`` the image folder is indexed
instead, so images found in any ``part*/`` folder are used.

Splits: the ten CLIBD splits plus the metasplits ``all_keys`` and ``no_split_and_seen_train``
(:mod:`dataset_scripts.partition`). ``partition="auto"`` reads the official lists when the folder exists and
otherwise rebuilds the partition by the published rules (``"official"`` / ``"rebuild"`` force one of them).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pandas as pd

from modeling_bioscanclip.constants_bioscanclip import ALL_RANKS

from .base import BioscanBuilderBase, BioscanBuilderConfig, record_frame
from .integrity import DataIntegrityError, PrepareSummary
from .partition import CLIBD_METASPLITS, CLIBD_SPLITS, clibd_partition, read_official_partition
from .tables import read_table

__all__ = ["Bioscan1M", "Bioscan1MConfig", "apply_partition"]

_PARTITION_MODES = ("auto", "official", "rebuild")
METADATA_FILENAME = "BIOSCAN_Insect_Dataset_metadata.tsv"

_DESCRIPTION = """\
BIOSCAN-1M: 1.1 million insect specimens with microscope images, COI DNA barcodes and taxonomic labels
(Gharaee et al., NeurIPS 2023 Datasets and Benchmarks), with the CLIBD seen/unseen partition (Gong et al., ICLR
2025). Read from the official layout into the bioscan-clip record schema."""

_CITATION = """\
@inproceedings{gharaee2023bioscan1m,
  title={A Step Towards Worldwide Biodiversity Assessment: The {BIOSCAN-1M} Insect Dataset},
  author={Gharaee, Zahra and Gong, ZeMing and Pellegrino, Nicholas and others},
  booktitle={Advances in Neural Information Processing Systems (Datasets and Benchmarks Track)},
  year={2023}
}
@inproceedings{gong2025clibd,
  title={{CLIBD}: Bridging Vision and Genomics for Biodiversity Monitoring at Scale},
  author={Gong, ZeMing and Wang, Austin T. and Huo, Xiaoliang and others},
  booktitle={International Conference on Learning Representations},
  year={2025}
}"""


@dataclass
class Bioscan1MConfig(BioscanBuilderConfig):
    """:class:`BioscanBuilderConfig` named ``bioscan1m``; ``partition`` is ``auto``, ``official`` or ``rebuild``."""

    name: str = "bioscan1m"

    def __post_init__(self):
        super().__post_init__()
        if self.partition not in _PARTITION_MODES:
            raise ValueError(f"partition must be one of {_PARTITION_MODES} for BIOSCAN-1M, got {self.partition!r}")


def apply_partition(
    frame: pd.DataFrame, summary: PrepareSummary, *, mode: str, seed: int, lists_dir: Path | None, source: Path
) -> pd.DataFrame:
    """Fills ``frame["split"]`` with CLIBD split names (official lists or the rebuilt rules).

    Records absent from every official list are dropped and counted as ``not_in_partition_lists``.
    """
    use_lists = lists_dir is not None and lists_dir.is_dir() and mode in ("auto", "official")
    if mode == "official" and not use_lists:
        raise DataIntegrityError(f"partition='official' but the CLIBD split lists are missing: {lists_dir}")
    if use_lists:
        splits = read_official_partition(lists_dir, frame["sampleid"])
        unlisted = splits == ""
        if unlisted.any():
            summary.rows_dropped["not_in_partition_lists"] = int(unlisted.sum())
            summary.warnings.append(f"{int(unlisted.sum())} record(s) of {source} are in no list of {lists_dir}")
        frame = frame.assign(split=splits)[~unlisted]
    else:
        frame = frame.assign(split=clibd_partition(frame["species"], seed=seed))
    return frame


class Bioscan1M(BioscanBuilderBase):
    """Builder for BIOSCAN-1M in its official layout, with the CLIBD partition.

    Example:

    ```python
    >>> builder = Bioscan1M(data_dir="/data", cache_dir="/tmp/hf", partition="rebuild", seed=0)  # doctest: +SKIP
    >>> builder.download_and_prepare()  # doctest: +SKIP
    >>> keys = builder.as_dataset(split="all_keys")  # doctest: +SKIP
    ```
    """

    BUILDER_CONFIG_CLASS = Bioscan1MConfig
    SPLITS: ClassVar[tuple[str, ...]] = CLIBD_SPLITS
    METASPLITS: ClassVar[dict[str, tuple[str, ...]]] = CLIBD_METASPLITS
    DESCRIPTION = _DESCRIPTION
    CITATION = _CITATION
    HOMEPAGE = "https://biodiversitygenomics.net/projects/1m-insects/"
    LICENSE = "CC BY-NC-SA 4.0 (images); metadata CC BY 3.0"

    @classmethod
    def _default_metadata_path(cls, data_dir: Path) -> Path:
        current = data_dir / "bioscan1m" / METADATA_FILENAME
        if current.is_file() or not (data_dir / "bioscan").is_dir():
            return current
        # bioscan-dataset <= 1.1: metadata at the root (or in bioscan/), images under bioscan/.
        for candidate in (data_dir / "bioscan" / METADATA_FILENAME, data_dir / METADATA_FILENAME):
            if candidate.is_file():
                return candidate
        return current

    @staticmethod
    def _layout_folder(metadata: Path) -> Path:
        """The folder holding ``images/`` (and, by default, ``CLIBD_partitioning/``) for this metadata file."""
        if metadata.parent.name not in ("bioscan1m", "bioscan") and (metadata.parent / "bioscan").is_dir():
            return metadata.parent / "bioscan"
        return metadata.parent

    @classmethod
    def _lists_dir(cls, metadata: Path) -> Path:
        beside = metadata.parent / "CLIBD_partitioning"
        return beside if beside.is_dir() else cls._layout_folder(metadata) / "CLIBD_partitioning"

    @classmethod
    def _source_files(cls, data_dir: str | None, metadata_file: str | None) -> list[Path]:
        files = super()._source_files(data_dir, metadata_file)
        if files:
            lists_dir = cls._lists_dir(files[0])
            files += sorted(lists_dir.glob("*.txt")) if lists_dir.is_dir() else []
        return files

    def _used_columns(self) -> list[str]:
        return ["processid", "sampleid", "nucraw", "uri", *ALL_RANKS, "image_file", "chunk_number"]

    def _load_frame(self, metadata: Path, summary: PrepareSummary) -> pd.DataFrame:
        raw = read_table(metadata, usecols=self._used_columns())
        summary.rows_read = len(raw)
        frame = record_frame(
            raw, metadata, summary, dna_column="nucraw", bin_column="uri", require_dna=self.config.require_dna
        )
        frame["image_path"] = self._image_paths(raw)
        return apply_partition(
            frame,
            summary,
            mode=self.config.partition,
            seed=self.config.seed,
            lists_dir=self._lists_dir(metadata),
            source=metadata,
        )

    def _image_paths(self, raw: pd.DataFrame) -> pd.Series:
        if self.config.image_package is None:
            return pd.Series([None] * len(raw), index=raw.index, dtype=object)
        if "image_file" not in raw.columns:
            raise DataIntegrityError(
                f"{self.metadata_path} has no 'image_file' column; pass image_package=None to read metadata only"
            )
        root = self._layout_folder(self.metadata_path) / "images" / str(self.config.image_package)
        image_file = raw["image_file"].str.strip()
        if "chunk_number" in raw.columns:
            return (str(root) + "/part" + raw["chunk_number"].str.strip() + "/" + image_file).astype(object)
        # No chunk column: find each file in whichever part*/ folder holds it (one directory scan, not a
        # stat per record). Files not found keep their would-be path so the image policy reports them.
        found: dict[str, str] = {}
        if root.is_dir():
            for part in sorted(os.scandir(root), key=lambda entry: entry.name):
                if part.is_dir():
                    for entry in os.scandir(part.path):
                        found.setdefault(entry.name, entry.path)
        fallback = str(root) + "/" + image_file
        return image_file.map(found).fillna(fallback).astype(object)
