"""Loading a key index from anyone: check-then-read against rebuilding the faiss index from the stored vectors.

faiss does not defend against hostile files, so a key library from another lab is either checked field by field
against its manifest before faiss reads it (:mod:`bioscan_clip.retrieval.index_file`, plus Arrow's full validation
of the key table) or the faiss structure is rebuilt from the stored vectors and trained parameters instead of read.
This measures both at the scale the issue asks (1M keys of the model's 768 dimensions), per index type:

* ``checked load``: :meth:`KeyIndex.load` as it is now (manifest bounds, the index file walked, Arrow validated,
  then faiss reads it), ``verify=False`` as a key folder calls it after its own checksums;
* ``unchecked load``: the same reads without the checks (what the load did before);
* ``rebuild``: a new faiss index of the same type filled from the stored vectors, with the trained coarse centroids
  and PQ codebooks given (their training is not counted): ``add`` of every vector, as a rebuild on load would do.

Run on its own (not by ``run.py``; it needs ~10 GB of memory and 15 GB of disk at 1M keys)::

    .venv/bin/python benchmarks/bench_untrusted_load.py --keys 1000000 --types flat,ivfpq,ivf,hnsw
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import datasets
import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved_best  # noqa: E402

from bioscan_clip.retrieval import INDEX_TYPES, KeyIndex, resolve_index_params  # noqa: E402
from bioscan_clip.retrieval.storage import INDEX_NAME, KEYS_DIRNAME, VECTORS_NAME, new_manifest  # noqa: E402


def unit_vectors(count: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    vectors = np.empty((count, dim), dtype=np.float32)
    for start in range(0, count, 65_536):  # in chunks: no float64 copy of the whole matrix
        chunk = rng.standard_normal((min(65_536, count - start), dim), dtype=np.float32)
        vectors[start : start + len(chunk)] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
    return vectors


def trained_empty(index_type: str, dim: int, params: dict, vectors: np.ndarray) -> faiss.Index:
    """An index of the type, trained (a sample, as the build does) and empty: what a rebuild starts from."""
    index = INDEX_TYPES[index_type].new_index(dim, params, 0)
    if "train_size" in params:
        rows = np.sort(np.random.default_rng(0).choice(len(vectors), params["train_size"], replace=False))
        index.train(vectors[rows])
    return index


def unchecked_load(folder: Path, index_type: str) -> tuple:
    flags = faiss.IO_FLAG_MMAP_IFC if INDEX_TYPES[index_type].mmap_on_load else 0
    return (
        datasets.load_from_disk(str(folder / KEYS_DIRNAME)),
        faiss.read_index(str(folder / INDEX_NAME), flags),
        np.load(folder / VECTORS_NAME, mmap_mode="r"),
    )


def measure_type(index_type: str, vectors: np.ndarray, keys: datasets.Dataset, workdir: Path) -> dict:
    count, dim = vectors.shape
    index_type, params = resolve_index_params(
        index_type, count, dim, pq_fast_scan=True if index_type == "ivfpq" else None
    )
    index = trained_empty(index_type, dim, params, vectors)
    start = time.perf_counter()
    index.add(vectors)  # the rebuild: every stored vector into a trained, empty index
    rebuild = time.perf_counter() - start
    manifest = new_manifest(dim=dim, count=count, index_type=index_type, index_params=params, normalize=True,
                            id_column="processid", modality=None, embedding_name=None, extra={})  # fmt: skip
    folder = workdir / index_type
    KeyIndex(keys, index, manifest, vectors).save(folder)
    del index
    gc.collect()
    loads = interleaved_best(
        {
            "checked": lambda: KeyIndex.load(folder, verify=False),
            "unchecked": lambda: unchecked_load(folder, index_type),
        }
    )
    size = sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())
    shutil.rmtree(folder)
    return {"index_type": index_type, "params": params, "rebuild_s": rebuild, "checked_load_s": loads["checked"],
            "unchecked_load_s": loads["unchecked"], "folder_bytes": size}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--types", default="flat,ivfpq,ivf,hnsw")
    parser.add_argument("--workdir", default=None, help="where the folders go (default: a temporary folder)")
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-untrusted-", dir=args.workdir))
    vectors = unit_vectors(args.keys, args.dim)
    keys = datasets.Dataset.from_dict({"processid": [f"KEY{i:07d}" for i in range(args.keys)]})
    results = []
    print("| index type | checked load | unchecked load | check overhead | rebuild from vectors | rebuild / checked |")
    print("|---|---:|---:|---:|---:|---:|", flush=True)
    try:
        for index_type in args.types.split(","):
            row = measure_type(index_type, vectors, keys, workdir)
            results.append(row)
            print(f"| {row['index_type']} | {row['checked_load_s']:.3f} s | {row['unchecked_load_s']:.3f} s | "
                  f"{row['checked_load_s'] - row['unchecked_load_s']:+.3f} s | {row['rebuild_s']:.2f} s | "
                  f"{row['rebuild_s'] / row['checked_load_s']:.0f}x |", flush=True)  # fmt: skip
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"keys": args.keys, "dim": args.dim, "results": results}, indent=2))


if __name__ == "__main__":
    main()
