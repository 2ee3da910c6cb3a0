"""Builder for BOLD specimen exports: a user's own DNA-only reference library.

Two export formats are read, told apart by their sequence column:

* BCDM TSV (current BOLD data packages): sequence in ``nuc``, marker in ``marker_code``, BIN in ``bin_uri``;
* the older BOLD TSV: sequence in ``nucraw``.

Rules, each counted in the preparation summary:

* only ``COI-5P`` rows are kept; rows of other markers (16S, ITS, ...) or with no marker are dropped
  (``rows_dropped["non_coi_marker"]``). A file without ``marker_code`` is taken as all COI-5P, with a warning;
* COI-5P rows without a sequence are dropped (``rows_dropped["no_sequence"]``): a DNA-only record needs DNA;
* ``;``-separated multi-value cells: when ``marker_code`` lists several markers and ``nuc`` as many sequences,
  the sequence at the COI-5P position is taken; any other multi-value cell (a second BIN, two names) keeps its
  first value (``multi_value_cells[column]``);
* ``None``, ``NA``, ``not_classified`` and empty cells are missing;
* sequences are kept as written (lower case, ``-`` gaps, ambiguity codes): the DNA tokenizer normalises them.

There is no image: ``image`` is always ``None``. ``partition="none"`` (default) writes one ``train`` split;
``partition="clibd"`` applies the CLIBD rules of :mod:`dataset_scripts.partition` to the species labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pandas as pd

from modeling_bioscanclip.constants_bioscanclip import ALL_RANKS

from .base import BioscanBuilderBase, BioscanBuilderConfig, take_column
from .integrity import DataIntegrityError, PrepareSummary
from .partition import CLIBD_METASPLITS, CLIBD_SPLITS, clibd_partition
from .schema import read_metadata_table

__all__ = ["BoldExport", "BoldExportConfig", "COI_MARKER"]

COI_MARKER = "COI-5P"
_PARTITION_MODES = ("auto", "none", "clibd")

_DESCRIPTION = """\
A BOLD Systems specimen export (BCDM or the older BOLD TSV), COI-5P barcodes with their taxonomy, read into the
bioscan-clip record schema. DNA only: no images."""

_CITATION = """\
@article{ratnasingham2007bold,
  title={{BOLD}: The Barcode of Life Data System},
  author={Ratnasingham, Sujeevan and Hebert, Paul D. N.},
  journal={Molecular Ecology Notes},
  volume={7}, number={3}, pages={355--364}, year={2007}
}"""


@dataclass
class BoldExportConfig(BioscanBuilderConfig):
    """:class:`BioscanBuilderConfig` named ``bold``; ``partition`` is ``none`` (one ``train`` split) or ``clibd``.

    ``data_dir`` may be the export file itself, or its folder with ``metadata_file`` naming it.
    """

    name: str = "bold"
    image_package: str | None = None

    def __post_init__(self):
        super().__post_init__()
        if self.partition not in _PARTITION_MODES:
            raise ValueError(f"partition must be one of {_PARTITION_MODES} for BOLD exports, got {self.partition!r}")


def _split_multi(values: pd.Series) -> pd.Series:
    return values.str.split(";").map(lambda parts: [p.strip() for p in parts])


class BoldExport(BioscanBuilderBase):
    """Builder for a BOLD TSV export (DNA only).

    Example:

    ```python
    >>> builder = BoldExport(data_dir="exports/odonata.tsv", cache_dir="/tmp/hf")  # doctest: +SKIP
    >>> builder.download_and_prepare()  # doctest: +SKIP
    >>> library = builder.as_dataset(split="train")  # doctest: +SKIP
    ```
    """

    BUILDER_CONFIG_CLASS = BoldExportConfig
    SPLITS: ClassVar[tuple[str, ...]] = ("train",)
    DESCRIPTION = _DESCRIPTION
    CITATION = _CITATION
    HOMEPAGE = "https://boldsystems.org"
    LICENSE = "per-record BOLD terms; see the export"

    config: BoldExportConfig

    @classmethod
    def _resolve_metadata(cls, data_dir: str | None, metadata_file: str | None) -> Path:
        if metadata_file is None and data_dir is not None and Path(data_dir).is_file():
            return Path(data_dir)
        if metadata_file is None:
            raise DataIntegrityError("BoldExport needs the export file: data_dir=<file.tsv> or metadata_file=")
        return super()._resolve_metadata(data_dir, metadata_file)

    def _split_layout(self) -> tuple[tuple[str, ...], dict[str, tuple[str, ...]]]:
        if self.config.partition == "clibd":
            return CLIBD_SPLITS, CLIBD_METASPLITS
        return self.SPLITS, {}

    def _load_frame(self, metadata: Path, summary: PrepareSummary) -> pd.DataFrame:
        raw = read_metadata_table(metadata, sep="\t")
        summary.rows_read = len(raw)
        if "processid" not in raw.columns:
            raise DataIntegrityError(f"{metadata} has no 'processid' column; is it a BOLD TSV export?")
        sequence_column = "nuc" if "nuc" in raw.columns else "nucraw" if "nucraw" in raw.columns else None
        if sequence_column is None:
            raise DataIntegrityError(f"{metadata} has neither 'nuc' (BCDM) nor 'nucraw' (BOLD TSV) sequence column")

        sequences = raw[sequence_column].str.strip()
        if "marker_code" in raw.columns:
            markers = raw["marker_code"].str.strip()
            sequences = self._coi_sequences(markers, sequences, summary)
            is_coi = _split_multi(markers).map(lambda parts: COI_MARKER in parts)
        else:
            summary.warnings.append(f"{metadata} has no 'marker_code' column: every row is taken as {COI_MARKER}")
            is_coi = pd.Series(True, index=raw.index)
        summary.rows_dropped["non_coi_marker"] = int((~is_coi).sum())

        frame = pd.DataFrame(index=raw.index)
        still_multi = sequences.str.contains(";", regex=False) & is_coi
        if still_multi.any():
            summary.multi_value_cells[sequence_column] = int(still_multi.sum())
        frame["dna_barcode"] = _normalise_sequence(sequences)
        for target, source in (("processid", "processid"), ("sampleid", "sampleid"), ("dna_bin", "bin_uri")):
            frame[target] = self._first_value(take_column(raw, source), source, is_coi, summary)
        for rank in ALL_RANKS:
            frame[rank] = self._first_value(take_column(raw, rank), rank, is_coi, summary)
        frame["image_path"] = None

        frame = frame[is_coi]
        no_sequence = frame["dna_barcode"].isna()
        summary.rows_dropped["no_sequence"] = int(no_sequence.sum())
        frame = frame[~no_sequence].copy()
        if self.config.partition == "clibd":
            frame["split"] = clibd_partition(frame["species"], seed=self.config.seed)
        else:
            frame["split"] = "train"
        return frame

    @staticmethod
    def _coi_sequences(markers: pd.Series, sequences: pd.Series, summary: PrepareSummary) -> pd.Series:
        """For ``;``-joined markers with as many ``;``-joined sequences, picks the COI-5P sequence."""
        multi = markers.str.contains(";", regex=False)
        if not multi.any():
            return sequences
        summary.multi_value_cells["marker_code"] = int(multi.sum())
        picked = sequences.copy()
        for index in markers.index[multi]:
            marker_parts = [p.strip() for p in markers[index].split(";")]
            sequence_parts = [p.strip() for p in sequences[index].split(";")]
            if COI_MARKER in marker_parts and len(sequence_parts) == len(marker_parts):
                picked[index] = sequence_parts[marker_parts.index(COI_MARKER)]
        return picked

    @staticmethod
    def _first_value(values: pd.Series, column: str, counted: pd.Series, summary: PrepareSummary) -> pd.Series:
        multi = values.notna() & values.astype(str).str.contains(";", regex=False)
        if not multi.any():
            return values
        summary.multi_value_cells[column] = int((multi & counted).sum())
        first = values[multi].astype(str).str.split(";").str[0].str.strip()
        out = values.copy()
        out[multi] = first.where(first != "", None)
        return out


def _normalise_sequence(sequences: pd.Series) -> pd.Series:
    # A remaining ';' means a multi-sequence cell whose markers we could not match: keep the first sequence.
    first = sequences.str.split(";").str[0].str.strip()
    return take_column(pd.DataFrame({"s": first}), "s")
