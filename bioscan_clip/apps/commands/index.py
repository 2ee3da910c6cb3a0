"""``bioscan-clip index``: embed a dataset's keys once into a calibrated key folder."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from bioscan_clip.apps.commands.options import add_data_arguments, add_field_arguments, add_option, data_spec
from bioscan_clip.features import INDEXED_FEATURES
from bioscan_clip.identification.build import build_checklist_index, build_index
from bioscan_clip.identification.calibration import DEFAULT_PRECISION
from bioscan_clip.retrieval.index_types import (
    AUTO,
    INDEX_TYPES,
    IndexParams,
    auto_description,
    build_index_types,
    index_option_names,
)
from modeling_bioscanclip import BioscanInputError
from modeling_bioscanclip.constants_bioscanclip import TAXONOMIC_RANKS

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Embed the key records of a dataset once and save a key folder: one faiss index per feature (image, DNA, "
        "text, averaged image+DNA) with the records' taxonomy and images, and per-rank confidence thresholds "
        "calibrated on the validation queries (or, without them, leave-one-out over the keys) with a share of the "
        "labels held out of the keys, so that the thresholds see queries whose answer is not in the library; "
        "calibration.json reports the precision and coverage of confident calls and the novel-species detection "
        "AUROC, calibration.png the reliability diagram. Keys with barcodes also get a 5-mer profile index and "
        "identity thresholds calibrated on the library itself (each key identified against the others, a share of "
        "each rank's labels held out): barcodes are answered by their hits re-ranked by alignment identity. "
        "`predict` and the demo read it without re-embedding. With --checklist the keys are names alone, no "
        "specimens: each taxon of the file becomes a text key embedded by the model's taxonomy-text tower, and "
        "`predict` answers images and barcodes against the names (uncalibrated: no specimen, no threshold)."
    )
    parser.add_argument(
        "--model",
        help="a saved model folder or a Hub model repository id; without one only the barcodes are indexed (5-mer "
        "profiles, identity calibration): `predict` then identifies barcodes by alignment, no model needed",
    )
    add_option(
        parser,
        "--checklist",
        metavar="TAXA.txt|.csv",
        help="build text keys from this checklist instead of a dataset: a .txt with one taxon per line ('Genus "
        "species' or 'Order Family Genus species'; blank and '#' lines skipped) or a .csv/.tsv with order, family, "
        "genus, species columns (higher-rank entries leave the lower ranks empty); needs --model, takes no data "
        "options",
    )
    add_data_arguments(parser)
    parser.add_argument("--out", required=True, help="the key folder to write (replaced if it is one)")
    parser.add_argument(
        "--index_type",
        default=AUTO,
        choices=build_index_types(),
        help=f"auto (default) = {auto_description()}; "
        + "; ".join(f"{name} = {entry.description}" for name, entry in INDEX_TYPES.items()),
    )
    # Every IndexParams field, unset by default: the index type then chooses from the key count and dimension.
    index = parser.add_argument_group("index settings (each index type reads its own; defaults chosen by key count)")
    add_field_arguments(index, IndexParams, defaults=dict.fromkeys(index_option_names()))
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


def run(args: argparse.Namespace) -> int:
    if args.checklist:
        return _run_checklist(args)
    out = build_index(
        args.model,
        data_spec(args),
        args.out,
        index_type=args.index_type,
        index_options={name: getattr(args, name) for name in index_option_names() if getattr(args, name) is not None},
        precision=args.precision,
        calibrate=not args.no_calibration,
        batch_size=args.batch_size,
        overwrite=args.overwrite,
    )
    report = json.loads((out / "calibration.json").read_text())
    print(f"wrote key folder {out}: features {sorted(p.name for p in out.iterdir() if p.name in INDEXED_FEATURES)}")
    print_calibration(report, out)
    for name, recall in report.get("recall_at_5", {}).items():
        print(f"  {name}: recall@5 of the {args.index_type} index against exact search {recall:.3f}")
    return 0


def _run_checklist(args: argparse.Namespace) -> int:
    given = [f"--{name}" for name in ("data_dir", "dataset_path") if getattr(args, name)]
    if given:
        raise BioscanInputError(f"--checklist builds keys from names alone; it takes no {' or '.join(given)}")
    if not args.model:
        raise BioscanInputError("--checklist needs --model: its taxonomy-text tower embeds the names")
    out = build_checklist_index(
        args.model,
        args.checklist,
        args.out,
        index_type=args.index_type,
        index_options={name: getattr(args, name) for name in index_option_names() if getattr(args, name) is not None},
        batch_size=args.batch_size,
        overwrite=args.overwrite,
    )
    taxa = json.loads((out / "key_folder.json").read_text())["checklist"]["taxa"]
    counted = ", ".join(f"{taxa[rank]} at {rank}" for rank in TAXONOMIC_RANKS if rank in taxa)
    print(f"wrote key folder {out}: text keys of {sum(taxa.values())} taxa of {args.checklist} ({counted})")
    print_calibration(json.loads((out / "calibration.json").read_text()), out)
    return 0


def print_calibration(report: dict[str, Any], out: Path) -> None:
    """The calibration of a key folder as a person reads it: per pair and rank the threshold, the precision and
    coverage of confident calls, the novel-species AUROC, then every warning."""
    print(f"  calibration: {report.get('method', 'none')} ({report.get('calibration_queries', 0)} queries)")

    def percent(value: float | None) -> str:
        return "  n/a" if value is None else f"{100 * value:5.1f}"

    for pair, thresholds in report.get("thresholds", {}).items():
        pair_report = report.get("report", {}).get(pair, {})
        print(f"  {pair}: thresholds " + ", ".join(f"{r} {t:.3f}" for r, t in thresholds.items()))
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
