"""A model-free DNA -> DNA baseline: barcodes as normalised k-mer count vectors, classified by nearest neighbour.

A DNA barcode is turned into the counts of its overlapping A/C/G/T k-mers (k = 5 by default, the k of the BarcodeBERT
tokenizer), L2-normalised so that inner product is cosine similarity. Indexed with
:class:`bioscan_clip.retrieval.KeyIndex`, this gives the alignment-free nearest-neighbour baseline against which the
learned DNA encoder's DNA -> DNA retrieval can be judged.

The counting is vectorised: all barcodes are concatenated into one byte array, each window of k bases becomes a
base-4 number with a few array shifts, and ``np.bincount`` counts (barcode, k-mer) pairs in one pass.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

from bioscan_clip.retrieval.key_index import KeyIndex
from modeling_bioscanclip.constants_bioscanclip import KMER_SIZE, NUCLEOTIDES
from modeling_bioscanclip.errors_bioscanclip import BioscanInputError
from modeling_bioscanclip.tokenization_dna import normalize_barcode

# The profile has 4**k columns; above this k it no longer fits comfortably in memory for a batch of barcodes.
MAX_PROFILE_K = 8
# Barcodes are counted in chunks of this many so the (chunk, 4**k) count matrix stays small.
PROFILE_CHUNK_SIZE = 4096

_INVALID = np.uint8(4)
# Byte -> base code: A, C, G, T -> 0..3 (lexicographic, so the column order is the k-mer's lexicographic rank, the
# order of `kmer_vocabulary`); every other byte -> 4, which makes any window containing it invalid.
_BASE_CODES = np.full(256, _INVALID, dtype=np.uint8)
for _code, _base in enumerate(NUCLEOTIDES):
    _BASE_CODES[ord(_base)] = _code


def kmer_feature_names(k: int = KMER_SIZE) -> list[str]:
    """The k-mer of each column of :func:`kmer_profile`, in order (``AAAAA``, ``AAAAC``, ...)."""
    return ["".join(letters) for letters in itertools.product(NUCLEOTIDES, repeat=k)]


def _count_chunk(codes_per_barcode: list[np.ndarray], k: int) -> np.ndarray:
    """Counts the valid k-mers of each barcode; returns ``(barcodes, 4**k)`` int64."""
    n_barcodes = len(codes_per_barcode)
    width = 4**k
    # One invalid separator after each barcode so no window spans two barcodes.
    lengths = np.array([len(codes) + 1 for codes in codes_per_barcode], dtype=np.int64)
    separator = np.array([_INVALID], dtype=np.uint8)
    joined = np.concatenate([part for codes in codes_per_barcode for part in (codes, separator)])
    n_windows = joined.size - k + 1
    if n_windows <= 0:
        return np.zeros((n_barcodes, width), dtype=np.int64)
    invalid = (joined == _INVALID).astype(np.int64)
    invalid_before = np.concatenate([[0], np.cumsum(invalid)])
    window_valid = invalid_before[k : k + n_windows] == invalid_before[:n_windows]  # no invalid base in the window
    values = np.zeros(n_windows, dtype=np.int64)
    digits = np.minimum(joined, 3).astype(np.int64)  # invalid windows are dropped below, so their digits do not matter
    for offset in range(k):  # k shifts over the whole chunk, not a loop over k-mers
        values = values * 4 + digits[offset : offset + n_windows]
    owner = np.repeat(np.arange(n_barcodes, dtype=np.int64), lengths)[:n_windows]
    flat = owner[window_valid] * width + values[window_valid]
    return np.bincount(flat, minlength=n_barcodes * width).reshape(n_barcodes, width)


def kmer_profile(
    barcodes: Sequence[str],
    k: int = KMER_SIZE,
    *,
    norm: Literal["l2", "l1", "none"] = "l2",
) -> np.ndarray:
    """Normalised counts of the overlapping A/C/G/T k-mers of each barcode.

    Each barcode is cleaned exactly as the model's DNA tokenizer cleans it (``normalize_barcode``: case, ``U``,
    whitespace, one FASTA header, gaps; anything but nucleotides and IUPAC codes is refused), but not truncated;
    windows that hold anything but A/C/G/T (e.g. ``N``) are skipped, never mapped to a neighbouring k-mer.

    Args:
        barcodes (`Sequence[str]`): DNA barcodes.
        k (`int`, *optional*, defaults to `KMER_SIZE` (5)): k-mer length, 1 to 8.
        norm (`str`, *optional*, defaults to `"l2"`): ``"l2"`` (unit length; inner product = cosine, as
            :class:`~bioscan_clip.retrieval.KeyIndex` expects), ``"l1"`` (k-mer frequencies) or ``"none"`` (counts).

    Returns:
        `np.ndarray`: ``(barcodes, 4**k)`` float32; column j is the k-mer ``kmer_feature_names(k)[j]``.

    Raises:
        `BioscanInputError`: an empty list, a bad k or norm, a non-string or invalid barcode, or a barcode without a
        single valid k-mer (named by index: its profile would be a zero vector with no direction).

    Example:

    >>> profile = kmer_profile(["ACGTA", "acgt-a", "ACGTAC"], k=4, norm="none")
    >>> profile.shape
    (3, 256)
    >>> names = kmer_feature_names(4)
    >>> {names[j]: int(profile[2, j]) for j in profile[2].nonzero()[0]}
    {'ACGT': 1, 'CGTA': 1, 'GTAC': 1}
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= MAX_PROFILE_K:
        raise BioscanInputError(f"k must be an int in [1, {MAX_PROFILE_K}], got {k!r}")
    if norm not in ("l2", "l1", "none"):
        raise BioscanInputError(f"norm must be 'l2', 'l1' or 'none', got {norm!r}")
    if isinstance(barcodes, str):
        raise BioscanInputError("barcodes must be a sequence of strings, got a single str; wrap it in a list")
    barcodes = list(barcodes)
    if not barcodes:
        raise BioscanInputError("barcodes is empty")
    k = int(k)
    profiles = np.empty((len(barcodes), 4**k), dtype=np.float32)
    for start in range(0, len(barcodes), PROFILE_CHUNK_SIZE):
        chunk = barcodes[start : start + PROFILE_CHUNK_SIZE]
        codes = []
        for offset, barcode in enumerate(chunk):
            cleaned = normalize_barcode(barcode, record=f"barcodes[{start + offset}]").sequence
            codes.append(_BASE_CODES[np.frombuffer(cleaned.encode("ascii"), dtype=np.uint8)])
        counts = _count_chunk(codes, k)
        totals = counts.sum(axis=1)
        if (totals == 0).any():
            bad = start + int(np.flatnonzero(totals == 0)[0])
            raise BioscanInputError(
                f"barcodes[{bad}] has no valid {k}-mer (fewer than {k} consecutive A/C/G/T): {barcodes[bad]!r:.80}"
            )
        counts = counts.astype(np.float64)
        if norm == "l2":
            counts /= np.linalg.norm(counts, axis=1, keepdims=True)
        elif norm == "l1":
            counts /= totals[:, None]
        profiles[start : start + len(chunk)] = counts
    return profiles


def build_kmer_key_index(
    barcodes: Sequence[str],
    metadata: Mapping[str, Sequence[Any]],
    *,
    k: int = KMER_SIZE,
    **build_kwargs: Any,
) -> KeyIndex:
    """A :class:`~bioscan_clip.retrieval.KeyIndex` of k-mer profiles: the DNA -> DNA nearest-neighbour baseline.

    Args:
        barcodes (`Sequence[str]`): Key barcodes.
        metadata (`dict[str, list]`): Key ids and taxonomy, as for :meth:`KeyIndex.build`.
        k (`int`, *optional*, defaults to 5): k-mer length.
        **build_kwargs: Passed to :meth:`KeyIndex.build` (e.g. ``index_type``, ``extra``).

    Returns:
        `KeyIndex` with ``modality="dna"`` and ``embedding_name="kmer{k}_profile"``; query it with
        ``kmer_profile(query_barcodes, k)``.
    """
    build_kwargs.setdefault("modality", "dna")
    build_kwargs.setdefault("embedding_name", f"kmer{k}_profile")
    return KeyIndex.build(kmer_profile(barcodes, k), metadata, **build_kwargs)
