"""The paper's retrieval evaluation: embed queries and keys, search, score every query -> key combination.

Protocol (CLIBD_REFERENCE.md §4): keys are every labelled record of seen and unseen species; queries are the
seen and the unseen query splits; an unseen query competes against all keys (open set). A query is classified
at each rank by the labels of its nearest keys (cosine, exact inner product on unit vectors). Scores are top-k
micro and macro accuracy per rank, seen and unseen, and their harmonic mean, computed by the
``taxonomic_retrieval`` metric (``metrics/taxonomic_retrieval``).
"""

from __future__ import annotations

import importlib.util
import json
import logging
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from bioscan_clip.data import SpecimenDataset, add_data_arguments, model_inputs
from bioscan_clip.retrieval import KeyIndex
from modeling_bioscanclip.constants_bioscanclip import TAXONOMIC_RANKS

logger = logging.getLogger(__name__)

METRIC_DIR = Path(__file__).resolve().parents[1] / "metrics" / "taxonomic_retrieval"

# Query feature -> key feature, as in the paper's tables. "averaged" is the mean of the image and DNA embeddings,
# "concatenated" their concatenation, "all" stacks the image, DNA and text embeddings of every key.
PAIRS: tuple[tuple[str, str], ...] = (
    ("image", "image"),
    ("image", "dna"),
    ("image", "text"),
    ("dna", "dna"),
    ("dna", "text"),
    ("averaged", "averaged"),
    ("concatenated", "concatenated"),
    ("image", "all"),
    ("dna", "all"),
)


@cache
def metric_module() -> ModuleType:
    """The ``taxonomic_retrieval`` metric module, imported from its file (it is an ``evaluate`` script)."""
    path = METRIC_DIR / "taxonomic_retrieval.py"
    spec = importlib.util.spec_from_file_location("taxonomic_retrieval", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pair_name(pair: tuple[str, str]) -> str:
    return f"{pair[0]}->{pair[1]}"


@torch.no_grad()
def embed_dataset(
    model: Any,
    dataset: SpecimenDataset,
    *,
    batch_size: int = 64,
    num_workers: int = 0,
    accelerator: Any = None,
    description: str = "embedding",
    show_progress: bool = True,
) -> dict[str, np.ndarray]:
    """Unit-length embeddings of every modality of ``dataset``, in dataset order.

    With an ``accelerator``, the work is sharded over processes and gathered (``gather_for_metrics`` drops the
    duplicates that pad the last batch); every process gets the full result.
    """
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    core = model
    if accelerator is not None:
        loader = accelerator.prepare(loader)
        core = accelerator.unwrap_model(model)
        show_progress = show_progress and accelerator.is_local_main_process
    was_training = core.training
    core.eval()
    parts: dict[str, list[torch.Tensor]] = {}
    for batch in tqdm(loader, desc=description, disable=not show_progress, leave=False):
        embeds = core.embed(**model_inputs(batch))
        embeds["index"] = batch["index"]
        if accelerator is not None:
            embeds = accelerator.gather_for_metrics(embeds)
        for name, value in embeds.items():
            parts.setdefault(name, []).append(value.float().cpu())
    core.train(was_training)
    if not parts:
        return {}
    order = torch.argsort(torch.cat(parts.pop("index")))
    return {name: torch.cat(values)[order].numpy() for name, values in parts.items()}


def add_combined_features(embeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Adds ``averaged`` and ``concatenated`` image+DNA features when both exist (unit length again)."""
    features = dict(embeds)
    if "image" in features and "dna" in features:
        averaged = features["image"] + features["dna"]
        features["averaged"] = averaged / np.linalg.norm(averaged, axis=1, keepdims=True).clip(1e-12)
        features["concatenated"] = np.concatenate([features["image"], features["dna"]], axis=1) / np.sqrt(2)
    return features


def available_pairs(features: Sequence[str], pairs: Sequence[tuple[str, str]] = PAIRS) -> list[tuple[str, str]]:
    """The pairs whose query and key features exist (``all`` needs image, DNA and text)."""
    present = set(features)
    if {"image", "dna", "text"} <= present:
        present.add("all")
    return [pair for pair in pairs if pair[0] in present and pair[1] in present]


def key_matrix(features: Mapping[str, np.ndarray], labels: Mapping[str, list[Any]], name: str):
    """The key embeddings and labels of one key feature (``all`` triplicates the labels)."""
    if name != "all":
        return features[name], labels
    stacked = np.concatenate([features["image"], features["dna"], features["text"]])
    return stacked, {column: list(values) * 3 for column, values in labels.items()}


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
        pairs: the (query feature, key feature) pairs; by default every pair of :data:`PAIRS` the features allow.
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


def labels_of(dataset: SpecimenDataset) -> dict[str, list[Any]]:
    """``processid`` and the taxonomic ranks of a dataset's records."""
    return {column: dataset.metadata.get(column, [None] * len(dataset)) for column in ("processid", *TAXONOMIC_RANKS)}


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


# ---- the `bioscan-clip evaluate` command ---------------------------------------------------------------------------
BASELINE_PAIR = "dna->dna (5-mer profile baseline)"


def add_arguments(parser: Any) -> None:
    parser.description = (
        "Evaluate a trained model with the paper's protocol: seen and unseen queries of a split against all keys, "
        "top-1/3/5 micro and macro accuracy per rank with the seen/unseen harmonic mean, for every query -> key "
        "combination the model and data allow. Prints the tables; writes results.json, accuracy.png, "
        "retrieval_examples.png and, with --model_card, the model card's results."
    )
    parser.add_argument("--model", required=True, help="a saved model folder (e.g. runs/quickstart/model)")
    add_data_arguments(parser)
    parser.add_argument("--split", choices=("val", "test"), default="test", help="which query splits (default: test)")
    parser.add_argument("--out", help="output folder (default: <model>/../evaluation-<split>)")
    parser.add_argument("--model_card", help="write model-index metadata and the results table into this card")
    parser.add_argument(
        "--no_kmer_baseline",
        action="store_true",
        help="skip the DNA->DNA nearest-neighbour baseline on 5-mer count profiles",
    )
    parser.add_argument("--batch_size", type=int, default=128, help="embedding batch size (default: 128)")
    parser.add_argument("--examples", type=int, default=6, help="queries in the retrieval-examples figure")


def kmer_baseline_results(keys: SpecimenDataset, queries: Mapping[str, SpecimenDataset]) -> dict[str, Any]:
    """DNA->DNA retrieval on normalised 5-mer count profiles: the alignment-free baseline a learned embedding
    should beat."""
    from bioscan_clip.kmer_baseline import kmer_profile

    key_features = {"dna": kmer_profile(keys.records["dna_barcode"])}
    query_features = {group: {"dna": kmer_profile(q.records["dna_barcode"])} for group, q in queries.items()}
    query_labels = {group: labels_of(q) for group, q in queries.items()}
    result = evaluate_retrieval(query_features, query_labels, key_features, labels_of(keys), pairs=[("dna", "dna")])
    return {BASELINE_PAIR: result["dna->dna"]}


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

    if "image" not in key_features or count <= 0 or keys.images is None:
        return None
    rows = np.linspace(0, len(queries) - 1, num=min(count, len(queries))).astype(int)
    index = KeyIndex.build(key_features["image"], labels_of(keys))
    found = index.search_labels(query_features["image"][rows], min(5, len(index)))
    ranks = ("order", "family", "genus", "species")
    query_taxa = [{rank: queries.metadata[rank][r] for rank in ranks} for r in rows]
    neighbour_taxa = [
        [{rank: found.labels[rank][q][j] for rank in ranks} for j in range(found.indices.shape[1])]
        for q in range(len(rows))
    ]
    query_images = [queries.image(r) for r in rows]
    neighbour_images = [[keys.image(int(i)) for i in found.indices[q]] for q in range(len(rows))]
    return plot_retrieval_examples(query_images, query_taxa, neighbour_images, neighbour_taxa, path)


def run(args: Any) -> int:
    from bioscan_clip.data import has_image, role_records, splits_from_args, with_modalities
    from bioscan_clip.reports import plot_accuracy, update_model_card
    from modeling_bioscanclip import BioscanClipModel, BioscanClipProcessor

    model = BioscanClipModel.from_pretrained(args.model).eval()
    processor = BioscanClipProcessor.from_pretrained(args.model)
    splits, roles = splits_from_args(args)
    out = Path(args.out) if args.out else Path(args.model).resolve().parent / f"evaluation-{args.split}"
    out.mkdir(parents=True, exist_ok=True)

    key_records = role_records(splits, roles, "keys")
    has_images = bool(has_image(key_records).any())
    modalities = [m for m in model.config.modalities if m != "image" or has_images]
    if not modalities:
        raise ValueError("the data offers none of the model's modalities")
    logger.info("evaluating %s on %s with modalities %s", args.model, args.source or args.dataset_path, modalities)
    keys = SpecimenDataset(with_modalities(key_records, modalities, what="keys"), processor, modalities)
    queries = {}
    for group in ("seen", "unseen"):
        role = f"{args.split}_queries_{group}"
        if any(name in splits for name in roles[role]):
            records = with_modalities(role_records(splits, roles, role), modalities, what=role)
            if len(records):
                queries[group] = SpecimenDataset(records, processor, modalities)
    if not queries:
        raise ValueError(f"no {args.split} queries in this dataset (splits: {sorted(splits)})")

    embed = {"batch_size": args.batch_size}
    key_features = add_combined_features(embed_dataset(model, keys, description="keys", **embed))
    query_features = {
        g: add_combined_features(embed_dataset(model, q, description=f"{g} queries", **embed))
        for g, q in queries.items()
    }
    query_labels = {g: labels_of(q) for g, q in queries.items()}
    results = evaluate_retrieval(query_features, query_labels, key_features, labels_of(keys), show_progress=True)
    if "dna" in modalities and not args.no_kmer_baseline:
        results.update(kmer_baseline_results(keys, queries))

    dataset_name = args.source if args.dataset_path is None else Path(args.dataset_path).name
    print(format_table(results, average="macro"))
    print()
    print(format_table(results, average="micro"))
    summary = {
        "model": str(args.model),
        "dataset": dataset_name,
        "split": args.split,
        "modalities": modalities,
        "keys": len(keys),
        "queries": {g: len(q) for g, q in queries.items()},
        "protocol": "queries against all keys (open set); label of the nearest keys; cosine similarity",
        "results": results,
    }
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    plot_accuracy(results, out / "accuracy.png", title=f"{dataset_name} {args.split}: macro top-1 accuracy per rank")
    example_group = "unseen" if "unseen" in queries else "seen"
    _retrieval_examples(
        keys,
        queries[example_group],
        key_features,
        query_features[example_group],
        out / "retrieval_examples.png",
        args.examples,
    )
    if args.model_card:
        synthetic = "mini" in str(dataset_name)
        notes = (
            "\n*mini-BIOSCAN is SYNTHETIC: these figures test the pipeline, not insect identification.*\n"
            if synthetic
            else ""
        )
        update_model_card(
            args.model_card,
            results,
            model_name=Path(args.model).name,
            dataset=dataset_name,
            split=args.split,
            notes=notes,
        )
    print(
        f"\nwrote {out / 'results.json'}, {out / 'accuracy.png'}" + (f", {args.model_card}" if args.model_card else "")
    )
    return 0
