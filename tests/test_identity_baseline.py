"""Tests for the alignment-identity DNA -> DNA baseline (edlib)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bioscan_clip.baselines.identity import IDENTITY_THRESHOLDS, alignment_identity, identity_nearest
from modeling_bioscanclip.constants_bioscanclip import TAXONOMIC_RANKS
from modeling_bioscanclip.errors_bioscanclip import BioscanInputError

REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata"
BOLD_V3 = REALDATA / "matteodegobbi__InsectClassification" / "insect_species_bold_v3_coi_subset.tsv"


def _random_barcode(rng: np.random.Generator, n: int) -> str:
    return "".join(rng.choice(list("ACGT"), size=n))


def _mutate(rng: np.random.Generator, barcode: str, substitutions: int) -> str:
    letters = list(barcode)
    for position in rng.choice(len(letters), size=substitutions, replace=False):
        letters[position] = {"A": "C", "C": "G", "G": "T", "T": "A"}[letters[position]]
    return "".join(letters)


def test_identity_counts_substitutions_and_ignores_start_position():
    rng = np.random.default_rng(0)
    reference = _random_barcode(rng, 650)
    assert alignment_identity(reference, reference) == (1.0, 650)
    # 13 substitutions over 650 columns: 98 % identity.
    assert alignment_identity(_mutate(rng, reference, 13), reference) == pytest.approx((0.98, 650))
    # A barcode read from another start position (off-frame, shorter at both ends) is the same sequence.
    assert alignment_identity(reference[37:600], reference) == (1.0, 563)
    # Partial overlap: each overhangs the other by 40 bases; about the 570 shared columns count (edit-distance ties
    # may place a few overhang bases inside), not the 610 of a global alignment.
    identity, overlap = alignment_identity(reference[:610], reference[40:])
    assert identity > 0.99 and abs(overlap - 570) <= 20
    # An N matches any base; a lower-case, gapped barcode is cleaned first by the caller.
    assert alignment_identity(reference[:300] + "N" + reference[301:], reference)[0] == 1.0
    # An unrelated barcode is far below every threshold; a too-short overlap says nothing.
    assert alignment_identity(_random_barcode(rng, 650), reference)[0] < 0.8
    assert alignment_identity(reference[:60], reference) == (0.0, 60)


def test_nearest_names_the_most_identical_key_and_thresholds_make_the_calls():
    rng = np.random.default_rng(1)
    ancestors = [_random_barcode(rng, 600) for _ in range(3)]
    keys = [_mutate(rng, ancestors[i], 3) for i in range(3)] + [_mutate(rng, ancestors[i], 40) for i in range(3)]
    labels = {
        "processid": [f"K{i}" for i in range(6)],
        "order": ["O"] * 6,
        "family": ["F"] * 6,
        "genus": [f"G{i % 3}" for i in range(6)],
        "species": [f"S{i}" for i in range(6)],
    }
    queries = [ancestors[0][20:], _mutate(rng, ancestors[1], 24)]  # 1: ~4 % from key 1, far from the others
    found = identity_nearest(queries, keys, labels, candidates=6)
    assert found.rows.tolist() == [0, 1]
    assert found.labels["species"] == ["S0", "S1"]
    assert found.identity[0] > 0.99 and 0.93 < found.identity[1] < 0.97
    assert found.confident["species"].tolist() == [True, False]
    assert found.confident["family"].tolist() == [True, True]
    assert set(IDENTITY_THRESHOLDS) == set(TAXONOMIC_RANKS)
    with pytest.raises(BioscanInputError, match=r"queries\[1\]"):
        identity_nearest(["ACGT" * 40, "ACGZ"], keys, labels)


@pytest.mark.skipif(not BOLD_V3.exists(), reason=f"real BOLD data not present: {BOLD_V3}")
def test_on_real_barcodes_identity_beats_chance_and_flags_novel_species():
    import pandas as pd

    frame = pd.read_csv(BOLD_V3, sep="\t", usecols=["species_name", "genus_name", "nucleotides"], nrows=3000)
    frame = frame.dropna().reset_index(drop=True)
    species = sorted(frame["species_name"].unique())
    novel = set(species[::5])  # every fifth species has no key
    is_novel = frame["species_name"].isin(novel).to_numpy()
    rows = np.arange(len(frame))
    query_rows = np.concatenate([rows[~is_novel][::4], rows[is_novel][::4]])
    key_rows = np.setdiff1d(rows[~is_novel], query_rows)
    keys = frame.iloc[key_rows]
    labels = {"processid": [str(i) for i in key_rows], "order": ["x"] * len(keys), "family": ["x"] * len(keys),
              "genus": keys["genus_name"].tolist(), "species": keys["species_name"].tolist()}  # fmt: skip
    queries = frame.iloc[query_rows]
    found = identity_nearest(queries["nucleotides"].tolist(), keys["nucleotides"].tolist(), labels)
    novel_query = queries["species_name"].isin(novel).to_numpy()
    right = np.array(found.labels["species"]) == queries["species_name"].to_numpy()
    assert right[~novel_query].mean() > 0.9  # the field's method works on real barcodes
    # The 98 % rule: most novel-species queries are not called, most seen ones are.
    assert (~found.confident["species"][novel_query]).mean() > 0.8
    assert found.confident["species"][~novel_query].mean() > 0.8
