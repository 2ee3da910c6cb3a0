"""Typed errors raised at the package's input boundaries."""

from __future__ import annotations


class BioscanInputError(ValueError):
    """Invalid user input (a barcode, a taxonomy record, a tensor shape); the message names the value."""


class BioscanImageError(BioscanInputError):
    """An image that cannot be decoded safely: unknown format, truncated, too large, or too elongated."""
