"""``bioscan-clip quickstart``: the main job (:func:`bioscan_clip.apps.quickstart.quickstart`)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "The main job, end to end on a CPU: write the SYNTHETIC mini-BIOSCAN dataset, train the tiny preset with "
        "Accelerate, evaluate it with the paper's protocol against an untrained model of the same architecture, "
        "build the key index with calibrated confidence, and print how to open the demo."
    )
    parser.add_argument("--out", default="runs/quickstart", help="run folder (default: runs/quickstart)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated data and of training")
    parser.add_argument("--size", choices=("tiny", "small", "medium"), default="small", help="mini-BIOSCAN size")
    parser.add_argument("--epochs", type=int, help="override the tiny preset's epochs")


def run(args: argparse.Namespace) -> int:
    from bioscan_clip.apps.quickstart import quickstart

    quickstart(args.out, seed=args.seed, size=args.size, epochs=args.epochs)
    return 0
