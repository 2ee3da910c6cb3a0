"""Typed errors raised at the package's input boundaries."""

from __future__ import annotations


class BioscanInputError(ValueError):
    """Invalid user input (a barcode, a taxonomy record, a tensor shape); the message names the value."""


class BioscanImageError(BioscanInputError):
    """An image that cannot be decoded safely: unknown format, truncated, too large, or too elongated."""


def record_label(name: object, part: str) -> str:
    """How an error names one part of a named record, e.g. ``record BIOUG123-45 (barcode)``."""
    return f"record {name} ({part})"


def check_names(names: object, count: int, part: str) -> None:
    """Refuses ``names`` (one per record, for error messages) that are not one per ``part`` given."""
    if names is not None and len(names) != count:
        raise BioscanInputError(f"names: expected one name per {part} ({count}), got {len(names)}")
