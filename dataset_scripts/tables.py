"""The one table reader of the package: metadata tables (BIOSCAN-1M/5M, BOLD exports), query tables and FASTA.

Every builder and every command that reads a table comes here, so that a file that one of them reads, all of them
read. What a table may look like:

* separated by tabs, commas or ``;`` (BOLD's curation tooling writes ``;``), told apart from the **header line**
  alone (a sample of the body would be fooled by ``;``-joined multi-value cells or commas inside notes);
* with a UTF-8 byte-order mark, Windows (CRLF) line ends, quoted fields. Comma and ``;`` tables follow CSV quoting;
  tab-separated tables are read unquoted, because BOLD notes hold stray ``"`` that would swallow tabs, and then a
  cell that is quoted as a whole (``"Aedes vexans"``) loses its quotes;
* every cell a Python string: "NA", "None" and empty cells stay strings here and are decided by
  :func:`~dataset_scripts.schema.normalise_missing`, one rule for all sources.

A file that cannot be read raises :class:`~dataset_scripts.integrity.DataIntegrityError` naming the file and,
where the parser knows it, the line.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

from .integrity import DataIntegrityError, PrepareSummary

logger = logging.getLogger(__name__)

__all__ = [
    "BARCODE_COLUMNS",
    "ID_COLUMNS",
    "TABLE_SUFFIXES",
    "detect_delimiter",
    "read_fasta",
    "read_query_table",
    "read_table",
    "read_table_chunks",
]

TABLE_SUFFIXES = (".tsv", ".csv", ".txt", ".tab")
"""File name endings taken as tables where a data folder could also be given."""

BARCODE_COLUMNS = ("dna_barcode", "barcode", "nuc", "nucraw", "nucleotides", "sequence")
"""Query tables: the barcode column, first match wins (BOLD's BCDM ``nuc``, older ``nucraw``, v3 ``nucleotides``)."""

ID_COLUMNS = ("processid", "id", "sampleid", "name")
"""Query tables: the identifier column, first match wins."""

_DELIMITERS = ("\t", ";", ",")


def _header_line(path: Path) -> str:
    try:
        with path.open("r", encoding="utf-8-sig", newline="") as handle:
            return handle.readline().rstrip("\r\n")
    except UnicodeDecodeError as error:
        raise DataIntegrityError(f"{path}: not UTF-8 text (byte {error.start} of the first line)") from None
    except OSError as error:
        raise DataIntegrityError(f"{path}: cannot be read ({error.strerror or error})") from None


def detect_delimiter(header: str) -> str:
    """The column separator of a table, from its header line: a tab if there is one, else ``;`` or ``,``,
    whichever occurs more often (a one-column table gets ``,``).

    Example:

    ```python
    >>> detect_delimiter("processid;sampleid;nuc")
    ';'
    >>> detect_delimiter("processid\\tnotes, free text")
    '\\t'
    >>> detect_delimiter("id,barcode")
    ','

    ```
    """
    if "\t" in header:
        return "\t"
    return ";" if header.count(";") > header.count(",") else ","


def _unquote(values: pd.Series) -> pd.Series:
    """Removes the quotes of cells quoted as a whole (tab tables are read unquoted)."""
    text = values.astype(str)
    quoted = (text.str.len() >= 2) & text.str.startswith('"') & text.str.endswith('"')
    if not quoted.any():
        return values
    out = values.copy()
    out[quoted] = text[quoted].str.slice(1, -1).str.replace('""', '"', regex=False)
    return out


def read_table(path: str | Path, *, usecols: list[str] | None = None, sep: str | None = None) -> pd.DataFrame:
    """Reads a TSV/CSV/``;`` table with every cell as a Python string (see the module notes).

    Args:
        path (`str` or `Path`): the file.
        usecols (`list[str]`, *optional*): columns to read (all when ``None``); names absent from the file are
            ignored.
        sep (`str`, *optional*): the separator; detected from the header line when ``None``.

    Returns:
        `pd.DataFrame`: one ``str`` column per file column, header names stripped of spaces and quotes.
    """
    path, options = _read_options(Path(path), usecols, sep)
    with _reading(path, options["sep"]):
        frame = pd.read_csv(path, **options)
    return _tidy(frame, options["sep"])


def read_table_chunks(
    path: str | Path, rows: int, *, usecols: list[str] | None = None, sep: str | None = None
) -> Iterator[pd.DataFrame]:
    """:func:`read_table` ``rows`` rows at a time (the same frames, concatenated), for streaming: the first chunk
    arrives without the rest of the file being read. A malformed line raises when its chunk is reached."""
    path, options = _read_options(Path(path), usecols, sep)
    with _reading(path, options["sep"]):
        reader = pd.read_csv(path, chunksize=rows, **options)
    with reader:
        while True:
            with _reading(path, options["sep"]):
                frame = next(reader, None)
            if frame is None:
                return
            yield _tidy(frame, options["sep"])


def _read_options(path: Path, usecols: list[str] | None, sep: str | None) -> tuple[Path, dict[str, Any]]:
    header = _header_line(path)
    if not header.strip():
        raise DataIntegrityError(f"{path}: empty file or empty header line; expected a table with a header row")
    sep = sep or detect_delimiter(header)
    quoting = csv.QUOTE_NONE if sep == "\t" else csv.QUOTE_MINIMAL
    options: dict[str, Any] = {
        "sep": sep,
        "dtype": str,
        "keep_default_na": False,
        "na_filter": False,
        "quoting": quoting,
        "encoding": "utf-8-sig",
    }
    if usecols is not None:
        with _reading(path, sep):
            names = [str(c) for c in pd.read_csv(path, nrows=0, **options).columns]
        wanted = set(usecols)
        options["usecols"] = [c for c in names if c.strip().strip('"').strip() in wanted]
    return path, options


@contextmanager
def _reading(path: Path, sep: str):
    """pandas' parser errors as one :class:`DataIntegrityError` naming the file."""
    try:
        yield
    except pd.errors.ParserError as error:
        raise DataIntegrityError(f"{path}: not a well-formed {_name(sep)} table: {error}".strip()) from None
    except UnicodeDecodeError as error:
        raise DataIntegrityError(f"{path}: not UTF-8 text (byte {error.start})") from None
    except pd.errors.EmptyDataError:
        raise DataIntegrityError(f"{path}: empty file; expected a table with a header row") from None


def _tidy(frame: pd.DataFrame, sep: str) -> pd.DataFrame:
    frame.columns = [str(c).strip().strip('"').strip() for c in frame.columns]
    if sep == "\t":
        for column in frame.columns:
            frame[column] = _unquote(frame[column])
    return frame


def _name(sep: str) -> str:
    return {"\t": "tab-separated", ";": "';'-separated", ",": "comma-separated"}[sep]


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
    from .bold import bold_frame, is_bold_table  # bold imports this module: import here, not at the top

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
    from modeling_bioscanclip.constants_bioscanclip import TAXONOMIC_RANKS

    truth = {rank: row.get(rank) for rank in TAXONOMIC_RANKS}
    return truth if any(truth.values()) else None


def _generic_queries(raw: pd.DataFrame, path: Path, summary: PrepareSummary) -> list[dict[str, Any]]:
    from modeling_bioscanclip.constants_bioscanclip import TAXONOMIC_RANKS

    from .schema import normalise_missing

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
