"""The CLIBD partition of BIOSCAN-1M (and of any species-labelled table, e.g. a BOLD export).

Rules (CLIBD ``dataset/create_splits.py``, ``shared/reference/CLIBD_REFERENCE.md`` §3.2):

1. Records whose species is missing (``not_classified``) leave the labelled pool and go to ``no_split``.
2. Species with at least ``min_common`` (10) records are split 80/20 *by species* into seen and unseen.
3. Each seen species' records are split 0.7/0.1/0.1/0.1 into ``train_seen / val_seen / test_seen / seen_keys``.
4. Unseen species are halved into a validation and a test species set; each species' records are halved into
   queries (``val_unseen`` / ``test_unseen``) and keys (``val_unseen_keys`` / ``test_unseen_keys``).
5. Tail species (fewer than ``min_common`` but at least 2 records) are treated like unseen species (halved by
   species into val/test, then per species into queries/keys).
6. Species with one record go to ``single_species``.

Every random choice comes from one ``numpy.random.default_rng(seed)`` and species are visited in sorted order,
so the partition depends only on the multiset of (row position, species) and the seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .integrity import DataIntegrityError

__all__ = [
    "CLIBD_METASPLITS",
    "CLIBD_SPLITS",
    "PAPER_COUNTS",
    "SEEN_SPLITS",
    "UNSEEN_SPLITS",
    "clibd_partition",
    "partition_report",
    "read_official_partition",
]

CLIBD_SPLITS: tuple[str, ...] = (
    "no_split",
    "train_seen",
    "seen_keys",
    "single_species",
    "val_seen",
    "val_unseen",
    "val_unseen_keys",
    "test_seen",
    "test_unseen",
    "test_unseen_keys",
)
"""The ten disjoint CLIBD splits of BIOSCAN-1M (HDF5 group names of the original)."""

CLIBD_METASPLITS: dict[str, tuple[str, ...]] = {
    "all_keys": ("seen_keys", "val_unseen_keys", "test_unseen_keys"),
    "no_split_and_seen_train": ("no_split", "train_seen"),
}
"""Unions used by the original: the retrieval keys, and the training set (pretraining records + seen train)."""

SEEN_SPLITS = ("train_seen", "val_seen", "test_seen", "seen_keys")
UNSEEN_SPLITS = ("val_unseen", "val_unseen_keys", "test_unseen", "test_unseen_keys")

PAPER_COUNTS: dict[str, dict[str, int | None]] = {
    "all": {"records": 1_088_135, "species": 8_355},
    "train_seen": {"records": 36_279, "species": 916},
    "val_seen": {"records": 4_878, "species": 916},
    "seen_keys": {"records": 6_530, "species": 916},
    "val_unseen": {"records": 6_952, "species": 1_771},
    "val_unseen_keys": {"records": 7_645, "species": 1_771},
    "test_seen": {"records": 6_878, "species": 916},
    "test_unseen": {"records": 6_448, "species": 1_772},
    "test_unseen_keys": {"records": 7_123, "species": 1_772},
}
"""Counts from the BIOSCAN-CLIP partition figure (v1 ``partition.png``). They do not add up exactly to the
record total (see the reference dossier); they are a sanity yardstick, not a target."""


def _split_counts(n: int, fractions: Sequence[float]) -> np.ndarray:
    """Boundaries that cut ``n`` items by cumulative ``fractions`` (rounded, so each part is within 1 item)."""
    return np.round(np.cumsum(fractions) * n).astype(int)


def clibd_partition(
    species: Sequence[str | None] | pd.Series,
    seed: int = 0,
    *,
    min_common: int = 10,
    seen_fraction: float = 0.8,
    seen_ratios: tuple[float, float, float, float] = (0.7, 0.1, 0.1, 0.1),
) -> np.ndarray:
    """Assigns every record to one CLIBD split by the published rules.

    Args:
        species (`Sequence[str | None]`): the species of each record; ``None`` for unknown.
        seed (`int`, *optional*, defaults to 0): seeds every random choice.
        min_common (`int`, *optional*, defaults to 10): species with at least this many records are split
            into seen/unseen; smaller ones are "tail" species.
        seen_fraction (`float`, *optional*, defaults to 0.8): share of common species that are seen.
        seen_ratios (`tuple`, *optional*, defaults to ``(0.7, 0.1, 0.1, 0.1)``): per seen species, the shares of
            ``train_seen, val_seen, test_seen, seen_keys``.

    Returns:
        `np.ndarray` of `str`: the split of each record, aligned with ``species``.

    Example:

    ```python
    >>> splits = clibd_partition(["a"] * 12 + ["b"] * 3 + ["c"] + [None], seed=0)
    >>> sorted(set(splits[-2:].tolist()))
    ['no_split', 'single_species']

    ```
    """
    if abs(sum(seen_ratios) - 1.0) > 1e-9 or len(seen_ratios) != 4:
        raise ValueError(f"seen_ratios must be four fractions summing to 1, got {seen_ratios!r}")
    if not 0.0 <= seen_fraction <= 1.0:
        raise ValueError(f"seen_fraction must be in [0, 1], got {seen_fraction!r}")
    labels = pd.Series(list(species), dtype=object)
    out = np.full(len(labels), "no_split", dtype=object)
    rng = np.random.default_rng(seed)

    labelled = labels[labels.notna()]
    positions = labelled.index.to_numpy()  # groupby().indices are positions within `labelled`: map back
    groups = {name: positions[rows] for name, rows in labelled.groupby(labelled, sort=True).indices.items()}
    names = sorted(groups)
    sizes = {name: len(groups[name]) for name in names}
    common = [name for name in names if sizes[name] >= min_common]
    tail = [name for name in names if 2 <= sizes[name] < min_common]
    for name in names:
        if sizes[name] == 1:
            out[groups[name]] = "single_species"

    common = [common[i] for i in rng.permutation(len(common))]
    n_seen = int(round(seen_fraction * len(common)))
    seen, unseen = sorted(common[:n_seen]), sorted(common[n_seen:])

    for name in seen:
        rows = groups[name][rng.permutation(sizes[name])]
        bounds = _split_counts(len(rows), seen_ratios)
        for split, part in zip(SEEN_SPLITS, np.split(rows, bounds[:-1]), strict=True):
            out[part] = split

    # Unseen common species and tail species follow the same query/key scheme, each halved by species.
    for pool in (unseen, tail):
        order = [pool[i] for i in rng.permutation(len(pool))]
        half = (len(order) + 1) // 2
        for prefix, members in (("val", order[:half]), ("test", order[half:])):
            for name in sorted(members):
                rows = groups[name][rng.permutation(sizes[name])]
                n_queries = len(rows) // 2  # floor: with >= 2 records both queries and keys are non-empty
                out[rows[:n_queries]] = f"{prefix}_unseen"
                out[rows[n_queries:]] = f"{prefix}_unseen_keys"
    return out.astype(str)


def read_official_partition(directory: str | Path, sample_ids: pd.Series) -> np.ndarray:
    """Reads the official ``CLIBD_partitioning/{split}.txt`` lists (one sampleid per line).

    Args:
        directory (`str` or `Path`): the ``CLIBD_partitioning`` folder.
        sample_ids (`pd.Series`): the ``sampleid`` of each record.

    Returns:
        `np.ndarray` of `str`: each record's split; ``""`` for records in no list.

    Raises:
        `DataIntegrityError`: a sampleid listed in two splits, or no list file at all.
    """
    directory = Path(directory)
    assigned: dict[str, str] = {}
    found = False
    for split in CLIBD_SPLITS:
        path = directory / f"{split}.txt"
        if not path.exists():
            continue
        found = True
        for line in path.read_text().splitlines():
            sample_id = line.strip()
            if not sample_id:
                continue
            if sample_id in assigned and assigned[sample_id] != split:
                raise DataIntegrityError(
                    f"sampleid {sample_id!r} is listed in both {assigned[sample_id]}.txt and {split}.txt in {directory}"
                )
            assigned[sample_id] = split
    if not found:
        raise DataIntegrityError(f"no CLIBD split list ({', '.join(CLIBD_SPLITS)}).txt found in {directory}")
    return sample_ids.map(assigned).fillna("").to_numpy(dtype=str)


def partition_report(splits: Sequence[str], species: Sequence[str | None]) -> pd.DataFrame:
    """Counts records and species per split beside the paper's figure counts.

    Args:
        splits (`Sequence[str]`): each record's split (e.g. from :func:`clibd_partition`).
        species (`Sequence[str | None]`): each record's species.

    Returns:
        `pd.DataFrame` indexed by split with columns ``records``, ``species``, ``paper_records``,
        ``paper_species`` (``<NA>`` where the paper gives no number), plus a final ``all`` row.
    """
    frame = pd.DataFrame({"split": list(splits), "species": pd.Series(list(species), dtype=object)})
    rows = []
    for split in (*CLIBD_SPLITS, *CLIBD_METASPLITS):
        members = CLIBD_METASPLITS.get(split, (split,))
        part = frame[frame["split"].isin(members)]
        rows.append((split, len(part), part["species"].nunique()))
    rows.append(("all", len(frame), frame["species"].nunique()))
    report = pd.DataFrame(rows, columns=["split", "records", "species"]).set_index("split")
    report["paper_records"] = pd.array([PAPER_COUNTS.get(s, {}).get("records") for s in report.index], dtype="Int64")
    report["paper_species"] = pd.array([PAPER_COUNTS.get(s, {}).get("species") for s in report.index], dtype="Int64")
    return report
