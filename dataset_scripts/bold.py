"""Builder for BOLD specimen exports: a user's own DNA-only reference library.

Three export formats are read, told apart by their columns, each separated by tabs, commas or ``;`` (read by
:func:`dataset_scripts.tables.read_table`: separator from the header line, BOM, CRLF, quoted fields):

* BCDM (current BOLD data packages): sequence in ``nuc``, marker in ``marker_code``, BIN in ``bin_uri``;
* the older BOLD portal TSV: sequence in ``nucraw``;
* the BOLD v3 public API TSV: ``nucleotides``, ``markercode``, ``order_name`` ... ``species_name``
  (:data:`BOLD_COLUMN_ALIASES` maps them to the BCDM names).

Rules, each counted in the preparation summary:

* only ``COI-5P`` rows are kept; rows of other markers (16S, ITS, ...) or with no marker are dropped
  (``rows_dropped["non_coi_marker"]``). A file without ``marker_code`` is taken as all COI-5P, with a warning;
* COI-5P rows without a sequence are dropped (``rows_dropped["no_sequence"]``): a DNA-only record needs DNA;
* ``;``-separated multi-value cells: when ``marker_code`` lists several markers and ``nuc`` as many sequences,
  the sequence at the COI-5P position is taken; any other multi-value cell (a second BIN, two names) keeps its
  first value (``multi_value_cells[column]``);
* ``None``, ``NA``, ``not_classified`` and empty cells are missing;
* species names in open nomenclature or interim codes (``Aus sp.``, ``Aus sp. 2ES``, ``Aus cf. bus``) are read as
  missing (``labels_cleared["provisional_species"]``; the record stays, labelled to genus), unless
  ``keep_provisional_names=True`` keeps each as a label of its own;
* sequences are kept as written (lower case, ``-`` gaps, ambiguity codes): the DNA tokenizer normalises them.

There is no image: ``image`` is always ``None``. ``partition="none"`` (default, also ``"auto"``) writes one
``train`` split: a reference library, whose every record is a training record and a key
(:data:`dataset_scripts.RETRIEVAL_SPLITS`); ``partition="clibd"`` applies the CLIBD rules of
:mod:`dataset_scripts.partition` to the species labels (seen/unseen queries and keys).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pandas as pd

from modeling_bioscanclip.constants_bioscanclip import ALL_RANKS

from .base import BioscanBuilderBase, BioscanBuilderConfig, take_column
from .integrity import DataIntegrityError, PrepareSummary
from .partition import CLIBD_METASPLITS, CLIBD_SPLITS, clibd_partition
from .tables import read_table

__all__ = [
    "BOLD_COLUMN_ALIASES",
    "COI_MARKER",
    "SEQUENCE_COLUMNS",
    "BoldExport",
    "BoldExportConfig",
    "bold_frame",
    "is_bold_table",
    "is_provisional_name",
]

COI_MARKER = "COI-5P"
_PARTITION_MODES = ("auto", "none", "clibd")  # auto = none: an export is a reference library unless asked

SEQUENCE_COLUMNS = ("nuc", "nucraw")
"""BOLD sequence columns after :data:`BOLD_COLUMN_ALIASES`: BCDM ``nuc``, the older portal TSV's ``nucraw``."""

BOLD_COLUMN_ALIASES: dict[str, str] = {
    "nucleotides": "nuc",
    "markercode": "marker_code",
    "bin": "bin_uri",
    **{f"{rank}_name": rank for rank in ("phylum", "class", "order", "family", "subfamily", "tribe", "genus")},
    "species_name": "species",
    "subspecies_name": "subspecies",
}
"""Older BOLD column names (v3 public API: ``order_name`` ... ``species_name``, ``markercode``, ``nucleotides``)
-> the BCDM names used here."""

# Open nomenclature and interim names: "sp.", "spp.", "cf.", "aff.", "nr.", "gen.", "nsp"; or a digit ("sp. 2ES",
# "bus-1", "BIOUG01234-A01").
_PROVISIONAL = re.compile(r"(?:^|\s)(?:sp|spp|cf|aff|nr|gen|nsp|n\. ?sp)\.?(?:\s|$)|\d")

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

    Args:
        keep_provisional_names (`bool`, *optional*, defaults to `False`): keep ``sp.``/``cf.``/interim species names
            as labels of their own instead of reading them as missing.
    """

    name: str = "bold"
    image_package: str | None = None
    keep_provisional_names: bool = False

    def __post_init__(self):
        super().__post_init__()
        if self.partition not in _PARTITION_MODES:
            raise ValueError(f"partition must be one of {_PARTITION_MODES} for BOLD exports, got {self.partition!r}")


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
        if metadata_file is None and (data_dir is None or Path(data_dir).is_dir()):
            raise DataIntegrityError(
                f"BoldExport needs the export file: data_dir=<file.tsv> or metadata_file= (got data_dir={data_dir!r})"
            )
        return super()._resolve_metadata(data_dir, metadata_file)

    def _split_layout(self) -> tuple[tuple[str, ...], dict[str, tuple[str, ...]]]:
        if self.config.partition == "clibd":
            return CLIBD_SPLITS, CLIBD_METASPLITS
        return self.SPLITS, {}

    def _load_frame(self, metadata: Path, summary: PrepareSummary) -> pd.DataFrame:
        raw = read_table(metadata)
        summary.rows_read = len(raw)
        frame = bold_frame(raw, metadata, summary, keep_provisional_names=self.config.keep_provisional_names)
        if self.config.partition == "clibd":
            frame["split"] = clibd_partition(frame["species"], seed=self.config.seed)
        else:
            frame["split"] = "train"
        return frame


def canonical_bold_columns(raw: pd.DataFrame) -> pd.DataFrame:
    """Renames the BOLD v3 API / older portal column names to the BCDM names (``nucleotides`` -> ``nuc``,
    ``markercode`` -> ``marker_code``, ``species_name`` -> ``species`` ...), where the BCDM name is not there."""
    renames = {old: new for old, new in BOLD_COLUMN_ALIASES.items() if old in raw.columns and new not in raw.columns}
    return raw.rename(columns=renames) if renames else raw


def is_bold_table(raw: pd.DataFrame) -> bool:
    """Whether a table is a BOLD export: a ``processid`` column and one of BOLD's sequence columns."""
    columns = set(canonical_bold_columns(raw.head(0)).columns)
    return "processid" in columns and bool(columns & set(SEQUENCE_COLUMNS))


def bold_frame(
    raw: pd.DataFrame, metadata: Path, summary: PrepareSummary, *, keep_provisional_names: bool = False
) -> pd.DataFrame:
    """The COI-5P records of a BOLD export in the record schema (no ``split``), every drop counted in ``summary``.

    Args:
        raw (`pd.DataFrame`): the table as :func:`~dataset_scripts.tables.read_table` reads it.
        metadata (`Path`): its file, named in errors and warnings.
        summary ([`PrepareSummary`]): gets ``rows_dropped``, ``labels_cleared``, ``multi_value_cells``, ``rows_kept``.
        keep_provisional_names (`bool`, *optional*, defaults to `False`): keep species names in open nomenclature
            (``Aus sp. 2ES``, ``Aus cf. bus``) as labels of their own; by default they are read as missing.
    """
    raw = canonical_bold_columns(raw)
    if "processid" not in raw.columns:
        raise DataIntegrityError(
            f"{metadata} has no 'processid' column; is it a BOLD export? (columns: {list(raw.columns)[:12]} ...)"
        )
    sequence_column = next((c for c in SEQUENCE_COLUMNS if c in raw.columns), None)
    if sequence_column is None:
        raise DataIntegrityError(
            f"{metadata} has no sequence column: expected one of {SEQUENCE_COLUMNS} (BCDM 'nuc', older 'nucraw', "
            "BOLD v3 'nucleotides')"
        )

    sequences = raw[sequence_column].str.strip()
    if "marker_code" in raw.columns:
        markers = raw["marker_code"].str.strip()
        sequences = _coi_sequences(markers, sequences, summary)
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
        frame[target] = _first_value(take_column(raw, source), source, is_coi, summary)
    for rank in ALL_RANKS:
        frame[rank] = _first_value(take_column(raw, rank), rank, is_coi, summary)
    frame["image_path"] = None

    frame = frame[is_coi]
    no_sequence = frame["dna_barcode"].isna()
    summary.rows_dropped["no_sequence"] = int(no_sequence.sum())
    frame = frame[~no_sequence].copy()
    provisional = frame["species"].map(is_provisional_name, na_action="ignore").fillna(False).astype(bool)
    if provisional.any() and not keep_provisional_names:
        summary.labels_cleared["provisional_species"] = int(provisional.sum())
        frame.loc[provisional, "species"] = None
    summary.rows_kept = len(frame)
    return frame


def is_provisional_name(species: str) -> bool:
    """Whether a species name is in open nomenclature or an interim code (``Aus sp.``, ``Aus sp. 2ES``,
    ``Aus cf. bus``, ``Aus nr. bus``, ``Aus bus-1``), rather than a binomial other projects would share.

    Example:

    ```python
    >>> [is_provisional_name(n) for n in ("Aedes vexans", "Cora sp. A", "Chironomus sp. 2ES", "Aus cf. bus")]
    [False, True, True, True]

    ```
    """
    return bool(_PROVISIONAL.search(species))


def _split_multi(values: pd.Series) -> pd.Series:
    return values.str.split(";").map(lambda parts: [p.strip() for p in parts])


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
