"""Tests for the k-mer profile DNA -> DNA nearest-neighbour baseline."""

from __future__ import annotations

import csv
import itertools
from pathlib import Path

import numpy as np
import pytest

from bioscan_clip.baselines.kmer import build_kmer_key_index, kmer_feature_names, kmer_profile
from modeling_bioscanclip.constants_bioscanclip import TAXONOMIC_RANKS, kmer_vocabulary
from modeling_bioscanclip.errors_bioscanclip import BioscanInputError
from modeling_bioscanclip.tokenization_dna import normalize_barcode

REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata"
COI_SAMPLE = REALDATA / "coi_fulltax_sample.tsv"


def _naive_counts(barcode: str, k: int) -> np.ndarray:
    """Reference: slide a window over the normalised barcode and count ACGT-only k-mers one by one."""
    column = {kmer: j for j, kmer in enumerate(kmer_feature_names(k))}
    counts = np.zeros(4**k)
    for start in range(len(barcode) - k + 1):
        window = barcode[start : start + k]
        if window in column:
            counts[column[window]] += 1
    return counts


def test_barcodes_are_cleaned_as_the_tokenizer_cleans_them():
    clean = kmer_profile(["ACGTACGTAACCGGTT"], k=4)
    for variant in (" acgu-acgt\tAACC..GGUU\n", ">seq1\nACGTACGTAACCGGTT\n"):
        np.testing.assert_array_equal(kmer_profile([variant], k=4), clean)
    for bad, message in (
        ("ACG1TACGT", "invalid character '1'"),
        ("ACGTXACGT", "invalid character 'X'"),
        ("", "no nucleotides"),
    ):
        with pytest.raises(BioscanInputError, match=message):
            kmer_profile(["ACGTACGTAC", bad])
    with pytest.raises(BioscanInputError, match=r"barcodes\[1\]"):
        kmer_profile(["ACGTACGTAC", "ACGZ"])


def test_columns_follow_the_tokenizer_vocabulary_order():
    vocabulary = kmer_vocabulary(5)
    names = kmer_feature_names(5)
    assert len(names) == 1024
    assert [vocabulary[name] for name in names] == sorted(vocabulary[name] for name in names)


def test_profile_equals_naive_counting_on_tricky_barcodes():
    barcodes = [
        "ACGTACGTAC",
        "acgtNacgtacg",  # lower case; the N breaks windows instead of being skipped over
        "AC-GT.AC GT\nAC",  # gaps and whitespace removed before windowing
        "AAAAAA",
        "ACGUACGU",  # RNA
        "TTTTT",  # exactly one k-mer
        "GGGGGRGGGGG",  # ambiguity code in the middle
    ]
    for k in (1, 3, 5):
        counts = kmer_profile(barcodes, k=k, norm="none")
        for row, barcode in enumerate(barcodes):
            np.testing.assert_array_equal(
                counts[row], _naive_counts(normalize_barcode(barcode).sequence, k), err_msg=barcode
            )
    # Windows never cross from one barcode into the next.
    assert kmer_profile(["AAAAA", "CCCCC"], norm="none").sum(axis=1).tolist() == [1.0, 1.0]


def test_profile_matches_naive_on_random_barcodes_with_noise():
    rng = np.random.default_rng(0)
    alphabet = list("ACGTACGTACGTN-acgt")
    barcodes = ["".join(rng.choice(alphabet, size=rng.integers(6, 120))) for _ in range(60)]
    barcodes = [b if len(normalize_barcode(b).sequence.replace("N", "")) > 8 else "ACGTACGTAC" for b in barcodes]
    counts = kmer_profile(barcodes, k=4, norm="none")
    expected = np.stack([_naive_counts(normalize_barcode(b).sequence, 4) for b in barcodes])
    np.testing.assert_array_equal(counts, expected)


def test_norms():
    barcodes = ["ACGTACGTAAC", "TTTTTTTT"]
    l2 = kmer_profile(barcodes, norm="l2")
    l1 = kmer_profile(barcodes, norm="l1")
    counts = kmer_profile(barcodes, norm="none")
    assert l2.dtype == np.float32 and l2.shape == (2, 1024)
    np.testing.assert_allclose(np.linalg.norm(l2, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(l1.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(l1, counts / counts.sum(axis=1, keepdims=True), rtol=1e-6)
    assert counts[1, kmer_feature_names(5).index("TTTTT")] == 4


def test_chunking_gives_the_same_profiles(monkeypatch):
    barcodes = ["".join(p) * 3 for p in itertools.product("ACGT", repeat=3)]  # 64 barcodes
    whole = kmer_profile(barcodes)
    monkeypatch.setattr("bioscan_clip.baselines.kmer.PROFILE_CHUNK_SIZE", 5)
    np.testing.assert_array_equal(kmer_profile(barcodes), whole)


@pytest.mark.parametrize(
    ("barcodes", "kwargs", "message"),
    [
        ([], {}, "barcodes is empty"),
        ("ACGTACGT", {}, "got a single str"),
        (["ACGTACGT", "ACGNNNNACG"], {}, r"barcodes\[1\] has no valid 5-mer"),
        (["ACGTACGT", "AC"], {}, r"barcodes\[1\] has no valid 5-mer"),
        (["ACGTACGT", None], {}, r"barcodes\[1\]: expected a string of nucleotides, got NoneType"),
        (["ACGTACGT", "ACGT*ACGT"], {}, r"barcodes\[1\]: invalid character '\*' at position 4"),
        (["ACGTACGT"], {"k": 0}, r"k must be an int in \[1, 8\]"),
        (["ACGTACGT"], {"k": 9}, r"k must be an int in \[1, 8\]"),
        (["ACGTACGT"], {"norm": "max"}, "norm must be"),
    ],
)
def test_errors(barcodes, kwargs, message):
    with pytest.raises(BioscanInputError, match=message):
        kmer_profile(barcodes, **kwargs)


@pytest.fixture(scope="module")
def coi_sample():
    if not COI_SAMPLE.is_file():
        pytest.skip(f"real COI sample not found at {COI_SAMPLE}")
    with COI_SAMPLE.open(newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    assert len(rows) == 412
    return rows


# Measured: leave-one-out 1-NN accuracy on the 412 real barcodes with 5-mer profiles (cosine):
# order 0.971, family 0.934, genus 0.835, species 0.692 (105 of the 235 species have a single record, so species
# LOO cannot exceed ~0.75).
GENUS_FLOOR = 0.8


def test_leave_one_out_genus_accuracy_on_real_barcodes(coi_sample):
    profiles = kmer_profile([row["nuc"] for row in coi_sample])
    metadata = {"processid": [row["processid"] for row in coi_sample]}
    metadata.update({rank: [row[rank] for row in coi_sample] for rank in TAXONOMIC_RANKS})
    index = build_kmer_key_index([row["nuc"] for row in coi_sample], metadata)
    assert index.manifest["embedding_name"] == "kmer5_profile" and index.manifest["modality"] == "dna"
    result = index.search_labels(profiles, k=2, columns=["processid", *TAXONOMIC_RANKS])
    # Leave one out: drop the query itself (its own profile is its nearest key, similarity 1).
    accuracy = {}
    for rank in TAXONOMIC_RANKS:
        hits = []
        for query, row in enumerate(coi_sample):
            ids, labels = result.labels["processid"][query], result.labels[rank][query]
            neighbour = 1 if ids[0] == row["processid"] else 0
            hits.append(labels[neighbour] == row[rank])
        accuracy[rank] = float(np.mean(hits))
    print(f"leave-one-out 1-NN accuracy, 5-mer profiles: {accuracy}")
    assert accuracy["genus"] > GENUS_FLOOR
    assert accuracy["order"] > accuracy["genus"] > accuracy["species"]
    # The baseline must beat chance by far: the most common genus covers a small share of the sample.
    most_common_share = max(np.unique([row["genus"] for row in coi_sample], return_counts=True)[1]) / len(coi_sample)
    assert accuracy["genus"] > 3 * most_common_share


def test_docstring_examples_run():
    import doctest

    import bioscan_clip.baselines.kmer

    results = doctest.testmod(bioscan_clip.baselines.kmer)
    assert results.failed == 0 and results.attempted >= 4


def test_seen_unseen_evaluation_end_to_end_on_real_barcodes(coi_sample):
    """KeyIndex.search_labels feeds compute_taxonomic_accuracy directly (column-oriented), on a real split."""
    import importlib.util

    metric_file = Path(__file__).resolve().parents[1] / "metrics" / "taxonomic_retrieval" / "taxonomic_retrieval.py"
    spec = importlib.util.spec_from_file_location("taxonomic_retrieval_e2e", metric_file)
    metric_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(metric_module)

    by_species: dict[str, list[dict]] = {}
    for row in coi_sample:
        by_species.setdefault(row["species"], []).append(row)
    species_names = sorted(by_species)
    unseen_species = set(species_names[::4])  # every 4th species is held out of the keys entirely
    keys, queries, is_unseen = [], [], []
    for name in species_names:
        records = by_species[name]
        if name in unseen_species:
            queries += records
            is_unseen += [True] * len(records)
        elif len(records) >= 2:
            queries.append(records[0])
            is_unseen.append(False)
            keys += records[1:]
        else:
            keys += records
    metadata = {"processid": [row["processid"] for row in keys]}
    metadata.update({rank: [row[rank] for row in keys] for rank in TAXONOMIC_RANKS})
    index = build_kmer_key_index([row["nuc"] for row in keys], metadata)
    retrieved = index.search_labels(kmer_profile([row["nuc"] for row in queries]), k=5)
    references = {rank: [row[rank] for row in queries] for rank in TAXONOMIC_RANKS}
    result = metric_module.compute_taxonomic_accuracy(retrieved.labels, references, is_unseen)
    print({key: round(value, 3) for key, value in result.items() if "top1" in key and value is not None})
    # An unseen species is absent from the keys, so it can never be retrieved: exactly 0, and so is the HM.
    assert result["unseen/species/micro/top5"] == 0.0 and result["hm/species/micro/top1"] == 0.0
    assert result["seen/species/micro/top1"] > 0.5
    assert result["unseen/genus/micro/top1"] > 0.3  # measured 0.443; seen species 0.927, unseen order 0.918
    assert result["seen/order/micro/top1"] > 0.9
    assert result["seen/species/n_queries"] + result["unseen/species/n_queries"] == len(queries)
