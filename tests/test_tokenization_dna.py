"""The DNA k-mer tokenizer: exact reference ids, normalisation, clear errors, save/load."""

from __future__ import annotations

import csv
import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from modeling_bioscanclip import BioscanDnaTokenizer, BioscanInputError, normalize_barcode


def original_pipeline_ids(barcode: str) -> list[int]:
    """An independent transcription of the original CLIBD pipeline (CLIBD_REFERENCE.md §1.2), one k-mer at a time."""
    specials = ["<MASK>", "<CLS>", "<UNK>"]
    vocab = {token: i for i, token in enumerate(specials + ["".join(p) for p in itertools.product("ACGT", repeat=5)])}
    padded = barcode[:660] + "N" * max(0, 660 - len(barcode))
    kmers = [padded[i : i + 5] for i in range(0, 660, 5)]
    return [0] + [vocab.get(kmer, vocab["<UNK>"]) for kmer in kmers]


@pytest.fixture(scope="module")
def reference() -> BioscanDnaTokenizer:
    return BioscanDnaTokenizer(reference_mode=True)


def read_real_barcodes(realdata) -> list[str]:
    with open(realdata / "coi_fulltax_sample.tsv", newline="") as handle:
        return [row["nuc"] for row in csv.DictReader(handle, delimiter="\t")]


def test_vocabulary_order(reference):
    vocab = reference.get_vocab()
    assert len(vocab) == 1027
    assert [vocab["<MASK>"], vocab["<CLS>"], vocab["<UNK>"]] == [0, 1, 2]
    assert vocab["AAAAA"] == 3 and vocab["AAAAC"] == 4 and vocab["TTTTT"] == 1026


def test_reference_ids_on_real_barcodes(reference, realdata):
    barcodes = read_real_barcodes(realdata)
    assert len(barcodes) > 400
    ids = reference(barcodes, return_tensors="np")["input_ids"]
    assert ids.shape == (len(barcodes), 133)
    lowercase = gapped = 0
    for row, raw in zip(ids, barcodes, strict=True):
        clean = raw.upper().replace("-", "").replace(".", "")
        lowercase += raw != raw.upper()
        gapped += "-" in raw
        # Clean sequences match the original byte for byte; others match it after the documented normalisation.
        assert row.tolist() == original_pipeline_ids(clean)
    assert lowercase > 0 and gapped > 0, "the sample must exercise lower-case and gapped barcodes"


def test_clean_mode_prefix_and_mask():
    tokenizer = BioscanDnaTokenizer()
    encoded = tokenizer(["ACGTACGTAC", "A" * 700], return_tensors="np", return_quality=True)
    assert encoded["input_ids"][0, 0] == 1  # <CLS>
    assert encoded["attention_mask"][0].tolist() == [1, 1, 1] + [0] * 130
    assert encoded["attention_mask"][1].sum() == 133
    assert encoded["truncated_bases"].tolist() == [0, 40]


@pytest.mark.parametrize(
    "variant",
    [
        "acgtacgtaaccggtt",
        "ACGUACGUAACCGGUU",
        "ACGT ACGT\nAACC\r\nGGTT",
        ">seq 1\nACGTACGTAA\nCCGGTT\n",
        "ACGT-ACGTAA..CCGGTT",
    ],
)
def test_normalisation_is_invisible(reference, variant):
    clean = "ACGTACGTAACCGGTT"
    assert reference(variant)["input_ids"] == reference(clean)["input_ids"]


def test_ambiguity_codes_become_unknown_without_frame_shift(reference):
    ids = reference("ACGTANCGTAACGTA")["input_ids"]
    assert ids[1:4] == [reference.vocab["ACGTA"], 2, reference.vocab["ACGTA"]]
    assert normalize_barcode("ACGTRYN").ambiguous_bases == 3


@pytest.mark.parametrize(
    ("barcode", "message"),
    [
        ("ACGTX", r"invalid character 'X' at position 4"),
        ("ACGT*", r"invalid character '\*'"),
        ("MKVLEQ", "invalid character 'L' at position 3"),
        ("ACGT123", "invalid character '1'"),
        ("", "no nucleotides"),
        ("   \n", "no nucleotides"),
        (">only a header\n", "no nucleotides"),
        (">a\nACGT\n>b\nACGT\n", "one FASTA record, got 2"),
        ("A" * 30_000, "over the limit"),
    ],
)
def test_bad_barcodes_raise_clear_errors(reference, barcode, message):
    with pytest.raises(BioscanInputError, match=message):
        reference(barcode)


def test_error_names_the_record_in_a_batch(reference):
    with pytest.raises(BioscanInputError, match="barcode 2"):
        reference(["ACGT", "ACGT", "ACGZ"])
    with pytest.raises(BioscanInputError, match="expected a string"):
        reference([b"ACGT"])


def test_names_replace_the_index_in_errors(reference):
    with pytest.raises(BioscanInputError, match=r"record BIOUG123-45 \(barcode\): invalid character 'Z' at position 3"):
        reference(["ACGT", "ACGZ"], names=["BIOUG000-01", "BIOUG123-45"])
    with pytest.raises(BioscanInputError, match=r"record P1 \(barcode\): no nucleotides"):
        reference.normalize([""], names=["P1"])
    with pytest.raises(BioscanInputError, match=r"record single \(barcode\)"):
        reference("ACGTX", names="single")
    with pytest.raises(BioscanInputError, match="one name per barcode"):
        reference(["ACGT", "ACGT"], names=["P1"])
    # Names change nothing else.
    assert reference(["ACGT", "GGCC"], names=["a", "b"])["input_ids"] == reference(["ACGT", "GGCC"])["input_ids"]


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet="ACGTNacgtn", min_size=1, max_size=2000))
def test_property_any_nucleotide_string_gives_133_valid_ids(sequence):
    tokenizer = BioscanDnaTokenizer(reference_mode=True)
    encoded = tokenizer([sequence], return_tensors="np")
    ids = encoded["input_ids"][0]
    assert ids.shape == (133,)
    assert ids.min() >= 0 and ids.max() <= 1026
    assert ids.tolist() == original_pipeline_ids(sequence.upper())
    real = min(len(sequence), 660)
    assert encoded["attention_mask"][0].sum() == 1 + -(-real // 5)


def test_batch_path_equals_slow_path(reference):
    barcodes = ["ACGTAGGCTTAN" * 20, "GGGCCCAATTT", "T" * 661]
    fast = reference(barcodes)["input_ids"]
    slow = [reference.encode(barcode) for barcode in barcodes]
    assert fast == slow


def test_save_load_round_trip(tmp_path, reference):
    reference.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path, trust_remote_code=True)
    assert type(loaded).__name__ == "BioscanDnaTokenizer"
    assert loaded.reference_mode and loaded.prefix_token == "<MASK>" and loaded.get_vocab() == reference.get_vocab()
    barcodes = ["ACGTTGCA" * 90, "ACGT"]
    np.testing.assert_array_equal(
        loaded(barcodes, return_tensors="np")["input_ids"], reference(barcodes, return_tensors="np")["input_ids"]
    )


def test_invalid_tokenizer_settings():
    with pytest.raises(ValueError, match="stride"):
        BioscanDnaTokenizer(kmer_size=5, stride=6)
    with pytest.raises(ValueError, match="prefix_token"):
        BioscanDnaTokenizer(prefix_token="<BOS>")
