"""Barcodes as the model reads them at inference: cleaned (one error naming the record) and read from a later base
(the reading frames that :func:`bioscan_clip.features.embed_inputs` averages)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from modeling_bioscanclip import normalize_barcode
from modeling_bioscanclip.constants_bioscanclip import KMER_SIZE


def clean_barcodes(barcodes: Sequence[Any], names: Sequence[Any] | None = None) -> list[str]:
    """The cleaned barcodes (whole length, not cut to the tokenizer's), errors naming the record by ``names`` (else
    by position).

    Raises:
        `BioscanInputError`: a barcode the tokenizer would refuse, e.g. ``record X (barcode): invalid character``.
    """
    labels = (
        [f"barcode {i}" for i in range(len(barcodes))] if names is None else [f"record {n} (barcode)" for n in names]
    )
    return [normalize_barcode(barcode, record=label).sequence for barcode, label in zip(barcodes, labels, strict=True)]


def frame_shifted_barcodes(sequences: Sequence[str], shift: int) -> list[str]:
    """Each cleaned barcode read from base ``shift`` on; one too short to keep a k-mer stays whole (its frames are
    then its own embedding again, which leaves it unchanged by the averaging)."""
    return [sequence[shift:] if len(sequence) - shift >= KMER_SIZE else sequence for sequence in sequences]
