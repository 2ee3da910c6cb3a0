"""How a specimen's photo and barcode should be combined: the rule `Identifier.identify` uses, measured.

For the test queries of a dataset with images and barcodes (mini-BIOSCAN after the main job), each specimen is
identified three ways against a key folder: by its barcode's hits alone, by the averaged image+DNA embedding alone
(`key_feature="averaged"`), and by the product's rule for a photo with its barcode (per rank the barcode's call where
it is confident, else the averaged embedding's where that is confident, else the barcode's). Printed per rank: top-1
accuracy, and the precision and coverage of the confident calls.

    python scripts/paired_rule.py --model runs/quickstart/model --keys runs/quickstart/keys \
        --data_dir runs/quickstart/mini-bioscan
"""

from __future__ import annotations

import argparse

import numpy as np

from bioscan_clip.data.spec import load_splits, role_records
from bioscan_clip.identification.identifier import Identifier
from modeling_bioscanclip.constants_bioscanclip import TAXONOMIC_RANKS


def score(answers: list, truth: dict[str, list]) -> dict[str, tuple[float, float | None, float]]:
    """rank -> (accuracy, precision of confident calls, coverage)."""
    scores = {}
    for position, rank in enumerate(TAXONOMIC_RANKS):
        right = np.array([a.ranks[position].label == t for a, t in zip(answers, truth[rank], strict=True)])
        confident = np.array([a.ranks[position].confident for a in answers])
        precision = float(right[confident].mean()) if confident.any() else None
        scores[rank] = (float(right.mean()), precision, float(confident.mean()))
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--keys", required=True)
    parser.add_argument("--data_dir", required=True, help="a mini-BIOSCAN folder (from `bioscan-clip synth`)")
    parser.add_argument("--source", default="mini")
    args = parser.parse_args()
    identifier = Identifier.load(args.model, args.keys)
    splits, roles = load_splits(args.source, args.data_dir)
    for group in ("seen", "unseen"):
        records = role_records(splits, roles, f"test_queries_{group}")
        images = [image["bytes"] or image["path"] for image in records["image"]]  # stored encoded
        barcodes = list(records["dna_barcode"])
        truth = {rank: list(records[rank]) for rank in TAXONOMIC_RANKS}
        ways = {
            "barcode hits": identifier.identify(barcodes=barcodes),
            "averaged image+DNA embedding": identifier.identify(images, barcodes, key_feature="averaged"),
            "photo + barcode (the product's rule)": identifier.identify(images, barcodes),
        }
        print(f"\n{group} species, {len(records)} test queries: accuracy % / confident precision % (coverage %)")
        print("| identifier | " + " | ".join(TAXONOMIC_RANKS) + " |")
        print("|---|" + "---|" * len(TAXONOMIC_RANKS))
        for name, answers in ways.items():
            cells = []
            for accuracy, precision, coverage in score(answers, truth).values():
                shown = "-" if precision is None else f"{100 * precision:.1f}"
                cells.append(f"{100 * accuracy:.1f} / {shown} ({100 * coverage:.1f})")
            print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
