"""The product's DNA identifier: a barcode's candidate keys re-ranked by alignment identity, the hits barcoders read.

BOLD's identification engine and BLAST answer a barcode with its *hits*: the most identical library barcodes, each
with its percent identity and overlap. Here the candidates of a query are its :data:`CANDIDATES` nearest keys by
5-mer profile (the key folder's ``kmer`` index, which needs no model) and, when the keys were embedded by a model,
its :data:`CANDIDATES` nearest by the learned DNA embedding (the ``dna`` index); each distinct candidate is aligned
to the query (:func:`~bioscan_clip.baselines.identity.alignment_identity`) and the hits are the candidates by
identity, highest first (ties keep the candidate order, 5-mer candidates first). Either source alone loses on one
of the two real libraries the README measures; their union holds on both (``evaluate --protocol species_held_out``).

The answer at a rank is the label most of the *near-best* hits share (those within :data:`MARGIN` of the best
identity; ties go to the better hit), and its confidence is the share of near-best hits that agree with it (the
LCA idea of BLAST-based classifiers: near-equal hits that disagree make a rank unsure). A rank is *confident* when
the best identity reaches that rank's threshold, calibrated on the library itself by ``bioscan-clip index``
(:func:`calibrate_barcode_search`: every key searched against the others, a share of each rank's labels held out,
as the embeddings are calibrated) so that confident calls reach the target precision; where calibration could not
set a threshold (too few keys with the rank) BOLD-style identity thresholds are used instead
(:data:`~bioscan_clip.baselines.identity.IDENTITY_THRESHOLDS`: species 98 %, genus 95 %, family 90 %, order 85 %).
Each rank's threshold is at least the coarser ranks' (a species call names its genus), so the confident ranks of
an answer always run from order down.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from bioscan_clip.baselines.identity import IDENTITY_THRESHOLDS, MIN_OVERLAP, alignment_identity
from bioscan_clip.baselines.kmer import kmer_profile
from bioscan_clip.retrieval.key_index import KeyIndex
from modeling_bioscanclip.constants_bioscanclip import TAXONOMIC_RANKS
from modeling_bioscanclip.tokenization_dna import normalize_barcode

from .calibration import (
    CALIBRATION_SEED,
    DEFAULT_PRECISION,
    HELD_OUT_FRACTION,
    METHOD_NONE,
    calibrate_calls,
    held_out_per_rank,
    sample_rows,
)

CANDIDATES = 20  # per candidate index: the 5-mer's and the model's
DEFAULT_HITS = 25  # hits reported per query, as BOLD's identification engine lists
MARGIN = 0.0  # identity (0..1) below the best that still counts as near-best: chosen in the README's measurements
ALIGNMENT_PAIR = "dna->dna (alignment identity)"  # its name in calibration.json
_HAS_KMER = re.compile(r"[ACGT]{5}")


@dataclass
class Hits:
    """One query's hits: key rows, identity (0..1) and overlap (alignment columns), best first."""

    rows: np.ndarray
    identity: np.ndarray
    overlap: np.ndarray


@dataclass
class RankCall:
    """The answer at one rank from a query's hits."""

    label: str | None
    identity: float
    agreement: float
    confident: bool


class KeyBarcodes:
    """The keys' barcodes by row, cleaned as the tokenizer cleans them: from a list, or from a column of the key
    records (read row by row, so a million-key library is not copied into memory)."""

    def __init__(self, barcodes: Sequence[str | None] | pa.ChunkedArray) -> None:
        self._barcodes = barcodes

    def fetch(self, rows: Sequence[int]) -> dict[int, str]:
        """``row -> cleaned barcode`` ("" for a key without one)."""
        rows = sorted({int(r) for r in rows})
        if isinstance(self._barcodes, pa.ChunkedArray):
            values = self._barcodes.take(pa.array(rows, type=pa.int64())).to_pylist()
        else:
            values = [self._barcodes[r] for r in rows]
        return {
            r: normalize_barcode(v, record=f"key row {r}").sequence if v else ""
            for r, v in zip(rows, values, strict=True)
        }


def merge_candidates(*found: np.ndarray) -> list[np.ndarray]:
    """Per query, the candidate rows of every source in order (first source first), each row once, -1 dropped."""
    merged = []
    for rows in zip(*found, strict=True):
        merged.append(np.array(list(dict.fromkeys(int(r) for part in rows for r in part if r >= 0)), dtype=np.int64))
    return merged


def align_candidates(
    queries: Sequence[str],
    barcodes: KeyBarcodes,
    candidates: Sequence[np.ndarray],
    *,
    min_overlap: int = MIN_OVERLAP,
    cache: list[dict[int, tuple[float, int]]] | None = None,
) -> list[Hits]:
    """Aligns each query (a cleaned barcode) to its candidate keys; the hits by identity, highest first.

    ``cache`` (one dict per query, filled here) keeps alignments already made, e.g. across calibration ranks.
    """
    keys = barcodes.fetch(np.concatenate([*candidates, np.zeros(0, dtype=np.int64)]))
    result = []
    for q, (query, rows) in enumerate(zip(queries, candidates, strict=True)):
        known = cache[q] if cache is not None else {}
        same: dict[str, tuple[float, int]] = {}  # identical key barcodes (haplotypes) are aligned once
        for row in rows:
            row = int(row)
            if row not in known:
                key = keys[row]
                if key not in same:
                    same[key] = alignment_identity(query, key, min_overlap=min_overlap) if key else (0.0, 0)
                known[row] = same[key]
        identity = np.array([known[int(r)][0] for r in rows], dtype=np.float64)
        overlap = np.array([known[int(r)][1] for r in rows], dtype=np.int64)
        order = np.argsort(-identity, kind="stable")
        result.append(
            Hits(rows=np.asarray(rows, dtype=np.int64)[order], identity=identity[order], overlap=overlap[order])
        )
    return result


def call_rank(hits: Hits, labels: np.ndarray, margin: float = MARGIN) -> tuple[str | None, float, float]:
    """The label most near-best hits share at one rank (``labels``: one per key row), the best identity and the
    share of near-best hits that agree; no label when nothing overlaps the query.

    >>> hits = Hits(rows=np.array([0, 1, 2]), identity=np.array([0.99, 0.99, 0.97]), overlap=np.array([650] * 3))
    >>> call_rank(hits, np.array(["a", "b", "b"], dtype=object), margin=0.02)
    ('b', 0.99, 0.6667)
    >>> call_rank(hits, np.array(["a", "b", "b"], dtype=object), margin=0.0)  # a tie goes to the better hit
    ('a', 0.99, 0.5)
    """
    if not hits.rows.size or hits.identity[0] <= 0:
        return None, 0.0, 0.0
    near = hits.rows[hits.identity >= hits.identity[0] - margin - 1e-9]
    counts = Counter(labels[near].tolist())
    label = max(counts, key=lambda value: counts[value])  # the first of the most common: the better hit's
    return label, float(hits.identity[0]), round(counts[label] / near.size, 4)


class BarcodeSearch:
    """The keys' barcodes with their candidate indexes, answering barcode queries with their hits.

    Args:
        barcodes: the keys' barcodes by row (:class:`KeyBarcodes`).
        kmer: the 5-mer profile index of the keys (rows as ``barcodes``; its key table gives the labels).
        dna: the learned DNA embedding index of the same keys, when a model embedded them.
        thresholds: per rank the identity (0..1) from which a call is confident (missing ranks: BOLD's).
        margin: near-best margin of :func:`call_rank`.
    """

    def __init__(
        self,
        barcodes: KeyBarcodes,
        kmer: KeyIndex,
        dna: KeyIndex | None = None,
        *,
        thresholds: Mapping[str, float] | None = None,
        margin: float = MARGIN,
    ) -> None:
        self.barcodes = barcodes
        self.kmer = kmer
        self.dna = dna
        self.thresholds = {**IDENTITY_THRESHOLDS, **(thresholds or {})}
        self.margin = margin
        self.labels = {rank: kmer.column(rank) for rank in TAXONOMIC_RANKS if rank in kmer.keys.column_names}

    def __len__(self) -> int:
        return len(self.kmer)

    def candidates(
        self,
        queries: Sequence[str],
        dna_vectors: np.ndarray | None = None,
        *,
        count: int = CANDIDATES,
        restrict: Mapping[str, str | Sequence[str]] | None = None,
        rows: np.ndarray | None = None,
        own_rows: np.ndarray | None = None,
    ) -> list[np.ndarray]:
        """Per query, its ``count`` nearest keys by 5-mer profile, then its :data:`CANDIDATES` nearest by
        ``dna_vectors`` (when given and the keys have a DNA index), each row once; only keys of ``restrict`` or
        ``rows`` are searched, and never a query's own row (``own_rows``, leave-one-out)."""
        # A query too short for one 5-mer (a few bases) has no 5-mer candidates: no hits, so no answer, not an error.
        profiled = np.array([_HAS_KMER.search(query) is not None for query in queries], dtype=bool)
        profiles = kmer_profile([q for q, ok in zip(queries, profiled, strict=True) if ok]) if profiled.any() else []
        sources = [(self.kmer, profiles, count)]
        if dna_vectors is not None and self.dna is not None:
            sources.append((self.dna, dna_vectors, CANDIDATES))
        if rows is None and restrict is not None:  # resolved once for every source: their keys are the same rows
            rows = self.kmer.restrict_ids(restrict)
        searchable = len(self) if rows is None else len(rows)
        extra = 1 if own_rows is not None else 0
        found = []
        for index, vectors, wanted in sources:
            k = min(wanted + extra, searchable)
            if k == 0 or not len(vectors):
                found.append(np.full((len(queries), 0), -1, dtype=np.int64))
                continue
            _, indices = index.search(vectors, k, rows=rows)
            if len(indices) < len(queries):  # the 5-mer source, without the unprofiled queries
                padded = np.full((len(queries), k), -1, dtype=np.int64)
                padded[profiled] = indices
                indices = padded
            if own_rows is not None:
                indices = np.where(indices == np.asarray(own_rows)[:, None], -1, indices)
                indices = np.array([row[row >= 0][:wanted] for row in indices], dtype=object)
            found.append(indices)
        return merge_candidates(*found)

    def hits(
        self,
        queries: Sequence[str],
        dna_vectors: np.ndarray | None = None,
        *,
        restrict: Mapping[str, str | Sequence[str]] | None = None,
        count: int = CANDIDATES,
    ) -> list[Hits]:
        """Each query's hits among its candidates (:meth:`candidates`, ``count`` of them by 5-mer profile), best
        first."""
        found = self.candidates(queries, dna_vectors, count=count, restrict=restrict)
        return align_candidates(queries, self.barcodes, found)

    def calls(self, hits: Hits) -> dict[str, RankCall]:
        """The answer at every rank from one query's hits."""
        calls = {}
        for rank, labels in self.labels.items():
            label, identity, agreement = call_rank(hits, labels, self.margin)
            confident = label is not None and identity >= self.thresholds.get(rank, float("inf"))
            calls[rank] = RankCall(label, identity, agreement, bool(confident))
        return calls


def calibrate_barcode_search(
    search: BarcodeSearch,
    *,
    dna_vectors: np.ndarray | None = None,
    precision: float = DEFAULT_PRECISION,
    fraction: float = HELD_OUT_FRACTION,
    seed: int = CALIBRATION_SEED,
) -> dict[str, Any]:
    """Identity thresholds for ``search`` from the library itself: a seeded sample of the keys, each identified
    against the others (its own row never a candidate) with a share of each rank's labels held out of the keys, so
    that the thresholds see queries whose species (genus, ...) the library lacks; ``dna_vectors`` are the keys'
    DNA embeddings (rows as the keys), for the model's candidates. Returns what
    :func:`~bioscan_clip.identification.calibration.calibrate_pair` returns; a rank calibration cannot set falls
    back to BOLD's threshold (``method`` says so)."""
    rows = sample_rows(len(search))
    key_labels = {rank: search.labels[rank] for rank in TAXONOMIC_RANKS}
    truth = {rank: key_labels[rank][rows].tolist() for rank in TAXONOMIC_RANKS}
    held_out = held_out_per_rank(truth, key_labels, fraction, seed)
    fetched = search.barcodes.fetch(rows)
    queries = [fetched[int(r)] for r in rows]
    vectors = None if dna_vectors is None else np.asarray(dna_vectors)[rows]
    cache: list[dict[int, tuple[float, int]]] = [{} for _ in rows]
    scores, predicted = {}, {}
    for rank in TAXONOMIC_RANKS:
        searched = np.flatnonzero(~np.isin(key_labels[rank], np.array(sorted(held_out[rank]), dtype=object)))
        searched = None if len(searched) == len(search) else searched
        candidates = search.candidates(queries, vectors, rows=searched, own_rows=rows)
        calls = [
            call_rank(hits, key_labels[rank], search.margin)
            for hits in align_candidates(queries, search.barcodes, candidates, cache=cache)
        ]
        predicted[rank] = [label for label, _, _ in calls]
        scores[rank] = np.array([identity if label is not None else -np.inf for label, identity, _ in calls])
    result = calibrate_calls(scores, predicted, truth, key_labels, held_out, rows, precision, ALIGNMENT_PAIR)
    coarser = 0.0
    for rank, entry in result["report"]["ranks"].items():  # order to species
        if entry["method"] == METHOD_NONE:
            result["thresholds"][rank] = entry["threshold"] = IDENTITY_THRESHOLDS[rank]
            entry["method"] = "BOLD-style identity threshold (too few keys to calibrate)"
        # A species call names its genus: a finer rank is never confident where a coarser one is not.
        coarser = result["thresholds"][rank] = entry["threshold"] = max(coarser, result["thresholds"][rank])
    return result
