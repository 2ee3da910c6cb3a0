"""CLIBD partition rules, checked as properties over random species lists."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dataset_scripts.integrity import DataIntegrityError
from dataset_scripts.partition import (
    CLIBD_SPLITS,
    SEEN_SPLITS,
    UNSEEN_SPLITS,
    clibd_partition,
    partition_report,
    read_official_partition,
)

# Species lists: a few names with skewed abundances (singletons, tail and common species) plus unknowns.
species_lists = st.lists(
    st.one_of(st.none(), st.sampled_from([f"sp{i}" for i in range(30)]), st.sampled_from(["common1", "common2"])),
    min_size=0,
    max_size=300,
)


def _species_by_split(species, splits) -> dict[str, set]:
    out: dict[str, set] = {}
    for name, split in zip(species, splits, strict=True):
        out.setdefault(split, set()).add(name)
    return out


@settings(max_examples=60, deadline=None)
@given(species=species_lists, seed=st.integers(0, 2**16))
def test_partition_properties(species, seed):
    splits = clibd_partition(species, seed=seed)
    assert len(splits) == len(species)  # every record in exactly one split
    assert set(splits) <= set(CLIBD_SPLITS)
    counts = pd.Series([s for s in species if s is not None]).value_counts()
    by_split = _species_by_split(species, splits)
    seen = set().union(*(by_split.get(s, set()) for s in SEEN_SPLITS))
    unseen = set().union(*(by_split.get(s, set()) for s in UNSEEN_SPLITS))
    assert seen.isdisjoint(unseen)
    assert None not in seen | unseen
    for prefix in ("val", "test"):  # every unseen query species has keys, and the two sets are the same
        assert by_split.get(f"{prefix}_unseen", set()) == by_split.get(f"{prefix}_unseen_keys", set())
    assert by_split.get("val_unseen", set()).isdisjoint(by_split.get("test_unseen", set()))
    assert all(counts[name] >= 10 for name in seen)
    assert by_split.get("single_species", set()) == set(counts[counts == 1].index)
    assert [s for s, name in zip(splits, species, strict=True) if name is None] == ["no_split"] * species.count(None)
    assert np.array_equal(splits, clibd_partition(species, seed=seed))  # deterministic


def test_partition_fractions_and_seed():
    species = [f"s{i}" for i in range(50) for _ in range(20)] + [f"tail{i}" for i in range(10) for _ in range(4)]
    splits = clibd_partition(species, seed=1)
    by_split = _species_by_split(species, splits)
    assert len(by_split["train_seen"]) == 40  # 80 % of the 50 common species are seen
    assert (splits == "train_seen").sum() == 40 * 14  # 0.7 of 20 records
    assert all((splits[np.array(species) == name] == "val_seen").sum() == 2 for name in by_split["train_seen"])
    tail = {name for name in by_split.get("val_unseen", set()) | by_split.get("test_unseen", set()) if "tail" in name}
    assert len(tail) == 10
    assert not np.array_equal(splits, clibd_partition(species, seed=2))


def test_partition_report_beside_paper():
    species = ["a"] * 12 + ["b"]
    report = partition_report(clibd_partition(species), species)
    assert report.loc["all", "records"] == 13 and report.loc["all", "paper_records"] == 1_088_135
    assert report.loc["train_seen", "paper_records"] == 36_279 and report.loc["train_seen", "paper_species"] == 916
    assert report.loc["test_unseen_keys", "paper_records"] == 7_123
    assert (
        report.loc["all_keys", "records"]
        == report.loc[["seen_keys", "val_unseen_keys", "test_unseen_keys"], "records"].sum()
    )


def test_official_lists(tmp_path):
    (tmp_path / "train_seen.txt").write_text("A\nB\n")
    (tmp_path / "seen_keys.txt").write_text("C\n")
    splits = read_official_partition(tmp_path, pd.Series(["A", "C", "Z"]))
    assert splits.tolist() == ["train_seen", "seen_keys", ""]
    (tmp_path / "val_seen.txt").write_text("B\n")
    with pytest.raises(DataIntegrityError, match="'B' is listed in both train_seen.txt and val_seen.txt"):
        read_official_partition(tmp_path, pd.Series(["A"]))
    with pytest.raises(DataIntegrityError, match="no CLIBD split list"):
        read_official_partition(tmp_path / "empty", pd.Series(["A"]))


def test_bad_ratios_rejected():
    with pytest.raises(ValueError, match="seen_ratios"):
        clibd_partition(["a"], seen_ratios=(0.5, 0.5, 0.5, 0.5))


def test_docstring_examples_run():
    import doctest

    from dataset_scripts import bold, integrity, partition, schema, tables

    for module in (partition, schema, tables, integrity, bold):
        assert doctest.testmod(module).failed == 0, module.__name__
