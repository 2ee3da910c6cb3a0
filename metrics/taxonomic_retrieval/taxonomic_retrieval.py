"""Taxonomic retrieval accuracy: top-k micro and macro accuracy per rank, seen / unseen, harmonic mean.

This is the evaluation protocol of BIOSCAN-CLIP / CLIBD (``shared/reference/CLIBD_REFERENCE.md`` §4): every query
specimen is classified by the labels of its nearest *key* specimens, and a query counts as correct at top-k when its
true label is among the labels of its k nearest keys (duplicates allowed, no class averaging of keys).

The metric takes *labels* (never embeddings) so evaluate's Arrow cache stays small. The numpy computation is
:func:`compute_taxonomic_accuracy`, importable on its own for callers that do not want evaluate's overhead.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import datasets
import evaluate
import numpy as np

# This file imports nothing of the bioscan-clip packages: ``evaluate.load`` copies it alone into its module cache,
# and a metric published on the Hub must load without them. These two constants repeat
# ``modeling_bioscanclip.constants_bioscanclip``; tests/test_metric.py asserts they are equal.
TAXONOMIC_RANKS = ("order", "family", "genus", "species")
# Literal strings the sources use for "unknown"; read as missing.
MISSING_TAXON_STRINGS = frozenset({"", "not_classified", "None", "NA", "N/A", "nan", "NaN"})
# missing_labels="count": the original code's label for a missing rank, counted as one more class.
NOT_CLASSIFIED = "not_classified"
MISSING_LABEL_MODES = ("skip", "count")
DEFAULT_K_LIST = (1, 3, 5)
GROUPS = ("seen", "unseen")
AVERAGES = ("micro", "macro")

_CITATION = """\
@article{gong2024bioscanclip,
    title={{BIOSCAN-CLIP}: Bridging Vision and Genomics for Biodiversity Monitoring at Scale},
    author={Gong, ZeMing and Wang, Austin T. and Haurum, Joakim Bruslund and Lowe, Scott C. and
            Taylor, Graham W. and Chang, Angel X.},
    journal={arXiv preprint arXiv:2405.17537},
    year={2024}
}
@inproceedings{gong2025clibd,
    title={{CLIBD}: Bridging Vision and Genomics for Biodiversity Monitoring at Scale},
    author={Gong, ZeMing and Wang, Austin T. and Huo, Xiaoliang and Haurum, Joakim Bruslund and Lowe, Scott C. and
            Taylor, Graham W. and Chang, Angel X.},
    booktitle={The Thirteenth International Conference on Learning Representations (ICLR)},
    year={2025}
}
"""

_DESCRIPTION = """\
Taxonomic retrieval accuracy, the evaluation protocol of BIOSCAN-CLIP / CLIBD. Each query specimen is classified at
every taxonomic rank (order, family, genus, species) by the labels of its k nearest key specimens. For each rank,
separately for *seen* and *unseen* queries, the metric reports

- micro top-k accuracy: the fraction of queries whose true label is among the labels of their k nearest keys;
- macro top-k accuracy: the mean, over the true classes present among the queries, of the per-class micro accuracy;
- the harmonic mean of the seen and unseen values, ``2 / (1/seen + 1/unseen)``, 0 when either is 0.

Queries whose true label at a rank is missing (``None`` or one of the "unknown" strings such as ``""`` or
``"not_classified"``) are left out of that rank only. A missing *predicted* label never counts as a hit.
``missing_labels="count"`` scores as the original code does instead: every missing label is the class
``"not_classified"``, so such a query counts, and is right when its neighbour's label is missing too.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[dict[str, list[str]]]`):
        For each query, a mapping from each rank (``"order"``, ``"family"``, ``"genus"``, ``"species"``) to the labels
        of the retrieved keys, nearest first. Each list needs at least ``max(k_list)`` labels; extra labels are
        ignored. A missing key label may be ``""`` or ``None``; it never matches.
    references (`list[dict[str, str]]`):
        For each query, a mapping from each rank to the true label. ``None`` and the strings in
        ``MISSING_TAXON_STRINGS`` (``""``, ``"not_classified"``, ``"None"``, ``"NA"``, ``"N/A"``, ``"nan"``,
        ``"NaN"``) mean "missing": that query is left out of that rank's accuracy (and counted out of ``n_queries``).
    is_unseen (`list[bool]`):
        For each query, whether its species is unseen (absent from training). Must be real booleans.
    k_list (`Sequence[int]`, *optional*, defaults to `(1, 3, 5)`):
        The k values of top-k accuracy.
    missing_labels (`str`, *optional*, defaults to `"skip"`):
        ``"skip"``: a query with a missing true label is left out of that rank. ``"count"``: the original's
        counting, every missing label (true or predicted) is the one class ``"not_classified"``.

Returns:
    `dict[str, float | int | None]` with flat keys:
        - ``"{group}/{rank}/{average}/top{k}"`` for group in ``seen``, ``unseen``, ``hm`` (harmonic mean), average in
          ``micro``, ``macro``: accuracy in [0, 1] as a float, or ``None`` when the group has no query with a label at
          that rank (and then the ``hm`` value is ``None`` too).
        - ``"{group}/{rank}/n_queries"`` for group in ``seen``, ``unseen``: the number of queries scored at that rank.

Examples:
    Three seen queries (two of class ``Aedes aegypti``, one of ``Culex pipiens``) and one unseen query, two retrieved
    keys each:

    >>> import evaluate
    >>> metric = evaluate.load("metrics/taxonomic_retrieval")
    >>> order = ["Diptera", "Diptera"]
    >>> family = ["Culicidae", "Culicidae"]
    >>> def keys(genus, species):
    ...     return {"order": order, "family": family, "genus": genus, "species": species}
    >>> def truth(genus, species):
    ...     return {"order": "Diptera", "family": "Culicidae", "genus": genus, "species": species}
    >>> results = metric.compute(
    ...     predictions=[
    ...         keys(["Aedes", "Aedes"], ["Aedes aegypti", "Aedes albopictus"]),
    ...         keys(["Aedes", "Aedes"], ["Aedes albopictus", "Aedes aegypti"]),
    ...         keys(["Aedes", "Culex"], ["Aedes aegypti", "Culex pipiens"]),
    ...         keys(["Aedes", "Culex"], ["Aedes vexans", "Culex pipiens"]),
    ...     ],
    ...     references=[
    ...         truth("Aedes", "Aedes aegypti"),
    ...         truth("Aedes", "Aedes aegypti"),
    ...         truth("Culex", "Culex pipiens"),
    ...         truth("Culex", ""),
    ...     ],
    ...     is_unseen=[False, False, False, True],
    ...     k_list=[1, 2],
    ... )
    >>> results["seen/species/micro/top1"]  # 1 of 3 queries right
    0.3333333333333333
    >>> results["seen/species/macro/top1"]  # mean of Aedes aegypti 1/2 and Culex pipiens 0/1
    0.25
    >>> results["seen/species/micro/top2"]
    1.0
    >>> results["unseen/species/n_queries"], results["unseen/species/micro/top1"], results["hm/species/micro/top1"]
    (0, None, None)
    >>> results["unseen/genus/micro/top1"], results["hm/genus/micro/top1"]  # 2 / (1/(2/3) + 1/0) -> 0
    (0.0, 0.0)
    >>> results["hm/genus/micro/top2"]
    1.0
"""


class TaxonomicRetrievalInputError(ValueError):
    """Invalid metric input (lengths, types, ranks, ``k_list``); the message names the offending query and rank.

    A `ValueError`, like the package's ``BioscanInputError``, which this self-contained file cannot import.
    """


def harmonic_mean(seen: float | None, unseen: float | None) -> float | None:
    """Harmonic mean of a seen and an unseen accuracy, as in the BIOSCAN-CLIP tables.

    Args:
        seen (`float` or `None`): Seen accuracy in [0, 1], or `None` when there were no seen queries.
        unseen (`float` or `None`): Unseen accuracy in [0, 1], or `None` when there were no unseen queries.

    Returns:
        `float | None`: ``2 / (1/seen + 1/unseen)``; 0.0 when either is 0; `None` when either is `None`.

    Example:

    >>> harmonic_mean(0.5, 0.25)
    0.3333333333333333
    >>> harmonic_mean(0.0, 0.9), harmonic_mean(None, 0.9)
    (0.0, None)
    """
    if seen is None or unseen is None:
        return None
    if seen == 0 or unseen == 0:
        return 0.0
    return 2.0 / (1.0 / seen + 1.0 / unseen)


def _is_missing(label: Any) -> bool:
    return label is None or label in MISSING_TAXON_STRINGS


def _check_label(label: Any, where: str) -> None:
    if label is not None and not isinstance(label, str):
        raise TaxonomicRetrievalInputError(
            f"{where}: expected a str label or None, got {type(label).__name__} {label!r}"
        )


def _validate_k_list(k_list: Sequence[int]) -> tuple[int, ...]:
    if isinstance(k_list, (str, bytes)) or not isinstance(k_list, Sequence) or len(k_list) == 0:
        raise TaxonomicRetrievalInputError(f"k_list must be a non-empty sequence of positive ints, got {k_list!r}")
    for k in k_list:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise TaxonomicRetrievalInputError(f"k_list must hold positive ints, got {k!r} in {k_list!r}")
    if len(set(k_list)) != len(k_list):
        raise TaxonomicRetrievalInputError(f"k_list has duplicate values: {k_list!r}")
    return tuple(int(k) for k in k_list)


def _columns(
    predictions: Sequence[Mapping[str, Sequence[str | None]]] | Mapping[str, Sequence[Sequence[str | None]]],
    references: Sequence[Mapping[str, str | None]] | Mapping[str, Sequence[str | None]],
    ranks: Sequence[str],
) -> tuple[dict[str, list[Sequence[str | None]]], dict[str, list[str | None]]]:
    """Turns row-oriented (one mapping per query) or column-oriented (one sequence per rank) inputs into columns."""

    def to_columns(value: Any, name: str) -> dict[str, list[Any]]:
        if isinstance(value, Mapping):
            missing = [rank for rank in ranks if rank not in value]
            if missing:
                raise TaxonomicRetrievalInputError(
                    f"{name} has no column for rank(s) {missing}; it has {sorted(value)}"
                )
            return {rank: list(value[rank]) for rank in ranks}
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            raise TaxonomicRetrievalInputError(
                f"{name} must be a list of per-query mappings, got {type(value).__name__}"
            )
        columns: dict[str, list[Any]] = {rank: [] for rank in ranks}
        for row_index, row in enumerate(value):
            if not isinstance(row, Mapping):
                raise TaxonomicRetrievalInputError(f"{name}[{row_index}] must be a mapping rank -> labels, got {row!r}")
            for rank in ranks:
                if rank not in row:
                    raise TaxonomicRetrievalInputError(
                        f"{name}[{row_index}] has no rank {rank!r}; it has {sorted(row)}"
                    )
                columns[rank].append(row[rank])
        return columns

    return to_columns(predictions, "predictions"), to_columns(references, "references")


def _validate_columns(
    prediction_columns: Mapping[str, Sequence[Any]],
    reference_columns: Mapping[str, Sequence[Any]],
    is_unseen: Sequence[Any],
    ranks: Sequence[str],
) -> np.ndarray:
    """Checks types and lengths (evaluate's Arrow cast would turn ``"yes"`` into `True` or ``3`` into ``"3"``);
    returns ``is_unseen`` as a bool array."""
    flags = list(is_unseen)
    for index, flag in enumerate(flags):
        if not isinstance(flag, (bool, np.bool_)):
            raise TaxonomicRetrievalInputError(f"is_unseen[{index}] must be a bool, got {type(flag).__name__} {flag!r}")
    for rank in ranks:
        for name, column in (("predictions", prediction_columns[rank]), ("references", reference_columns[rank])):
            if len(column) != len(flags):
                raise TaxonomicRetrievalInputError(
                    f"{name} has {len(column)} queries at rank {rank!r} but is_unseen has {len(flags)}"
                )
        for index, label in enumerate(reference_columns[rank]):
            _check_label(label, f"references[{index}][{rank!r}]")
        for index, labels in enumerate(prediction_columns[rank]):
            if isinstance(labels, (str, bytes)) or not isinstance(labels, (Sequence, np.ndarray)):
                raise TaxonomicRetrievalInputError(
                    f"predictions[{index}][{rank!r}] must be a list of labels, got {type(labels).__name__} {labels!r}"
                )
            for position, label in enumerate(labels):
                _check_label(label, f"predictions[{index}][{rank!r}][{position}]")
    return np.asarray(flags, dtype=bool)


def compute_taxonomic_accuracy(
    predictions: Sequence[Mapping[str, Sequence[str | None]]] | Mapping[str, Sequence[Sequence[str | None]]],
    references: Sequence[Mapping[str, str | None]] | Mapping[str, Sequence[str | None]],
    is_unseen: Sequence[bool],
    *,
    k_list: Sequence[int] = DEFAULT_K_LIST,
    ranks: Sequence[str] = TAXONOMIC_RANKS,
    missing_labels: str = "skip",
) -> dict[str, float | int | None]:
    """Top-k micro and macro accuracy per rank for seen and unseen queries, plus their harmonic mean.

    The computation behind the ``taxonomic_retrieval`` evaluate metric, usable without evaluate.

    Args:
        predictions (`list[dict[str, list[str | None]]]` or `dict[str, list[list[str | None]]]`):
            Per query, rank -> labels of the retrieved keys, nearest first (at least ``max(k_list)`` of them);
            or column-oriented, rank -> one list of labels per query (e.g. ``KeyIndex.search_labels(...).labels``).
        references (`list[dict[str, str | None]]` or `dict[str, list[str | None]]`):
            Per query, rank -> true label, or column-oriented rank -> one label per query. Missing labels (``None``
            or a string in ``MISSING_TAXON_STRINGS``) leave that query out of that rank.
        is_unseen (`Sequence[bool]`):
            Per query, `True` for an unseen-species query, `False` for a seen one.
        k_list (`Sequence[int]`, *optional*, defaults to `(1, 3, 5)`):
            The k values of top-k accuracy.
        ranks (`Sequence[str]`, *optional*, defaults to `TAXONOMIC_RANKS`):
            The ranks to score.
        missing_labels (`str`, *optional*, defaults to `"skip"`):
            ``"skip"`` leaves a query with a missing true label out of that rank; ``"count"`` reproduces the original
            code, where every missing label is the class ``"not_classified"`` (scored, and a hit when the
            neighbour's label is missing too).

    Returns:
        `dict[str, float | int | None]`: keys ``"{seen|unseen|hm}/{rank}/{micro|macro}/top{k}"`` and
        ``"{seen|unseen}/{rank}/n_queries"``; an accuracy is `None` when its group has no scored query at that rank.

    Raises:
        `TaxonomicRetrievalInputError`: on mismatched lengths, non-bool ``is_unseen``, non-string labels, a missing rank, or a
        query with fewer than ``max(k_list)`` predictions at some rank (the message names query and rank).

    Example:

    >>> result = compute_taxonomic_accuracy(
    ...     predictions={"species": [["a", "b"], ["a", "b"], ["b", "a"]]},
    ...     references={"species": ["a", "b", "b"]},
    ...     is_unseen=[False, False, False],
    ...     k_list=[1],
    ...     ranks=["species"],
    ... )
    >>> result["seen/species/micro/top1"], result["seen/species/macro/top1"]
    (0.6666666666666666, 0.75)
    """
    k_values = _validate_k_list(k_list)
    max_k = max(k_values)
    if missing_labels not in MISSING_LABEL_MODES:
        raise TaxonomicRetrievalInputError(
            f"missing_labels must be one of {MISSING_LABEL_MODES}, got {missing_labels!r}"
        )
    counted = missing_labels == "count"
    if isinstance(ranks, str) or len(ranks) == 0:
        raise TaxonomicRetrievalInputError(f"ranks must be a non-empty sequence of rank names, got {ranks!r}")
    prediction_columns, reference_columns = _columns(predictions, references, ranks)

    unseen_mask = _validate_columns(prediction_columns, reference_columns, is_unseen, ranks)
    n_queries = len(unseen_mask)

    result: dict[str, float | int | None] = {}
    for rank in ranks:
        # Integer-code the true labels so the hit test is a vectorised comparison; missing labels get -1 and
        # predicted labels that no query holds get -2, so neither can ever match (when missing labels are
        # counted, they are all the one class NOT_CLASSIFIED instead).
        truth = reference_columns[rank]
        class_codes: dict[str, int] = {}
        true_codes = np.empty(n_queries, dtype=np.int64)
        for index, label in enumerate(truth):
            if _is_missing(label):
                true_codes[index] = class_codes.setdefault(NOT_CLASSIFIED, len(class_codes)) if counted else -1
            else:
                true_codes[index] = class_codes.setdefault(label, len(class_codes))
        missing_code = class_codes.get(NOT_CLASSIFIED, -2) if counted else -2
        predicted_codes = np.empty((n_queries, max_k), dtype=np.int64)
        for index, labels in enumerate(prediction_columns[rank]):
            if len(labels) < max_k:
                raise TaxonomicRetrievalInputError(
                    f"predictions[{index}][{rank!r}] has {len(labels)} labels but max(k_list) = {max_k} needs at "
                    f"least {max_k}"
                )
            for position in range(max_k):
                label = labels[position]
                predicted_codes[index, position] = missing_code if _is_missing(label) else class_codes.get(label, -2)
        hits = predicted_codes == true_codes[:, None]  # (queries, max_k); rows with a missing truth are all False
        first_hit = np.where(hits.any(axis=1), hits.argmax(axis=1), max_k)  # position of the first hit, or max_k
        scored = true_codes >= 0

        group_values: dict[str, dict[tuple[str, int], float | None]] = {}
        for group, in_group in (("seen", ~unseen_mask), ("unseen", unseen_mask)):
            selected = scored & in_group
            count = int(selected.sum())
            result[f"{group}/{rank}/n_queries"] = count
            values: dict[tuple[str, int], float | None] = {}
            group_classes = true_codes[selected]
            per_class_total = np.bincount(group_classes, minlength=len(class_codes))
            present = per_class_total > 0
            for k in k_values:
                correct = first_hit[selected] < k
                if count == 0:
                    values[("micro", k)] = values[("macro", k)] = None
                    continue
                values[("micro", k)] = float(correct.mean())
                per_class_correct = np.bincount(group_classes, weights=correct, minlength=len(class_codes))
                values[("macro", k)] = float((per_class_correct[present] / per_class_total[present]).mean())
            group_values[group] = values

        for group in GROUPS:
            for average in AVERAGES:
                for k in k_values:
                    result[f"{group}/{rank}/{average}/top{k}"] = group_values[group][(average, k)]
        for average in AVERAGES:
            for k in k_values:
                result[f"hm/{rank}/{average}/top{k}"] = harmonic_mean(
                    group_values["seen"][(average, k)], group_values["unseen"][(average, k)]
                )
    for key, value in result.items():
        if isinstance(value, float) and not math.isfinite(value):  # pragma: no cover - guards the arithmetic above
            raise AssertionError(f"non-finite metric value {key} = {value}")
    return result


def _features(ranks: Sequence[str]) -> datasets.Features:
    return datasets.Features(
        {
            "predictions": {rank: datasets.List(datasets.Value("string")) for rank in ranks},
            "references": {rank: datasets.Value("string") for rank in ranks},
            "is_unseen": datasets.Value("bool"),
        }
    )


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class TaxonomicRetrieval(evaluate.Metric):
    """Top-k micro / macro accuracy per taxonomic rank, seen and unseen, and their harmonic mean."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=_features(TAXONOMIC_RANKS),
            reference_urls=["https://arxiv.org/abs/2405.17537", "https://github.com/bioscan-ml/clibd"],
        )

    def add_batch(self, *, predictions=None, references=None, **kwargs) -> None:
        """Validates types before evaluate's Arrow cast (which would turn ``"yes"`` into `True` or ``3`` into
        ``"3"``), then adds the batch. ``None`` reference labels are written as ``""``: both mean "missing"."""
        if predictions is not None and references is not None and "is_unseen" in kwargs:
            if isinstance(predictions, Mapping) or isinstance(references, Mapping):
                raise TaxonomicRetrievalInputError(
                    "the evaluate metric takes one mapping per query; for column-oriented inputs call "
                    "compute_taxonomic_accuracy directly"
                )
            prediction_columns, reference_columns = _columns(predictions, references, TAXONOMIC_RANKS)
            unseen_mask = _validate_columns(prediction_columns, reference_columns, kwargs["is_unseen"], TAXONOMIC_RANKS)
            # evaluate type-checks only the first row and rejects None there; "" is the same "missing" label.
            references = [
                {rank: ("" if row[rank] is None else row[rank]) for rank in TAXONOMIC_RANKS} for row in references
            ]
            kwargs["is_unseen"] = unseen_mask.tolist()
        super().add_batch(predictions=predictions, references=references, **kwargs)

    def add(self, *, prediction=None, reference=None, **kwargs) -> None:
        """Adds one query; routed through :meth:`add_batch` so it gets the same validation."""
        batch_kwargs = {name: [value] for name, value in kwargs.items()}
        self.add_batch(predictions=[prediction], references=[reference], **batch_kwargs)

    def _compute(
        self,
        predictions: list[dict[str, list[str]]],
        references: list[dict[str, str]],
        is_unseen: list[bool],
        k_list: Sequence[int] = DEFAULT_K_LIST,
        missing_labels: str = "skip",
    ) -> dict[str, float | int | None]:
        return compute_taxonomic_accuracy(
            predictions, references, is_unseen, k_list=k_list, missing_labels=missing_labels
        )
