"""The README's main-job table, rendered from the results.json files of a main-job run (never typed by hand).

    python scripts/main_job_table.py runs/quickstart                # print the README block
    python scripts/main_job_table.py runs/quickstart --write        # refresh README.md and the snapshot
    python scripts/main_job_table.py --check                        # README.md's block == the snapshot's

A run is what `bioscan-clip quickstart --out RUN` writes: ``RUN/evaluation/results.json`` (the trained model),
``RUN/evaluation-untrained/results.json`` (the same architecture untrained) and ``RUN/train/train_config.json`` (its
seed). ``--write`` copies the figures it rendered into :data:`SNAPSHOT` and replaces the block of README.md between
:data:`START` and :data:`END`; ``--check`` renders the snapshot again and compares. tests/test_model_card.py checks
the README against the snapshot (fast) and the snapshot against a fresh run of the documented command (slow).
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
COMMAND = "bioscan-clip quickstart --out runs/quickstart"
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


def readme_block(text: str) -> str:
    """The block of README text between the markers (markers included)."""
    if text.count(START) != 1 or text.count(END) != 1:
        raise SystemExit(f"{README}: expected one main-job table between {START!r} and {END!r}")
    return text[text.index(START) : text.index(END) + len(END)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", nargs="?", type=Path, help="a main-job run folder (`bioscan-clip quickstart --out`)")
    parser.add_argument("--write", action="store_true", help="refresh README.md's block and the snapshot")
    parser.add_argument("--check", action="store_true", help="exit 1 when README.md's block is not the snapshot's")
    args = parser.parse_args(argv)
    if args.check:
        expected = render(json.loads(SNAPSHOT.read_text()))
        if readme_block(README.read_text()) != expected:
            print(f"{README}: the main-job table differs from {SNAPSHOT} rendered:\n{expected}", file=sys.stderr)
            return 1
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
