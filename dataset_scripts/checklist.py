"""Checklists: lists of taxon names with no specimens, read into the record schema's four ranks.

A checklist is what a lab has before it has vouchers: the species of a region or a project. ``bioscan-clip index
--checklist`` turns one into text keys (the taxonomy-text tower embeds each name) and ``predict --restrict_file``
restricts a specimen library to its taxa. Two forms:

* a **text file** (``.txt``): one taxon per line, either a species binomial (``Danaus plexippus``) or its full path
  ``Order Family Genus epithet`` (``Lepidoptera Nymphalidae Danaus plexippus``); blank lines and lines starting with
  ``#`` are skipped. Higher ranks are capitalised, the epithet is not (so swapped or shifted words are caught), and
  a word holds letters and hyphens only (``Polygonia c-album``; open nomenclature such as ``Aus sp.`` is refused:
  a checklist names taxa). A line of one or three words is ambiguous (which rank?) and refused: a higher-rank
  entry goes in a table;
* a **table** (``.csv``, ``.tsv``, ``.tab``; read by :func:`~dataset_scripts.tables.read_table`, so any file the other
  readers take) with ``order``, ``family``, ``genus`` and ``species`` columns (other columns are ignored). A row
  names its taxon at its deepest filled rank; ranks above it may be empty (unknown), as in records. The species
  cell holds the full name (``Danaus plexippus``), as the record schema does, and starts with the genus when one
  is given.

The text tower reads a taxon as the records' ``"order family genus species"`` string (``not_classified`` for an
empty rank): a binomial leaves order and family unclassified, so give the full path when the model was trained on
full taxonomies. Every refusal is one :class:`~dataset_scripts.integrity.DataIntegrityError` naming the file and
the line; a taxon listed twice is refused with both lines.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from modeling_bioscanclip.constants_bioscanclip import MISSING_TAXON_STRINGS, TAXONOMIC_RANKS

from .integrity import DataIntegrityError

__all__ = ["CHECKLIST_SUFFIXES", "Checklist", "ChecklistEntry", "read_checklist"]

TEXT_SUFFIXES = (".txt",)
TABLE_SUFFIXES = (".csv", ".tsv", ".tab")
CHECKLIST_SUFFIXES = TEXT_SUFFIXES + TABLE_SUFFIXES

_HIGHER = re.compile(r"[^\W\d_][^\W\d_-]*(?:-[^\W\d_]+)*")  # a word of letters, hyphens inside
_FORMS = "'Genus species' or 'Order Family Genus species'"


@dataclass(frozen=True)
class ChecklistEntry:
    """One taxon of a checklist: its four ranks (None where not given), and the line of the file it came from."""

    line: int
    taxonomy: dict[str, str | None]

    @property
    def rank(self) -> str:
        """The deepest rank given: the rank this entry names."""
        return next(rank for rank in reversed(TAXONOMIC_RANKS) if self.taxonomy[rank])

    @property
    def name(self) -> str:
        """The taxon's name at :attr:`rank` (``Danaus plexippus``, ``Nymphalidae``)."""
        return str(self.taxonomy[self.rank])


@dataclass(frozen=True)
class Checklist:
    """The taxa of a checklist file, in file order."""

    path: Path
    entries: tuple[ChecklistEntry, ...]

    def by_rank(self) -> dict[str, list[str]]:
        """``rank -> names`` of the entries named at each rank, in file order."""
        names: dict[str, list[str]] = {}
        for entry in self.entries:
            names.setdefault(entry.rank, []).append(entry.name)
        return names


def read_checklist(path: str | Path) -> Checklist:
    """Reads a checklist (see the module notes for the forms).

    Raises:
        `DataIntegrityError`: one line naming the file (and the line) when the file is missing, of another kind,
        not UTF-8, holds no taxon, or has a malformed or repeated entry.

    Example:

    ```python
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "taxa.txt"
    >>> _ = path.write_text("# butterflies\\nDanaus plexippus\\nLepidoptera Pieridae Pieris rapae\\n")
    >>> [(entry.line, entry.rank, entry.taxonomy["family"]) for entry in read_checklist(path).entries]
    [(2, 'species', None), (3, 'species', 'Pieridae')]

    ```
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in CHECKLIST_SUFFIXES:
        raise DataIntegrityError(
            f"{path}: a checklist is a .txt file (one taxon per line) or a .csv/.tsv table with order, family, "
            f"genus, species columns; got {path.suffix or 'no suffix'}"
        )
    if not path.is_file():
        raise DataIntegrityError(f"{path}: {'is a folder' if path.is_dir() else 'no such file'}; expected a checklist")
    entries = _text_entries(path) if suffix in TEXT_SUFFIXES else _table_entries(path)
    if not entries:
        raise DataIntegrityError(f"{path}: no taxon listed (only blank or '#' comment lines)")
    seen: dict[tuple[str, str], int] = {}
    for entry in entries:
        first = seen.setdefault((entry.rank, entry.name), entry.line)
        if first != entry.line:
            raise DataIntegrityError(f"{path}: line {entry.line}: {entry.name} is listed already on line {first}")
    return Checklist(path, tuple(entries))


def _text_entries(path: Path) -> list[ChecklistEntry]:
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as error:
        raise DataIntegrityError(f"{path}: not UTF-8 text (byte {error.start})") from None
    except OSError as error:
        raise DataIntegrityError(f"{path}: cannot be read ({error.strerror or error})") from None
    entries = []
    for number, line in enumerate(lines, start=1):
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        where = f"{path}: line {number}"
        if len(words) not in (2, 4):
            raise DataIntegrityError(
                f"{where}: expected {_FORMS}, got {len(words)} word{'s' * (len(words) != 1)} ({line.strip()!r}); "
                "list higher ranks in a .csv with order, family, genus, species columns"
            )
        *higher, epithet = words
        for word in higher:
            if not (_HIGHER.fullmatch(word) and word[0].isupper()):
                raise DataIntegrityError(f"{where}: {word!r} is not a capitalised name; expected {_FORMS}")
        if not (_HIGHER.fullmatch(epithet) and epithet[0].islower()):
            raise DataIntegrityError(
                f"{where}: {epithet!r} is not a species epithet (lower case, letters and hyphens); expected {_FORMS}"
            )
        order, family, genus = (None, None, higher[0]) if len(higher) == 1 else higher
        taxonomy = {"order": order, "family": family, "genus": genus, "species": f"{genus} {epithet}"}
        entries.append(ChecklistEntry(number, taxonomy))
    return entries


def _table_entries(path: Path) -> list[ChecklistEntry]:
    from .tables import read_table

    frame = read_table(path)
    columns = {name.lower(): name for name in frame.columns}
    missing = [rank for rank in TAXONOMIC_RANKS if rank not in columns]
    if missing:
        raise DataIntegrityError(
            f"{path}: no {', '.join(missing)} column; a checklist table has order, family, genus and species "
            f"columns (found {', '.join(map(str, frame.columns))})"
        )
    entries = []
    cells = frame[[columns[rank] for rank in TAXONOMIC_RANKS]].itertuples(index=False, name=None)
    for row, values in enumerate(cells):
        number = row + 2  # the header is line 1
        taxonomy = {
            rank: (value.strip() if value.strip() not in MISSING_TAXON_STRINGS else None)
            for rank, value in zip(TAXONOMIC_RANKS, values, strict=True)
        }
        species, genus = taxonomy["species"], taxonomy["genus"]
        if not any(taxonomy.values()):
            raise DataIntegrityError(f"{path}: line {number}: no taxon (every rank empty)")
        if species is not None and len(species.split()) < 2:
            raise DataIntegrityError(
                f"{path}: line {number}: species {species!r} is not a full species name; the species column holds "
                "'Genus epithet', as records do"
            )
        if species is not None and genus is not None and species.split()[0] != genus:
            raise DataIntegrityError(f"{path}: line {number}: species {species!r} is not in the genus {genus!r}")
        entries.append(ChecklistEntry(number, taxonomy))
    return entries
