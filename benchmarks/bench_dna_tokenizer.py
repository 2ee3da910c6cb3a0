"""DNA tokenisation: the vectorised batch path against the generic one-barcode-at-a-time path.

Both give the same ids (checked here). The batch path cleans each barcode once, then turns the joined, padded
bytes into k-mer ids with numpy; the generic path (``tokenizer.encode``) goes through the tokenizer's Python
``_tokenize`` and a dictionary look-up per k-mer, as a plain ``PreTrainedTokenizer`` does.

    .venv/bin/python benchmarks/bench_dna_tokenizer.py [--barcodes 20000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from modeling_bioscanclip import BioscanDnaTokenizer


def random_barcodes(count: int, seed: int = 0) -> list[str]:
    """COI-sized barcodes (600-700 nt, a few N), as BOLD exports hold them."""
    rng = np.random.default_rng(seed)
    bases = np.array(list("ACGT"))
    barcodes = []
    for _ in range(count):
        sequence = bases[rng.integers(0, 4, size=int(rng.integers(600, 700)))]
        sequence[rng.random(len(sequence)) < 0.002] = "N"
        barcodes.append("".join(sequence))
    return barcodes


def best_of(repeats: int, function) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--barcodes", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    tokenizer = BioscanDnaTokenizer(reference_mode=True)
    barcodes = random_barcodes(args.barcodes)
    fast = tokenizer(barcodes, return_tensors="np")["input_ids"]
    slow = np.array([tokenizer.encode(barcode) for barcode in barcodes[:500]])
    assert (fast[:500] == slow).all(), "the two paths disagree"
    batch = best_of(args.repeats, lambda: tokenizer(barcodes, return_tensors="np"))
    generic = best_of(args.repeats, lambda: [tokenizer.encode(barcode) for barcode in barcodes])
    print(f"{args.barcodes:,} barcodes, best of {args.repeats}")
    print(f"  batch path (numpy):            {batch:7.3f} s  {args.barcodes / batch:12,.0f} barcodes/s")
    print(f"  generic path (encode per item): {generic:7.3f} s  {args.barcodes / generic:12,.0f} barcodes/s")
    print(f"  ratio: {generic / batch:.1f}x")


if __name__ == "__main__":
    main()
