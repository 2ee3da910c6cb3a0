"""``bioscan-clip predict``: identify images and barcodes against a key folder; one row per query."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pandas as pd

from bioscan_clip.apps.commands.options import add_query_arguments, batches, collect_queries, query_name, write_rows
from bioscan_clip.features import KEY_FEATURES
from bioscan_clip.identification.barcode_search import DEFAULT_HITS
from bioscan_clip.identification.identifier import DEFAULT_NEIGHBOURS, Identifier
from bioscan_clip.safe_io import atomic_output_file
from modeling_bioscanclip import BioscanInputError


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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Identify specimens against a key folder (from `bioscan-clip index`): one row per query with the predicted "
        "taxon at each rank, its confidence, the deepest rank whose confidence passes its calibrated threshold, an "
        "'unknown species' flag and the k nearest keys, in the order of the input. A barcode is answered by its "
        "hits, as BOLD and BLAST answer: candidate keys (5-mer profile and, with a model, the learned DNA "
        "embedding) re-ranked by alignment identity, each hit with percent identity, overlap, processid, BIN and "
        "taxonomy (the neighbours column; --hits writes them one per row); every row also names what made "
        "it (bioscan_clip_version, model, model_revision, keys_manifest_sha256). A photo and a barcode of the same "
        "specimen (the FASTA id is the photo's file name, or one row of --table) are identified together: at each "
        "rank the barcode's call where it is confident, else the averaged image+DNA embedding's."
    )
    parser.add_argument(
        "--model",
        help="a saved model folder or a Hub model repository id (needed for images; barcodes are identified by "
        "alignment against the keys' barcodes without one)",
    )
    parser.add_argument(
        "--keys",
        required=True,
        help="a key folder written by `bioscan-clip index`, or a key library (folder or Hub dataset repository id)",
    )
    add_query_arguments(parser)
    parser.add_argument(
        "--k",
        type=int,
        help=f"hits per barcode query (default {DEFAULT_HITS}, as BOLD lists) or nearest keys per image query "
        f"(default {DEFAULT_NEIGHBOURS})",
    )
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
    parser.add_argument(
        "--hits",
        metavar="FILE.tsv",
        help="also write the barcode hits one per row, as BLAST's tabular output (query, hit processid, percent "
        "identity, overlap, then BIN and taxonomy)",
    )
    parser.add_argument("--batch_size", type=int, default=32)


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    queries = collect_queries(args)  # the inputs are read and checked before any model is loaded
    restrict = parse_restrict(args.restrict)
    identifier = Identifier.load(args.model, args.keys)
    provenance = identifier.provenance  # on every row: a table copied elsewhere still says what made it
    # Queries of one kind (image, barcode, both) are identified in batches together; rows keep the input's order.
    rows: list[dict[str, Any] | None] = [None] * len(queries)
    kinds = [(q.get("image") is not None, "barcode" in q) for q in queries]
    with tqdm(total=len(queries), desc="identifying", leave=False) as progress:
        for with_image, with_barcode in sorted(set(kinds)):
            positions = [i for i, kind in enumerate(kinds) if kind == (with_image, with_barcode)]
            for batch in batches(positions, args.batch_size):
                group = [queries[i] for i in batch]
                answers = identifier.identify(
                    images=[q["image"] for q in group] if with_image else None,
                    barcodes=[q["barcode"] for q in group] if with_barcode else None,
                    k=args.k,
                    key_feature=args.key_feature,
                    restrict=restrict,
                    names=[query_name(q) for q in group],
                )
                for i, query, answer in zip(batch, group, answers, strict=True):
                    rows[i] = {"id": query["id"], **answer.to_row(), **_truth_columns(query), **provenance}
                progress.update(len(batch))
    out = Path(args.out)
    write_rows(rows, out)
    if args.hits:
        write_hits(rows, Path(args.hits))
    table = pd.DataFrame(rows)[
        ["id", "order", "family", "genus", "species", "deepest_confident_rank", "unknown_species"]
    ]
    print(table.to_string(index=False, max_rows=30))
    agreement = _agreement(rows)
    if agreement:
        print("\nagreement with the table's own labels (queries labelled at that rank): " + agreement)
    print(f"\nwrote {len(rows)} predictions to {out}")
    return 0


HIT_COLUMNS = ("query", "hit", "percent_identity", "overlap", "bin", "order", "family", "genus", "species")


def write_hits(rows: list[dict[str, Any]], path: Path) -> None:
    """The barcode hits of every row, one per line (BLAST ``-outfmt 6`` order: query, hit, % identity, alignment
    length; then BIN and taxonomy), written to a temporary file and renamed into place."""
    lines = ["\t".join(HIT_COLUMNS)]
    for row in rows:
        for hit in json.loads(row["neighbours"]):
            if hit.get("percent_identity") is None:
                continue
            values = [row["id"], hit["processid"], hit["percent_identity"], hit["overlap"], hit.get("bin"),
                      *(hit["taxonomy"].get(rank) for rank in HIT_COLUMNS[5:])]  # fmt: skip
            lines.append("\t".join("" if value is None else str(value) for value in values))
    with atomic_output_file(path, "hits") as temporary:
        temporary.write_text("\n".join(lines) + "\n")


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
