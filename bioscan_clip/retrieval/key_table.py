"""The key table of a key index: one row per key with its id, taxonomy and metadata, checked before indexing."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import datasets
import pyarrow as pa

from modeling_bioscanclip.errors_bioscanclip import BioscanInputError

from .storage import EMBEDDING_COLUMN

DEFAULT_ID_COLUMN = "processid"


def key_table(
    metadata: Mapping[str, Sequence[Any]] | datasets.Dataset,
    count: int,
    id_column: str,
    required_columns: Sequence[str],
) -> datasets.Dataset:
    """``metadata`` as a ``datasets.Dataset`` of ``count`` rows whose id and required columns hold strings.

    Raises:
        `BioscanInputError`: columns of different lengths or mixed types, an ``"embedding"`` column, a row-count
        mismatch, or a missing or non-string id / required column (named, with a sample value).
    """
    if isinstance(metadata, datasets.Dataset):
        table = metadata
    elif isinstance(metadata, Mapping):
        lengths = {name: len(values) for name, values in metadata.items()}
        if len(set(lengths.values())) > 1:
            raise BioscanInputError(f"metadata columns have different lengths: {lengths}")
        try:
            table = datasets.Dataset.from_dict({name: list(values) for name, values in metadata.items()})
        except (pa.ArrowInvalid, pa.ArrowTypeError) as error:  # e.g. str and int mixed in one column
            raise BioscanInputError(f"metadata columns must each hold one type: {error}") from None
    else:
        raise BioscanInputError(f"metadata must be a dict of columns or a datasets.Dataset, got {type(metadata)}")
    if EMBEDDING_COLUMN in table.column_names:
        raise BioscanInputError(f"metadata must not have an {EMBEDDING_COLUMN!r} column; pass embeddings separately")
    if len(table) != count:
        raise BioscanInputError(f"metadata has {len(table)} rows but embeddings have {count}")
    string_columns = (id_column, *required_columns)
    string_features = (datasets.Value("string"), datasets.Value("large_string"), datasets.Value("null"))
    for column in string_columns:
        if column not in table.column_names:
            raise BioscanInputError(f"metadata has no {column!r} column; it has {table.column_names}")
        if table.features[column] not in string_features:
            first = next((value for value in table[column] if value is not None), None)
            raise BioscanInputError(
                f"metadata column {column!r} must hold str or None, got {table.features[column]} values such as "
                f"{type(first).__name__} {first!r}"
            )
    # An all-missing column is inferred as Arrow "null"; declare it string so saved schemas do not vary.
    null_columns = [c for c in string_columns if table.features[c] == datasets.Value("null")]
    for column in null_columns:
        table = table.cast_column(column, datasets.Value("string"))
    return table


def detached(table: datasets.Dataset) -> datasets.Dataset:
    """The rows of ``table`` as a new in-memory Dataset, in their visible order, with the same features."""
    keys = datasets.Dataset(table.with_format("arrow")[:])  # honours any select/shuffle indices mapping
    return keys if keys.features == table.features else keys.cast(table.features)
