"""Times the BIOSCAN-1M builder's metadata preparation against a plain pandas -> Arrow conversion.

A BIOSCAN-1M-sized metadata TSV (1.1 M rows by default, synthetic values, the official columns, no images) is
written to a temporary folder; then

* ``baseline``: ``pandas.read_csv`` (all columns as strings) + ``pyarrow`` table + Arrow IPC file;
* ``builder``: ``Bioscan1M(image_package=None, partition="rebuild").download_and_prepare()`` (sha256 of the
  file, normalisation, duplicate check, CLIBD partition, Arrow writing of 12 splits incl. 2 metasplits).

Usage::

    python benchmarks/bench_prepare_metadata.py            # 1.1 M rows
    python benchmarks/bench_prepare_metadata.py --rows 50000
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from dataset_scripts.schema import BIOSCAN_1M_COLUMNS

COLUMNS = BIOSCAN_1M_COLUMNS


def write_metadata(path: Path, rows: int, seed: int = 0) -> None:
    """A TSV with BIOSCAN-1M's columns and roughly its label structure (most records without species)."""
    rng = np.random.default_rng(seed)
    n_species = max(10, rows // 130)  # 1.1 M records / 8,355 species
    species_id = rng.zipf(1.6, size=rows) % n_species
    labelled = rng.random(rows) < 0.08  # ~8 % of BIOSCAN-1M records have a species
    genus = np.char.add("Genus", (species_id // 4).astype(str))
    species = np.where(labelled, np.char.add(np.char.add(genus, " sp"), species_id.astype(str)), "not_classified")
    barcode_pool = np.array(["".join(rng.choice(list("ACGT"), size=658)) for _ in range(512)])
    frame = pd.DataFrame({column: "not_classified" for column in COLUMNS}, index=range(rows))
    frame["sampleid"] = np.char.add("BIOUG", np.arange(rows).astype(str))
    frame["processid"] = np.char.add("PROC", np.arange(rows).astype(str))
    frame["uri"] = np.char.add("BOLD:AAA", species_id.astype(str))
    frame["phylum"], frame["class"], frame["order"] = "Arthropoda", "Insecta", "Diptera"
    frame["family"] = np.char.add("Family", (species_id // 40).astype(str))
    frame["genus"] = np.where(rng.random(rows) < 0.3, genus, "not_classified")
    frame["species"] = species
    frame["nucraw"] = barcode_pool[rng.integers(0, len(barcode_pool), rows)]
    frame["image_file"] = np.char.add(np.arange(rows).astype(str), ".jpg")
    frame["chunk_number"] = (1 + np.arange(rows) // 10_000).astype(str)
    frame.to_csv(path, sep="\t", index=False)


def baseline(path: Path, out: Path) -> float:
    start = time.perf_counter()
    frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, na_filter=False)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    with pa.OSFile(str(out), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return time.perf_counter() - start


def builder(data_dir: Path, cache_dir: Path) -> tuple[float, int]:
    from datasets.utils.logging import disable_progress_bar

    from dataset_scripts import Bioscan1M

    disable_progress_bar()
    start = time.perf_counter()
    bioscan = Bioscan1M(data_dir=str(data_dir), cache_dir=str(cache_dir), image_package=None, partition="rebuild")
    bioscan.download_and_prepare()
    elapsed = time.perf_counter() - start
    return elapsed, sum(bioscan.summary.records.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_100_000, help="metadata rows (default: 1,100,000)")
    parser.add_argument("--json", type=Path, help="also write the result as JSON here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tsv = tmp / "data" / "bioscan1m" / "BIOSCAN_Insect_Dataset_metadata.tsv"
        tsv.parent.mkdir(parents=True)
        start = time.perf_counter()
        write_metadata(tsv, args.rows)
        print(f"wrote {args.rows:,} rows ({tsv.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - start:.1f} s")
        base = baseline(tsv, tmp / "baseline.arrow")
        print(f"pandas read + Arrow write: {base:.2f} s")
        prepared, written = builder(tmp / "data", tmp / "cache")
        print(f"Bioscan1M prepare:         {prepared:.2f} s ({written:,} rows written incl. metasplits)")
        result = {"rows": args.rows, "baseline_s": base, "builder_s": prepared, "ratio": prepared / base}
        print(f"ratio builder / baseline:  {result['ratio']:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
