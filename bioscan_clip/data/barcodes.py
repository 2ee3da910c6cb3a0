"""Barcodes as the model reads them at inference: cleaned (one error naming the record) and read from a later base
(the reading frames that the model averages, see :meth:`~modeling_bioscanclip.BioscanDnaTokenizer.encode_frames`).

Both live with the tokenizer in ``modeling_bioscanclip``, so that the Hub code (which cannot import this package)
and the package read frames the same way; they are imported here for the package's own callers.
"""

from __future__ import annotations

from modeling_bioscanclip.tokenization_dna import clean_barcodes, frame_shifted_barcodes

__all__ = ["clean_barcodes", "frame_shifted_barcodes"]
