"""Key index at BIOSCAN-5M scale: build memory, exact search against sgemm, IVF-PQ + exact re-ranking.

Keys are synthetic and clustered (generated here, seeded): 2 000 cluster centres in a 64-d latent space, each key a
centre plus latent noise, projected to `dim` and given a little isotropic noise, then unit-normalised; queries are
fresh draws from the same clusters. They are written to a `.npy` in a temporary folder in chunks, so the large sizes
never need the keys in RAM to generate them.

Figures: the build's peak resident memory beyond the caller's (already resident) keys, measured in a child process
(Linux VmHWM after resetting it through /proc/self/clear_refs), over the raw float32 bytes, beside the plain
numpy-normalise-then-faiss-add build; exact flat search q/s beside numpy sgemm of the same query x key blocks
(baseline; top-k selection costs extra) and of large blocks (limit), interleaved; IVF-PQ (fast scan, 4-bit) with exact re-ranking from the memory-mapped
vectors.npy: recall@1 against exact, q/s and the searching process's anonymous RAM (index codes; the vectors stay
file-backed pages), measured in a fresh process that loads the saved index. Large size: 1M, 2M and the 5.15M x 768
moonshot (<= 1 GB RAM, recall@1 >= 0.95, >= 1 000 q/s on 2 cores; about 50 GB of scratch disk, 20 GB of RAM, 10 min).
Past 2M keys a flat index beside the resident keys does not fit 23 GB: exact neighbours come from `KeyIndex.exact_search`
(blocked sgemm over the IVF-PQ folder's memory-mapped vectors) instead, and the flat figures are left out.

    python benchmarks/bench_index.py [--size smoke|default|large]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Figure, interleaved_best, standalone  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
SECTION = "Key index"
# size -> (key counts, dim, queries)
SETTINGS = {
    "smoke": ((20_000,), 64, 200),
    "default": ((200_000,), 768, 1000),
    "large": ((1_000_000, 2_000_000, 5_150_000), 768, 1000),
}
MOONSHOT_KEYS = 5_150_000
NAIVE_MAX_KEYS = 1_000_000
FLAT_MAX_KEYS = 2_000_000
EXACT_REPEATS = 3  # best of 3, interleaved: of 2, the same code measured 0.81-0.94x sgemm across one day's runs
LATENT, CENTRES, CHUNK = 64, 2000, 65_536
K = 10

# Runs in a child process: RSS figures of one build or one loaded index, printed as one JSON line.
CHILD = textwrap.dedent(
    """
    import json, sys, time
    import numpy as np

    def status():
        fields = {}
        for line in open("/proc/self/status"):
            name, _, value = line.partition(":")
            if name in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                fields[name] = int(value.split()[0]) * 1024
        return fields

    mode, keys_path, out = sys.argv[1], sys.argv[2], sys.argv[3]
    import faiss
    faiss.omp_set_num_threads(int(sys.argv[4]))
    if mode == "search":
        from bioscan_clip.retrieval import KeyIndex
        queries, truth = np.load(sys.argv[5]), np.load(sys.argv[6])
        before = status()
        index = KeyIndex.load(keys_path, verify=False)
        index.search(queries[:50], 10)
        passes = []
        for _ in range(3):  # the first pass maps (and may read from disk) the candidates' pages of vectors.npy
            start = time.perf_counter()
            _, found = index.search(queries, 10)
            passes.append(time.perf_counter() - start)
        after = status()
        recall = float(np.mean(found[:, 0] == truth[:, 0]))
        qps, first = len(queries) / min(passes), len(queries) / passes[0]
        print(json.dumps({"qps": qps, "first_qps": first, "recall": recall, "before": before, "after": after}))
        sys.exit(0)
    from bioscan_clip.retrieval import KeyIndex
    keys = np.load(keys_path)  # the caller's keys, resident before the builds start
    metadata = {"processid": [str(row) for row in range(len(keys))]}
    records = {}
    for name, options, target in json.loads(sys.argv[5]):
        before = status()
        with open("/proc/self/clear_refs", "w") as handle:  # resets VmHWM to the current RSS
            handle.write("5")
        start = time.perf_counter()
        if options is None:  # what one would write: normalise with numpy, add to faiss
            vectors = keys / np.linalg.norm(keys, axis=1, keepdims=True)
            index = faiss.IndexFlatIP(keys.shape[1])
            index.add(vectors)
        else:
            index = KeyIndex.build(keys, metadata, required_columns=(), show_progress=False, **options)
            index.save(target)
        seconds = time.perf_counter() - start
        records[name] = {"seconds": seconds, "before": before, "after": status()}
        del index
        vectors = None
    print(json.dumps(records))
    """
)


def _clustered(count: int, dim: int, seed: int, path: Path) -> Path:
    """Writes `count` unit-length clustered vectors to `path` (.npy) chunk by chunk; returns the path."""
    basis = np.random.default_rng(99).standard_normal((LATENT, dim), dtype=np.float32) / np.sqrt(LATENT)
    centres = np.random.default_rng(98).standard_normal((CENTRES, LATENT), dtype=np.float32)
    rng = np.random.default_rng(seed)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(count, dim))
    for start in range(0, count, CHUNK):
        rows = min(count, start + CHUNK) - start
        latent = centres[rng.integers(0, CENTRES, rows)] + 0.5 * rng.standard_normal((rows, LATENT), dtype=np.float32)
        block = latent @ basis + 0.05 * rng.standard_normal((rows, dim), dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[start : start + rows] = block
    out.flush()
    del out
    return path


def _child(mode: str, *args: str, threads: int = 2) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TQDM_DISABLE": "1"}
    arguments = [args[0], args[1], str(threads), *args[2:]]
    result = subprocess.run(
        [sys.executable, "-c", CHILD, mode, *arguments], capture_output=True, text=True, cwd=REPO_ROOT, env=env
    )
    if result.returncode != 0:
        raise RuntimeError(f"bench_index child {mode} failed: {result.stderr.strip()[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _build_memory(keys: Path, builds: list[tuple[str, dict | None, str]]) -> dict[str, tuple[float, float]]:
    """name -> (peak resident bytes beyond the resident keys, seconds) of each build, in one fresh process."""
    records = _child("build", str(keys), "-", json.dumps(builds))
    return {
        name: (record["after"]["VmHWM"] - record["before"]["VmRSS"], record["seconds"])
        for name, record in records.items()
    }


def _sgemm(queries: np.ndarray, keys: np.ndarray, query_block: int, key_block: int):
    """numpy sgemm of every query x key block (scores only, no top-k)."""

    def run() -> None:
        for q in range(0, len(queries), query_block):
            for start in range(0, len(keys), key_block):
                queries[q : q + query_block] @ keys[start : start + key_block].T

    return run


def _figures_at(count: int, dim: int, n_queries: int, work: Path) -> list[Figure]:
    import faiss

    from bioscan_clip.retrieval import BLAS_KEY_BLOCK, BLAS_QUERY_BLOCK, KeyIndex, resolve_index_params

    keys_path = _clustered(count, dim, 0, work / f"keys{count}.npy")
    queries = np.load(_clustered(n_queries, dim, 1, work / f"queries{count}.npy"))
    keys = np.load(keys_path, mmap_mode="r")
    raw = count * dim * 4
    label = f"{count:,} x {dim}"
    # Below this the process's fixed costs (libraries, arenas, thread buffers) swamp memory ratios: reported, not judged.
    judged = raw >= 64 * 2**20
    small = "" if judged else "; too small to judge memory (fixed overheads dominate)"
    figures: list[Figure] = []

    # Build memory, each build in its own process.
    pq_options = {"index_type": "ivfpq", "pq_fast_scan": True}
    builds = [("ivfpq", pq_options, str(work / f"ivfpq{count}"))]
    with_flat = count <= FLAT_MAX_KEYS  # a flat index is 1x raw in RAM beside the resident keys
    if with_flat:
        builds.insert(0, ("flat", {"index_type": "flat"}, str(work / f"flat{count}")))
    if count <= NAIVE_MAX_KEYS:  # the plain build peaks near 2x raw beside the resident keys: skipped past 1M keys
        builds.insert(0, ("naive", None, ""))
    memory = _build_memory(keys_path, builds)
    naive = memory["naive"][0] if "naive" in memory else None
    for name, (peak, seconds) in memory.items():
        if name == "naive":
            continue
        figures.append(
            Figure(
                name=f"{label}: KeyIndex.build ({name}) peak memory beyond the keys / raw float32 bytes",
                value=round(peak / raw, 3),
                unit="x raw",
                baseline="numpy normalise + faiss IndexFlatIP.add",
                baseline_value=round(naive / raw, 3) if naive is not None else None,
                target="<= 1.5x raw",
                met=peak / raw <= 1.5 if judged else None,
                lower_is_better=True,
                note=f"raw {raw / 2**20:.0f} MiB, build + save {seconds:.1f} s; VmHWM of a child process"
                + ("; the flat index itself is 1x" if name == "flat" else "; vectors stream to a temporary .npy")
                + small,
            )
        )

    if with_flat:
        # Exact search: the flat index (memory-mapped, as loaded) against sgemm of the same blocks.
        flat = KeyIndex.load(work / f"flat{count}", verify=False)
        truth = flat.search(queries, K)[1]  # also pages the mapped index in
        np.save(work / "truth.npy", truth)
        resident = np.ascontiguousarray(keys)  # sgemm on resident memory, like the index's (page-cached) mapping
        best = interleaved_best(
            {
                "flat": lambda: flat.search(queries, K),
                "same_blocks": _sgemm(queries, resident, BLAS_QUERY_BLOCK, BLAS_KEY_BLOCK),
                "large_blocks": _sgemm(queries, resident, len(queries), 65_536),
            },
            EXACT_REPEATS,
        )
        del resident
        exact_seconds = best["flat"]
        figures.append(
            Figure(
                name=f"{label}: exact flat search, top-{K} (KeyIndex, memory-mapped index)",
                value=round(n_queries / exact_seconds, 1),
                unit="queries/s",
                baseline=f"numpy sgemm of the same {BLAS_QUERY_BLOCK} x {BLAS_KEY_BLOCK} query x key blocks, no top-k",
                baseline_value=round(n_queries / best["same_blocks"], 1),
                limit="numpy sgemm, all queries x 65 536-key blocks",
                limit_value=round(n_queries / best["large_blocks"], 1),
                target=">= 0.9x sgemm of the same blocks",
                met=best["same_blocks"] / exact_seconds >= 0.9,
                note=f"{n_queries} queries at once, {faiss.omp_get_max_threads()} faiss threads; interleaved, best of "
                f"{EXACT_REPEATS}; the heap top-k over every score is work the baseline leaves out",
            )
        )
    else:  # blocked sgemm over the IVF-PQ folder's memory-mapped vectors: no flat index in RAM
        truth = KeyIndex.load(work / f"ivfpq{count}", verify=False).exact_search(queries, K)[1]
        np.save(work / "truth.npy", truth)
        exact_seconds = None

    # IVF-PQ + re-ranking, searched in a fresh process from the saved folder.
    _, params = resolve_index_params("ivfpq", count, dim, pq_fast_scan=True)
    pq = KeyIndex.load(work / f"ivfpq{count}", verify=False)
    pq.set_search_params(rerank=0)
    plain_recall = float(np.mean(pq.search(queries, 1)[1][:, 0] == truth[:, 0]))
    del pq
    record = _child(
        "search", str(work / f"ivfpq{count}"), "-", str(work / f"queries{count}.npy"), str(work / "truth.npy")
    )
    index_ram = record["after"]["RssAnon"] - record["before"]["RssAnon"]
    per_key = index_ram / count
    settings = (
        f"nlist {params['nlist']}, nprobe {params['nprobe']}, {params['pq_m']} x 4-bit codes, rerank {params['rerank']}"
    )
    figures += [
        Figure(
            name=f"{label}: IVF-PQ + exact re-ranking, recall@1 of exact",
            value=round(record["recall"], 4),
            unit="recall@1",
            baseline="the same IVF-PQ without re-ranking",
            baseline_value=round(plain_recall, 4),
            target=">= 0.95",
            met=record["recall"] >= 0.95,
            note=settings,
        ),
        Figure(
            name=f"{label}: IVF-PQ + exact re-ranking, top-{K} search",
            value=round(record["qps"], 1),
            unit="queries/s",
            baseline="exact flat search (above)" if exact_seconds else "",
            baseline_value=round(n_queries / exact_seconds, 1) if exact_seconds else None,
            target=">= 1000 q/s",
            met=record["qps"] >= 1000,
            note=f"{n_queries} queries at once in a fresh process, re-ranked from the memory-mapped vectors.npy; "
            f"best of 3 passes, the first (candidate pages not yet mapped) {record['first_qps']:,.0f} q/s"
            + ("" if exact_seconds else f"; no flat index past {FLAT_MAX_KEYS:,} keys (it would not fit in RAM)"),
        ),
        Figure(
            name=f"{label}: IVF-PQ searching process, anonymous RAM added by load + search",
            value=round(index_ram / 2**20, 1),
            unit="MiB",
            baseline="raw float32 keys (what a flat index holds)",
            baseline_value=round(raw / 2**20, 1),
            target=f"<= 1024 MiB at {MOONSHOT_KEYS:,} keys",
            met=per_key * MOONSHOT_KEYS <= 2**30 if judged else None,
            lower_is_better=True,
            note=(
                f"{per_key:.1f} B/key, {per_key * MOONSHOT_KEYS / 2**20:.0f} MiB projected at {MOONSHOT_KEYS:,} keys "
                "(linear in keys)"
                if count < MOONSHOT_KEYS
                else f"{per_key:.1f} B/key, measured at this size"
            )
            + f"; vectors stay file-backed (page cache){small}",
        ),
    ]
    return figures


def measure(size: str) -> list[Figure]:
    counts, dim, n_queries = SETTINGS[size]
    figures: list[Figure] = []
    base = os.environ.get("BIOSCAN_BENCH_TMP")  # large sizes write several GB: point this at a roomy disk
    for count in counts:
        with tempfile.TemporaryDirectory(prefix="bench-index-", dir=base) as tmp:
            started = time.perf_counter()
            figures += _figures_at(count, dim, n_queries, Path(tmp))
            figures[-1].extra["seconds"] = round(time.perf_counter() - started, 1)
    return figures


if __name__ == "__main__":
    sys.exit(standalone(measure, __doc__.split("\n\n")[0]))
