"""The ``bioscan-clip`` subcommands: each parses its options, calls one library function and prints what a person
reads (tables, paths). The work itself lives in the library: ``quickstart``, ``evaluation``, ``identification``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bioscan_clip.data import DataSpec, SpecimenDataset, available_modalities, image_file_records, with_modalities
from bioscan_clip.features import DNA, IMAGE, KEY_FEATURES, embed_dataset, embed_inputs, labels_of, loader_workers
from bioscan_clip.identification import DEFAULT_PRECISION, Identifier, build_index
from bioscan_clip.retrieval import AUTO_FLAT_MAX_KEYS, BUILD_INDEX_TYPES
from bioscan_clip.safe_io import atomic_output_file
from dataset_scripts import RETRIEVAL_SPLITS
from dataset_scripts.images import VERIFY_MODES
from dataset_scripts.integrity import IMAGE_POLICIES
from dataset_scripts.tables import BARCODE_COLUMNS, read_fasta, read_query_table
from modeling_bioscanclip import BioscanClipModel, BioscanClipProcessor, BioscanInputError
from modeling_bioscanclip.constants_bioscanclip import IMAGE_FORMATS

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp"}


def load_model(folder: str) -> tuple[BioscanClipModel, BioscanClipProcessor]:
    return BioscanClipModel.from_pretrained(folder).eval(), BioscanClipProcessor.from_pretrained(folder)


# ---- data options ---------------------------------------------------------------------------------------------------
def add_data_arguments(parser: argparse.ArgumentParser, *, default_source: str | None = "mini") -> None:
    """The options every command uses to name a dataset (the fields of :class:`DataSpec`)."""
    group = parser.add_argument_group("data")
    group.add_argument(
        "--source",
        default=default_source,
        choices=sorted(RETRIEVAL_SPLITS),
        help=f"dataset builder (default: {default_source}; mini is generated, synthetic)",
    )
    group.add_argument(
        "--data_dir",
        help="the builder's data root, or its metadata CSV/TSV file (for bold: the export, tab, comma or ';')",
    )
    group.add_argument("--dataset_path", help="instead, a DatasetDict saved with save_to_disk")
    group.add_argument("--cache_dir", help="where builders keep their Arrow cache")
    group.add_argument(
        "--partition",
        help="BOLD exports: 'none' (default) makes every record a key and a training record; 'clibd' splits "
        "species into seen/unseen queries and keys. BIOSCAN-1M: auto, official or rebuild",
    )
    group.add_argument(
        "--image_policy",
        choices=IMAGE_POLICIES,
        help="a missing or corrupt image: fail (default), skip the record, or keep it without image",
    )
    group.add_argument(
        "--image_package",
        help="image folder under images/ (default cropped_256); 'none' reads the metadata only (barcodes, no images)",
    )
    group.add_argument(
        "--verify_images",
        choices=VERIFY_MODES,
        help="how images are checked while preparing: header (default: format, size, truncation), decode, none",
    )
    group.add_argument(
        "--num_proc", type=int, help="processes that check the images and write the splits while preparing"
    )
    group.add_argument(
        "--keep_provisional_names",
        action="store_true",
        help="BOLD exports: keep 'sp.'/'cf.'/interim species names as their own labels (default: read as missing)",
    )
    group.add_argument(
        "--genus_from_species",
        action="store_true",
        help="fill a missing genus from the species name, as the bioscan-dataset loader does",
    )


def data_spec(args: argparse.Namespace) -> DataSpec:
    _show_data_summaries()
    return DataSpec.from_options(args)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (it may be replaced after the handler is made)."""

    @property
    def stream(self):  # noqa: D102
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _show_data_summaries() -> None:
    """Shows the data layer's one-line read summaries (rows read, kept, dropped by reason) on stderr."""
    data_logger = logging.getLogger("dataset_scripts")
    if not data_logger.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        data_logger.addHandler(handler)
        data_logger.setLevel(logging.INFO)
        data_logger.propagate = False


# ---- quickstart -----------------------------------------------------------------------------------------------------
def add_quickstart_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "The main job, end to end on a CPU: write the SYNTHETIC mini-BIOSCAN dataset, train the tiny preset with "
        "Accelerate, evaluate it with the paper's protocol against an untrained model of the same architecture, "
        "build the key index with calibrated confidence, and print how to open the demo."
    )
    parser.add_argument("--out", default="runs/quickstart", help="run folder (default: runs/quickstart)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated data and of training")
    parser.add_argument("--size", choices=("tiny", "small", "medium"), default="small", help="mini-BIOSCAN size")
    parser.add_argument("--epochs", type=int, help="override the tiny preset's epochs")


def run_quickstart(args: argparse.Namespace) -> int:
    from bioscan_clip.quickstart import quickstart

    quickstart(args.out, seed=args.seed, size=args.size, epochs=args.epochs)
    return 0


# ---- evaluate -------------------------------------------------------------------------------------------------------
def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Evaluate a trained model with the paper's protocol: seen and unseen queries of a split against all keys, "
        "top-1/3/5 micro and macro accuracy per rank with the seen/unseen harmonic mean, for every query -> key "
        "combination the model and data allow. Prints the tables; writes results.json, accuracy.png, "
        "retrieval_examples.png and, with --model_card, the model card's results. With --protocol species_held_out "
        "(for a CLIBD partition, e.g. `--source bold --partition clibd` on your own BOLD export), the other split's "
        "unseen species are also taken out of the keys and queried as novel species, and the DNA identifiers "
        "(model, alignment identity, model + alignment re-ranking) are compared on the precision of their confident "
        "calls, the novel-species AUROC and their 'unknown species' flags."
    )
    parser.add_argument("--model", required=True, help="a saved model folder (e.g. runs/quickstart/model)")
    add_data_arguments(parser)
    parser.add_argument("--split", choices=("val", "test"), default="test", help="which query splits (default: test)")
    parser.add_argument(
        "--protocol",
        choices=("open_set", "species_held_out"),
        default="open_set",
        help="open_set: the paper's (every species has keys); species_held_out: adds novel species, absent from "
        "the keys and from training (the other split's unseen species), and the identifiers' comparison",
    )
    parser.add_argument("--out", help="output folder (default: <model>/../evaluation-<split>)")
    parser.add_argument("--model_card", help="write model-index metadata and the results table into this card")
    parser.add_argument(
        "--no_kmer_baseline",
        action="store_true",
        help="skip the DNA->DNA nearest-neighbour baseline on 5-mer count profiles",
    )
    parser.add_argument(
        "--no_identity_baseline",
        action="store_true",
        help="skip the DNA->DNA 1-NN by alignment identity (edlib, candidates from the 5-mer top 20)",
    )
    parser.add_argument("--batch_size", type=int, default=128, help="embedding batch size (default: 128)")
    parser.add_argument("--examples", type=int, default=6, help="queries in the retrieval-examples figure")


def run_evaluate(args: argparse.Namespace) -> int:
    from bioscan_clip.evaluation import evaluate, format_identification, format_table

    report = evaluate(
        args.model,
        data_spec(args),
        split=args.split,
        out=args.out,
        model_card=args.model_card,
        kmer_baseline=not args.no_kmer_baseline,
        identity_baseline=not args.no_identity_baseline,
        batch_size=args.batch_size,
        examples=args.examples,
        protocol=args.protocol,
    )
    print(format_table(report.results, average="macro"))
    print()
    print(format_table(report.results, average="micro"))
    if "identification" in report.summary:
        print()
        print(format_identification(report.summary["identification"]))
    written = [
        report.out / "results.json",
        report.out / "accuracy.png",
        *([args.model_card] if args.model_card else []),
    ]
    print("\nwrote " + ", ".join(str(path) for path in written))
    return 0


# ---- index ----------------------------------------------------------------------------------------------------------
def add_index_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Embed the key records of a dataset once and save a key folder: one faiss index per feature (image, DNA, "
        "text, averaged image+DNA) with the records' taxonomy and images, and per-rank confidence thresholds "
        "calibrated on the validation queries (or, without them, leave-one-out over the keys) with a share of the "
        "labels held out of the keys, so that the thresholds see queries whose answer is not in the library; "
        "calibration.json reports the precision and coverage of confident calls and the novel-species detection "
        "AUROC, calibration.png the reliability diagram. `predict` and the demo read it without re-embedding."
    )
    parser.add_argument("--model", required=True, help="a saved model folder")
    add_data_arguments(parser)
    parser.add_argument("--out", required=True, help="the key folder to write (replaced if it is one)")
    parser.add_argument(
        "--index_type",
        default="auto",
        choices=BUILD_INDEX_TYPES,
        help=f"auto (default) = exact flat below {AUTO_FLAT_MAX_KEYS:,} keys, else IVF-PQ fast scan re-ranked exactly; "
        "flat = exact; ivf/hnsw/ivfpq are approximate, for millions of keys",
    )
    index = parser.add_argument_group("index settings (approximate indexes; defaults chosen by key count)")
    index.add_argument("--nlist", type=int, help="IVF lists (default about sqrt(keys))")
    index.add_argument("--nprobe", type=int, help="IVF lists searched per query (default 16)")
    index.add_argument("--pq_m", type=int, help="IVF-PQ sub-quantisers; must divide the dimension")
    index.add_argument("--pq_nbits", type=int, help="bits per IVF-PQ code (8, or 4 with fast scan)")
    index.add_argument(
        "--pq_fast_scan",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="IVF-PQ as faiss IndexIVFPQFastScan (4-bit codes; on by default for auto)",
    )
    index.add_argument("--rerank", type=int, help="candidates re-scored exactly per query (IVF-PQ default: 64 per million keys, at least 64)")
    index.add_argument("--hnsw_m", type=int, help="HNSW graph degree (default 32)")
    index.add_argument("--ef_search", type=int, help="HNSW search beam width (default 64)")
    index.add_argument("--train_size", type=int, help="keys IVF/PQ k-means trains on (default 64 per list)")
    parser.add_argument(
        "--precision",
        type=float,
        default=DEFAULT_PRECISION,
        help="precision that confident predictions must reach on the calibration queries (default 0.9)",
    )
    parser.add_argument(
        "--no_calibration",
        action="store_true",
        help="do not calibrate (no rank is then confident and every query is flagged unknown species)",
    )
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--overwrite", action="store_true", help="replace --out even if it is not a key folder")


INDEX_OPTIONS = ("nlist", "nprobe", "pq_m", "pq_nbits", "pq_fast_scan", "rerank", "hnsw_m", "ef_search", "train_size")


def run_index(args: argparse.Namespace) -> int:
    out = build_index(
        args.model,
        data_spec(args),
        args.out,
        index_type=args.index_type,
        index_options={name: getattr(args, name) for name in INDEX_OPTIONS if getattr(args, name) is not None},
        precision=args.precision,
        calibrate=not args.no_calibration,
        batch_size=args.batch_size,
        overwrite=args.overwrite,
    )
    report = json.loads((out / "calibration.json").read_text())
    print(f"wrote key folder {out}: features {sorted(p.name for p in out.iterdir() if p.name in KEY_FEATURES)}")
    print_calibration(report, out)
    for name, recall in report.get("recall_at_5", {}).items():
        print(f"  {name}: recall@5 of the {args.index_type} index against exact search {recall:.3f}")
    return 0


def print_calibration(report: dict[str, Any], out: Path) -> None:
    """The calibration of a key folder as a person reads it: per pair and rank the threshold, the precision and
    coverage of confident calls, the novel-species AUROC, then every warning."""
    print(f"  calibration: {report.get('method', 'none')} ({report.get('calibration_queries', 0)} queries)")

    def percent(value: float | None) -> str:
        return "  n/a" if value is None else f"{100 * value:5.1f}"

    for pair, thresholds in report.get("thresholds", {}).items():
        pair_report = report.get("report", {}).get(pair, {})
        print(f"  {pair}: similarity thresholds " + ", ".join(f"{r} {t:.3f}" for r, t in thresholds.items()))
        for rank, entry in pair_report.get("ranks", {}).items():
            print(
                f"    {rank:<8} confident calls: precision {percent(entry['precision'])} %, coverage "
                f"{percent(entry['coverage'])} % of {entry['queries']} ({entry['absent_queries']} with the {rank} "
                f"absent from the keys; {entry['method']})"
            )
        if pair_report.get("novelty_auroc") is not None:
            print(
                f"    novel-species detection AUROC {pair_report['novelty_auroc']:.3f}; unknown-species flag on "
                f"{percent(pair_report['novel_flagged'])} % of novel, {percent(pair_report['known_flagged'])} % of "
                "known species"
            )
    if report.get("plot"):
        print(f"  reliability diagram: {out / report['plot']}")
    for warning in report.get("warnings", []):
        print(f"  warning: {warning}")


# ---- query inputs ---------------------------------------------------------------------------------------------------
def collect_queries(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Queries from the command line: images, a folder of images, a FASTA file or a CSV/TSV table."""
    queries: list[dict[str, Any]] = []
    for image in args.images or []:
        queries.append({"id": Path(image).stem, "image": image})
    if args.images_dir:
        found = sorted(p for p in Path(args.images_dir).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise BioscanInputError(f"{args.images_dir}: no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        queries += [{"id": p.stem, "image": str(p)} for p in found]
    if args.fasta:
        fasta = read_fasta(args.fasta)
        if queries and len(queries) == len(fasta) and not args.table:
            for query, (_, sequence) in zip(queries, fasta, strict=True):  # pair images and barcodes in order
                query["barcode"] = sequence
        else:
            queries += [{"id": identifier, "barcode": sequence} for identifier, sequence in fasta]
    if args.table:
        table_queries, summary = read_query_table(args.table)
        print(summary.describe())
        queries += table_queries
    if not queries:
        raise BioscanInputError("no queries: give --images, --images_dir, --fasta and/or --table")
    return queries


def add_query_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("queries")
    group.add_argument("--images", nargs="+", help=f"image files ({', '.join(IMAGE_FORMATS)})")
    group.add_argument("--images_dir", help="a folder of images")
    group.add_argument("--fasta", help="barcodes in FASTA (paired in order with --images when the counts match)")
    group.add_argument(
        "--table",
        help="a BOLD export, or a CSV/TSV with a barcode column (" + ", ".join(BARCODE_COLUMNS) + ") and/or an "
        "'image' column (paths), optional id and taxonomy (order ... species: the report compares with it)",
    )


def query_name(query: dict[str, Any]) -> str:
    """How errors name a query: its id, and the image file it came from (``record Q1 (photos/q1.jpg) (image)``)."""
    image = query.get("image")
    return f"{query['id']} ({image})" if isinstance(image, str) else str(query["id"])


def _batches(queries: list[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    for start in range(0, len(queries), size):
        yield queries[start : start + size]


def _write_rows(rows: list[dict[str, Any]], out: Path) -> None:
    """Writes a temporary sibling and renames it onto ``out`` when complete (a kill leaves what was there)."""
    frame = pd.DataFrame(rows)
    with atomic_output_file(out) as temporary:
        if out.suffix == ".csv":
            frame.to_csv(temporary, index=False)
        elif out.suffix == ".json":
            temporary.write_text(frame.to_json(orient="records", indent=2))
        else:
            frame.to_parquet(temporary, index=False)


# ---- predict --------------------------------------------------------------------------------------------------------
def parse_restrict(values: list[str] | None) -> dict[str, list[str]] | None:
    """``["order=Diptera,Hymenoptera", "family=Sciaridae"]`` -> ``{"order": [...], "family": [...]}``."""
    if not values:
        return None
    restrict: dict[str, list[str]] = {}
    for value in values:
        rank, sep, names = value.partition("=")
        if not sep or not names:
            raise BioscanInputError(f"--restrict expects RANK=NAME[,NAME...], got {value!r}")
        restrict.setdefault(rank.strip(), []).extend(n.strip() for n in names.split(",") if n.strip())
    return restrict


def add_predict_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Identify specimens against a key folder (from `bioscan-clip index`): one row per query with the predicted "
        "taxon at each rank, its confidence, the deepest rank whose confidence passes its calibrated threshold, an "
        "'unknown species' flag and the k nearest keys. An image and a barcode of the same specimen are searched "
        "together (averaged image+DNA embedding)."
    )
    parser.add_argument("--model", required=True, help="a saved model folder")
    parser.add_argument("--keys", required=True, help="a key folder written by `bioscan-clip index`")
    add_query_arguments(parser)
    parser.add_argument("--k", type=int, default=5, help="nearest keys per query (default 5)")
    parser.add_argument(
        "--key_feature",
        choices=KEY_FEATURES,
        help="search these keys instead of the query's own kind, e.g. dna for image queries",
    )
    parser.add_argument(
        "--restrict",
        nargs="+",
        metavar="RANK=NAMES",
        help="search only keys of these taxa, e.g. order=Diptera,Hymenoptera",
    )
    parser.add_argument("--out", default="predictions.parquet", help="output .parquet, .csv or .json")
    parser.add_argument("--batch_size", type=int, default=32)


def run_predict(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    queries = collect_queries(args)  # the inputs are read and checked before any model is loaded
    restrict = parse_restrict(args.restrict)
    identifier = Identifier.load(args.model, args.keys)
    rows = []
    kinds = {(("image" in q and q["image"] is not None), ("barcode" in q)) for q in queries}
    for with_image, with_barcode in sorted(kinds):
        group = [
            q
            for q in queries
            if ("image" in q and q["image"] is not None) == with_image and ("barcode" in q) == with_barcode
        ]
        for batch in tqdm(list(_batches(group, args.batch_size)), desc="identifying", leave=False):
            answers = identifier.identify(
                images=[q["image"] for q in batch] if with_image else None,
                barcodes=[q["barcode"] for q in batch] if with_barcode else None,
                k=args.k,
                key_feature=args.key_feature,
                restrict=restrict,
                names=[query_name(q) for q in batch],
            )
            rows += [
                {"id": q["id"], **answer.to_row(), **_truth_columns(q)}
                for q, answer in zip(batch, answers, strict=True)
            ]
    out = Path(args.out)
    _write_rows(rows, out)
    table = pd.DataFrame(rows)[
        ["id", "order", "family", "genus", "species", "deepest_confident_rank", "unknown_species"]
    ]
    print(table.to_string(index=False, max_rows=30))
    agreement = _agreement(rows)
    if agreement:
        print("\nagreement with the table's own labels (queries labelled at that rank): " + agreement)
    print(f"\nwrote {len(rows)} predictions to {out}")
    return 0


def _truth_columns(query: dict[str, Any]) -> dict[str, Any]:
    """``label_<rank>``: the query table's own taxonomy, beside the prediction (absent when the table has none)."""
    truth = query.get("truth")
    return {f"label_{rank}": value for rank, value in truth.items()} if truth else {}


def _agreement(rows: list[dict[str, Any]]) -> str:
    """Per rank, how often the prediction equals the table's own label, over the queries labelled at that rank."""
    parts = []
    for rank in ("order", "family", "genus", "species"):
        pairs = [(row.get(rank), row[f"label_{rank}"]) for row in rows if row.get(f"label_{rank}")]
        if pairs:
            hits = sum(predicted == label for predicted, label in pairs)
            parts.append(f"{rank} {100 * hits / len(pairs):.1f}% of {len(pairs)}")
    return ", ".join(parts)


# ---- embed ----------------------------------------------------------------------------------------------------------
def add_embed_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Export unit-length embeddings to Parquet: of image files, FASTA/CSV barcodes, or the records of a dataset "
        "split (--split, with the data options). One row per item: id, feature, embedding, and the taxonomy for "
        "dataset records. Under `accelerate launch --num_processes N` (on CPU add --multi_gpu: without it Accelerate "
        "starts one process) each process embeds a contiguous shard of the items on its own device and the main "
        "process writes the one output, the same rows in the same order as one process writes."
    )
    parser.add_argument("--model", required=True, help="a saved model folder")
    add_query_arguments(parser)
    add_data_arguments(parser, default_source=None)
    parser.add_argument("--split", help="embed the records of this split of the dataset")
    parser.add_argument("--out", default="embeddings.parquet", help="output .parquet")
    parser.add_argument("--batch_size", type=int, default=64)


# One shard's result: feature -> (columns, embeddings); the columns hold "id" and, for dataset records, the taxonomy.
EmbeddedShard = dict[str, tuple[dict[str, list[Any]], Any]]


def _embed_split_shard(args: argparse.Namespace, model: Any, processor: Any, shard: Any) -> EmbeddedShard:
    """This process's contiguous shard of the split's records (after dropping those that lack a modality)."""
    with shard.main_first():  # one process prepares a builder's cache; the others then read it
        splits, _ = data_spec(args).load()
        if args.split not in splits:
            raise BioscanInputError(f"--split {args.split!r}: the dataset has {sorted(splits)}")
    records = splits[args.split]
    if "image" in records.column_names:
        import datasets

        records = records.cast_column("image", datasets.Image(decode=False))
    modalities = available_modalities(records, model.config.modalities, what=f"split {args.split}")
    records = with_modalities(records, modalities)
    shard.announce({"records": len(records)})
    dataset = SpecimenDataset(records.select(range(*shard.bounds(len(records)))), processor, modalities)
    workers = loader_workers(dataset, args.batch_size, shard.local_size)  # this machine's processes share its cores
    features = embed_dataset(
        model, dataset, batch_size=args.batch_size, num_workers=workers, show_progress=shard.is_main
    )
    labels = labels_of(dataset)
    columns = {"id": labels.pop("processid"), **labels}
    return {name: (columns, matrix) for name, matrix in features.items()}


def _embed_query_shard(
    queries: list[dict[str, Any]], model: Any, processor: Any, shard: Any, batch_size: int
) -> EmbeddedShard:
    """This process's contiguous shards of the image queries and of the barcode queries."""
    from tqdm.auto import tqdm

    result: EmbeddedShard = {}
    images = [q for q in queries if q.get("image") is not None]
    barcodes = [q for q in queries if q.get("barcode") is not None]
    shard.announce({"images": len(images), "barcodes": len(barcodes)})
    images, barcodes = shard.take(images), shard.take(barcodes)
    if images:  # decoded and resized in loader workers, overlapped with the forward
        dataset = SpecimenDataset(
            image_file_records([q["image"] for q in images], [query_name(q) for q in images]), processor, [IMAGE]
        )
        workers = loader_workers(dataset, batch_size, shard.local_size)
        embeds = embed_dataset(
            model, dataset, batch_size=batch_size, num_workers=workers, description="images", combined=False,
            show_progress=shard.is_main,
        )[IMAGE]  # fmt: skip
        result[IMAGE] = ({"id": [q["id"] for q in images]}, embeds)
    parts = []
    for batch in tqdm(list(_batches(barcodes, batch_size)), desc="barcodes", leave=False, disable=not shard.is_main):
        barcode_batch, batch_names = [q["barcode"] for q in batch], [str(q["id"]) for q in batch]
        # As embed_dataset embeds keys: the model's DNA reading frames averaged.
        parts.append(embed_inputs(model, processor, barcodes=barcode_batch, names=batch_names)[DNA].numpy())
    if parts:
        result[DNA] = ({"id": [q["id"] for q in barcodes]}, np.concatenate(parts))
    return result


def _merge_shards(shards: list[EmbeddedShard]) -> list[dict[str, Any]]:
    """The output rows: feature by feature (in the order they first appear), each feature's shards in rank order."""
    rows: list[dict[str, Any]] = []
    names = list(dict.fromkeys(name for part in shards for name in part))
    for name in names:
        pieces = [part[name] for part in shards if name in part]
        matrix = np.concatenate([embeds for _, embeds in pieces])
        columns = {column: [v for values, _ in pieces for v in values[column]] for column in pieces[0][0]}
        others = [column for column in columns if column != "id"]
        for i, vector in enumerate(matrix):
            rows.append(
                {"id": columns["id"][i], "feature": name, "embedding": vector.tolist(),
                 **{column: columns[column][i] for column in others}}
            )  # fmt: skip
    return rows


def run_embed(args: argparse.Namespace) -> int:
    from bioscan_clip.sharding import ShardFailedError, process_shard

    # Inputs are checked before the model loads and before any split: a bad input fails every process the same way.
    queries = None if args.split else collect_queries(args)
    shard = process_shard()
    model, processor = load_model(args.model)
    model.to(shard.device)
    if args.split:
        result = _embed_split_shard(args, model, processor, shard)
    else:
        result = _embed_query_shard(queries, model, processor, shard, args.batch_size)
    try:
        shards = shard.gather(result)  # the only collective, once every shard is done
    except ShardFailedError as error:  # one line, not a traceback: the failed process has printed the cause
        raise SystemExit(f"bioscan-clip embed: {error}; nothing was written") from None
    if not shard.is_main:
        return 0  # the main process writes the one output
    rows = _merge_shards(shards)
    out = Path(args.out)
    _write_rows(rows, out)
    dims = {row["feature"]: len(row["embedding"]) for row in rows}
    processes = f" ({shard.world_size} processes)" if shard.world_size > 1 else ""
    print(f"wrote {len(rows)} embeddings ({', '.join(f'{k}: {v}-d' for k, v in dims.items())}) to {out}{processes}")
    return 0


# ---- push -----------------------------------------------------------------------------------------------------------
def add_push_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Write a model, a key library, the metric or the Space as the Hub repository it becomes and upload it in one "
        "commit (huggingface_hub; log in with `hf auth login`). --dry_run DIR writes the repository's files into DIR "
        "and uploads nothing."
    )
    parser.add_argument("artefact", choices=("model", "keys", "metric", "space"), help="what to publish")
    parser.add_argument("--repo_id", required=True, help="the repository, owner/name")
    parser.add_argument("--revision", help="branch to commit to (default: main)")
    parser.add_argument("--private", action="store_true", help="create the repository private")
    parser.add_argument("--dry_run", metavar="DIR", help="write the repository's files into DIR (new or empty) only")
    parser.add_argument("--model", help="model: the saved model folder (e.g. runs/quickstart/model)")
    parser.add_argument("--results", help="model: an `evaluate` results.json for the card's model-index")
    parser.add_argument("--keys", help="keys: the key folder (bioscan-clip index)")
    parser.add_argument("--model_repo", help="keys: the model repository the keys were embedded with; space: shown")
    parser.add_argument("--model_revision", help="keys: the model's commit sha, so loads use that exact model")
    parser.add_argument("--source", default="", help="keys: where the records come from (dataset card)")
    parser.add_argument("--license", default="other", help="keys: licence id of the records (dataset card)")
    parser.add_argument("--keys_repo", help="space: the key-library dataset repository the Space serves")
    parser.add_argument("--wheel", help="space: ship this wheel of the package in the Space (version not on PyPI)")


def run_push(args: argparse.Namespace) -> int:
    import tempfile

    from bioscan_clip import hub

    needed = {"model": ["model"], "keys": ["keys", "model_repo"], "metric": [], "space": []}[args.artefact]
    for name in needed:
        if not getattr(args, name):
            raise BioscanInputError(f"push {args.artefact} needs --{name}")
    options: dict[str, Any] = {}
    if args.artefact == "model":
        options["model_dir"] = args.model
        if args.results:
            options["results"], options["dataset"], options["split"] = hub.read_results(args.results)
    elif args.artefact == "keys":
        options.update(key_dir=args.keys, model_repo=args.model_repo, model_revision=args.model_revision,
                       source=args.source, license=args.license)  # fmt: skip
    elif args.artefact == "space":
        options.update(keys_repo=args.keys_repo, model_repo=args.model_repo, wheel=args.wheel)
    repo_type = hub.REPO_TYPES[args.artefact]
    if args.dry_run:
        folder = hub.export(args.artefact, args.dry_run, repo_id=args.repo_id, **options)
        files = hub.repo_files(folder)
        print(f"wrote the {repo_type} repository {args.repo_id} ({len(files)} files) to {folder}; nothing uploaded")
        for name in files:
            print(f"  {name}")
        return 0
    with tempfile.TemporaryDirectory(prefix="bioscan-clip-push-") as staging:
        folder = hub.export(args.artefact, Path(staging) / "repo", repo_id=args.repo_id, **options)
        info = hub.publish(folder, args.repo_id, repo_type=repo_type, revision=args.revision, private=args.private or None)
    print(f"pushed {args.artefact} to {repo_type} repository {args.repo_id}: commit {info.oid} ({info.commit_url})")
    return 0
