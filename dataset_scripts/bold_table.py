"""BOLD's table rules, apart from the builder: which tables are BOLD exports, their column names across BOLD's
formats, the COI-5P records in the record schema, and which species names are provisional. The query reader
(:mod:`.queries`) and the builder (:mod:`.bold`) both read BOLD tables through these rules."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from modeling_bioscanclip.constants_bioscanclip import ALL_RANKS

from .integrity import DataIntegrityError, PrepareSummary
from .schema import take_column

COI_MARKER = "COI-5P"


# BOLD sequence columns after BOLD_COLUMN_ALIASES: BCDM ``nuc``, the older portal TSV's ``nucraw``.
SEQUENCE_COLUMNS = ("nuc", "nucraw")


# Older BOLD column names (v3 public API: order_name ... species_name, markercode, nucleotides) -> the BCDM names.
BOLD_COLUMN_ALIASES: dict[str, str] = {
    "nucleotides": "nuc",
    "markercode": "marker_code",
    "bin": "bin_uri",
    **{f"{rank}_name": rank for rank in ("phylum", "class", "order", "family", "subfamily", "tribe", "genus")},
    "species_name": "species",
    "subspecies_name": "subspecies",
}


# Open nomenclature and interim names: "sp.", "spp.", "cf.", "aff.", "nr.", "gen.", "nsp"; or a digit ("sp. 2ES",
# "bus-1", "BIOUG01234-A01").
_PROVISIONAL = re.compile(r"(?:^|\s)(?:sp|spp|cf|aff|nr|gen|nsp|n\. ?sp)\.?(?:\s|$)|\d")


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
