"""Checklist keys (names only, no specimens) beside specimen keys: top-1 species accuracy of held-out queries.

    python scripts/checklist_table.py butterflies --out runs/checklist-butterflies --seeds 0 1 2 --epochs 8
    python scripts/checklist_table.py mini --out runs/checklist-mini --seeds 0 --epochs 6

``butterflies``: the 832 field photos of 10 species in ``../shared/realdata/dsw88__cs601r-project1-dataset`` (Leeds
Butterfly Dataset, research use only, never shipped), split by specimen (each photo is one specimen): per species
half the photos train the model and are the specimen keys, the other half are the held-out test queries. ``mini``:
mini-BIOSCAN generated with the seed (synthetic), its own splits (train/keys, test queries of seen and unseen
species). For each seed the ``tiny`` preset is trained (image+text on the photos; image+DNA+text on mini-BIOSCAN)
and an untrained model of the same architecture is saved beside it; each model then answers the test queries

* against **specimen keys** (``build_index``: the train photos, or mini-BIOSCAN's keys), image->image;
* against **checklist keys** (``build_checklist_index``, what ``bioscan-clip index --checklist`` runs): the
  dataset's species names alone, written once as binomials (``Genus species``) and once as full paths
  (``Order Family Genus species``), image->text (and DNA->text on mini-BIOSCAN);

through :class:`~bioscan_clip.identification.Identifier`, the code ``predict`` runs. Prints a Markdown table (top-1
species accuracy, micro, %, lowest-highest over the seeds) and writes ``<out>/checklist_table.json``. Models and
key folders already in ``<out>`` are reused (delete the folder to start over).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
from real_photos import RANKS, split_photos  # this folder's script, on sys.path when run

HERE = Path(__file__).resolve().parent
DEFAULT_PHOTOS = HERE.parent.parent / "shared" / "realdata" / "dsw88__cs601r-project1-dataset"


def photo_dataset(labels_csv: Path, seed: int) -> datasets.DatasetDict:
    """The photos of ``labels_csv`` in BIOSCAN-5M's split layout: per species half ``train`` (training records and
    specimen keys), half ``test`` (held-out queries), drawn with ``seed``."""
    table = pd.read_csv(labels_csv, dtype=str, keep_default_na=False)
    rng = np.random.default_rng(seed)
    split = np.empty(len(table), dtype=object)
    for _, rows in sorted(table.groupby("species").indices.items()):
        rows = rng.permutation(rows)
        split[rows[: len(rows) // 2]] = "train"
        split[rows[len(rows) // 2 :]] = "test"
    return split_photos(labels_csv, table, split)


def prepare(task: str, out: Path, seed: int, photos_dir: Path):
    """The data of one seed (a :class:`DataSpec`) and the modalities to train."""
    from bioscan_clip.data.spec import DataSpec

    if task == "butterflies":
        dataset_dir = out / "dataset"
        if not dataset_dir.exists():
            photo_dataset(photos_dir / "labels.csv", seed).save_to_disk(str(dataset_dir))
        return DataSpec(source="mini", dataset_path=str(dataset_dir)), "image,text"  # BIOSCAN-5M's layout
    from dataset_scripts.synth import generate_mini_bioscan

    data_dir = out / "mini-bioscan"
    if not (data_dir / "bioscan5m").exists():
        generate_mini_bioscan(data_dir, seed=seed)
    return DataSpec(source="mini", data_dir=str(data_dir), cache_dir=str(out / "cache")), "image,dna,text"


def train_models(task: str, out: Path, seed: int, epochs: int | None, photos_dir: Path) -> dict[str, Path]:
    """The trained model of one seed and an untrained one of the same architecture (reused when present)."""
    from bioscan_clip.apps.quickstart import _save_untrained
    from bioscan_clip.training.config import TrainConfig
    from bioscan_clip.training.loop import train

    data, modalities = prepare(task, out, seed, photos_dir)
    trained, untrained = out / "model", out / "untrained_model"
    if not trained.exists():
        started = time.time()
        config = TrainConfig.from_preset(
            "tiny", output_dir=str(out / "train"), seed=seed, source=data.source, data_dir=data.data_dir,
            dataset_path=data.dataset_path, cache_dir=data.cache_dir, modalities=modalities, eval_every_epochs=0,
            **({"epochs": epochs} if epochs else {}),
        )  # fmt: skip
        train(config).model_dir.rename(trained)
        (out / "train_seconds.txt").write_text(f"{time.time() - started:.0f}\n")
    if not untrained.exists():
        _save_untrained(trained, untrained, seed=seed)
    return {"trained": trained, "untrained": untrained}


def checklist_files(keys: datasets.Dataset, folder: Path) -> dict[str, Path]:
    """The species of ``keys`` written as two checklists: binomials, and full paths (``Order Family Genus epithet``)."""
    taxa = sorted({tuple(row[rank] for rank in RANKS) for row in keys.select_columns(list(RANKS)) if row["species"]})
    folder.mkdir(parents=True, exist_ok=True)
    forms = {
        "binomials": [species for *_, species in taxa],
        "full paths": [f"{order} {family} {species}" for order, family, _, species in taxa],
    }
    files = {}
    for form, lines in forms.items():
        files[form] = folder / f"checklist-{form.replace(' ', '-')}.txt"
        files[form].write_text(f"# {len(lines)} species of the keys ({form})\n" + "\n".join(lines) + "\n")
    return files


def top1_species(identifier, queries: datasets.Dataset, modality: str) -> float:
    """Top-1 species accuracy (micro, %) of ``queries`` by their ``modality`` (image or dna) through the Identifier."""
    right = 0
    for start in range(0, len(queries), 64):
        batch = queries[start : start + 64]
        if modality == "image":
            answers = identifier.identify(images=[image["bytes"] or image["path"] for image in batch["image"]])
        else:
            answers = identifier.identify(barcodes=batch["dna_barcode"])
        right += sum(answer.ranks[-1].label == truth for answer, truth in zip(answers, batch["species"], strict=True))
    return round(100 * right / len(queries), 1)


def measure(task: str, out: Path, seed: int, models: dict[str, Path], photos_dir: Path) -> dict[str, dict[str, float]]:
    """Per model (trained, untrained) and query set: top-1 species accuracy against specimen keys and checklists."""
    from bioscan_clip.data.spec import role_records
    from bioscan_clip.identification import Identifier
    from bioscan_clip.identification.build import build_checklist_index, build_index

    data, _ = prepare(task, out, seed, photos_dir)
    splits, roles = data.load()
    keys = role_records(splits, roles, "keys")
    files = checklist_files(keys, out / "checklists")
    query_sets = {"held-out photos": role_records(splits, roles, "test_queries_seen")}
    modalities = ["image"]
    if task == "mini":
        query_sets = {
            "seen": query_sets["held-out photos"],
            "unseen": role_records(splits, roles, "test_queries_unseen"),
        }
        modalities = ["image", "dna"]
    report: dict[str, dict[str, float]] = {}
    for name, model in models.items():
        folders = {"specimen keys": build_index(model, data, out / f"keys-{name}")}
        for form, path in files.items():
            folders[f"checklist ({form})"] = build_checklist_index(
                model, path, out / f"checklist-{form}-{name}".replace(" ", "-")
            )
        for kind, folder in folders.items():
            identifier = Identifier.load(model, folder)
            for modality in modalities:
                for group, queries in query_sets.items():
                    row = f"{modality} queries, {kind}"
                    report.setdefault(row, {})[f"{name} {group}"] = top1_species(identifier, queries, modality)
    report["counts"] = {
        "keys": len(keys),
        "species": len(files)
        and sum(1 for line in files["binomials"].read_text().splitlines() if not line.startswith("#")),
        **{f"queries {group}": len(queries) for group, queries in query_sets.items()},
    }
    return report


def markdown_table(runs: dict[int, dict[str, dict[str, float]]]) -> str:
    """Rows: query kind and keys; columns: model and query group; cells: the value, or lowest-highest over seeds."""
    first = next(iter(runs.values()))
    rows = [row for row in first if row != "counts"]
    columns = list(first[rows[0]])
    lines = ["| queries, keys | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for row in rows:
        cells = []
        for column in columns:
            values = sorted(run[row][column] for run in runs.values())
            cells.append(f"{values[0]:.1f}" if values[0] == values[-1] else f"{values[0]:.1f}–{values[-1]:.1f}")
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    counts = ", ".join(f"{name} {value}" for name, value in first["counts"].items())
    return "\n".join(lines) + f"\n\ntop-1 species accuracy (micro, %), seeds {sorted(runs)}; {counts}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("task", choices=("butterflies", "mini"))
    parser.add_argument("--out", type=Path, required=True, help="run folder (one sub-folder per seed)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="each seeds the split and the training")
    parser.add_argument("--epochs", type=int, help="training epochs (default: the tiny preset's 12)")
    parser.add_argument("--photos_dir", type=Path, default=DEFAULT_PHOTOS, help="folder with labels.csv, images/")
    parser.add_argument("--train_only", action="store_true", help="train and save the models, measure nothing")
    args = parser.parse_args(argv)
    if args.task == "butterflies" and not (args.photos_dir / "labels.csv").is_file():
        raise SystemExit(f"{args.photos_dir / 'labels.csv'}: not found (pass --photos_dir)")
    runs = {}
    for seed in args.seeds:
        out = args.out / f"seed{seed}"
        models = train_models(args.task, out, seed, args.epochs, args.photos_dir)
        if not args.train_only:
            runs[seed] = measure(args.task, out, seed, models, args.photos_dir)
    if args.train_only:
        return 0
    (args.out / "checklist_table.json").write_text(json.dumps(runs, indent=2))
    print(markdown_table(runs))
    print(f"\nwrote {args.out / 'checklist_table.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
