"""BIOSCAN-5M builder, reading the official on-disk layout.

Layout (as the ``bioscan-dataset`` package reads it)::

    {data_dir}/bioscan5m/metadata/csv/BIOSCAN_5M_Insect_Dataset_metadata.csv
    {data_dir}/bioscan5m/images/{image_package}/{split}/{chunk}/{processid}.jpg   # rows with a chunk
    {data_dir}/bioscan5m/images/{image_package}/{split}/{processid}.jpg           # rows without one

The ``chunk`` folder level is used for every row whose ``chunk`` cell is filled, whatever its split: the official
release chunks pretrain, train and other_heldout (too many files for one folder), and a split is never assumed
flat or chunked from its name. ``data_dir`` may also be a metadata CSV itself (e.g. a metadata-only table with
``image_package=None``); images are then looked for in ``images/`` beside it, or in ``bioscan5m/images/`` when the
file sits in the official ``metadata/csv/`` folder.

Splits are the dataset's own: ``pretrain, train, val, test, key_unseen, val_unseen, test_unseen, other_heldout``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd

from modeling_bioscanclip.constants_bioscanclip import ALL_RANKS

from .base import BioscanBuilderBase, BioscanBuilderConfig, record_frame
from .integrity import DataIntegrityError, PrepareSummary
from .tables import read_table

__all__ = ["BIOSCAN5M_SPLITS", "Bioscan5M", "Bioscan5MConfig"]

BIOSCAN5M_SPLITS: tuple[str, ...] = (
    "pretrain",
    "train",
    "val",
    "test",
    "key_unseen",
    "val_unseen",
    "test_unseen",
    "other_heldout",
)
_SPLIT_ALIASES = {"validation": "val"}

_DESCRIPTION = """\
BIOSCAN-5M: 5.15 million arthropod specimens from the BIOSCAN project, each with a microscope image, a COI DNA
barcode and a taxonomic label of varying depth (Gharaee et al., NeurIPS 2024 Datasets and Benchmarks).
Read from the official layout into the bioscan-clip record schema."""

_CITATION = """\
@inproceedings{gharaee2024bioscan5m,
  title={{BIOSCAN-5M}: A Multimodal Dataset for Insect Biodiversity},
  author={Gharaee, Zahra and Lowe, Scott C. and Gong, ZeMing and others},
  booktitle={Advances in Neural Information Processing Systems (Datasets and Benchmarks Track)},
  year={2024}
}"""


@dataclass
class Bioscan5MConfig(BioscanBuilderConfig):
    """:class:`BioscanBuilderConfig` named ``bioscan5m``; ``partition`` is unused (5M ships its splits)."""

    name: str = "bioscan5m"


class Bioscan5M(BioscanBuilderBase):
    """Builder for BIOSCAN-5M in its official layout.

    Example:

    ```python
    >>> builder = Bioscan5M(data_dir="/data", cache_dir="/tmp/hf")  # doctest: +SKIP
    >>> builder.download_and_prepare()  # doctest: +SKIP
    >>> builder.as_dataset(split="val")[0]["species"]  # doctest: +SKIP
    ```
    """

    BUILDER_CONFIG_CLASS = Bioscan5MConfig
    SPLITS: ClassVar[tuple[str, ...]] = BIOSCAN5M_SPLITS
    DESCRIPTION = _DESCRIPTION
    CITATION = _CITATION
    HOMEPAGE = "https://biodiversitygenomics.net/projects/5m-insects/"
    LICENSE = "CC BY 3.0"
    ROOT = "bioscan5m"

    @classmethod
    def _default_metadata_path(cls, data_dir: Path) -> Path:
        return data_dir / cls.ROOT / "metadata" / "csv" / "BIOSCAN_5M_Insect_Dataset_metadata.csv"

    def _image_root(self) -> Path:
        metadata = self.metadata_path.resolve()
        official = metadata.parent.name == "csv" and metadata.parent.parent.name == "metadata"
        base = metadata.parents[2] if official else metadata.parent
        return base / "images" / str(self.config.image_package)

    def _used_columns(self) -> list[str]:
        return ["processid", "sampleid", "dna_barcode", "dna_bin", *ALL_RANKS, "split", "chunk", "chunk_number"]

    def _streams_by_row(self) -> bool:
        return True  # the split is a column of the table

    def _load_frame(self, metadata: Path, summary: PrepareSummary) -> pd.DataFrame:
        return self._frame_from_raw(read_table(metadata, usecols=self._used_columns()), metadata, summary)

    def _frame_from_raw(self, raw: pd.DataFrame, metadata: Path, summary: PrepareSummary) -> pd.DataFrame:
        summary.rows_read += len(raw)
        if "split" not in raw.columns:
            raise DataIntegrityError(f"{metadata} has no 'split' column (columns: {list(raw.columns)})")
        frame = record_frame(
            raw, metadata, summary, dna_column="dna_barcode", bin_column="dna_bin", require_dna=self.config.require_dna
        )
        split = raw["split"].str.strip().replace(_SPLIT_ALIASES)
        unknown = sorted(set(split) - set(BIOSCAN5M_SPLITS))
        if unknown:
            raise DataIntegrityError(f"{metadata}: unknown split value(s) {unknown}; expected {BIOSCAN5M_SPLITS}")
        frame["split"] = split
        frame["image_path"] = self._image_paths(raw, split)
        return frame

    def _image_paths(self, raw: pd.DataFrame, split: pd.Series) -> pd.Series:
        if self.config.image_package is None:
            return pd.Series([None] * len(raw), index=raw.index, dtype=object)
        chunk_column = "chunk" if "chunk" in raw.columns else "chunk_number" if "chunk_number" in raw.columns else None
        root = str(self._image_root()) + "/"
        chunk = raw[chunk_column].str.strip() if chunk_column else pd.Series("", index=raw.index)
        chunked = chunk != ""
        # Vectorised string building: 5 M rows, so no per-row Python here.
        middle = np.where(chunked, split + "/" + chunk + "/", split + "/")
        return (root + pd.Series(middle, index=raw.index) + raw["processid"].str.strip() + ".jpg").astype(object)
