"""Image+text on real photos: train on 8 butterfly species, hold 2 out as unseen, score against an untrained tower.

    python scripts/real_photos.py --out runs/butterflies            # ~10 min on 2 cores at the defaults
    python scripts/real_photos.py --out runs/butterflies --seed 1   # another partition and training run

The photos are the Leeds Butterfly Dataset as kept in ``../shared/realdata/dsw88__cs601r-project1-dataset``
(832 field photos of 10 species, ``labels.csv``; research use only, never shipped). The records are laid out as
BIOSCAN-5M's splits (``train`` doubles as the seen keys, as in BIOSCAN-5M), saved as a ``DatasetDict`` and read
with ``--dataset_path``: the same path a lab's own photo collection takes. Per seen species, 80 % of the photos
train (and are keys), 10 % are validation queries and 10 % test queries; each unseen species' photos are halved
into keys and queries (a quarter val, a quarter test). Prints and writes (``<out>/real_photos.json``) top-1 micro
and macro accuracy of image->image and image->text, seen and unseen, trained and untrained.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import datasets
import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
DEFAULT_PHOTOS = HERE.parent.parent / "shared" / "realdata" / "dsw88__cs601r-project1-dataset"
DEFAULT_UNSEEN = ("Vanessa cardui", "Heliconius erato")  # each has a seen congener: genus is answerable, species not
RANKS = ("order", "family", "genus", "species")
SPLITS = ("train", "val", "test", "key_unseen", "val_unseen", "test_unseen")


def photo_dataset(labels_csv: Path, unseen: tuple[str, ...] = DEFAULT_UNSEEN, seed: int = 0) -> datasets.DatasetDict:
    """The labelled photos of ``labels_csv`` (columns ``path``, the ranks) in BIOSCAN-5M's split layout."""
    table = pd.read_csv(labels_csv, dtype=str, keep_default_na=False)
    missing = sorted(set(unseen) - set(table["species"]))
    if missing:
        raise SystemExit(f"{labels_csv}: no photos of the unseen species {missing}")
    rng = np.random.default_rng(seed)
    split = np.empty(len(table), dtype=object)
    for species, rows in table.groupby("species").indices.items():
        rows = rng.permutation(rows)
        if species in unseen:
            half, quarter = len(rows) // 2, len(rows) // 4
            split[rows[:half]] = "key_unseen"
            split[rows[half : half + quarter]] = "val_unseen"
            split[rows[half + quarter :]] = "test_unseen"
        else:
            val, test = round(0.1 * len(rows)), round(0.1 * len(rows))
            split[rows[:val]] = "val"
            split[rows[val : val + test]] = "test"
            split[rows[val + test :]] = "train"
    return split_photos(labels_csv, table, split)


def split_photos(labels_csv: Path, table: pd.DataFrame, split: np.ndarray) -> datasets.DatasetDict:
    """The photos of ``table`` (read from ``labels_csv``) as records, one dataset per split name in ``split``."""
    from dataset_scripts.schema import RECORD_FEATURES

    records = {name: [None] * len(table) for name in RECORD_FEATURES}  # no barcode or sample id
    records["processid"] = [Path(path).stem for path in table["path"]]
    records["image"] = [str(labels_csv.parent / path) for path in table["path"]]
    records["split"] = list(split)
    for rank in RANKS:
        records[rank] = [value or None for value in table[rank]]
    full = datasets.Dataset.from_dict(records, features=RECORD_FEATURES)
    names = [name for name in SPLITS if name in set(split)]
    return datasets.DatasetDict({name: full.filter(lambda s, n=name: s == n, input_columns="split") for name in names})


def image_scores(results: dict) -> dict[str, dict[str, float]]:
    """Top-1 micro and macro accuracy (%) of image->image and image->text per rank, seen and unseen."""
    table = {}
    for pair in ("image->image", "image->text"):
        for rank in RANKS:
            for average in ("micro", "macro"):
                for group in ("seen", "unseen"):
                    value = results[pair].get(f"{group}/{rank}/{average}/top1")
                    table[f"{pair} {rank} {group} {average}"] = None if value is None else round(100 * value, 1)
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos_dir", type=Path, default=DEFAULT_PHOTOS, help="folder with labels.csv and images/")
    parser.add_argument("--out", type=Path, required=True, help="run folder (dataset, model, evaluations)")
    parser.add_argument("--unseen", default=",".join(DEFAULT_UNSEEN), help="comma-separated held-out species")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0, help="seeds the partition, the initialisation and training")
    args = parser.parse_args(argv)

    from bioscan_clip.apps.quickstart import _save_untrained
    from bioscan_clip.data.spec import DataSpec
    from bioscan_clip.evaluation.protocol import evaluate
    from bioscan_clip.training.config import TrainConfig
    from bioscan_clip.training.loop import train

    labels = args.photos_dir / "labels.csv"
    if not labels.is_file():
        raise SystemExit(f"{labels}: not found (pass --photos_dir)")
    dataset_dir = args.out / "dataset"
    photo_dataset(labels, tuple(s.strip() for s in args.unseen.split(",")), args.seed).save_to_disk(str(dataset_dir))
    data = DataSpec(source="mini", dataset_path=str(dataset_dir))  # "mini": BIOSCAN-5M's split layout
    config = TrainConfig.from_preset(
        "tiny", output_dir=str(args.out / "train"), seed=args.seed, source="mini", dataset_path=str(dataset_dir),
        modalities="image,text", epochs=args.epochs, eval_every_epochs=0,
    )  # fmt: skip
    model_dir = train(config).model_dir
    untrained_dir = args.out / "untrained_model"
    _save_untrained(model_dir, untrained_dir, seed=args.seed)
    report = {}
    for name, folder in (("trained", model_dir), ("untrained", untrained_dir)):
        evaluation = evaluate(folder, data, out=args.out / f"evaluation-{name}", examples=6 if name == "trained" else 0)
        report[name] = image_scores(evaluation.results)
        report["queries"], report["keys"] = evaluation.summary["queries"], evaluation.summary["keys"]
    (args.out / "real_photos.json").write_text(json.dumps(report, indent=2))
    print(f"{'top-1 (%)':<40}{'trained':>9}{'untrained':>11}")
    for key in report["trained"]:
        print(f"{key:<40}{report['trained'][key]!s:>9}{report['untrained'][key]!s:>11}")
    print(f"queries {report['queries']}, keys {report['keys']}; wrote {args.out / 'real_photos.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
