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
import pyarrow.compute as pc

from modeling_bioscanclip.constants_bioscanclip import ALL_RANKS, MAX_NUCLEOTIDES, MISSING_TAXON_STRINGS

__all__ = [
    "RECORD_COLUMNS",
    "RECORD_FEATURES",
    "STRING_COLUMNS",
    "fill_genus_from_species",
    "normalise_missing",
    "record_table",
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


def normalise_missing(values: pd.Series, *, arrow: bool = False) -> pd.Series:
    """Strips whitespace and maps the sources' "unknown" spellings to ``None`` (vectorised, in Arrow).

    Args:
        values (`pd.Series`): strings (or ``None``).
        arrow (`bool`, *optional*, defaults to `False`): return pandas' Arrow-backed ``str`` dtype (missing is
            ``NaN``) instead of ``object`` with ``None``: no Python object per cell, which is what lets the
            builders convert millions of rows at about the cost of reading them.

    Returns:
        `pd.Series` of dtype ``object``: the stripped strings, ``None`` where missing (``str`` with ``arrow``).

    Example:

    ```python
    >>> import pandas as pd
    >>> normalise_missing(pd.Series(["Diptera ", "not_classified", "None", "NA", ""])).tolist()
    ['Diptera', None, None, None, None]

    ```
    """
    try:
        array = pa.array(values, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        array = None
    if array is None or not (pa.types.is_string(array.type) or pa.types.is_large_string(array.type)):
        # Not all strings (numbers from a hand-made frame): as text, with None/NaN as missing.
        text = values.astype(object).where(values.notna(), "").astype(str)
        array = pa.array(text, from_pandas=True)
    stripped = pc.utf8_trim_whitespace(array)  # the whitespace pandas' str.strip removes from Arrow strings
    missing = pc.or_kleene(pc.is_null(stripped), pc.is_in(stripped, value_set=pa.array(sorted(_MISSING))))
    clean = pc.if_else(missing, pa.scalar(None, stripped.type), stripped)
    if arrow:
        return pd.Series(pd.array(clean, dtype="str"), index=values.index)
    return pd.Series(clean.to_numpy(zero_copy_only=False), index=values.index, dtype=object)


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
    if values.dtype == "str":  # Arrow-backed (the builders' frames): cut in Arrow, nulls stay null
        cut = pc.utf8_slice_codeunits(pa.array(values), 0, max_nucleotides)
        return pd.Series(pd.array(cut, dtype="str"), index=values.index)
    mask = values.notna()
    out = values.copy()
    out[mask] = values[mask].astype(str).str.slice(0, max_nucleotides)
    return out


def record_table(frame: pd.DataFrame, extra: tuple[str, ...] = ()) -> pa.Table:
    """The :data:`STRING_COLUMNS` (and ``extra`` columns) of a record frame as one Arrow table, converted once.

    Arrow-backed ``str`` columns pass without a copy; ``object`` columns go through Arrow's C++ conversion
    (``None``/``NaN`` become nulls). Strings stay ``large_string`` here (a 5 M-row barcode column is over 2 GiB);
    :func:`records_to_arrow` casts each batch to the schema.
    """
    arrays = [pa.array(frame[name], type=pa.large_string(), from_pandas=True) for name in (*STRING_COLUMNS, *extra)]
    return pa.Table.from_arrays(arrays, names=[*STRING_COLUMNS, *extra])


def records_to_arrow(table: pa.Table, images: list[dict | None]) -> pa.Table:
    """One batch in the :data:`RECORD_FEATURES` schema, from its :func:`record_table` rows and image cells.

    Args:
        table (`pa.Table`): has every column of :data:`STRING_COLUMNS`.
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
            arrays.append(table[name].cast(field.type).combine_chunks())
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


def take_column(raw: pd.DataFrame, name: str, *, arrow: bool = False) -> pd.Series:
    """The normalised column ``name`` of ``raw`` (see :func:`normalise_missing`), or all missing when the source
    lacks it."""
    if name in raw.columns:
        return normalise_missing(raw[name], arrow=arrow)
    if arrow:
        return pd.Series(pd.array([None] * len(raw), dtype="str"), index=raw.index)
    return pd.Series([None] * len(raw), index=raw.index, dtype=object)
