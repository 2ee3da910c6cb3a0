"""The README's DNA-identifier tables from `bioscan-clip evaluate --protocol species_held_out` runs.

    python scripts/identification_table.py runs/bold-s0/evaluation/results.json runs/bold-s1/... [--markdown]

One row per identifier, each cell the range over the runs given (one value when they agree): top-1 micro %, the
novelty AUROC and flag rates, then the precision (coverage) of confident calls per rank. Nothing is computed here
that `evaluate` did not write.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RANKS = ("order", "family", "genus", "species")
COLUMNS = {
    "species seen": ("scores", "seen/species/micro/top1"),
    "species unseen": ("scores", "unseen/species/micro/top1"),
    "novel species: genus": ("scores", "novel/genus/micro/top1"),
    "novel: family": ("scores", "novel/family/micro/top1"),
    "novelty AUROC": ("confidence", "novelty_auroc"),
    "novel flagged": ("confidence", "novel_flagged"),
    "known flagged": ("confidence", "known_flagged"),
}


def spread(values: list[float], percent: bool = True) -> str:
    """``"98.0"`` or ``"97.5–98.2"`` over the runs (``"-"`` when a run lacks the value)."""
    if not values or any(v is None for v in values):
        return "-"
    scaled = [100 * v if percent else v for v in values]
    text = [f"{v:.1f}" if percent else f"{v:.3f}" for v in (min(scaled), max(scaled))]
    return text[0] if text[0] == text[1] else f"{text[0]}–{text[1]}"


def tables(runs: list[dict]) -> str:
    names = list(runs[0]["identification"])
    lines = [
        "| DNA identifier | " + " | ".join(COLUMNS) + " |",
        "|---" * (len(COLUMNS) + 1) + "|",
    ]
    for name in names:
        cells = []
        for column, (part, key) in COLUMNS.items():
            values = [run["identification"][name][part].get(key) for run in runs]
            cells.append(spread(values, percent=column != "novelty AUROC"))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "| precision of confident calls % (coverage %) | " + " | ".join(RANKS) + " |"]
    lines.append("|---" * (len(RANKS) + 1) + "|")
    for name in names:
        cells = []
        for rank in RANKS:
            entries = [run["identification"][name]["confidence"]["ranks"][rank] for run in runs]
            precision = spread([e["precision"] for e in entries])
            coverage = spread([e["coverage"] for e in entries])
            cells.append(f"{precision} ({coverage})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    first = runs[0]
    queries = ", ".join(f"{count} {group}" for group, count in first["queries"].items())
    lines += ["", f"{len(runs)} run(s); queries: {queries}; keys: {first['keys']}"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path, help="results.json of each run (e.g. one per seed)")
    args = parser.parse_args()
    runs = []
    for path in args.results:
        run = json.loads(path.read_text())
        if "identification" not in run:
            raise SystemExit(f"{path}: no identifier comparison (run evaluate with --protocol species_held_out)")
        runs.append(run)
    print(tables(runs))


if __name__ == "__main__":
    main()
