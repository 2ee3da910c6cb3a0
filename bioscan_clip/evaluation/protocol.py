"""The paper's retrieval evaluation: embed queries and keys, search, score every query -> key combination.

Protocol (CLIBD_REFERENCE.md §4): keys are every labelled record of seen and unseen species; queries are the
seen and the unseen query splits; an unseen query competes against all keys (open set). A query is classified
at each rank by the labels of its nearest keys (cosine, exact inner product on unit vectors). Scores are top-k
micro and macro accuracy per rank, seen and unseen, and their harmonic mean, computed by the
``taxonomic_retrieval`` metric (``metrics/taxonomic_retrieval``).

The ``species_held_out`` protocol adds the case identification exists for, a species that is in no key: the
unseen species of the *other* split (``val`` when scoring ``test``) are taken out of the keys, and all their
records become *novel* queries (never trained on, absent from the keys). Novel queries are scored at the ranks
the keys can still answer (genus, family, order), and every DNA method is reported side by side as an identifier:
the model (thresholds calibrated on the keys alone, leave-one-out with held-out labels: :mod:`bioscan_clip.identification.calibration`),
the alignment-identity baseline (BOLD-style identity thresholds) and their combination (the model's nearest keys
re-ranked by alignment identity): precision of confident calls per rank, novel-species AUROC, and how often the
"unknown species" flag fires on novel and on known species.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from tqdm.auto import tqdm

from bioscan_clip.data.spec import DataSpec, has_role, role_records
from bioscan_clip.data.specimens import SpecimenDataset, available_modalities, with_modalities
from bioscan_clip.features import DNA, IMAGE, available_pairs, embed_dataset, key_matrix, labels_of, pair_name
from bioscan_clip.resolve import load_pretrained
from bioscan_clip.retrieval.key_index import KeyIndex
from modeling_bioscanclip import BioscanInputError
from modeling_bioscanclip.constants_bioscanclip import TAXONOMIC_RANKS

from .metric import metric_module

logger = logging.getLogger(__name__)

BASELINE_PAIR = "dna->dna (5-mer profile baseline)"
IDENTITY_PAIR = "dna->dna (alignment identity 1-NN)"
PROTOCOLS = ("open_set", "species_held_out")
# Identifiers compared under species_held_out (keys of Evaluation.summary["identification"]).
MODEL_IDENTIFIER = "model (dna->dna)"
KMER_IDENTIFIER = "5-mer profile 1-NN"
IDENTITY_IDENTIFIER = "alignment identity 1-NN"
COMBINED_IDENTIFIER = "model top-20 re-ranked by alignment identity"
# The product's barcode identifier (bioscan_clip.identification.barcode_search), exactly as `index` + `predict`
# run it: model + 5-mer candidates re-ranked by alignment identity, thresholds calibrated on the keys; beside it
# the same with the other answer rule (best hit <-> consensus of the near-best hits), the measurement behind MARGIN.
PRODUCT_IDENTIFIER = "bioscan-clip barcode identifier"
CONSENSUS_MARGIN = 0.01
RERANK_CANDIDATES = 20


def evaluate_retrieval(
    query_features: Mapping[str, Mapping[str, np.ndarray]],
    query_labels: Mapping[str, Mapping[str, list[Any]]],
    key_features: Mapping[str, np.ndarray],
    key_labels: Mapping[str, list[Any]],
    *,
    pairs: Sequence[tuple[str, str]] | None = None,
    k_list: Sequence[int] = (1, 3, 5),
    show_progress: bool = False,
) -> dict[str, dict[str, float | int | None]]:
    """Scores every query -> key pair.

    Args:
        query_features: ``{"seen": {feature: (n, d) array}, "unseen": {...}}`` (either group may be absent), and
            optionally ``"novel"``: queries whose species no key has, scored as ``novel/{rank}/...``.
        query_labels: ``{"seen": {rank: [label, ...]}, "unseen": {...}}``, rows as in ``query_features``.
        key_features: ``{feature: (n_keys, d) array}``.
        key_labels: ``{rank: [label, ...]}`` (and ``processid``), rows as in ``key_features``.
        pairs: the (query feature, key feature) pairs; by default every pair of :data:`~bioscan_clip.features.PAPER_PAIRS` the
            features allow.
        k_list: top-k values.

    Returns:
        ``{"image->dna": {"seen/species/macro/top1": ..., ...}, ...}`` (keys as the ``taxonomic_retrieval`` metric).
    """
    groups = [group for group in ("seen", "unseen") if group in query_features and len(query_labels[group]["species"])]
    if not groups:
        raise ValueError("no queries to evaluate")
    features_everywhere = set(key_features).intersection(*(query_features[g] for g in groups))
    pairs = available_pairs(sorted(features_everywhere)) if pairs is None else list(pairs)
    compute = metric_module().compute_taxonomic_accuracy
    k = max(k_list)
    results: dict[str, dict[str, float | int | None]] = {}
    for query_name, key_name in tqdm(pairs, desc="retrieval", disable=not show_progress, leave=False):
        keys, labels = key_matrix(key_features, key_labels, key_name)
        index = KeyIndex.build(keys, {"processid": labels["processid"], **{r: labels[r] for r in TAXONOMIC_RANKS}})
        queries = np.concatenate([query_features[g][query_name] for g in groups])
        references = {rank: sum((list(query_labels[g][rank]) for g in groups), []) for rank in TAXONOMIC_RANKS}
        is_unseen = sum(([g == "unseen"] * len(query_labels[g]["species"]) for g in groups), [])
        found = index.search_labels(queries, min(k, len(index)))
        k_values = [kk for kk in k_list if kk <= len(index)]
        results[pair_name((query_name, key_name))] = compute(found.labels, references, is_unseen, k_list=k_values)
        if "novel" in query_features and query_name in query_features["novel"]:
            novel = index.search_labels(query_features["novel"][query_name], min(k, len(index)))
            results[pair_name((query_name, key_name))].update(
                novel_scores(novel.labels, query_labels["novel"], k_values)
            )
    return results


def novel_scores(
    predicted: Mapping[str, Sequence[Sequence[Any]]], truth: Mapping[str, Sequence[Any]], k_list: Sequence[int]
) -> dict[str, float | int | None]:
    """The metric's accuracy of queries whose species no key has, as ``novel/{rank}/{average}/top{k}`` (species is
    always 0 there: the rank is reported so that a method naming a wrong species is visible, not hidden)."""
    compute = metric_module().compute_taxonomic_accuracy
    count = len(truth["species"])
    scored = compute(predicted, {r: list(truth[r]) for r in TAXONOMIC_RANKS}, [True] * count, k_list=k_list)
    return {key.replace("unseen/", "novel/", 1): value for key, value in scored.items() if key.startswith("unseen/")}


def hold_out_species(
    splits: Any, roles: Mapping[str, tuple[str, ...]], split: str
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """The keys without the other split's unseen species, and those species' records (queries and keys) as novel
    queries: species that neither training nor the keys have seen."""
    other = "val" if split == "test" else "test"
    role = f"{other}_queries_unseen"
    if not has_role(splits, roles, role):
        raise BioscanInputError(
            f"--protocol species_held_out holds out the unseen species of the {other} split, but this dataset has "
            f"no {other} unseen queries (splits: {sorted(splits)}); use the CLIBD partition (--partition clibd)"
        )
    novel_queries = role_records(splits, roles, role)
    held = {species for species in novel_queries["species"] if species}
    keys = role_records(splits, roles, "keys")
    in_held = np.array([species in held for species in keys["species"]], dtype=bool)
    novel = datasets.concatenate_datasets([novel_queries, keys.select(np.flatnonzero(in_held))])
    return keys.select(np.flatnonzero(~in_held)), novel


def selection_score(results: Mapping[str, Mapping[str, float | int | None]]) -> float:
    """The score that selects the best checkpoint: the mean over pairs and ranks of the macro top-1 accuracy's
    harmonic mean of seen and unseen (the seen accuracy where there are no unseen queries)."""
    values = []
    for metrics in results.values():
        for rank in TAXONOMIC_RANKS:
            value = metrics.get(f"hm/{rank}/macro/top1")
            if value is None:
                value = metrics.get(f"seen/{rank}/macro/top1")
            if value is not None:
                values.append(float(value))
    return float(np.mean(values)) if values else 0.0


def format_table(results: Mapping[str, Mapping[str, Any]], *, average: str = "macro", k: int = 1) -> str:
    """The paper's table: one row per pair and rank, columns seen / unseen / harmonic mean, in percent."""

    def cell(value: Any) -> str:
        return "  -  " if value is None else f"{100 * value:5.1f}"

    lines = [f"top-{k} {average} accuracy (%)", f"{'query -> key':<36}{'rank':<9}{'seen':>7}{'unseen':>8}{'HM':>7}"]
    for pair, metrics in results.items():
        for rank in TAXONOMIC_RANKS:
            seen, unseen, hm = (metrics.get(f"{group}/{rank}/{average}/top{k}") for group in ("seen", "unseen", "hm"))
            lines.append(f"{pair:<36}{rank:<9}{cell(seen):>7}{cell(unseen):>8}{cell(hm):>7}")
    return "\n".join(lines)


def kmer_baseline_results(keys: SpecimenDataset, queries: Mapping[str, SpecimenDataset]) -> dict[str, Any]:
    """DNA->DNA retrieval on normalised 5-mer count profiles: the alignment-free baseline a learned embedding
    should beat."""
    from bioscan_clip.baselines.kmer import kmer_profile

    key_features = {DNA: kmer_profile(keys.records["dna_barcode"])}
    query_features = {group: {DNA: kmer_profile(q.records["dna_barcode"])} for group, q in queries.items()}
    query_labels = {group: labels_of(q) for group, q in queries.items()}
    result = evaluate_retrieval(query_features, query_labels, key_features, labels_of(keys), pairs=[(DNA, DNA)])
    return {BASELINE_PAIR: result[pair_name((DNA, DNA))]}


def identity_baseline_results(keys: SpecimenDataset, queries: Mapping[str, SpecimenDataset]) -> dict[str, Any]:
    """DNA->DNA 1-NN by alignment identity (candidates from the 5-mer top 20): the field's own baseline
    (:mod:`bioscan_clip.baselines.identity`). Top-1 only: it names one best key per query."""
    from bioscan_clip.baselines.identity import identity_nearest

    groups = list(queries)
    barcodes = sum((list(queries[g].records["dna_barcode"]) for g in groups), [])
    found = identity_nearest(barcodes, keys.records["dna_barcode"], labels_of(keys))
    return {IDENTITY_PAIR: top1_scores(found.labels, queries)}


def top1_scores(predicted: Mapping[str, Sequence[Any]], queries: Mapping[str, SpecimenDataset]) -> dict[str, Any]:
    """The metric's top-1 scores of one label per query (queries of every group in ``queries`` order, as
    concatenated), the novel group's as ``novel/...``."""
    groups = list(queries)
    group_of = np.concatenate([[g] * len(queries[g]) for g in groups])
    known = [g for g in groups if g != "novel"]
    references = {rank: sum((list(labels_of(queries[g])[rank]) for g in known), []) for rank in TAXONOMIC_RANKS}
    is_unseen = sum(([g == "unseen"] * len(queries[g]) for g in known), [])
    rows = np.flatnonzero(group_of != "novel")
    predictions = {rank: [[predicted[rank][r]] for r in rows] for rank in TAXONOMIC_RANKS}
    scores = metric_module().compute_taxonomic_accuracy(predictions, references, is_unseen, k_list=[1])
    if "novel" in queries:
        rows = np.flatnonzero(group_of == "novel")
        novel = {rank: [[predicted[rank][r]] for r in rows] for rank in TAXONOMIC_RANKS}
        scores.update(novel_scores(novel, labels_of(queries["novel"]), [1]))
    return scores


def compare_identifiers(
    keys: SpecimenDataset,
    queries: Mapping[str, SpecimenDataset],
    key_features: Mapping[str, np.ndarray],
    query_features: Mapping[str, Mapping[str, np.ndarray]],
    *,
    identity: bool = True,
    precision: float | None = None,
) -> dict[str, dict[str, Any]]:
    """The DNA identifiers side by side on the same queries (seen, unseen and novel species) and keys: top-1
    scores, and per rank the precision and coverage of confident calls, the novel-species AUROC and the
    "unknown species" flag rates (:func:`bioscan_clip.identification.calibration.confidence_report`).

    The model's thresholds are calibrated on the keys alone (leave-one-out, a share of the labels held out per
    rank), as ``bioscan-clip index`` does for a library without validation queries: the test queries never set
    them. The identity baseline and the combination use BOLD-style identity thresholds.
    """
    from bioscan_clip.baselines.identity import IDENTITY_THRESHOLDS, identity_nearest
    from bioscan_clip.baselines.kmer import kmer_profile
    from bioscan_clip.data.barcodes import clean_barcodes
    from bioscan_clip.identification.barcode_search import (
        MARGIN,
        BarcodeSearch,
        KeyBarcodes,
        calibrate_barcode_search,
    )
    from bioscan_clip.identification.calibration import (
        DEFAULT_PRECISION,
        absent_from,
        calibrate_pair,
        confidence_report,
        embedding_confidence_report,
        sample_rows,
    )

    groups = list(queries)
    key_labels = labels_of(keys)
    truth = {rank: sum((list(labels_of(queries[g])[rank]) for g in groups), []) for rank in TAXONOMIC_RANKS}
    barcodes = sum((list(queries[g].records["dna_barcode"]) for g in groups), [])
    index_labels = {"processid": key_labels["processid"], **{r: key_labels[r] for r in TAXONOMIC_RANKS}}
    calibrated_on = sample_rows(len(keys))

    def embedding_identifier(query_vectors: np.ndarray, key_vectors: np.ndarray, name: str) -> tuple[dict, Any]:
        # Thresholds from the keys alone: leave-one-out, a share of the labels held out per rank.
        calibration = calibrate_pair(
            key_vectors[calibrated_on],
            {rank: [key_labels[rank][r] for r in calibrated_on] for rank in TAXONOMIC_RANKS},
            key_vectors,
            key_labels,
            own_rows=calibrated_on,
            precision=DEFAULT_PRECISION if precision is None else precision,
            name=name,
        )
        for warning in calibration["warnings"]:
            logger.warning("calibration: %s", warning)
        found = KeyIndex.build(key_vectors, index_labels).search_labels(
            query_vectors, min(RERANK_CANDIDATES, len(keys))
        )
        entry = {
            "scores": top1_scores({r: [labels[0] for labels in found.labels[r]] for r in TAXONOMIC_RANKS}, queries),
            "confidence": embedding_confidence_report(
                query_vectors, truth, key_vectors, key_labels, calibration["thresholds"]
            ),
            "thresholds": "cosine, calibrated on the keys (leave-one-out, held-out labels)",
        }
        return entry, found

    key_dna = np.asarray(key_features[DNA], dtype=np.float32)
    query_dna = np.concatenate([query_features[g][DNA] for g in groups]).astype(np.float32)
    compared: dict[str, dict[str, Any]] = {}
    compared[MODEL_IDENTIFIER], model_found = embedding_identifier(query_dna, key_dna, "dna->dna")
    key_profiles = kmer_profile(keys.records["dna_barcode"])
    compared[KMER_IDENTIFIER], kmer_found = embedding_identifier(kmer_profile(barcodes), key_profiles, "5-mer profile")
    if identity:
        absent = {rank: absent_from(truth[rank], key_labels[rank]) for rank in TAXONOMIC_RANKS}
        for name, candidate_rows in ((IDENTITY_IDENTIFIER, None), (COMBINED_IDENTIFIER, model_found.indices)):
            nearest = identity_nearest(barcodes, keys.records["dna_barcode"], key_labels, candidate_rows=candidate_rows)
            scores = np.where(nearest.rows >= 0, nearest.identity, -np.inf)
            compared[name] = {
                "scores": top1_scores(nearest.labels, queries),
                "confidence": confidence_report(scores, nearest.labels, truth, absent, IDENTITY_THRESHOLDS),
                "thresholds": "BOLD-style identity: "
                + ", ".join(f"{r} {t:.0%}" for r, t in IDENTITY_THRESHOLDS.items()),
            }
        search = BarcodeSearch(
            KeyBarcodes(keys.records["dna_barcode"]),
            KeyIndex.build(key_profiles, index_labels),
            KeyIndex.build(key_dna, index_labels),
        )
        alternative = CONSENSUS_MARGIN if MARGIN == 0 else 0.0
        rule = {0.0: "best hit"}.get(alternative, f"consensus of the hits within {alternative:.0%} of the best")
        for name, margin in ((PRODUCT_IDENTIFIER, MARGIN), (f"{PRODUCT_IDENTIFIER}, {rule}", alternative)):
            search.margin = margin
            calibration = calibrate_barcode_search(
                search, dna_vectors=key_dna, precision=DEFAULT_PRECISION if precision is None else precision
            )
            for warning in calibration["warnings"]:
                logger.warning("calibration: %s", warning)
            search.thresholds.update(calibration["thresholds"])
            calls = [search.calls(hits) for hits in search.hits(clean_barcodes(barcodes), query_dna)]
            predicted = {rank: [call[rank].label for call in calls] for rank in TAXONOMIC_RANKS}
            scores = np.array([call["species"].identity if call["species"].label else -np.inf for call in calls])
            compared[name] = {
                "scores": top1_scores(predicted, queries),
                "confidence": confidence_report(scores, predicted, truth, absent, search.thresholds),
                "thresholds": "alignment identity, calibrated on the keys (leave-one-out, held-out labels): "
                + ", ".join(f"{r} {t:.1%}" for r, t in calibration["thresholds"].items()),
            }
    return compared


def format_identification(compared: Mapping[str, Mapping[str, Any]]) -> str:
    """The identifiers' comparison as a text table: top-1 micro (%), novel-species AUROC and flag rates, and the
    precision of confident calls per rank."""

    def pct(value: Any) -> str:
        return "-" if value is None else f"{100 * value:.1f}"

    columns = ("species seen", "species unseen", "novel: genus", "novel: family", "novelty AUROC",
               "novel flagged", "known flagged")  # fmt: skip
    lines = ["identification (top-1 micro %; flags: 'unknown species' rate)", " | ".join(("identifier", *columns))]
    for name, entry in compared.items():
        scores, confidence = entry["scores"], entry["confidence"]
        auroc = confidence.get("novelty_auroc")
        cells = [
            pct(scores.get("seen/species/micro/top1")),
            pct(scores.get("unseen/species/micro/top1")),
            pct(scores.get("novel/genus/micro/top1")),
            pct(scores.get("novel/family/micro/top1")),
            "-" if auroc is None else f"{auroc:.3f}",
            pct(confidence.get("novel_flagged")),
            pct(confidence.get("known_flagged")),
        ]
        lines.append(" | ".join((name, *cells)))
    lines.append("")
    lines.append("precision of confident calls % (coverage %) per rank")
    lines.append(" | ".join(("identifier", *TAXONOMIC_RANKS)))
    for name, entry in compared.items():
        ranks = entry["confidence"]["ranks"]
        lines.append(
            " | ".join(
                (name, *(f"{pct(ranks[r]['precision'])} ({pct(ranks[r]['coverage'])})" for r in TAXONOMIC_RANKS))
            )
        )
    return "\n".join(lines)


def _retrieval_examples(
    keys: SpecimenDataset,
    queries: SpecimenDataset,
    key_features: dict,
    query_features: dict,
    path: Path,
    count: int,
) -> Path | None:
    """The retrieval-examples figure for image -> image, on the first ``count`` queries (deterministic)."""
    from .reports import plot_retrieval_examples

    if IMAGE not in key_features or count <= 0 or keys.images is None:
        return None
    rows = np.linspace(0, len(queries) - 1, num=min(count, len(queries))).astype(int)
    index = KeyIndex.build(key_features[IMAGE], labels_of(keys))
    found = index.search_labels(query_features[IMAGE][rows], min(5, len(index)))
    query_taxa = [{rank: queries.metadata[rank][r] for rank in TAXONOMIC_RANKS} for r in rows]
    neighbour_taxa = [
        [{rank: found.labels[rank][q][j] for rank in TAXONOMIC_RANKS} for j in range(found.indices.shape[1])]
        for q in range(len(rows))
    ]
    query_images = [queries.image(r) for r in rows]
    neighbour_images = [[keys.image(int(i)) for i in found.indices[q]] for q in range(len(rows))]
    return plot_retrieval_examples(query_images, query_taxa, neighbour_images, neighbour_taxa, path)


@dataclass
class Evaluation:
    """What :func:`evaluate` measured and wrote."""

    results: dict[str, dict[str, Any]]
    summary: dict[str, Any]
    out: Path


def evaluate(
    model: str | Path,
    data: DataSpec,
    *,
    split: str = "test",
    out: str | Path | None = None,
    model_card: str | Path | None = None,
    kmer_baseline: bool = True,
    identity_baseline: bool = True,
    batch_size: int = 128,
    examples: int = 6,
    protocol: str = "open_set",
) -> Evaluation:
    """The paper's protocol for a saved model: the seen and unseen queries of ``split`` against all keys, every
    query -> key pair the model and the data allow.

    Writes ``results.json``, ``accuracy.png``, ``retrieval_examples.png`` to ``out`` (default:
    ``<model>/../evaluation-<split>``) and, with ``model_card``, the card's model-index and results table.
    With DNA, the 5-mer-profile and alignment-identity baselines are scored beside the model (``kmer_baseline``,
    ``identity_baseline``; the identity baseline is top-1 only). ``protocol="species_held_out"`` adds novel-species
    queries and the identifiers' comparison (module doc), in ``summary["identification"]``.
    """
    if protocol not in PROTOCOLS:
        raise BioscanInputError(f"protocol: expected one of {PROTOCOLS}, got {protocol!r}")
    from .reports import plot_accuracy, update_model_card

    network, processor = load_pretrained(model)
    splits, roles = data.load()
    out = Path(out) if out else Path(model).resolve().parent / f"evaluation-{split}"
    out.mkdir(parents=True, exist_ok=True)

    key_records = role_records(splits, roles, "keys")
    novel_records = None
    if protocol == "species_held_out":
        key_records, novel_records = hold_out_species(splits, roles, split)
    modalities = available_modalities(key_records, network.config.modalities, what="keys")
    logger.info("evaluating %s on %s with modalities %s", model, data.name, modalities)
    keys = SpecimenDataset(with_modalities(key_records, modalities, what="keys"), processor, modalities)
    queries = {}
    for group in ("seen", "unseen"):
        role = f"{split}_queries_{group}"
        if has_role(splits, roles, role):
            records = with_modalities(role_records(splits, roles, role), modalities, what=role)
            if len(records):
                queries[group] = SpecimenDataset(records, processor, modalities)
    if not queries:
        raise ValueError(f"no {split} queries in this dataset (splits: {sorted(splits)})")
    if novel_records is not None and len(novel_records):
        queries["novel"] = SpecimenDataset(with_modalities(novel_records, modalities, what="novel queries"),
                                           processor, modalities)  # fmt: skip

    key_features = embed_dataset(network, keys, batch_size=batch_size, description="keys")
    query_features = {
        g: embed_dataset(network, q, batch_size=batch_size, description=f"{g} queries") for g, q in queries.items()
    }
    query_labels = {g: labels_of(q) for g, q in queries.items()}
    results = evaluate_retrieval(query_features, query_labels, key_features, labels_of(keys), show_progress=True)
    if DNA in modalities and kmer_baseline:
        results.update(kmer_baseline_results(keys, queries))
    if DNA in modalities and identity_baseline:
        results.update(identity_baseline_results(keys, queries))
    identification = None
    if protocol == "species_held_out" and DNA in modalities:
        identification = compare_identifiers(keys, queries, key_features, query_features, identity=identity_baseline)

    summary = {
        "model": str(model),
        "dataset": data.name,
        "split": split,
        "modalities": modalities,
        "keys": len(keys),
        "queries": {g: len(q) for g, q in queries.items()},
        "protocol": (
            "queries against all keys (open set); label of the nearest keys; cosine similarity"
            if protocol == "open_set"
            else "species held out: the other split's unseen species removed from the keys, their records novel "
            "queries; otherwise as open_set"
        ),
        "results": results,
    }
    if identification is not None:
        summary["identification"] = identification
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    plot_accuracy(results, out / "accuracy.png", title=f"{data.name} {split}: macro top-1 accuracy per rank")
    example_group = "unseen" if "unseen" in queries else "seen"  # novel queries have no key of their species
    _retrieval_examples(
        keys,
        queries[example_group],
        key_features,
        query_features[example_group],
        out / "retrieval_examples.png",
        examples,
    )
    if model_card:
        update_model_card(model_card, summary, model_name=Path(model).name)
    return Evaluation(results=results, summary=summary, out=out)
