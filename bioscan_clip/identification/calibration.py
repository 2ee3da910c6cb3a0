"""Confidence calibration that sees the case it exists for: queries whose answer is absent from the keys.

A prediction at a rank is the label of the nearest key (1-NN). It is *confident* when the nearest key's score
(cosine similarity for the model, alignment identity for the baseline) reaches that rank's threshold. The threshold
is the lowest score from which the 1-NN calls of the calibration queries are right at least a target share of
the time (default 90 %), estimated by an isotonic fit of right/wrong against the score (:func:`calibrate_thresholds`).

Calibrating on queries whose answers are all in the keys (as validation queries of a closed set are) teaches the
threshold nothing about a query from a species the keys lack: every nearest key is then "right" at every rank and
the threshold falls to the lowest similarity seen, the same at every rank. So, per rank, random labels holding
about :data:`HELD_OUT_FRACTION` of the queries (seeded) are *held out*: the calibration queries are searched
against the keys without them, and a query whose label at that rank is absent from the searched keys counts as
wrong at that rank (its right answer is "not in the library"). The queries are

* the validation queries when there are any (held-out labels are drawn from those the queries have), or
* without them, the keys themselves, leave-one-out (each key searched against the others, its own row excluded):
  keys of held-out labels are the absent cases, the rest the present ones (leave-species-out at the species rank).

Fallbacks, always with a warning (in the log and in ``calibration.json``'s ``warnings``) and marked per rank in
``method``: a rank whose keys have a single label cannot hold one out, so it is calibrated on present answers
only (``"present answers only"``); a rank where no query has its answer absent is marked the same; with fewer than
two usable queries no threshold can be set and the rank is never confident (``"none"``).

The report per rank: the threshold, the precision of confident calls and their coverage (share of the queries with
a label at that rank that are called confidently), measured on the calibration queries themselves (in-sample: the
threshold was chosen on them), how many queries had their answer absent, and the AUROC of the top-1 score as a
detector of an absent answer (at the species rank: the novel-species detection AUROC). :func:`confidence_report`
computes the same quantities on any queries (e.g. test queries against the full keys), and
:func:`identity_confidence_report` for the alignment-identity baseline with BOLD-style thresholds, so the two can
be reported side by side.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bioscan_clip.safe_io import read_json
from modeling_bioscanclip.constants_bioscanclip import TAXONOMIC_RANKS
from modeling_bioscanclip.errors_bioscanclip import BioscanInputError

logger = logging.getLogger(__name__)

DEFAULT_PRECISION = 0.9
DEFAULT_VOTE_TEMPERATURE = 0.05  # of the confidence vote, in calibration.json: cosine hundredths decide neighbours
HELD_OUT_FRACTION = 0.25  # of the queries, per rank: enough absent cases to shape the threshold, most keys kept
CALIBRATION_SEED = 0
MAX_CALIBRATION_QUERIES = 4000  # a seeded sample beyond this: thresholds need hundreds, not millions, of queries
_CHUNK = 256  # queries per similarity block (256 x keys floats in memory at once)
METHOD_HELD_OUT = "held-out labels"
METHOD_PRESENT_ONLY = "present answers only"
METHOD_NONE = "none"
METHOD_CHECKLIST = "none: checklist keys are names without specimens, so there are no queries to calibrate on"
# Thresholds are cosine similarities or alignment identities: in [-1, 1], give or take float32 rounding.
MAX_ABS_THRESHOLD = 1.001


def read_calibration(path: Path) -> dict[str, Any]:
    """A key folder's ``calibration.json``, every value the identifier uses typed and in range before any is used:
    ``thresholds`` an object pair -> rank -> a score in [-1, 1] (cosine similarity, alignment identity) or Infinity
    (never confident), ``vote_temperature`` a finite number above 0. Anything else is one line naming the file and
    the value (a threshold of -1e9 would make every call confident; a temperature of 0 every confidence NaN)."""

    def refuse(what: str) -> None:
        raise BioscanInputError(f"{path}: {what}; rebuild the key folder")

    calibration = read_json(path, "the calibration")
    if not isinstance(calibration, dict):
        refuse(f"the calibration must be a JSON object, got {type(calibration).__name__}")
    thresholds = calibration.get("thresholds")
    if not isinstance(thresholds, dict):
        refuse(f"thresholds must be an object pair -> rank -> threshold, got {thresholds!r:.80}")
    for pair, ranks in thresholds.items():
        if not isinstance(ranks, dict):
            refuse(f"thresholds[{pair!r}] must be an object rank -> threshold, got {ranks!r:.80}")
        for rank, value in ranks.items():
            if rank not in TAXONOMIC_RANKS:
                refuse(f"thresholds[{pair!r}] names {rank!r}, not one of {TAXONOMIC_RANKS}")
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not number or not (value == math.inf or abs(value) <= MAX_ABS_THRESHOLD):
                refuse(f"thresholds[{pair!r}][{rank!r}] must be a score in [-1, 1] or Infinity, got {value!r:.80}")
    temperature = calibration.get("vote_temperature", DEFAULT_VOTE_TEMPERATURE)
    number = isinstance(temperature, (int, float)) and not isinstance(temperature, bool)
    if not number or not math.isfinite(temperature) or temperature <= 0:
        refuse(f"vote_temperature must be a finite number above 0, got {temperature!r:.80}")
    return calibration


def isotonic_accuracy(scores: np.ndarray, hits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The monotone (non-decreasing in score) least-squares fit of right/wrong outcomes against their scores: the
    estimated chance that a call at each score is right, by pool-adjacent-violators; equal scores share one value.

    Returns the distinct scores in ascending order and the fitted accuracy at each.

    >>> isotonic_accuracy(np.array([0.6, 0.7, 0.8, 0.9]), np.array([1, 0, 1, 1]))
    (array([0.6, 0.7, 0.8, 0.9]), array([0.5, 0.5, 1. , 1. ]))
    """
    distinct, inverse = np.unique(np.asarray(scores, dtype=float), return_inverse=True)
    weights = np.bincount(inverse, minlength=len(distinct)).astype(float)
    sums = np.bincount(inverse, weights=np.asarray(hits, dtype=float), minlength=len(distinct))
    # Blocks of adjacent scores, merged while a block's mean exceeds the next one's.
    block_sum, block_weight, block_size = [], [], []
    for total, weight in zip(sums, weights, strict=True):
        block_sum.append(total)
        block_weight.append(weight)
        block_size.append(1)
        while len(block_sum) > 1 and block_sum[-2] / block_weight[-2] > block_sum[-1] / block_weight[-1]:
            total, weight, size = block_sum.pop(), block_weight.pop(), block_size.pop()
            block_sum[-1] += total
            block_weight[-1] += weight
            block_size[-1] += size
    fitted = np.repeat(np.array(block_sum) / np.array(block_weight), block_size) if block_sum else np.zeros(0)
    return distinct, fitted


def calibrate_thresholds(
    similarities: np.ndarray | Mapping[str, np.ndarray],
    correct: Mapping[str, np.ndarray],
    precision: float = DEFAULT_PRECISION,
) -> dict[str, float]:
    """Per rank, the lowest top-1 score from which a 1-NN call is estimated right with probability ``precision``.

    The estimate is the isotonic fit of the calls' outcomes against their scores (:func:`isotonic_accuracy`): a
    call is confident when calls of its score are right at least ``precision`` of the time, so every confident call
    meets the target, not only their average (a cumulative rule would spend the error budget on the highest-scoring
    novel queries), and the confident calls together reach it too.

    Args:
        similarities (`np.ndarray`): top-1 score of each query (one array for all ranks), or a dict rank -> array
            when each rank was searched against other keys (held-out labels).
        correct (`dict[str, np.ndarray]`): per rank, whether each query's 1-NN label was right (True/False), or
            None for a query without a true label at that rank (left out of that rank).
        precision (`float`): the precision confident predictions must reach.

    Returns:
        rank -> threshold (``inf`` when no score reaches the precision: that rank is never confident).

    >>> calibrate_thresholds(np.array([0.9, 0.8, 0.7, 0.6]), {"species": np.array([True, True, False, True])}, 0.75)
    {'species': 0.8}
    >>> calibrate_thresholds(np.array([0.9, 0.8, 0.7]), {"species": np.array([False, True, None])}, 0.9)
    {'species': inf}
    """
    thresholds = {}
    for rank, outcome in correct.items():
        scores = np.asarray(similarities[rank] if isinstance(similarities, Mapping) else similarities, dtype=float)
        known = np.array([value is not None for value in outcome], dtype=bool) & np.isfinite(scores)
        hits = np.asarray(np.asarray(outcome, dtype=object)[known], dtype=float)
        distinct, fitted = isotonic_accuracy(scores[known], hits)
        passing = np.flatnonzero(fitted >= precision)
        thresholds[rank] = float(distinct[passing[0]]) if passing.size else float("inf")
    return thresholds


def novelty_auroc(scores: Sequence[float], novel: Sequence[bool]) -> float | None:
    """AUROC of ``scores`` as a detector of novel queries, where a LOWER score means "more likely novel": the
    probability that a random novel query scores below a random known one (ties count one half). None when either
    group is empty.

    >>> novelty_auroc([0.9, 0.8, 0.4, 0.3], [False, False, True, True])
    1.0
    >>> novelty_auroc([0.9, 0.5, 0.5, 0.3], [False, True, False, True])  # 3 of 4 pairs right, one tie: 3.5 / 4
    0.875
    """
    scores = np.asarray(scores, dtype=float)
    novel = np.asarray(novel, dtype=bool)
    positives, negatives = scores[novel], scores[~novel]
    if positives.size == 0 or negatives.size == 0:
        return None
    # Mann-Whitney U from average ranks (ties share their mean rank), O(n log n).
    order = np.argsort(np.concatenate([negatives, positives]), kind="stable")
    values = np.concatenate([negatives, positives])[order]
    ranks = np.empty(len(values))
    start = 0
    while start < len(values):
        end = start
        while end + 1 < len(values) and values[end + 1] == values[start]:
            end += 1
        ranks[start : end + 1] = (start + end) / 2 + 1
        start = end + 1
    rank_of = np.empty(len(values))
    rank_of[order] = ranks
    negative_rank_sum = rank_of[: negatives.size].sum()
    u = negative_rank_sum - negatives.size * (negatives.size + 1) / 2  # pairs where the known query scores higher
    return float(u / (negatives.size * positives.size))


def confident_calls(scores: np.ndarray, correct: np.ndarray, threshold: float) -> dict[str, Any]:
    """Precision of the confident calls (score >= ``threshold``) and their coverage, over the queries with a label
    (``correct`` not None).

    >>> confident_calls(np.array([0.9, 0.8, 0.5, 0.4]), np.array([True, False, True, None]), 0.7)
    {'precision': 0.5, 'coverage': 0.6667, 'confident': 2, 'queries': 3}
    """
    scores = np.asarray(scores, dtype=float)
    known = np.array([value is not None for value in correct], dtype=bool) & np.isfinite(scores)
    confident = known & (scores >= threshold)
    hits = np.asarray(np.asarray(correct, dtype=object)[confident], dtype=bool)
    return {
        "precision": round(float(hits.mean()), 4) if hits.size else None,
        "coverage": round(float(confident.sum() / known.sum()), 4) if known.any() else None,
        "confident": int(confident.sum()),
        "queries": int(known.sum()),
    }


def confidence_report(
    scores: Mapping[str, np.ndarray] | np.ndarray,
    predicted: Mapping[str, Sequence[Any]],
    truth: Mapping[str, Sequence[Any]],
    absent: Mapping[str, np.ndarray],
    thresholds: Mapping[str, float],
) -> dict[str, Any]:
    """Per rank, the calibration quantities of 1-NN calls: threshold, precision and coverage of the confident
    calls, queries with their answer absent from the keys, and the AUROC of the score as an absent-answer detector;
    at the top level the novel-species AUROC and how often the "unknown species" flag (species not confident)
    fires on novel and on known species.

    Args:
        scores: top-1 score of each query (one array, or rank -> array).
        predicted, truth: rank -> each query's 1-NN label and true label (None = no label: left out at that rank).
        absent: rank -> whether each query's true label is absent from the keys it was searched against.
        thresholds: rank -> the score at which a call is confident.
    """
    report: dict[str, Any] = {"ranks": {}}
    for rank in TAXONOMIC_RANKS:
        if rank not in truth:
            continue
        rank_scores = np.asarray(scores[rank] if isinstance(scores, Mapping) else scores, dtype=float)
        correct = correctness(predicted[rank], truth[rank], rank_scores)
        known = np.array([value is not None for value in correct], dtype=bool)
        is_absent = np.asarray(absent[rank], dtype=bool)
        entry = {"threshold": float(thresholds.get(rank, float("inf")))}
        entry.update(confident_calls(rank_scores, correct, entry["threshold"]))
        entry["absent_queries"] = int((is_absent & known).sum())
        auroc = novelty_auroc(rank_scores[known], is_absent[known])
        entry["absent_auroc"] = None if auroc is None else round(auroc, 4)
        report["ranks"][rank] = entry
    if "species" in report["ranks"]:
        species = report["ranks"]["species"]
        report["novelty_auroc"] = species["absent_auroc"]
        rank_scores = np.asarray(scores["species"] if isinstance(scores, Mapping) else scores, dtype=float)
        known = np.array([t is not None for t in truth["species"]], dtype=bool) & np.isfinite(rank_scores)
        is_absent = np.asarray(absent["species"], dtype=bool)
        flagged = ~(rank_scores >= species["threshold"]) | np.array([p is None for p in predicted["species"]])
        for name, group in (("novel_flagged", known & is_absent), ("known_flagged", known & ~is_absent)):
            report[name] = round(float(flagged[group].mean()), 4) if group.any() else None
    return report


def correctness(predicted: Sequence[Any], truth: Sequence[Any], scores: np.ndarray) -> np.ndarray:
    """Per query: whether the 1-NN label equals the true one, None without a true label or without any key searched
    (score ``-inf``). A true label absent from the searched keys is never equal to a key's: always wrong."""
    return np.array(
        [None if t is None or not np.isfinite(s) else p == t for p, t, s in zip(predicted, truth, scores, strict=True)],
        dtype=object,
    )


def absent_from(truth: Sequence[Any], key_labels: Sequence[Any]) -> np.ndarray:
    """Whether each true label is missing from ``key_labels`` (False for a query without a label)."""
    present = {label for label in key_labels if label is not None}
    return np.array([t is not None and t not in present for t in truth], dtype=bool)


def hold_out_labels(
    query_labels: Sequence[Any], key_labels: Sequence[Any], fraction: float, rng: np.random.Generator
) -> set[Any]:
    """Key labels to hold out: in a random order, each label that some query has, as long as the queries with a
    held-out label stay within ``fraction`` of those with a label; at least one (the one fewest queries have when
    every label alone is over that share), and never every key label.

    >>> hold_out_labels(["a", "a", "a", "b"], ["a", "b"], 0.25, np.random.default_rng(0))
    {'b'}
    >>> hold_out_labels(["a", "a", "b", "b", "b"], ["a", "b", "c"], 0.25, np.random.default_rng(0))  # each over
    {'a'}
    """
    key_set = {label for label in key_labels if label is not None}
    counts = Counter(label for label in query_labels if label is not None and label in key_set)
    if len(key_set) < 2 or not counts:
        return set()
    budget = fraction * sum(1 for label in query_labels if label is not None)
    candidates = sorted(counts)
    held, used = set(), 0
    for label in rng.permutation(np.array(candidates, dtype=object)).tolist():
        if used + counts[label] <= budget and len(held) < len(key_set) - 1:
            held.add(label)
            used += counts[label]
    return held or {min(candidates, key=lambda label: (counts[label], label))}


def held_out_nearest(
    queries: np.ndarray,
    keys: np.ndarray,
    key_labels: Mapping[str, Sequence[Any]],
    held_out: Mapping[str, set[Any]],
    own_rows: np.ndarray | None = None,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per rank, each query's nearest key (inner product) among the keys whose label at that rank is not held out
    (and, with ``own_rows``, not the query's own row): (similarity, key row), similarity ``-inf`` and row -1 when
    no key is left to search."""
    keys = np.asarray(keys, dtype=np.float32)
    masks = {
        rank: np.array([label in held for label in key_labels[rank]], dtype=bool) if held else np.zeros(len(keys), bool)
        for rank, held in held_out.items()
    }
    found = {rank: (np.full(len(queries), -np.inf), np.full(len(queries), -1, dtype=np.int64)) for rank in held_out}
    for start in range(0, len(queries), _CHUNK):
        block = np.asarray(queries[start : start + _CHUNK], dtype=np.float32) @ keys.T  # (chunk, keys)
        if own_rows is not None:
            block[np.arange(len(block)), own_rows[start : start + _CHUNK]] = -np.inf
        for rank, mask in masks.items():
            searched = np.where(mask[None, :], -np.inf, block)
            rows = np.argmax(searched, axis=1)
            best = searched[np.arange(len(block)), rows]
            found[rank][0][start : start + len(block)] = best
            found[rank][1][start : start + len(block)] = np.where(np.isfinite(best), rows, -1)
    return found


def calibrate_pair(
    queries: np.ndarray,
    query_labels: Mapping[str, Sequence[Any]],
    keys: np.ndarray,
    key_labels: Mapping[str, Sequence[Any]],
    *,
    own_rows: np.ndarray | None = None,
    precision: float = DEFAULT_PRECISION,
    fraction: float = HELD_OUT_FRACTION,
    seed: int = CALIBRATION_SEED,
    name: str = "",
) -> dict[str, Any]:
    """Thresholds and report for one query -> key pair, with held-out labels (see the module doc).

    Args:
        queries (`np.ndarray`): ``(queries, dim)`` unit-length query embeddings.
        query_labels: rank -> each query's true label.
        keys (`np.ndarray`): ``(keys, dim)`` unit-length key embeddings; key_labels: rank -> each key's label.
        own_rows (`np.ndarray`, *optional*): leave-one-out: each query's own key row, never searched.
        precision, fraction, seed: target precision, share of the queries held out per rank, random seed.
        name (`str`): the pair's name, for warnings.

    Returns:
        ``thresholds`` (rank -> float), ``report`` (see :func:`confidence_report`, with ``method`` and
        ``held_out_labels`` per rank), ``warnings`` (list of str) and ``curves`` (per rank the scores and
        correctness, for :func:`plot_reliability`).
    """
    held_out = held_out_per_rank(query_labels, key_labels, fraction, seed)
    found = held_out_nearest(queries, keys, key_labels, held_out, own_rows)
    scores = {rank: found[rank][0] for rank in TAXONOMIC_RANKS}
    predicted = {rank: [key_labels[rank][r] if r >= 0 else None for r in found[rank][1]] for rank in TAXONOMIC_RANKS}
    return calibrate_calls(scores, predicted, query_labels, key_labels, held_out, own_rows, precision, name)


def held_out_per_rank(
    query_labels: Mapping[str, Sequence[Any]], key_labels: Mapping[str, Sequence[Any]], fraction: float, seed: int
) -> dict[str, set[Any]]:
    """Per rank, the labels held out of the keys (:func:`hold_out_labels`, one seeded draw after another)."""
    rng = np.random.default_rng(seed)
    return {rank: hold_out_labels(query_labels[rank], key_labels[rank], fraction, rng) for rank in TAXONOMIC_RANKS}


def calibrate_calls(
    scores: Mapping[str, np.ndarray],
    predicted: Mapping[str, Sequence[Any]],
    query_labels: Mapping[str, Sequence[Any]],
    key_labels: Mapping[str, Sequence[Any]],
    held_out: Mapping[str, set[Any]],
    own_rows: np.ndarray | None,
    precision: float,
    name: str,
) -> dict[str, Any]:
    """Thresholds, report and warnings from calls already made with ``held_out`` labels kept out of the keys: per
    rank each query's score and predicted label (whatever identifier made them; see :func:`calibrate_pair`)."""
    key_counts = {rank: Counter(key_labels[rank]) for rank in TAXONOMIC_RANKS}
    absent = {}
    for rank in TAXONOMIC_RANKS:
        # Present = some searched key has the label: not held out, and not only the query's own row.
        left = []
        for q, label in enumerate(query_labels[rank]):
            count = 0 if label is None or label in held_out[rank] else key_counts[rank][label]
            if own_rows is not None and count and key_labels[rank][own_rows[q]] == label:
                count -= 1
            left.append(label is not None and count == 0)
        absent[rank] = np.array(left, dtype=bool)
    correct = {rank: correctness(predicted[rank], query_labels[rank], scores[rank]) for rank in TAXONOMIC_RANKS}
    thresholds = calibrate_thresholds(scores, correct, precision)
    report = confidence_report(scores, predicted, query_labels, absent, thresholds)
    warnings = []
    for rank in TAXONOMIC_RANKS:
        entry = report["ranks"][rank]
        entry["held_out_labels"] = len(held_out[rank])
        entry["method"] = METHOD_HELD_OUT
        if entry["queries"] < 2:
            thresholds[rank] = entry["threshold"] = float("inf")
            entry["method"] = METHOD_NONE
            warnings.append(
                f"{name}: {rank}: only {entry['queries']} calibration queries with a {rank}; no threshold can be "
                f"set, so {rank} is never confident"
            )
        elif entry["absent_queries"] == 0:
            entry["method"] = METHOD_PRESENT_ONLY
            why = (
                f"the keys have a single {rank}, none can be held out"
                if len(set(key_labels[rank]) - {None}) < 2
                else f"no query has its {rank} absent from the keys"
            )
            warnings.append(
                f"{name}: {rank}: {why}; its threshold is calibrated on present answers only and will call a "
                f"{rank} missing from the keys confidently"
            )
    curves = {rank: (scores[rank], correct[rank], absent[rank]) for rank in TAXONOMIC_RANKS}
    return {"thresholds": thresholds, "report": report, "warnings": warnings, "curves": curves}


def sample_rows(count: int, limit: int = MAX_CALIBRATION_QUERIES, seed: int = CALIBRATION_SEED) -> np.ndarray:
    """All rows, or a seeded sorted sample of ``limit`` of them."""
    if count <= limit:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(count, size=limit, replace=False))


def plot_reliability(curves: Mapping[str, Mapping[str, tuple]], thresholds: Mapping[str, Mapping[str, float]],
                     path: str | Path, *, precision: float = DEFAULT_PRECISION, bins: int = 10) -> Path:  # fmt: skip
    """The reliability diagram of a calibration: per pair, the share of right 1-NN calls in each similarity bin
    (equal-count bins) at every rank, against the bin's mean similarity, with the rank's threshold (dashed) and the
    target precision (dotted); beside it the top-1 similarity of queries whose species is in the keys and of those
    whose species is not.

    Args:
        curves: pair -> rank -> (scores, correct, absent) as :func:`calibrate_pair` returns them.
        thresholds: pair -> rank -> threshold.
        path: the PNG to write.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only; never a window
    import matplotlib.pyplot as plt

    pairs = list(curves)
    figure, axes = plt.subplots(max(1, len(pairs)), 2, figsize=(10, 3.4 * max(1, len(pairs))), squeeze=False)
    colours = dict(zip(TAXONOMIC_RANKS, ("tab:blue", "tab:green", "tab:orange", "tab:red"), strict=True))
    for (left, right), pair in zip(axes, pairs, strict=False):
        for rank, (scores, correct, _) in curves[pair].items():
            known = np.array([c is not None for c in correct], dtype=bool) & np.isfinite(scores)
            order = np.argsort(scores[known], kind="stable")
            hits = np.asarray(np.asarray(correct, dtype=object)[known], dtype=float)[order]
            # Equal-count bins: every point stands on about as many queries (similarities crowd near 1).
            chunks = [c for c in np.array_split(np.arange(len(order)), min(bins, max(1, len(order) // 5))) if c.size]
            left.plot([scores[known][order][c].mean() for c in chunks], [hits[c].mean() for c in chunks], "-o",
                      ms=3, color=colours[rank], label=rank)  # fmt: skip
            threshold = thresholds[pair].get(rank, float("inf"))
            if np.isfinite(threshold):
                left.axvline(threshold, ls="--", lw=1, color=colours[rank])
        left.axhline(precision, ls=":", color="grey", label=f"target {precision:.0%}")
        left.set(title=f"{pair}: right 1-NN calls per similarity bin", xlabel="top-1 similarity", ylim=(-0.02, 1.02))
        left.grid(alpha=0.3)
        left.legend(loc="lower right", fontsize=7)
        scores, _, absent = curves[pair]["species"]
        finite = np.isfinite(scores)
        edges = np.histogram_bin_edges(scores[finite] if finite.any() else np.zeros(1), bins=3 * bins)
        for group, label, colour in ((~absent, "species in the keys", "tab:blue"),
                                     (absent, "species absent", "tab:red")):  # fmt: skip
            if (group & finite).any():
                right.hist(scores[group & finite], bins=edges, alpha=0.55, color=colour, label=label)
        species_threshold = thresholds[pair].get("species", float("inf"))
        if np.isfinite(species_threshold):
            right.axvline(species_threshold, ls="--", color="black", label="species threshold")
        right.set(title=f"{pair}: novel-species detection", xlabel="top-1 similarity", ylabel="queries")
        right.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=90, metadata={"Software": None})  # no version string: same input, same bytes
    plt.close(figure)
    return Path(path)


def identity_confidence_report(
    query_barcodes: Sequence[str],
    query_labels: Mapping[str, Sequence[Any]],
    key_barcodes: Sequence[str],
    key_labels: Mapping[str, Sequence[Any]],
    *,
    thresholds: Mapping[str, float] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """The calibration quantities of the alignment-identity baseline (1-NN by identity, confident at BOLD-style
    identity thresholds, :data:`bioscan_clip.baselines.identity.IDENTITY_THRESHOLDS` by default): per rank the
    precision and coverage of confident calls, queries with their answer absent from the keys and the AUROC of the
    top identity as an absent-answer detector; the novel-species AUROC and flag rates (see
    :func:`confidence_report`). ``options`` go to :func:`bioscan_clip.baselines.identity.identity_nearest`.

    Args:
        query_barcodes, key_barcodes: DNA barcodes.
        query_labels: rank -> each query's true label; key_labels: ``processid`` and rank -> each key's label.
    """
    from bioscan_clip.baselines.identity import IDENTITY_THRESHOLDS, identity_nearest  # edlib only when used

    thresholds = dict(IDENTITY_THRESHOLDS if thresholds is None else thresholds)
    found = identity_nearest(query_barcodes, key_barcodes, key_labels, thresholds=thresholds, **options)
    scores = np.where(found.rows >= 0, found.identity, -np.inf)
    return _against_all_keys(scores, found.labels, query_labels, key_labels, thresholds, "alignment identity")


def embedding_confidence_report(
    queries: np.ndarray,
    query_labels: Mapping[str, Sequence[Any]],
    keys: np.ndarray,
    key_labels: Mapping[str, Sequence[Any]],
    thresholds: Mapping[str, float],
) -> dict[str, Any]:
    """:func:`confidence_report` of the model's 1-NN calls (cosine similarity of unit-length embeddings) with
    thresholds from a key folder's calibration, on queries searched against all ``keys``: the model's side of
    :func:`identity_confidence_report`."""
    similarity, rows = held_out_nearest(queries, keys, key_labels, {"all keys": set()})["all keys"]
    predicted = {rank: [key_labels[rank][r] if r >= 0 else None for r in rows] for rank in TAXONOMIC_RANKS}
    return _against_all_keys(similarity, predicted, query_labels, key_labels, thresholds, "cosine similarity")


def _against_all_keys(
    scores: np.ndarray,
    predicted: Mapping[str, Sequence[Any]],
    query_labels: Mapping[str, Sequence[Any]],
    key_labels: Mapping[str, Sequence[Any]],
    thresholds: Mapping[str, float],
    score: str,
) -> dict[str, Any]:
    """:func:`confidence_report` of calls searched against every key (none held out): a query's answer is absent
    when no key has its label; ``score`` names what the scores are."""
    absent = {rank: absent_from(query_labels[rank], key_labels[rank]) for rank in TAXONOMIC_RANKS}
    return {**confidence_report(scores, predicted, query_labels, absent, thresholds), "score": score}
