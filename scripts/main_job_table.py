"""The README's main-job table, rendered from the results.json files of a main-job run (never typed by hand).

    python scripts/main_job_table.py runs/quickstart                # print the README block
    python scripts/main_job_table.py runs/quickstart --write        # refresh README.md and the snapshot
    python scripts/main_job_table.py --check                        # README.md's blocks == the snapshots'
    python scripts/main_job_table.py --spread docs/main_job_results.json RUN1 RUN2 --write  # the seed-spread table

A run is what `bioscan-clip quickstart --out RUN` writes: ``RUN/evaluation/results.json`` (the trained model),
``RUN/evaluation-untrained/results.json`` (the same architecture untrained) and ``RUN/train/train_config.json`` (its
seed). ``--write`` copies the figures it rendered into :data:`SNAPSHOT` and replaces the block of README.md between
:data:`START` and :data:`END`; ``--check`` renders the snapshot again and compares. tests/test_model_card.py checks
the README against the snapshot (fast), tests/test_wheel.py against a run of the documented command from the wheel
(slow).
Nothing is computed here that `evaluate` did not write.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SNAPSHOT = ROOT / "docs" / "main_job_results.json"
START = "<!-- main-job-table:start: written by scripts/main_job_table.py from a main-job run; edit nothing here -->"
END = "<!-- main-job-table:end -->"
SPREAD_SNAPSHOT = ROOT / "docs" / "main_job_spread.json"
SPREAD_START = "<!-- main-job-spread:start: written by scripts/main_job_table.py --spread from main-job runs; edit nothing here -->"
SPREAD_END = "<!-- main-job-spread:end -->"
COMMAND = "bioscan-clip quickstart --out runs/quickstart"
# PyTorch, MKL and oneDNN choose their CPU kernels by instruction set, and the digits follow the kernels: these pin
# them to AVX2, with which an AVX-512 CPU gives exactly the snapshots' digits too.
KERNELS = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
# (results.json pair, rank, README label): the rows the README shows, in its order.
ROWS = (
    ("image->image", "order", "image→image"),
    ("image->image", "species", "image→image"),
    ("dna->dna", "order", "DNA→DNA"),
    ("dna->dna", "species", "DNA→DNA"),
    ("image->dna", "order", "image→DNA"),
    ("image->dna", "species", "image→DNA"),
    ("image->text", "species", "image→text"),
    ("dna->text", "species", "DNA→text"),
    ("averaged->averaged", "species", "image+DNA averaged"),
    ("dna->dna (5-mer profile baseline)", "species", "DNA→DNA, 5-mer profile baseline"),
    ("dna->dna (alignment identity 1-NN)", "species", "DNA→DNA, alignment identity 1-NN"),
)
GROUPS = ("seen", "unseen", "hm")
# The rows of the seed-spread table: the trained model at species rank.
SPREAD_ROWS = (
    ("image->image", "image→image"),
    ("dna->dna", "DNA→DNA"),
    ("image->dna", "image→DNA"),
    ("dna->text", "DNA→text"),
    ("averaged->averaged", "image+DNA averaged"),
    ("dna->dna (5-mer profile baseline)", "DNA→DNA, 5-mer profile baseline"),
    ("dna->dna (alignment identity 1-NN)", "DNA→DNA, alignment identity 1-NN"),
)


def read_run(run: Path) -> dict:
    """The figures of a main-job run the table needs: both evaluations and the seed."""
    found = {}
    for name, path in (
        ("trained", run / "evaluation" / "results.json"),
        ("untrained", run / "evaluation-untrained" / "results.json"),
        ("train_config", run / "train" / "train_config.json"),
    ):
        if not path.is_file():
            raise SystemExit(f"{path}: missing; is {run} the --out of `bioscan-clip quickstart`?")
        found[name] = json.loads(path.read_text())
    return {"command": COMMAND, "seed": found.pop("train_config")["seed"], **found}


def _cell(summary: dict, pair: str, rank: str, group: str) -> str:
    value = summary["results"].get(pair, {}).get(f"{group}/{rank}/macro/top1")
    return "" if value is None else f"{100 * value:.1f}"


def render(figures: dict) -> str:
    """The README block (caption and table) of :func:`read_run`'s figures."""
    trained, untrained = figures["trained"], figures["untrained"]
    queries = trained["queries"]
    lines = [
        START,
        f"Test queries ({queries['seen']:,} seen, {queries['unseen']:,} unseen species' records) against all "
        f"{trained['keys']:,} keys, top-1 **macro** accuracy (%), trained vs. an untrained model of the same "
        f"architecture (seed {figures['seed']}; `runs/quickstart/evaluation*/results.json`):",
        "",
        "| query → key | rank | trained seen | trained unseen | trained HM | untrained seen | untrained unseen | "
        "untrained HM |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for pair, rank, label in ROWS:
        cells = [_cell(trained, pair, rank, g) for g in GROUPS] + [_cell(untrained, pair, rank, g) for g in GROUPS]
        lines.append(f"| {label} | {rank} | " + " | ".join(cells) + " |")
    return "\n".join([*lines, END])


def read_spread(runs: list[Path]) -> dict:
    """The trained model's figures of several seeds' main-job runs (each seed once); a run may also be given as the
    snapshot ``--write`` saved of it (:data:`SNAPSHOT`)."""
    seeds = {}
    for run in runs:
        figures = json.loads(run.read_text()) if run.is_file() else read_run(run)
        if figures["seed"] in seeds:
            raise SystemExit(f"{run}: seed {figures['seed']} is given twice")
        seeds[figures["seed"]] = {"keys": figures["trained"]["keys"], "results": figures["trained"]["results"]}
    return {"command": COMMAND, "seeds": {str(seed): seeds[seed] for seed in sorted(seeds)}}


def _range(values: list[float]) -> str:
    low, high = f"{100 * min(values):.1f}", f"{100 * max(values):.1f}"
    return low if low == high else f"{low}–{high}"


def render_spread(spread: dict) -> str:
    """The README block of the seed-spread table: lowest–highest over the seeds, species rank, trained model."""
    seeds = ", ".join(spread["seeds"])
    lines = [
        SPREAD_START,
        f"**Spread over seeds** (seeds {seeds}: each seed draws its own mini-BIOSCAN and its own training run; same "
        "machine), trained model, species rank, macro top-1 (%), lowest–highest:",
        "",
        "| query → key | seen | unseen | HM |",
        "|---|---|---|---|",
    ]
    for pair, label in SPREAD_ROWS:
        cells = []
        for group in GROUPS:
            values = [s["results"].get(pair, {}).get(f"{group}/species/macro/top1") for s in spread["seeds"].values()]
            cells.append("" if None in values else _range(values))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join([*lines, SPREAD_END])


def readme_block(text: str, start: str = START, end: str = END) -> str:
    """The block of README text between the markers (markers included)."""
    if text.count(start) != 1 or text.count(end) != 1:
        raise SystemExit(f"{README}: expected one generated table between {start!r} and {end!r}")
    return text[text.index(start) : text.index(end) + len(end)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", nargs="?", type=Path, help="a main-job run folder (`bioscan-clip quickstart --out`)")
    parser.add_argument("--write", action="store_true", help="refresh README.md's block and the snapshot")
    parser.add_argument("--check", action="store_true", help="exit 1 when README.md's blocks are not the snapshots'")
    parser.add_argument(
        "--spread",
        nargs="+",
        type=Path,
        metavar="RUN",
        help="main-job runs of several seeds (or a run's saved snapshot)",
    )
    args = parser.parse_args(argv)
    if args.check:
        text = README.read_text()
        for snapshot, rendered, start, end in (
            (SNAPSHOT, render, START, END),
            (SPREAD_SNAPSHOT, render_spread, SPREAD_START, SPREAD_END),
        ):
            expected = rendered(json.loads(snapshot.read_text()))
            if readme_block(text, start, end) != expected:
                print(f"{README}: a generated table differs from {snapshot} rendered:\n{expected}", file=sys.stderr)
                return 1
        return 0
    if args.spread:
        spread = read_spread(args.spread)
        block = render_spread(spread)
        if args.write:
            text = README.read_text()
            README.write_text(text.replace(readme_block(text, SPREAD_START, SPREAD_END), block))
            SPREAD_SNAPSHOT.write_text(json.dumps(spread, indent=2) + "\n")
        print(block)
        return 0
    if args.run is None:
        parser.error("give a run folder, or --check")
    figures = read_run(args.run)
    block = render(figures)
    if args.write:
        text = README.read_text()
        README.write_text(text.replace(readme_block(text), block))
        SNAPSHOT.write_text(json.dumps(figures, indent=2) + "\n")
    print(block)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
