"""The main job: generate mini-BIOSCAN, train the tiny preset, evaluate, build the key index, point to the demo.

Everything runs on a 2-core CPU in minutes, on SYNTHETIC data generated here (no download).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from dataset_scripts.synth import generate_mini_bioscan


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "The main job, end to end on a CPU: write the SYNTHETIC mini-BIOSCAN dataset, train the tiny preset with "
        "Accelerate, evaluate it with the paper's protocol against an untrained model of the same architecture, "
        "build the key index with calibrated confidence, and print how to open the demo."
    )
    parser.add_argument("--out", default="runs/quickstart", help="run folder (default: runs/quickstart)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated data and of training")
    parser.add_argument("--size", choices=("small", "medium"), default="small", help="mini-BIOSCAN size")
    parser.add_argument("--epochs", type=int, help="override the tiny preset's epochs")


def _section(title: str) -> None:
    print(f"\n=== {title} ===", flush=True)


def run(args: argparse.Namespace) -> int:
    import train_accelerate
    from bioscan_clip import evaluation
    from bioscan_clip.commands import add_index_arguments, run_index

    started = time.time()
    out = Path(args.out)
    data_dir = out / "mini-bioscan"
    cache_dir = str(out / "cache")
    _section("1/5 generating mini-BIOSCAN (synthetic)")
    if not (data_dir / "bioscan5m").exists():
        generate_mini_bioscan(data_dir, seed=args.seed, size=args.size)
    data = ["--source", "mini", "--data_dir", str(data_dir), "--cache_dir", cache_dir]

    _section("2/5 training the tiny preset")
    train_args = [
        "--preset",
        "tiny",
        "--output_dir",
        str(out / "train"),
        "--seed",
        str(args.seed),
        "--report_to",
        "tensorboard",
        *data,
    ]
    if args.epochs:
        train_args += ["--epochs", str(args.epochs)]
    train_accelerate.main(train_args)
    summary = json.loads((out / "train" / "train_summary.json").read_text())
    model_dir = out / "model"
    if model_dir.exists():
        shutil.rmtree(model_dir)
    Path(summary["model"]).rename(model_dir)

    _section("3/5 evaluating: test queries against all keys")
    parser = argparse.ArgumentParser()
    evaluation.add_arguments(parser)
    evaluation.run(
        parser.parse_args(
            [
                "--model",
                str(model_dir),
                *data,
                "--out",
                str(out / "evaluation"),
                "--model_card",
                str(model_dir / "README.md"),
            ]
        )
    )

    _section("4/5 the same architecture untrained (what training bought)")
    untrained = out / "untrained_model"
    _save_untrained(model_dir, untrained, seed=args.seed)
    evaluation.run(
        parser.parse_args(
            [
                "--model",
                str(untrained),
                *data,
                "--out",
                str(out / "evaluation-untrained"),
                "--no_kmer_baseline",
                "--examples",
                "0",
            ]
        )
    )

    _section("5/5 building the key index")
    index_parser = argparse.ArgumentParser()
    add_index_arguments(index_parser)
    run_index(index_parser.parse_args(["--model", str(model_dir), *data, "--out", str(out / "keys")]))

    minutes = (time.time() - started) / 60
    print(f"\nDone in {minutes:.1f} min. Trained model: {model_dir}  key index: {out / 'keys'}")
    print(f"Results: {out / 'evaluation' / 'results.json'} (plots beside it)")
    print(f"Open the demo:  .venv/bin/bioscan-clip demo --model {model_dir} --keys {out / 'keys'}")
    return 0


def _save_untrained(trained: Path, folder: Path, seed: int) -> None:
    """A freshly initialised model with the trained one's configuration and processor."""
    import torch

    from modeling_bioscanclip import BioscanClipConfig, BioscanClipModel, BioscanClipProcessor

    torch.manual_seed(seed)
    model = BioscanClipModel(BioscanClipConfig.from_pretrained(trained))
    model.save_pretrained(folder)
    BioscanClipProcessor.from_pretrained(trained).save_pretrained(folder)
