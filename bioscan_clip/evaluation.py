"""The paper's retrieval evaluation: embed queries and keys, search, score every query -> key combination.

Protocol (CLIBD_REFERENCE.md §4): keys are every labelled record of seen and unseen species; queries are the
seen and the unseen query splits; an unseen query competes against all keys (open set). A query is classified
at each rank by the labels of its nearest keys (cosine, exact inner product on unit vectors). Scores are top-k
micro and macro accuracy per rank, seen and unseen, and their harmonic mean, computed by the
``taxonomic_retrieval`` metric (``metrics/taxonomic_retrieval``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from bioscan_clip.data import DataSpec, SpecimenDataset, available_modalities, has_role, role_records, with_modalities
from bioscan_clip.features import DNA, IMAGE, available_pairs, embed_dataset, key_matrix, labels_of, pair_name
from bioscan_clip.metric import metric_module
from bioscan_clip.retrieval import KeyIndex
from modeling_bioscanclip import BioscanClipModel, BioscanClipProcessor
from modeling_bioscanclip.constants_bioscanclip import TAXONOMIC_RANKS

logger = logging.getLogger(__name__)

BASELINE_PAIR = "dna->dna (5-mer profile baseline)"
IDENTITY_PAIR = "dna->dna (alignment identity 1-NN)"


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
        query_features: ``{"seen": {feature: (n, d) array}, "unseen": {...}}`` (either group may be absent).
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
        results[pair_name((query_name, key_name))] = compute(
            found.labels, references, is_unseen, k_list=[kk for kk in k_list if kk <= len(index)]
        )
    return results


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
    from bioscan_clip.kmer_baseline import kmer_profile

    key_features = {DNA: kmer_profile(keys.records["dna_barcode"])}
    query_features = {group: {DNA: kmer_profile(q.records["dna_barcode"])} for group, q in queries.items()}
    query_labels = {group: labels_of(q) for group, q in queries.items()}
    result = evaluate_retrieval(query_features, query_labels, key_features, labels_of(keys), pairs=[(DNA, DNA)])
    return {BASELINE_PAIR: result[pair_name((DNA, DNA))]}


def identity_baseline_results(keys: SpecimenDataset, queries: Mapping[str, SpecimenDataset]) -> dict[str, Any]:
    """DNA->DNA 1-NN by alignment identity (candidates from the 5-mer top 20): the field's own baseline
    (:mod:`bioscan_clip.identity_baseline`). Top-1 only: it names one best key per query."""
    from bioscan_clip.identity_baseline import identity_nearest

    groups = list(queries)
    key_labels = labels_of(keys)
    barcodes = sum((list(queries[g].records["dna_barcode"]) for g in groups), [])
    found = identity_nearest(barcodes, keys.records["dna_barcode"], key_labels)
    references = {rank: sum((list(labels_of(queries[g])[rank]) for g in groups), []) for rank in TAXONOMIC_RANKS}
    is_unseen = sum(([g == "unseen"] * len(queries[g]) for g in groups), [])
    predictions = {rank: [[label] for label in found.labels[rank]] for rank in TAXONOMIC_RANKS}
    compute = metric_module().compute_taxonomic_accuracy
    return {IDENTITY_PAIR: compute(predictions, references, is_unseen, k_list=[1])}


def _retrieval_examples(
    keys: SpecimenDataset,
    queries: SpecimenDataset,
    key_features: dict,
    query_features: dict,
    path: Path,
    count: int,
) -> Path | None:
    """The retrieval-examples figure for image -> image, on the first ``count`` queries (deterministic)."""
    from bioscan_clip.reports import plot_retrieval_examples

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
) -> Evaluation:
    """The paper's protocol for a saved model: the seen and unseen queries of ``split`` against all keys, every
    query -> key pair the model and the data allow.

    Writes ``results.json``, ``accuracy.png``, ``retrieval_examples.png`` to ``out`` (default:
    ``<model>/../evaluation-<split>``) and, with ``model_card``, the card's model-index and results table.
    With DNA, the 5-mer-profile and alignment-identity baselines are scored beside the model (``kmer_baseline``,
    ``identity_baseline``; the identity baseline is top-1 only).
    """
    from bioscan_clip.reports import plot_accuracy, update_model_card

    network = BioscanClipModel.from_pretrained(model).eval()
    processor = BioscanClipProcessor.from_pretrained(model)
    splits, roles = data.load()
    out = Path(out) if out else Path(model).resolve().parent / f"evaluation-{split}"
    out.mkdir(parents=True, exist_ok=True)

    key_records = role_records(splits, roles, "keys")
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

    summary = {
        "model": str(model),
        "dataset": data.name,
        "split": split,
        "modalities": modalities,
        "keys": len(keys),
        "queries": {g: len(q) for g, q in queries.items()},
        "protocol": "queries against all keys (open set); label of the nearest keys; cosine similarity",
        "results": results,
    }
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    plot_accuracy(results, out / "accuracy.png", title=f"{data.name} {split}: macro top-1 accuracy per rank")
    example_group = "unseen" if "unseen" in queries else "seen"
    _retrieval_examples(
        keys,
        queries[example_group],
        key_features,
        query_features[example_group],
        out / "retrieval_examples.png",
        examples,
    )
    if model_card:
        synthetic = "mini" in data.name
        notes = (
            "\n*mini-BIOSCAN is SYNTHETIC: these figures test the pipeline, not insect identification.*\n"
            if synthetic
            else ""
        )
        update_model_card(model_card, results, model_name=Path(model).name, dataset=data.name, split=split, notes=notes)
    return Evaluation(results=results, summary=summary, out=out)
