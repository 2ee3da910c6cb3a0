"""``bioscan-clip predict``: identify images and barcodes against a key folder; one row per query."""

from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path
from typing import Any

import pandas as pd

from bioscan_clip.apps import report
from bioscan_clip.apps.commands.options import (
    RowParts,
    add_option,
    add_query_arguments,
    batches,
    collect_queries,
    merge_parts,
    query_name,
    remove_parts,
)
from bioscan_clip.features import KEY_FEATURES
from bioscan_clip.identification.barcode_search import DEFAULT_HITS
from bioscan_clip.identification.calibration import METHOD_CHECKLIST
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


def restrict_from_file(path: str | None, restrict: dict[str, list[str]] | None) -> dict[str, list[str]] | None:
    """``restrict`` with the taxa of a checklist file added (:func:`dataset_scripts.checklist.read_checklist`), at
    the one rank they are named at: a search is restricted by rank, so a file naming taxa at several ranks (which
    would mean "this species or that genus") is refused rather than read as "both"."""
    if not path:
        return restrict
    from dataset_scripts.checklist import read_checklist

    by_rank = read_checklist(path).by_rank()
    if len(by_rank) > 1:
        counts = ", ".join(f"{len(names)} at {rank}" for rank, names in by_rank.items())
        raise BioscanInputError(
            f"--restrict_file {path}: lists taxa at several ranks ({counts}); a search is restricted at one rank, "
            "so give one file per rank"
        )
    merged = {rank: list(names) for rank, names in (restrict or {}).items()}
    for rank, names in by_rank.items():
        merged.setdefault(rank, []).extend(names)
    return merged


def _report_unmatched(identifier: Identifier, restrict: dict[str, list[str]] | None) -> None:
    """Names of the restriction that no key carries: a checklist's taxon absent from the library is never answered."""
    if not restrict or not identifier.indexes:
        return
    index = next(iter(identifier.indexes.values()))
    for rank, names in restrict.items():
        if rank not in index.keys.column_names:
            continue  # KeyIndex refuses an unknown column by name when searched
        absent = sorted(set(names) - set(index.column(rank)))
        if absent:
            shown = ", ".join(absent[:5]) + (f" and {len(absent) - 5} more" if len(absent) > 5 else "")
            print(f"restrict: {len(absent)} of {len(set(names))} {rank} names have no key in the library: {shown}")


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
        "rank the barcode's call where it is confident, else the averaged image+DNA embedding's. Rows are written "
        "in parts as they are made (memory stays flat for any number of queries); under `accelerate launch "
        "--num_processes N` (on CPU add --multi_gpu) each process identifies a contiguous shard of the queries and "
        "the main process writes the one output, the same rows in the same order."
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
    add_option(
        parser,
        "--restrict_file",
        metavar="TAXA.txt|.csv",
        help="search only keys of the taxa of a checklist (the file `index --checklist` reads: one 'Genus species' "
        "or 'Order Family Genus species' per line, or a .csv/.tsv with order..species columns), all named at one "
        "rank; with --restrict, ranks combine with AND and the names of one rank with OR",
    )
    parser.add_argument("--out", default="predictions.parquet", help="output .parquet, .csv or .json")
    parser.add_argument(
        "--hits",
        metavar="FILE.tsv",
        help="also write the barcode hits one per row, as BLAST's tabular output (query, hit processid, percent "
        "identity, overlap, then BIN and taxonomy)",
    )
    parser.add_argument(
        "--report",
        metavar="FILE.html",
        help="also write one self-contained HTML page to look at (photos embedded, nothing fetched when opened): a "
        "summary (queries per deepest confident rank, agreement with the table's labels), then per query its "
        "photo, the nearest key photos, the barcode hits, the answer at each rank with its confidence, the "
        "unknown-species flag and where ranks or modalities disagree",
    )
    parser.add_argument("--batch_size", type=int, default=32)


PART_SIZE = 2048  # queries per output part: memory holds one part's rows, whatever the number of queries


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from bioscan_clip.sharding import ShardFailedError, process_shard

    queries = collect_queries(args)  # the inputs are read and checked before any model is loaded
    restrict = restrict_from_file(args.restrict_file, parse_restrict(args.restrict))
    out = Path(args.out)
    if args.report:
        report.check_report_path(Path(args.report), out)
    shard = process_shard()
    parts = None
    try:
        identifier = Identifier.load(args.model, args.keys)
        provenance = identifier.provenance  # on every row: a table copied elsewhere still says what made it
        if shard.is_main:
            _report_unmatched(identifier, restrict)
            if identifier.calibration.get("method") == METHOD_CHECKLIST:
                print(f"note: {args.keys} holds checklist keys (names, no specimens): no call is marked confident")
        shard.announce({"queries": len(queries)})
        start, stop = shard.bounds(len(queries))
        parts = RowParts(out)
        with tqdm(total=stop - start, desc="identifying", leave=False, disable=not shard.is_main) as progress:
            for first in range(start, stop, PART_SIZE):
                chunk = queries[first : min(stop, first + PART_SIZE)]
                parts.write(_identify_part(identifier, chunk, args, restrict, provenance, progress))
        files = shard.gather(parts.files)  # the only collective, once every shard is done
    except BaseException as error:
        remove_parts([], *([parts.folder] if parts else []))
        if isinstance(error, ShardFailedError):  # one line, not a traceback: the failed process printed the cause
            raise SystemExit(f"bioscan-clip predict: {error}; nothing was written") from None
        raise
    finally:
        shard.close()
    if not shard.is_main:
        return 0  # the main process merges every process's parts into the one output
    files = [path for rank_files in files for path in rank_files]
    summary = _Summary()
    try:
        with contextlib.ExitStack() as stack:
            hits = None
            if args.hits:
                hits = stack.enter_context(open(stack.enter_context(atomic_output_file(Path(args.hits), "hits")), "w"))
                hits.write("\t".join(HIT_COLUMNS) + "\n")
            count = merge_parts(files, out, each=lambda frame: summary.add(frame, hits))
            if args.report:  # from the same rows, read again part by part
                report.write_report(
                    Path(args.report), files, queries, identifier, agreement=summary.counts, keys=str(args.keys)
                )
    finally:
        remove_parts(files, parts.folder)
    print(summary.table.to_string(index=False) + (f"\n... ({count - len(summary.table)} more)" if count > 30 else ""))
    agreement = summary.agreement()
    if agreement:
        print("\nagreement with the table's own labels (queries labelled at that rank): " + agreement)
    processes = f" ({shard.world_size} processes)" if shard.world_size > 1 else ""
    print(
        f"\nwrote {count} predictions to {out}{processes}" + (f" and the report {args.report}" if args.report else "")
    )
    return 0


def _identify_part(
    identifier: Identifier,
    queries: list[dict[str, Any]],
    args: argparse.Namespace,
    restrict: dict[str, list[str]] | None,
    provenance: dict[str, str],
    progress: Any,
) -> list[dict[str, Any]]:
    """The rows of some queries, in their order: queries of one kind (image, barcode, both) are identified in
    batches together."""
    rows: list[dict[str, Any] | None] = [None] * len(queries)
    kinds = [(q.get("image") is not None, "barcode" in q) for q in queries]
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
    return rows


class _Summary:
    """What predict prints, gathered part by part as the output is merged: the first rows, the agreement with the
    table's labels; and the barcode hits, one per line, to ``hits`` when given."""

    SHOWN = ["id", "order", "family", "genus", "species", "deepest_confident_rank", "unknown_species"]

    def __init__(self) -> None:
        self.heads: list[pd.DataFrame] = []
        self.counts: dict[str, list[int]] = {}

    @property
    def table(self) -> pd.DataFrame:
        return pd.concat(self.heads) if self.heads else pd.DataFrame(columns=self.SHOWN)

    def add(self, frame: pd.DataFrame, hits: Any | None) -> None:
        shown = sum(len(head) for head in self.heads)
        if shown < 30:
            self.heads.append(frame[self.SHOWN].head(30 - shown))
        for rank in ("order", "family", "genus", "species"):
            if f"label_{rank}" in frame:
                labelled = frame[frame[f"label_{rank}"].notna() & (frame[f"label_{rank}"] != "")]
                if len(labelled):
                    right, total = self.counts.setdefault(rank, [0, 0])
                    self.counts[rank] = [
                        right + int((labelled[rank] == labelled[f"label_{rank}"]).sum()),
                        total + len(labelled),
                    ]
        if hits is not None:
            for query, neighbours in zip(frame["id"], frame["neighbours"], strict=True):
                hits.writelines(_hit_lines(query, neighbours))

    def agreement(self) -> str:
        """Per rank, how often the prediction equals the table's own label, over the queries labelled there."""
        return ", ".join(
            f"{rank} {100 * right / total:.1f}% of {total}" for rank, (right, total) in self.counts.items()
        )


HIT_COLUMNS = ("query", "hit", "percent_identity", "overlap", "bin", "order", "family", "genus", "species")


def _hit_lines(query: Any, neighbours: str) -> list[str]:
    """One query's barcode hits as tab-separated lines (BLAST ``-outfmt 6`` order: query, hit, % identity,
    alignment length; then BIN and taxonomy)."""
    lines = []
    for hit in json.loads(neighbours):
        if hit.get("percent_identity") is None:
            continue
        values = [query, hit["processid"], hit["percent_identity"], hit["overlap"], hit.get("bin"),
                  *(hit["taxonomy"].get(rank) for rank in HIT_COLUMNS[5:])]  # fmt: skip
        lines.append("\t".join("" if value is None else str(value) for value in values) + "\n")
    return lines


def _truth_columns(query: dict[str, Any]) -> dict[str, Any]:
    """``label_<rank>``: the query table's own taxonomy, beside the prediction (absent when the table has none)."""
    truth = query.get("truth")
    return {f"label_{rank}": value for rank, value in truth.items()} if truth else {}
