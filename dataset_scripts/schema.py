"""The one record schema shared by every data source, and the missing-value rules that feed it.

Every builder (BIOSCAN-1M, BIOSCAN-5M, BOLD exports, mini-BIOSCAN) yields rows with exactly the columns of
:data:`RECORD_FEATURES`. Column names follow BIOSCAN-5M and the ``bioscan-dataset`` package (1M's ``nucraw``
becomes ``dna_barcode`` and ``uri`` becomes ``dna_bin``).

Missing values: the sources write "unknown" in several ways (``not_classified`` in BIOSCAN-1M, ``None`` in
BOLD exports, empty cells in BIOSCAN-5M, ``NA`` elsewhere). All of them (the set
:data:`~modeling_bioscanclip.constants_bioscanclip.MISSING_TAXON_STRINGS`) are read as ``None`` here and nowhere
else, so a literal ``"NA"`` never becomes a float ``NaN`` and a literal ``"None"`` never becomes a species name.
"""

from __future__ import annotations

import datasets
import pandas as pd
import pyarrow as pa

from modeling_bioscanclip.constants_bioscanclip import ALL_RANKS, MAX_NUCLEOTIDES, MISSING_TAXON_STRINGS

__all__ = [
    "RECORD_COLUMNS",
    "RECORD_FEATURES",
    "STRING_COLUMNS",
    "fill_genus_from_species",
    "normalise_missing",
    "records_to_arrow",
    "truncate_dna",
]

# Text columns of a record, in schema order (``image`` sits after ``sampleid``).
STRING_COLUMNS: tuple[str, ...] = ("processid", "sampleid", "dna_barcode", "dna_bin", *ALL_RANKS, "split")
RECORD_COLUMNS: tuple[str, ...] = ("processid", "sampleid", "image", "dna_barcode", "dna_bin", *ALL_RANKS, "split")

RECORD_FEATURES = datasets.Features(
    {
        "processid": datasets.Value("string"),
        "sampleid": datasets.Value("string"),
        "image": datasets.Image(),
        "dna_barcode": datasets.Value("string"),
        "dna_bin": datasets.Value("string"),
        **{rank: datasets.Value("string") for rank in ALL_RANKS},
        "split": datasets.Value("string"),
    }
)
"""`datasets.Features`: the record schema. Every column may be ``None`` except ``processid`` and ``split``."""

# Compared after stripping whitespace; matching is exact (case-sensitive) so that "na" stays a name if a
# source ever uses it as one.
_MISSING = frozenset(MISSING_TAXON_STRINGS)


def fill_genus_from_species(genus: pd.Series, species: pd.Series) -> tuple[pd.Series, int]:
    """Where ``genus`` is missing and ``species`` known, the species name's first word (as ``bioscan-dataset``'s
    BIOSCAN-1M loader does: ``species.split(" ")[0]``); returns the filled genus and how many were filled.

    Example:

    ```python
    >>> import pandas as pd
    >>> genus, filled = fill_genus_from_species(pd.Series([None, "Aedes", None]),
    ...                                         pd.Series(["Culex pipiens", "Aedes vexans", None]))
    >>> genus.tolist(), filled
    (['Culex', 'Aedes', None], 1)

    ```
    """
    fill = genus.isna().to_numpy() & species.notna().to_numpy()
    out = genus.astype(object).copy()
    out[out.isna().to_numpy()] = None  # assignment keeps a real None in an object column (NaN otherwise)
    if fill.any():
        out[fill] = species[fill].astype(str).str.split(" ").str[0].to_numpy()
    return out, int(fill.sum())


def normalise_missing(values: pd.Series) -> pd.Series:
    """Strips whitespace and maps the sources' "unknown" spellings to ``None`` (vectorised).

    Args:
        values (`pd.Series`): strings (or ``None``).

    Returns:
        `pd.Series` of dtype ``object``: the stripped strings, ``None`` where missing.

    Example:

    ```python
    >>> import pandas as pd
    >>> normalise_missing(pd.Series(["Diptera ", "not_classified", "None", "NA", ""])).tolist()
    ['Diptera', None, None, None, None]

    ```
    """
    stripped = values.astype(object).where(values.notna(), "").astype(str).str.strip()
    out = stripped.astype(object)
    out[stripped.isin(_MISSING).to_numpy()] = None  # assignment keeps a real None (where() would give NaN)
    return out


def truncate_dna(values: pd.Series, max_nucleotides: int | None = MAX_NUCLEOTIDES) -> pd.Series:
    """Cuts barcodes to ``max_nucleotides`` characters, as BIOSCAN does (660 nt by default).

    Sequences are otherwise kept exactly as given (lower case, gaps, ambiguity codes): the DNA tokenizer owns
    normalisation, so that the stored dataset is the source, not our interpretation of it.

    Args:
        values (`pd.Series`): barcodes or ``None``.
        max_nucleotides (`int`, *optional*, defaults to 660): ``None`` keeps full length.
    """
    if max_nucleotides is None:
        return values
    if max_nucleotides < 1:
        raise ValueError(f"max_nucleotides must be a positive integer or None, got {max_nucleotides!r}")
    mask = values.notna()
    out = values.copy()
    out[mask] = values[mask].astype(str).str.slice(0, max_nucleotides)
    return out


def records_to_arrow(frame: pd.DataFrame, images: list[dict | None]) -> pa.Table:
    """Builds an Arrow table in the :data:`RECORD_FEATURES` schema from a record frame and image cells.

    Args:
        frame (`pd.DataFrame`): has every column of :data:`STRING_COLUMNS`.
        images (`list`): one ``{"bytes": bytes | None, "path": str | None}`` or ``None`` per row.

    Returns:
        `pa.Table`: columns in schema order, typed as :data:`RECORD_FEATURES` stores them.
    """
    schema = RECORD_FEATURES.arrow_schema
    arrays = []
    for name in RECORD_COLUMNS:
        field = schema.field(name)
        if name == "image":
            arrays.append(pa.array(images, type=field.type))
        else:
            # from_pandas=True: None and NaN become nulls inside Arrow's C++ conversion (no per-row Python).
            arrays.append(pa.array(frame[name].to_numpy(dtype=object), type=field.type, from_pandas=True))
    return pa.Table.from_arrays(arrays, schema=schema)


# The columns of the released metadata files, in their order (BIOSCAN-5M CSV; BIOSCAN-1M TSV), as the
# bioscan-dataset loaders read them; test fixtures and benchmarks write files in these layouts.
BIOSCAN_5M_COLUMNS = (
    "processid", "sampleid", "taxon", "phylum", "class", "order", "family", "subfamily", "genus", "species",
    "dna_bin", "dna_barcode", "country", "province_state", "coord-lat", "coord-lon", "image_measurement_value",
    "area_fraction", "scale_factor", "inferred_ranks", "split", "index_bioscan_1M_insect", "chunk",
)  # fmt: skip
BIOSCAN_1M_COLUMNS = (
    "sampleid", "processid", "uri", "name", "phylum", "class", "order", "family", "subfamily", "tribe", "genus",
    "species", "subspecies", "nucraw", "image_file", "large_diptera_family", "medium_diptera_family",
    "small_diptera_family", "large_insect_order", "medium_insect_order", "small_insect_order", "chunk_number",
    "copyright_license", "copyright_holder", "copyright_institution", "copyright_contact", "photographer", "author",
)  # fmt: skip
