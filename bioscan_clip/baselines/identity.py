"""The field's DNA -> DNA baseline: 1-NN by pairwise alignment identity, with BOLD-style identity thresholds.

BOLD's identification engine and BLAST name a barcode by the key it is most identical to, and call the species at
about 98 % identity. Here the candidates of each query are its ``candidates`` nearest keys by 5-mer profile
(:mod:`bioscan_clip.baselines.kmer`, a fast pre-filter), each candidate is aligned to the query with edlib, and the
query takes the labels of the most identical candidate (ties: the one with the higher 5-mer similarity).

Identity of two barcodes: the shorter is aligned inside the longer with edlib's infix mode (``HW``: the longer
one's unaligned ends are free, so barcodes read from different start positions align); where the alignment reaches
an end of the longer barcode, the end stretch with the lowest net score (+1 per match, -1 per other column) is
dropped (the shorter barcode overhanging the longer one: an overlap alignment's free end gaps), and identity is
``matches / alignment columns`` over what is left (mismatches, insertions and deletions all count as columns).
An IUPAC code matches every base it stands for (``N`` matches anything). Pairs that overlap by fewer than
``MIN_OVERLAP`` columns get identity 0: so short an overlap says nothing about the species.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import edlib
import numpy as np

from modeling_bioscanclip.constants_bioscanclip import TAXONOMIC_RANKS
from modeling_bioscanclip.tokenization_dna import normalize_barcode

from .kmer import build_kmer_key_index, kmer_profile

DEFAULT_CANDIDATES = 20
MIN_OVERLAP = 100
# The usual cut-offs for naming a COI barcode from its best identity hit (as BOLDigger applies them to BOLD's
# identification engine): species >= 98 %, genus >= 95 %, family >= 90 %, order >= 85 %.
IDENTITY_THRESHOLDS: dict[str, float] = {"order": 0.85, "family": 0.90, "genus": 0.95, "species": 0.98}

_IUPAC = {"R": "AG", "Y": "CT", "S": "CG", "W": "AT", "K": "GT", "M": "AC",
          "B": "CGT", "D": "AGT", "H": "ACT", "V": "ACG", "N": "ACGT"}  # fmt: skip
_EQUALITIES = [(code, base) for code, bases in _IUPAC.items() for base in bases]
_CIGAR = re.compile(r"(\d+)([=XID])")


def clean_barcodes(barcodes: Sequence[str], what: str = "barcodes") -> list[str]:
    """Barcodes cleaned as the tokenizer cleans them (case, gaps, FASTA header); a bad one is named by position."""
    return [normalize_barcode(b, record=f"{what}[{i}]").sequence for i, b in enumerate(barcodes)]


def alignment_identity(first: str, second: str, *, min_overlap: int = MIN_OVERLAP) -> tuple[float, int]:
    """Identity (0..1) and overlap (alignment columns) of two cleaned barcodes, as defined in the module doc.

    >>> alignment_identity("ACGTACGTAC", "TTACGTACGTACTT", min_overlap=5)
    (1.0, 10)
    >>> alignment_identity("GGGACGTACGTAC", "ACGTACGTACTT", min_overlap=5)  # 3 overhanging bases are dropped
    (1.0, 10)
    """
    query, target = (first, second) if len(first) <= len(second) else (second, first)
    if not query:
        return 0.0, 0
    found = edlib.align(query, target, mode="HW", task="path", additionalEqualities=_EQUALITIES)
    # The alignment as runs of one column kind; the net score (+1 match, -1 otherwise) moves monotonically within
    # a run, so its lowest point, where an overhang is cut, lies on a run boundary: runs suffice, columns need not
    # be spelled out (this is the hot loop of every barcode identification).
    runs = [(int(n), op == "=") for n, op in _CIGAR.findall(found["cigar"] or "")]
    ((start, end),) = found["locations"][:1]
    first_kept, last_kept = 0, len(runs)
    # Where the alignment reaches an end of the longer barcode, the shorter one may overhang it: edlib scores the
    # overhang as edits (gaps or chance mismatches, at equal cost), so drop the end stretch with the lowest net
    # score, as an overlap alignment with free end gaps would.
    if start == 0:
        first_kept = _lowest_prefix(runs)
    if end == len(target) - 1:
        last_kept = len(runs) - _lowest_prefix(runs[::-1])
    kept = runs[first_kept:last_kept]
    columns = sum(n for n, _ in kept)
    if columns < min_overlap:
        return 0.0, int(columns)
    return sum(n for n, match in kept if match) / columns, int(columns)


def _lowest_prefix(runs: list[tuple[int, bool]]) -> int:
    """How many leading runs to drop: the first point where the running net score is lowest (0 = none)."""
    lowest, best, total = 0, 0, 0
    for i, (n, match) in enumerate(runs, start=1):
        total += n if match else -n
        if total < lowest:
            lowest, best = total, i
    return best


def best_identity(
    queries: Sequence[str], keys: Sequence[str], candidates: np.ndarray, *, min_overlap: int = MIN_OVERLAP
) -> tuple[np.ndarray, np.ndarray]:
    """For each query, the candidate key (a row of ``candidates``, -1 = none) with the highest identity.

    Returns ``identity`` (float, 0 when no candidate overlaps) and ``rows`` (the key row, -1 when none).
    """
    identity = np.zeros(len(queries), dtype=np.float64)
    rows = np.full(len(queries), -1, dtype=np.int64)
    for q, query in enumerate(queries):
        for row in candidates[q]:
            if row < 0:
                continue
            value, _ = alignment_identity(query, keys[int(row)], min_overlap=min_overlap)
            if value > identity[q] or rows[q] < 0:  # strict: a tie keeps the better 5-mer candidate
                identity[q], rows[q] = value, int(row)
    return identity, rows


@dataclass
class IdentityResult:
    """1-NN by alignment identity: per query the best key's row, identity, labels and the BOLD-style calls."""

    identity: np.ndarray
    rows: np.ndarray
    labels: dict[str, list[Any]]
    confident: dict[str, np.ndarray]


def identity_nearest(
    query_barcodes: Sequence[str],
    key_barcodes: Sequence[str],
    key_labels: Mapping[str, Sequence[Any]],
    *,
    candidates: int = DEFAULT_CANDIDATES,
    thresholds: Mapping[str, float] = IDENTITY_THRESHOLDS,
    min_overlap: int = MIN_OVERLAP,
    candidate_rows: np.ndarray | None = None,
) -> IdentityResult:
    """Names each query by its most identical key among its ``candidates`` nearest keys by 5-mer profile.

    Args:
        query_barcodes, key_barcodes: DNA barcodes (cleaned here as the tokenizer cleans them).
        key_labels: ``processid`` and the ranks of each key, as for :meth:`KeyIndex.build`.
        candidates: how many 5-mer nearest keys are aligned per query.
        thresholds: per rank, the identity at which a call is confident (:data:`IDENTITY_THRESHOLDS`).
        candidate_rows: instead of the 5-mer search, the key rows to align per query, best first (-1 = none),
            e.g. a learned embedding's nearest keys: alignment re-ranking of the model's candidates.
    """
    keys = clean_barcodes(key_barcodes, "keys")
    queries = clean_barcodes(query_barcodes, "queries")
    if candidate_rows is None:
        index = build_kmer_key_index(keys, {"processid": list(key_labels["processid"]),
                                            **{r: list(key_labels[r]) for r in TAXONOMIC_RANKS}})  # fmt: skip
        _, found = index.search(kmer_profile(queries), min(candidates, len(index)))
    else:
        found = np.asarray(candidate_rows)
        if found.shape[0] != len(queries):
            raise ValueError(f"candidate_rows has {found.shape[0]} rows for {len(queries)} queries")
    identity, rows = best_identity(queries, keys, found, min_overlap=min_overlap)
    labels = {rank: [key_labels[rank][r] if r >= 0 else None for r in rows] for rank in TAXONOMIC_RANKS}
    confident = {
        rank: np.array([label is not None for label in labels[rank]]) & (identity >= thresholds[rank])
        for rank in TAXONOMIC_RANKS
    }
    return IdentityResult(identity=identity, rows=rows, labels=labels, confident=confident)
