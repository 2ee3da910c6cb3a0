"""The query readers: FASTA files and query tables (a BOLD export, or any CSV/TSV with a barcode and/or an image
column). The command line reaches them without importing any builder; BOLD tables are read with the BOLD rules
(:mod:`.bold_table`), exactly as for a reference library."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd

from modeling_bioscanclip.constants_bioscanclip import TAXONOMIC_RANKS

from .bold_table import bold_frame, is_bold_table
from .integrity import DataIntegrityError, PrepareSummary
from .schema import normalise_missing
from .tables import read_table

logger = logging.getLogger(__name__)


# The barcode column of a query table, first match wins (BOLD's BCDM nuc, older nucraw, v3 nucleotides).
BARCODE_COLUMNS = ("dna_barcode", "barcode", "nuc", "nucraw", "nucleotides", "sequence")


# The identifier column of a query table, first match wins.
ID_COLUMNS = ("processid", "id", "sampleid", "name")


def read_fasta(path: str | Path) -> list[tuple[str, str]]:
    """``(id, sequence)`` for each record of a FASTA file (wrapped lines joined; ``;`` comments skipped).

    Errors name the file and the line or record (a sequence before the first header, a record without sequence).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise DataIntegrityError(f"{path}: not UTF-8 text (byte {error.start})") from None
    except OSError as error:
        raise DataIntegrityError(f"{path}: cannot be read ({error.strerror or error})") from None
    records: list[tuple[str, list[str]]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith(";"):
            continue
        if line.startswith(">"):
            records.append((line[1:].split()[0] if line[1:].strip() else f"record{len(records) + 1}", []))
        elif not records:
            raise DataIntegrityError(f"{path}:{number}: sequence before the first '>' header")
        else:
            records[-1][1].append(line)
    if not records:
        raise DataIntegrityError(f"{path}: no FASTA records")
    for identifier, lines in records:
        if not lines:
            raise DataIntegrityError(f"{path}: record {identifier!r} has no sequence")
    return [(identifier, "".join(lines)) for identifier, lines in records]


def read_query_table(path: str | Path) -> tuple[list[dict[str, Any]], PrepareSummary]:
    """Queries from a table: a BOLD export, or any CSV/TSV with a barcode column and/or an ``image`` column.

    A BOLD export (a ``processid`` column and BOLD's sequence column) is read with the BOLD builder's rules, so
    non-COI rows and rows without a sequence are dropped and counted, and ``;``-joined markers resolved, exactly
    as for a reference library. Other tables: the barcode column is the first of :data:`BARCODE_COLUMNS`, the
    identifier the first of :data:`ID_COLUMNS` (else ``row<N>``); image paths are relative to the table's folder;
    rows with neither barcode nor image are dropped and counted (``no_sequence``). Each query also carries the
    table's taxonomy when it has one (``order`` ... ``species``), so a report can set predictions beside it.

    Returns:
        `tuple`: the queries (dicts with ``id`` and ``barcode`` and/or ``image``, and ``truth`` when known) and
        a :class:`PrepareSummary` of what was read and dropped (logged too).
    """
    path = Path(path)
    raw = read_table(path)
    summary = PrepareSummary(source=str(path), rows_read=len(raw))
    if raw.empty:
        raise DataIntegrityError(f"{path}: no rows")
    if is_bold_table(raw):
        frame = bold_frame(raw, path, summary, keep_provisional_names=True)
        queries = [
            {"id": row["processid"], "barcode": row["dna_barcode"], "truth": _truth(row)}
            for row in frame.to_dict("records")
        ]
    else:
        queries = _generic_queries(raw, path, summary)
    summary.rows_kept = len(queries)
    logger.info("%s", summary.describe())
    if not queries:
        raise DataIntegrityError(f"{path}: no usable query rows ({summary.describe()})")
    return queries, summary


def _truth(row: dict[str, Any]) -> dict[str, Any] | None:
    truth = {rank: row.get(rank) for rank in TAXONOMIC_RANKS}
    return truth if any(truth.values()) else None


def _generic_queries(raw: pd.DataFrame, path: Path, summary: PrepareSummary) -> list[dict[str, Any]]:
    columns = list(raw.columns)
    barcode = next((c for c in BARCODE_COLUMNS if c in columns), None)
    image = "image" if "image" in columns else None
    identifier = next((c for c in ID_COLUMNS if c in columns), None)
    if barcode is None and image is None:
        raise DataIntegrityError(
            f"{path}: expected a barcode column ({', '.join(BARCODE_COLUMNS)}) or an 'image' column; got {columns}"
        )
    ranks = [rank for rank in TAXONOMIC_RANKS if rank in columns]
    taxonomy = {rank: normalise_missing(raw[rank]).tolist() for rank in ranks}
    barcodes = normalise_missing(raw[barcode]).tolist() if barcode else [None] * len(raw)
    images = normalise_missing(raw[image]).tolist() if image else [None] * len(raw)
    queries = []
    dropped = 0
    for number, (sequence, image_path) in enumerate(zip(barcodes, images, strict=True), start=1):
        if sequence is None and image_path is None:
            dropped += 1
            continue
        query: dict[str, Any] = {"id": raw[identifier].iat[number - 1] if identifier else f"row{number}"}
        if sequence is not None:
            query["barcode"] = sequence
        if image_path is not None:
            query["image"] = str((path.parent / image_path).resolve())
        truth = {rank: taxonomy[rank][number - 1] for rank in ranks}
        if any(truth.values()):
            query["truth"] = truth
        queries.append(query)
    summary.rows_dropped["no_sequence"] = dropped
    return queries
