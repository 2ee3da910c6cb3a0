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

from .integrity import DataIntegrityError

logger = logging.getLogger(__name__)

__all__ = [
    "TABLE_SUFFIXES",
    "detect_delimiter",
    "read_table",
    "read_table_chunks",
]

TABLE_SUFFIXES = (".tsv", ".csv", ".txt", ".tab")
"""File name endings taken as tables where a data folder could also be given."""


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
    return _tidy(frame, options["sep"], path)


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
            yield _tidy(frame, options["sep"], path)


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


def _tidy(frame: pd.DataFrame, sep: str, path: Path) -> pd.DataFrame:
    names = [str(c).strip().strip('"').strip() for c in frame.columns]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:  # two columns of one name: a cell could not say which it belongs to
        raise DataIntegrityError(
            f"{path}: the header names {', '.join(map(repr, twice))} more than once; give each column its own name"
        )
    frame.columns = names
    if sep == "\t":
        for column in frame.columns:
            frame[column] = _unquote(frame[column])
    return frame


def _name(sep: str) -> str:
    return {"\t": "tab-separated", ";": "';'-separated", ",": "comma-separated"}[sep]
