"""The DNA k-mer tokenizer: exact reference ids (case and gaps kept as the original keeps them), the default mode's
cleaning, clear errors in both modes, the vectorised batch path against the per-barcode one, save/load."""

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
    """An independent transcription of the original CLIBD pipeline (CLIBD_REFERENCE.md §1.2,
    ``[0, *vocab(KmerTokenizer(5, stride=5)(PadSequence(660)(x)))]``), one k-mer at a time, on the string as given:
    no upper-casing, no gap removal; a k-mer not in the vocabulary is ``<UNK>``."""
    specials = ["<MASK>", "<CLS>", "<UNK>"]
    vocab = {token: i for i, token in enumerate(specials + ["".join(p) for p in itertools.product("ACGT", repeat=5)])}
    padded = barcode[:660] if len(barcode) > 660 else barcode + "N" * (660 - len(barcode))
    kmers = [padded[i : i + 5] for i in range(0, len(padded) - 5 + 1, 5)]
    return [0] + [vocab.get(kmer, vocab["<UNK>"]) for kmer in kmers]


def cleaned(barcode: str) -> str:
    """The default mode's cleaning, written out: upper case, U->T, gaps removed."""
    return barcode.upper().replace("U", "T").replace("-", "").replace(".", "")


def default_ids(barcode: str) -> list[int]:
    """The default mode's ids: the original scheme on the cleaned barcode, with the ``<CLS>`` prefix (id 1)."""
    return [1] + original_pipeline_ids(cleaned(barcode))[1:]


@pytest.fixture(scope="module")
def reference() -> BioscanDnaTokenizer:
    return BioscanDnaTokenizer(reference_mode=True)


def read_real_records(realdata) -> dict[str, str]:
    with open(realdata / "coi_fulltax_sample.tsv", newline="") as handle:
        return {row["processid"]: row["nuc"] for row in csv.DictReader(handle, delimiter="\t")}


def read_real_barcodes(realdata) -> list[str]:
    return list(read_real_records(realdata).values())


def test_vocabulary_order(reference):
    vocab = reference.get_vocab()
    assert len(vocab) == 1027
    assert [vocab["<MASK>"], vocab["<CLS>"], vocab["<UNK>"]] == [0, 1, 2]
    assert vocab["AAAAA"] == 3 and vocab["AAAAC"] == 4 and vocab["TTTTT"] == 1026


def test_reference_ids_on_real_barcodes(reference, realdata):
    # Reference mode is the original on the barcode as stored (case and gaps kept); until issue 12 it cleaned first.
    barcodes = read_real_barcodes(realdata)
    assert len(barcodes) > 400
    ids = reference(barcodes, return_tensors="np")["input_ids"]
    assert ids.shape == (len(barcodes), 133)
    lowercase = gapped = 0
    for row, raw in zip(ids, barcodes, strict=True):
        lowercase += raw != raw.upper()
        gapped += "-" in raw
        assert row.tolist() == original_pipeline_ids(raw)
    assert lowercase > 0 and gapped > 0, "the sample must exercise lower-case and gapped barcodes"


def test_default_mode_ids_on_real_barcodes(realdata):
    barcodes = read_real_barcodes(realdata)
    ids = BioscanDnaTokenizer()(barcodes, return_tensors="np")["input_ids"]
    assert [row.tolist() for row in ids] == [default_ids(raw) for raw in barcodes]


@pytest.mark.parametrize(("processid", "kind"), [("ACISO047-16", "lower case"), ("GMNWG006-14", "gaps")])
def test_reference_mode_keeps_case_and_gaps_like_the_original(reference, realdata, processid, kind):
    raw = read_real_records(realdata)[processid]
    assert (raw != raw.upper()) if kind == "lower case" else ("-" in raw[:660] and raw == raw.upper())
    ids = reference(raw)["input_ids"]
    assert ids == original_pipeline_ids(raw) == reference.encode(raw)
    # The cleaning would change them: a lower-case or gapped k-mer is <UNK> in place, and a gap takes a position.
    differing = sum(a != b for a, b in zip(ids, original_pipeline_ids(cleaned(raw)), strict=True))
    assert differing > (100 if kind == "lower case" else 10), differing
    if kind == "lower case":
        assert set(ids[1:]) == {2}
    else:  # the k-mers before the first gap are the same; the frame is not shifted by a gap
        first_gap = raw.index("-") // 5
        assert ids[1 : 1 + first_gap] == original_pipeline_ids(cleaned(raw))[1 : 1 + first_gap]
        assert ids[1 + first_gap] == 2
    # The default mode cleans first, as before.
    assert BioscanDnaTokenizer()(raw)["input_ids"] == default_ids(raw)


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
def test_normalisation_is_invisible_in_default_mode(variant):
    clean = "ACGTACGTAACCGGTT"
    tokenizer = BioscanDnaTokenizer()
    assert tokenizer(variant)["input_ids"] == tokenizer(clean)["input_ids"]
    assert tokenizer([variant] * 3)["input_ids"] == [tokenizer.encode(variant)] * 3


@pytest.mark.parametrize(
    ("variant", "invisible"),
    [
        ("ACGT ACGT\nAACC\r\nGGTT", True),  # text layout, not sequence: removed in both modes
        (">seq 1\nACGTACGTAA\nCCGGTT\n", True),
        ("acgtacgtaaccggtt", False),
        ("ACGUACGUAACCGGUU", False),
        ("ACGT-ACGTAA..CCGGTT", False),
    ],
)
def test_reference_mode_keeps_case_u_and_gaps(reference, variant, invisible):
    clean = "ACGTACGTAACCGGTT"
    ids = reference(variant)["input_ids"]
    assert (ids == reference(clean)["input_ids"]) is invisible
    assert ids == original_pipeline_ids("".join(variant.split()) if invisible else variant)[: len(ids)] or invisible
    assert reference([variant, clean])["input_ids"] == [reference.encode(variant), reference.encode(clean)]


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
@pytest.mark.parametrize("reference_mode", [False, True])
def test_bad_barcodes_raise_clear_errors(reference_mode, barcode, message):
    # The same checks and messages in both modes, alone and in a batch (the vectorised path).
    tokenizer = BioscanDnaTokenizer(reference_mode=reference_mode)
    with pytest.raises(BioscanInputError, match=message):
        tokenizer(barcode)
    with pytest.raises(BioscanInputError, match="barcode 1: .*" + message):
        tokenizer(["ACGT", barcode, "ACGT"])


@pytest.mark.parametrize("reference_mode", [False, True])
def test_refused_barcodes_are_named_and_dropped_anywhere_in_a_large_batch(reference_mode):
    tokenizer = BioscanDnaTokenizer(reference_mode=reference_mode)
    good = ["ACGTTGCA" * 80, "acgt-ACGT", "ACGTNNRY" * 10]
    bad = {
        1500: "ACGT\x00ACGT",
        2100: "ACGTé",
        2101: 42,
        3000: "----",
        3001: "-- .-",
        4500: "ACGTX",
    }
    barcodes = [bad.get(index, good[index % 3]) for index in range(5000)]
    encoded = tokenizer.encode_batch(barcodes, on_error="drop")
    assert sorted(encoded.errors) == sorted(bad)
    assert "barcode 1500: invalid character '\\x00'" in encoded.errors[1500]
    assert "barcode 2101: expected a string" in encoded.errors[2101]
    assert "barcode 3000: no nucleotides" in encoded.errors[3000]
    assert "barcode 4500: invalid character 'X' at position 4" in encoded.errors[4500]
    assert encoded.kept.tolist() == [index for index in range(5000) if index not in bad]
    expected = [tokenizer.encode(barcodes[index]) for index in encoded.kept]
    assert encoded.input_ids.tolist() == expected
    with pytest.raises(BioscanInputError, match="barcode 1500: invalid character"):
        tokenizer(barcodes)


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
    assert ids.tolist() == original_pipeline_ids(sequence)
    real = min(len(sequence), 660)
    assert encoded["attention_mask"][0].sum() == 1 + -(-real // 5)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(alphabet="ACGTNRacgtnu-.", min_size=1, max_size=1400), min_size=1, max_size=6))
def test_property_batch_path_equals_the_written_out_schemes(sequences):
    reference = BioscanDnaTokenizer(reference_mode=True)
    clean = BioscanDnaTokenizer()
    encodable = [s for s in sequences if cleaned(s)]  # only gaps is refused
    if not encodable:
        return
    assert reference(encodable)["input_ids"] == [original_pipeline_ids(s) for s in encodable]
    assert clean(encodable)["input_ids"] == [default_ids(s) for s in encodable]
    quality = reference(encodable, return_tensors="np", return_quality=True)
    assert quality["truncated_bases"].tolist() == [max(0, len(s) - 660) for s in encodable]
    assert quality["ambiguous_bases"].tolist() == [sum(c in "NRnr" for c in s[:660]) for s in encodable]
    assert quality["attention_mask"].sum(axis=1).tolist() == [1 + -(-min(len(s), 660) // 5) for s in encodable]


@pytest.mark.parametrize("reference_mode", [False, True])
def test_batch_path_equals_slow_path(reference_mode):
    tokenizer = BioscanDnaTokenizer(reference_mode=reference_mode)
    barcodes = ["ACGTAGGCTTAN" * 20, "GGGCCCAATTT", "T" * 661, "acgt-ACGTU" * 70, ">r\nACGT\nacgt\n", "A C\tG"]
    fast = tokenizer(barcodes)["input_ids"]
    slow = [tokenizer.encode(barcode) for barcode in barcodes]
    assert fast == slow
    normalized = tokenizer.encode_normalized(tokenizer.normalize(barcodes))[0]
    np.testing.assert_array_equal(normalized, tokenizer(barcodes, return_tensors="np")["input_ids"])


def test_public_outputs_are_int64():
    tokenizer = BioscanDnaTokenizer()
    for tensors in ("np", "pt"):
        encoded = tokenizer(["ACGT" * 200, "ACG"], return_tensors=tensors)
        assert str(encoded["input_ids"].dtype).endswith("int64") and str(encoded["attention_mask"].dtype).endswith(
            "int64"
        )
    batch = tokenizer.encode_batch(["ACGT"])
    assert batch.input_ids.dtype == batch.attention_mask.dtype == batch.ambiguous_bases.dtype == np.int64


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
