"""DNA tokenisation against the straightforward code a user would write, and against a memory copy.

The baseline is a plain Python loop over the original scheme (upper-case, strip gaps, pad or cut to 660 nt with N,
one dictionary look-up per non-overlapping 5-mer, id 0 prepended): what the original pipeline does. The limit is a
copy of the same barcode bytes. Barcodes are real COI sequences from the BOLD v3 export in ../shared/realdata
(lengths 501-1,551 nt, gaps and IUPAC codes as exported), drawn with replacement. Ids are checked identical to the
baseline's (reference mode) and to the clean mode's own per-barcode path.

    .venv/bin/python benchmarks/bench_dna_tokenizer.py [--barcodes 100000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import csv
import random
import time
from pathlib import Path

import numpy as np

from modeling_bioscanclip import BioscanDnaTokenizer, normalize_barcode
from modeling_bioscanclip.constants_bioscanclip import kmer_vocabulary

REAL_EXPORT = (
    Path(__file__).resolve().parents[2]
    / "shared/realdata/matteodegobbi__InsectClassification/insect_species_bold_v3_coi_subset.tsv"
)


def real_barcodes(count: int, seed: int = 0) -> list[str]:
    with REAL_EXPORT.open(newline="") as handle:
        sequences = [row["nucleotides"] for row in csv.DictReader(handle, delimiter="\t") if row["nucleotides"]]
    rng = random.Random(seed)
    return [rng.choice(sequences) for _ in range(count)]


def plain_original(barcodes: list[str], vocab: dict[str, int]) -> list[list[int]]:
    """The original scheme as a user would write it."""
    unknown = vocab["<UNK>"]
    encoded = []
    for barcode in barcodes:
        sequence = barcode.upper().replace("-", "")[:660].ljust(660, "N")
        encoded.append([0] + [vocab.get(sequence[i : i + 5], unknown) for i in range(0, 660, 5)])
    return encoded


def best_of(repeats: int, function) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--barcodes", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    reference = BioscanDnaTokenizer(reference_mode=True)
    clean = BioscanDnaTokenizer()
    barcodes = real_barcodes(args.barcodes)
    vocab = kmer_vocabulary()
    nucleotides = sum(map(len, barcodes))

    ids = reference(barcodes, return_tensors="np")["input_ids"]
    assert np.array_equal(ids, np.array(plain_original(barcodes, vocab))), "reference mode differs from the original"
    sample = barcodes[:2000]
    per_barcode = [clean.encode_normalized([normalize_barcode(b, max_nucleotides=660)])[0][0] for b in sample]
    assert np.array_equal(clean(sample, return_tensors="np")["input_ids"], np.array(per_barcode)), "clean mode"

    joined = "".join(barcodes).encode("ascii")
    plain = best_of(args.repeats, lambda: plain_original(barcodes, vocab))
    copy = best_of(args.repeats, lambda: bytearray(joined))
    print(f"{args.barcodes:,} real barcodes ({nucleotides / 1e6:.1f} M nt), best of {args.repeats}; ids identical")
    print(f"  plain Python original scheme: {plain:7.3f} s  {nucleotides / plain / 1e6:9.1f} M nt/s")
    print(f"  memory copy of the bytes:     {copy:7.3f} s  {nucleotides / copy / 1e6:9.1f} M nt/s")
    for batch_size in (1_000, 10_000, args.barcodes):

        def run(size=batch_size):
            for start in range(0, len(barcodes), size):
                reference(barcodes[start : start + size], return_tensors="np")

        seconds = best_of(args.repeats, run)
        print(
            f"  tokenizer, batches of {batch_size:>7,}: {seconds:7.3f} s  {nucleotides / seconds / 1e6:9.1f} M nt/s  "
            f"{plain / seconds:5.1f}x the plain loop, {copy / seconds:.4f} of a memory copy"
        )


if __name__ == "__main__":
    main()
