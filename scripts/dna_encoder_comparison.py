"""The README's DNA-encoder comparison: ways of training the DNA tower, measured with species held out on two real
BOLD libraries, beside the model-free 5-mer profile and alignment identity.

    python scripts/dna_encoder_comparison.py --out runs/dna-encoders            # train, evaluate, print the table
    python scripts/dna_encoder_comparison.py --out runs/dna-encoders --write    # ... and refresh README + snapshot
    python scripts/dna_encoder_comparison.py --check                           # README's block == the snapshot's

For every library, seed and variant it runs what a user runs: ``accelerate launch train_accelerate.py --preset tiny
--source bold --partition clibd --modalities dna,text --epochs 8 --seed S`` with the variant's options (the ``bold``
preset's are spelled out the same way; a test checks they agree), then ``bioscan-clip evaluate --protocol
species_held_out``: the ``bold`` variant with every identifier (the product identifier re-measured on its encoder),
the others with the model and the 5-mer profile only. The small library is also identified by the larger one's
``bold`` models (``TRANSFER``). A run already complete in ``--out`` is not run again.

Variants that helped nothing were removed from the trainer (4-mers; masked-k-mer pretraining of the BERT): they can
no longer be run, and their rows are read from ``--out`` where their runs are, else kept from the snapshot, with the
commit they were measured at. Each cell is the range over the seeds; training time is the training loop's own
seconds (pretraining included) on the machine that ran it. Nothing is computed here that `evaluate` did not write,
but the last row: the default's worst seed minus the 5-mer profile.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REALDATA = ROOT.parent / "shared" / "realdata"
README = ROOT / "README.md"
SNAPSHOT = ROOT / "docs" / "dna_encoder_comparison.json"
START = "<!-- dna-encoders:start: written by scripts/dna_encoder_comparison.py; edit nothing here -->"
END = "<!-- dna-encoders:end -->"
LIBRARIES = {  # the small one first: its runs take seconds
    "naturalis": "naturalis__Custom-databases-DNA-sequences/nl_insect_bold_v3_coi_subset.tsv",
    "matteodegobbi": "matteodegobbi__InsectClassification/insect_species_bold_v3_coi_subset.tsv",
}
SEEDS = (0, 1, 2)
EPOCHS = 8
MEASURED_AT = "cdea350"  # the commit whose trainer still had the removed variants' options


@dataclass(frozen=True)
class Variant:
    label: str
    train: tuple[str, ...] = ()
    full: bool = False  # evaluated with every identifier (the product identifier re-measured on this encoder)
    removed: bool = False  # its options are gone from the trainer: rows come from earlier runs, never run here


BAG = ("--dna_stride", "1", "--dna_layers", "0")
# Every variant spells out its options over `--preset tiny`; "bold" is the `bold` preset's (tests check they agree).
VARIANTS = {
    "tiny": Variant("tiny preset: 5-mers, stride 5, 2-layer BERT, 5 frames, InfoNCE"),
    "kmer4": Variant("4-mers, stride 4, 4 frames", removed=True),
    "pretrained": Variant("masked-k-mer pretrained 2-layer BERT (20 epochs), then InfoNCE", removed=True),
    "rank": Variant("taxonomy-aware targets (--rank_weight 0.1)", ("--rank_weight", "0.1")),
    "bag": Variant("overlapping 5-mers, bag of k-mer embeddings (--dna_stride 1 --dna_layers 0)", BAG),
    "bold": Variant(
        "bold preset: overlapping 5-mers, bag, --rank_weight 0.1", (*BAG, "--rank_weight", "0.1"), full=True
    ),  # fmt: skip
    # The soft targets' weight around the preset's 0.1 (README: more lifts genus, and flags more known species).
    "bold-rw0.2": Variant("bold preset with --rank_weight 0.2", (*BAG, "--rank_weight", "0.2")),
    "bold-rw0.3": Variant("bold preset with --rank_weight 0.3", (*BAG, "--rank_weight", "0.3")),
}
DEFAULT = "bold"
# A library too small to train on is also identified by the default model of a larger one (its own partition's
# queries and keys, the larger library's trained model): is the shortfall the library's size or the encoder's?
TRANSFER = {"naturalis": "matteodegobbi"}
# (column, part of the identifier's entry, key); percentages except the AUROC.
COLUMNS = (
    ("species seen", "scores", "seen/species/micro/top1"),
    ("species unseen", "scores", "unseen/species/micro/top1"),
    ("novel species: genus", "scores", "novel/genus/micro/top1"),
    ("novel: family", "scores", "novel/family/micro/top1"),
    ("novelty AUROC", "confidence", "novelty_auroc"),
    ("known flagged", "confidence", "known_flagged"),
)
MODEL, KMER, IDENTITY = "model (dna->dna)", "5-mer profile 1-NN", "alignment identity 1-NN"
PRODUCT = "bioscan-clip barcode identifier"


def _run(command: list[str], log: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    with open(log, "w") as handle:
        done = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    if done.returncode:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(command)}; see {log}")


def run_one(out: Path, library: str, seed: int, name: str, variant: Variant) -> Path:
    """Trains and evaluates one (library, seed, variant); returns its results.json (kept when already there)."""
    folder = out / library / f"{name}-s{seed}"
    results = folder / "evaluation" / "results.json"
    full = variant.full
    if results.is_file() and (not full or IDENTITY in json.loads(results.read_text())["identification"]):
        return results
    folder.mkdir(parents=True, exist_ok=True)
    data = _data_options(library)
    if not (folder / "train" / "train_summary.json").is_file():  # a finished training run is only evaluated again
        launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "train_accelerate.py"]
        _run([*launch, "--preset", "tiny", *data, "--seed", str(seed), "--report_to", "none", "--modalities",
              "dna,text", "--epochs", str(EPOCHS), "--eval_every_epochs", "0", "--output_dir", str(folder / "train"),
              *variant.train], folder / "train.log")  # fmt: skip
    _evaluate(folder / "train" / "final_model", library, folder, full)
    return results


def run_transfer(out: Path, library: str, seed: int) -> Path:
    """Evaluates on ``library`` the default model trained on ``TRANSFER[library]`` (run first by :func:`run_one`)."""
    folder = out / library / f"{DEFAULT}-from-{TRANSFER[library]}-s{seed}"
    if not (folder / "evaluation" / "results.json").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        trained = out / TRANSFER[library] / f"{DEFAULT}-s{seed}" / "train"
        _evaluate(trained / "final_model", library, folder, full=False)
    return folder


def novel_trained_elsewhere(library: str, source: str) -> tuple[int, int]:
    """How many of ``library``'s novel-species queries are of a species in ``source``'s training split: for them the
    transferred model has seen the species (the others it has not)."""
    from bioscan_clip.data.spec import DataSpec, role_records
    from bioscan_clip.evaluation.protocol import hold_out_species

    def load(name: str):
        return DataSpec(**_data(name)).load()

    trained = {species for species in role_records(*load(source), "train")["species"] if species}
    novel = hold_out_species(*load(library), "test")[1]["species"]
    return sum(species in trained for species in novel), len(novel)


def _data(library: str) -> dict[str, str]:
    """How every run reads ``library``: BOLD records, the CLIBD-style partition."""
    return {"source": "bold", "partition": "clibd", "data_dir": str(REALDATA / LIBRARIES[library])}


def _data_options(library: str) -> list[str]:
    return [arg for name, value in _data(library).items() for arg in (f"--{name}", value)]


def _evaluate(model: Path, library: str, folder: Path, full: bool) -> None:
    evaluate = [sys.executable, "-m", "bioscan_clip.apps.cli", "evaluate", "--model", str(model), *_data_options(library),
                "--protocol", "species_held_out", "--out", str(folder / "evaluation")]  # fmt: skip
    _run(evaluate if full else [*evaluate, "--no_identity_baseline"], folder / "evaluate.log")


def figures_of(folder: Path, seed: int, train: Path | None = None) -> dict:
    """What the table needs from one run: each identifier's columns and the training seconds (of ``train``, the
    run's own training folder by default)."""
    results = json.loads((folder / "evaluation" / "results.json").read_text())
    seconds = json.loads(((train or folder / "train") / "train_summary.json").read_text())["seconds"]
    pretrain = folder / "pretrain" / "train_summary.json"
    if pretrain.is_file():
        seconds += json.loads(pretrain.read_text())["seconds"]
    cells = {
        identifier: {column: entry[part].get(key) for column, part, key in COLUMNS}
        for identifier, entry in results["identification"].items()
    }
    return {
        "seed": seed,
        "seconds": seconds,
        "identifiers": cells,
        "queries": results["queries"],
        "keys": results["keys"],
    }


def _spread(values: list[float | None], percent: bool) -> str:
    if not values or any(v is None for v in values):
        return "-"
    scaled = [100 * v if percent else v for v in values]
    text = [f"{v:.1f}" if percent else f"{v:.3f}" for v in (min(scaled), max(scaled))]
    return text[0] if text[0] == text[1] else f"{text[0]}–{text[1]}"


def _gap(entries: list[dict], baseline: dict) -> str:
    """The default's worst seed minus the 5-mer profile, per column (known flagged: lower is better)."""
    cells = []
    for column, _, _ in COLUMNS:
        values = [e["identifiers"][MODEL][column] for e in entries]
        worst = max(values) if column == "known flagged" else min(values)
        difference = worst - baseline[column]
        cells.append(f"{difference:+.3f}" if column == "novelty AUROC" else f"{100 * difference:+.1f}")
    return " | ".join(cell.replace("-", "−") for cell in cells)


def render(snapshot: dict) -> str:
    """The README block: a table per library, one row per variant's embedding, then the baselines, the product
    identifier on the default encoder and the default's gap to the 5-mer profile."""
    lines = []
    for library, runs in snapshot["libraries"].items():
        full = next((name for name in runs if IDENTITY in runs[name][0]["identifiers"]), next(iter(runs)))
        first = runs[full][0]
        queries = ", ".join(f"{count} {group}" for group, count in first["queries"].items())
        lines += [f"**{library}** ({queries} queries against {first['keys']} keys; seeds "
                  f"{', '.join(str(s) for s in snapshot['seeds'])})", ""]  # fmt: skip
        lines += ["| DNA identifier | " + " | ".join(c for c, _, _ in COLUMNS) + " | training (s) |",
                  "|---" * (len(COLUMNS) + 2) + "|"]  # fmt: skip

        def row(label: str, entries: list[dict], identifier: str, timed: bool) -> str:
            cells = [_spread([e["identifiers"][identifier][c] for e in entries], c != "novelty AUROC")
                     for c, _, _ in COLUMNS]  # fmt: skip
            seconds = [e["seconds"] for e in entries]
            low, high = f"{min(seconds):.0f}", f"{max(seconds):.0f}"
            time = "none" if not timed else low if low == high else f"{low}–{high}"
            return f"| {label} | " + " | ".join(cells) + f" | {time} |"

        for name, entries in runs.items():
            label = snapshot["labels"][name]
            seeds = [e["seed"] for e in entries]
            if seeds != snapshot["seeds"]:
                label += f", seed{'s' if len(seeds) > 1 else ''} {', '.join(str(s) for s in seeds)}"
            if VARIANTS[name].removed:
                label += f" (removed: helped nothing; measured at {MEASURED_AT})"
            lines.append(row(f"model: {label}", entries, MODEL, True))
        if library in snapshot.get("transfer", {}):
            source = snapshot["transfer"][library]
            shared, novel = source["novel_trained_there"]
            label = (f"model: {snapshot['labels'][DEFAULT]}, trained on {source['from']}, not on this library "
                     f"({shared} of the {novel} novel-species queries are of species trained on there)")  # fmt: skip
            lines.append(row(label, source["runs"], MODEL, True))
        lines.append(row("5-mer profile 1-NN", runs[full], KMER, False))
        if IDENTITY in first["identifiers"]:
            lines.append(row("alignment identity 1-NN", runs[full], IDENTITY, False))
            lines.append(row(f"{PRODUCT}, on the {full} encoder", runs[full], PRODUCT, True))
        lines.append(f"| {full} model − 5-mer profile, worst seed | {_gap(runs[full], first['identifiers'][KMER])} | |")
        lines.append("")
    return "\n".join(lines).rstrip()


def _readme_block(text: str) -> str:
    if START not in text or END not in text:
        raise SystemExit(f"{README}: no block between {START!r} and {END!r}")
    return text.split(START, 1)[1].split(END, 1)[0].strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])  # fmt: skip
    parser.add_argument("--out", type=Path, help="folder of the runs (made; complete runs in it are reused)")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--libraries", nargs="+", default=list(LIBRARIES), choices=list(LIBRARIES))
    parser.add_argument("--write", action="store_true", help=f"write {SNAPSHOT.name} and README.md's block")
    parser.add_argument("--check", action="store_true", help="README.md's block == the snapshot rendered")
    args = parser.parse_args()
    if args.check:
        expected = render(json.loads(SNAPSHOT.read_text()))
        if _readme_block(README.read_text()) != expected:
            raise SystemExit(f"{README}: the DNA-encoder block differs from {SNAPSHOT} rendered; run --write")
        print("README block == snapshot")
        return
    if args.out is None:
        parser.error("--out is needed (or --check)")
    if not REALDATA.is_dir():
        raise SystemExit(f"{REALDATA}: missing; the comparison reads the real BOLD libraries there")
    earlier = json.loads(SNAPSHOT.read_text())["libraries"] if SNAPSHOT.is_file() else {}
    snapshot: dict = {"seeds": args.seeds, "labels": {n: VARIANTS[n].label for n in args.variants}, "libraries": {}}
    for library in args.libraries:
        runs: dict[str, list[dict]] = {}
        for name in args.variants:
            folders = {seed: args.out / library / f"{name}-s{seed}" for seed in args.seeds}
            if VARIANTS[name].removed:  # rows from runs made at MEASURED_AT, else the snapshot's
                found = [figures_of(f, s) for s, f in folders.items() if (f / "evaluation" / "results.json").is_file()]
                runs[name] = found or earlier.get(library, {}).get(name, [])
                if not runs[name]:
                    print(f"{library} {name}: removed and never measured into {args.out}; left out", file=sys.stderr)
                    del runs[name]
                continue
            runs[name] = []
            for seed, folder in folders.items():
                run_one(args.out, library, seed, name, VARIANTS[name])
                runs[name].append(figures_of(folder, seed))
                print(f"{library} {name} seed {seed}: done", file=sys.stderr)
        snapshot["libraries"][library] = runs
    for library, source in TRANSFER.items():
        if {library, source} <= set(args.libraries) and DEFAULT in args.variants:
            runs = []
            for seed in args.seeds:
                trained = args.out / source / f"{DEFAULT}-s{seed}" / "train"
                runs.append(figures_of(run_transfer(args.out, library, seed), seed, train=trained))
            shared = novel_trained_elsewhere(library, source)
            snapshot.setdefault("transfer", {})[library] = {"from": source, "runs": runs, "novel_trained_there": shared}
    table = render(snapshot)
    print(table)
    if args.write:
        SNAPSHOT.write_text(json.dumps(snapshot, indent=1) + "\n")
        text = README.read_text()
        before, rest = text.split(START, 1)
        README.write_text(f"{before}{START}\n{table}\n{END}{rest.split(END, 1)[1]}")


if __name__ == "__main__":
    main()
