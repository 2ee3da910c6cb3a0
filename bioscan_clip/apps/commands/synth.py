"""``bioscan-clip synth``: write the SYNTHETIC mini-BIOSCAN (:func:`dataset_scripts.synth.generate_mini_bioscan`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from dataset_scripts.synth import SIZES, generate_mini_bioscan


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Adds the ``synth`` options (``--out``, ``--seed``, ``--size``) to ``parser`` and returns it."""
    parser.description = (
        "Write mini-BIOSCAN, a small SYNTHETIC dataset in the BIOSCAN-5M on-disk layout (procedural insect images, "
        "COI-like barcodes evolved down a random taxonomy, BIOSCAN-5M splits). Read it back with the bioscan5m/mini "
        "builder. The same seed always gives byte-identical files."
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder (gets bioscan5m/ and README.md)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument(
        "--size",
        choices=sorted(SIZES),
        default="small",
        help="tiny: ~250 records (tests); small: ~60 species, ~2,000 records, seconds; medium: about 4x (default: small)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def run(args: argparse.Namespace) -> int:
    """Runs ``synth`` from parsed arguments; prints where the data went (CLI glue). Returns the exit code."""
    out = generate_mini_bioscan(args.out, seed=args.seed, size=args.size, progress=not args.no_progress)
    print(f"wrote SYNTHETIC mini-BIOSCAN (seed {args.seed}, size {args.size}) to {out}")
    return 0
