"""Confidence calibration that sees absent answers: held-out labels, leave-one-out without validation queries,
the report (precision and coverage of confident calls, novel-species AUROC), the reliability diagram, and the same
quantities for the alignment-identity baseline."""

from __future__ import annotations

import csv
import doctest
import itertools
import json
import random

import datasets
import numpy as np
import pytest

from bioscan_clip.apps.cli import main
from bioscan_clip.data.spec import load_splits, role_records
from bioscan_clip.identification import calibration as calibration_module
from bioscan_clip.identification.barcode_search import ALIGNMENT_PAIR
from bioscan_clip.identification.build import build_key_folder
from bioscan_clip.identification.calibration import (
    METHOD_HELD_OUT,
    METHOD_NONE,
    METHOD_PRESENT_ONLY,
    calibrate_pair,
    calibrate_thresholds,
    embedding_confidence_report,
    identity_confidence_report,
    isotonic_accuracy,
    novelty_auroc,
)
from bioscan_clip.identification.identifier import Identifier
from bioscan_clip.identification.key_folder import CALIBRATION_PLOT, verify_key_folder
from modeling_bioscanclip import BioscanClipModel, BioscanClipProcessor
from modeling_bioscanclip.constants_bioscanclip import TAXONOMIC_RANKS

ODONATA = "AGIRI300-17"  # a real Odonata barcode; mini-BIOSCAN's invented library has no such order


def test_docstring_examples_run():
    result = doctest.testmod(calibration_module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 6 and result.failed == 0


# ---- the maths -------------------------------------------------------------------------------------------------------
def test_novelty_auroc_against_a_hand_computed_case_and_brute_force():
    # Known 0.9, 0.7, 0.6 against novel 0.6, 0.4: 5 of 6 pairs ordered, one tie (one half) -> 5.5 / 6.
    assert novelty_auroc([0.9, 0.7, 0.6, 0.4, 0.6], [False, False, True, True, False]) == pytest.approx(5.5 / 6)
    assert novelty_auroc([0.1, 0.2], [True, True]) is None
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 6, 40) / 5  # many ties
    novel = rng.random(40) < 0.3
    pairs = [
        1.0 if k > n else 0.5 if k == n else 0.0 for k, n in itertools.product(scores[~novel], scores[novel])
    ]  # fmt: skip
    assert novelty_auroc(scores, novel) == pytest.approx(np.mean(pairs))


def test_isotonic_threshold_makes_every_confident_call_meet_the_target():
    rng = np.random.default_rng(0)
    scores = rng.random(400)
    hits = rng.random(400) < scores  # right with probability = score
    distinct, fitted = isotonic_accuracy(scores, hits)
    assert np.all(np.diff(fitted) >= 0) and len(distinct) == 400
    [threshold] = calibrate_thresholds(scores, {"species": hits}, 0.9).values()
    assert 0.75 < threshold < 1.0  # the true curve crosses 0.9 at 0.9; an average rule would stop far lower
    assert hits[scores >= threshold].mean() >= 0.9
    # A query without a label at that rank is left out, not counted as wrong.
    with_missing = np.array([True, True, None, True], dtype=object)
    assert calibrate_thresholds(np.array([0.9, 0.8, 0.7, 0.6]), {"genus": with_missing}, 0.9) == {"genus": 0.6}


def hierarchy(seed: int = 0, noise: float = 0.6, dim: int = 32):
    """Unit vectors with a taxonomy: 3 orders x 3 families x 3 genera x 3 species, 1 to 4 specimens each; a
    specimen is the sum of its order, family, genus and species directions plus noise."""
    rng = np.random.default_rng(seed)
    vectors, labels = [], {"processid": [], **{rank: [] for rank in TAXONOMIC_RANKS}}
    for o, f, g, s in itertools.product(range(3), repeat=4):
        if f == g == s == 0:
            order_v = rng.normal(size=dim)
        if g == s == 0:
            family_v = rng.normal(size=dim)
        if s == 0:
            genus_v = rng.normal(size=dim)
        species_v = rng.normal(size=dim)
        for _ in range(int(rng.integers(1, 5))):
            v = 1.6 * order_v + 1.3 * family_v + 1.1 * genus_v + species_v + noise * rng.normal(size=dim)
            vectors.append(v / np.linalg.norm(v))
            names = (f"O{o}", f"O{o}F{f}", f"O{o}F{f}G{g}", f"O{o}F{f}G{g}S{s}")
            for rank, name in zip(TAXONOMIC_RANKS, names, strict=True):
                labels[rank].append(name)
            labels["processid"].append(f"K{len(vectors)}")
    return np.array(vectors, dtype=np.float32), labels


def subset(labels, rows):
    return {column: [values[r] for r in rows] for column, values in labels.items()}


def test_held_out_labels_give_thresholds_that_differ_by_rank_and_flag_a_novel_species():
    vectors, labels = hierarchy()
    novel_species = "O1F2G1S0"
    novel = [r for r, s in enumerate(labels["species"]) if s == novel_species]
    kept = [r for r in range(len(vectors)) if r not in novel]
    keys, key_labels = vectors[kept], subset(labels, kept)
    result = calibrate_pair(keys, key_labels, keys, key_labels, own_rows=np.arange(len(keys)), name="x->x")
    thresholds = result["thresholds"]
    assert result["warnings"] == []
    assert len(set(thresholds.values())) >= 3, thresholds  # not the minimum similarity at every rank
    assert thresholds["species"] > thresholds["genus"] > thresholds["order"]
    for rank in TAXONOMIC_RANKS:
        entry = result["report"]["ranks"][rank]
        assert entry["method"] == METHOD_HELD_OUT and entry["held_out_labels"] >= 1 and entry["absent_queries"] > 0
        assert entry["precision"] >= 0.9 and 0 < entry["coverage"] < 1
    assert result["report"]["novelty_auroc"] > 0.95
    # The held-out species' specimens, never seen in calibration: species not confident (unknown species flagged)
    # while their order, which the keys have, is.
    top = (vectors[novel] @ keys.T).max(axis=1)
    assert np.all(top < thresholds["species"]) and np.all(top >= thresholds["order"]), (top, thresholds)
    # The same calibration on separate validation queries: absent answers come from the held-out labels.
    queries, query_labels = vectors[novel + kept[::3]], subset(labels, novel + kept[::3])
    separate = calibrate_pair(queries, query_labels, keys, key_labels, name="val")
    assert all(separate["report"]["ranks"][rank]["absent_queries"] > 0 for rank in TAXONOMIC_RANKS)


def test_a_rank_that_cannot_hold_out_falls_back_with_a_warning():
    vectors, labels = hierarchy()
    one_order = [r for r, o in enumerate(labels["order"]) if o == "O0"]
    keys, key_labels = vectors[one_order], subset(labels, one_order)
    result = calibrate_pair(keys, key_labels, keys, key_labels, own_rows=np.arange(len(keys)), name="dna->dna")
    order = result["report"]["ranks"]["order"]
    assert order["method"] == METHOD_PRESENT_ONLY and order["held_out_labels"] == 0
    assert any("dna->dna: order: the keys have a single order" in w for w in result["warnings"])
    assert result["report"]["ranks"]["species"]["method"] == METHOD_HELD_OUT
    assert not any(": species:" in w for w in result["warnings"])
    # One key: nothing to search leave-one-out; never confident, said so.
    single = calibrate_pair(
        keys[:1], subset(key_labels, [0]), keys[:1], subset(key_labels, [0]), own_rows=np.zeros(1, int)
    )
    assert all(single["report"]["ranks"][r]["method"] == METHOD_NONE for r in TAXONOMIC_RANKS)
    assert all(t == float("inf") for t in single["thresholds"].values()) and len(single["warnings"]) == 4


def test_embedding_report_on_test_queries_matches_the_identity_report_shape():
    vectors, labels = hierarchy()
    novel = [r for r, s in enumerate(labels["species"]) if s.startswith("O2F1G0")]  # a whole genus
    kept = [r for r in range(len(vectors)) if r not in novel]
    keys, key_labels = vectors[kept], subset(labels, kept)
    thresholds = calibrate_pair(keys, key_labels, keys, key_labels, own_rows=np.arange(len(keys)))["thresholds"]
    report = embedding_confidence_report(vectors[novel], subset(labels, novel), keys, key_labels, thresholds)
    assert report["ranks"]["species"]["absent_queries"] == len(novel) and report["novelty_auroc"] is None
    assert report["ranks"]["family"]["absent_queries"] == 0 and report["novel_flagged"] == 1.0
    assert report["known_flagged"] is None and report["score"] == "cosine similarity"


# ---- the identity baseline -------------------------------------------------------------------------------------------
def mutate(barcode: str, count: int, seed: int) -> str:
    rng = random.Random(seed)
    bases = list(barcode)
    for position in rng.sample(range(len(bases)), count):
        bases[position] = {"A": "C", "C": "G", "G": "T", "T": "A"}[bases[position]]
    return "".join(bases)


def test_identity_report_on_a_hand_made_case():
    rng = random.Random(0)
    first = "".join(rng.choice("ACGT") for _ in range(600))
    second = mutate(first, 72, seed=1)  # 88 % identical: same order, another family
    keys = [first, mutate(first, 3, seed=2), second]
    key_labels = {
        "processid": ["K1", "K2", "K3"],
        "order": ["Diptera"] * 3,
        "family": ["Sciaridae", "Sciaridae", "Cecidomyiidae"],
        "genus": ["Bradysia", "Bradysia", "Aphidoletes"],
        "species": ["Bradysia impatiens", "Bradysia impatiens", "Aphidoletes aphidimyza"],
    }
    queries = [mutate(first, 2, seed=3), mutate(first, 36, seed=4)]  # 99.7 % (known species), 94 % (novel)
    query_labels = {
        "order": ["Diptera", "Diptera"],
        "family": ["Sciaridae", "Sciaridae"],
        "genus": ["Bradysia", "Bradysia"],
        "species": ["Bradysia impatiens", "Bradysia nova"],
    }
    report = identity_confidence_report(queries, query_labels, keys, key_labels)
    species, genus, order = (report["ranks"][r] for r in ("species", "genus", "order"))
    assert species["threshold"] == 0.98 and species["confident"] == 1 and species["precision"] == 1.0
    assert species["coverage"] == 0.5 and species["absent_queries"] == 1 and report["novelty_auroc"] == 1.0
    assert genus["coverage"] == 0.5  # 94 % < 95 %: genus not called for the novel one
    assert order["coverage"] == 1.0 and order["precision"] == 1.0
    assert report["novel_flagged"] == 1.0 and report["known_flagged"] == 0.0


def read_bold(path):
    with open(path, newline="") as handle:
        return [row for row in csv.DictReader(handle, delimiter="\t") if row["species"] and row["nuc"]]


def test_identity_report_on_real_barcodes_with_species_held_out(realdata):
    rows = read_bold(realdata / "coi_fulltax_sample.tsv")
    species = sorted({r["species"] for r in rows})
    held_out = set(random.Random(0).sample(species, len(species) // 4))
    keys = [r for r in rows if r["species"] not in held_out]
    queries = [r for r in rows if r["species"] in held_out] + keys[::5]
    key_rows = [r for i, r in enumerate(keys) if i % 5]  # the seen queries leave the keys
    key_labels = {"processid": [r["processid"] for r in key_rows], **{k: [r[k] or None for r in key_rows]
                                                                       for k in TAXONOMIC_RANKS}}  # fmt: skip
    query_labels = {k: [r[k] or None for r in queries] for k in TAXONOMIC_RANKS}
    report = identity_confidence_report([r["nuc"] for r in queries], query_labels, [r["nuc"] for r in key_rows],
                                        key_labels)  # fmt: skip
    print(json.dumps({k: v for k, v in report.items() if k != "ranks"}), report["ranks"]["species"])
    assert report["ranks"]["species"]["absent_queries"] > 20
    assert report["novelty_auroc"] > 0.9  # identity is a strong novelty score on real COI
    # Measured: 119 of 165 queries novel; the 98 % rule flags 95.8 % of them and 10.9 % of the known species,
    # and its confident species calls are right 89.1 % of the time.
    assert report["novel_flagged"] > 0.9 > report["known_flagged"]
    assert report["ranks"]["species"]["precision"] > 0.8 and report["ranks"]["order"]["precision"] > 0.9


# ---- key folders -----------------------------------------------------------------------------------------------------
def load(model_dir):
    return BioscanClipModel.from_pretrained(model_dir).eval(), BioscanClipProcessor.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def loo_keys(tmp_path_factory, trained_tiny, mini_dir, mini_cache):
    """A key folder of the mini-BIOSCAN keys built WITHOUT validation queries (leave-one-out calibration)."""
    splits, roles = load_splits("mini", str(mini_dir), cache_dir=str(mini_cache))
    model, processor = load(trained_tiny)
    out = tmp_path_factory.mktemp("loo") / "keys"
    build_key_folder(model, processor, role_records(splits, roles, "keys"), out, show_progress=False)
    return out


def test_no_validation_queries_calibrates_leave_one_out_without_falling_back(loo_keys, trained_tiny, realdata):
    report = json.loads((loo_keys / "calibration.json").read_text())
    assert report["method"].startswith("leave-one-out over the keys") and report["warnings"] == []
    for pair in ("dna->dna", "averaged->averaged"):  # the pairs the tiny model has learnt well
        thresholds = report["thresholds"][pair]
        assert len(set(thresholds.values())) > 1, (pair, thresholds)  # no longer identical at every rank
    for pair in ("image->image", "dna->dna", "averaged->averaged", "image->dna"):
        ranks = report["report"][pair]["ranks"]
        assert all(ranks[r]["absent_queries"] > 0 and ranks[r]["method"] == METHOD_HELD_OUT for r in TAXONOMIC_RANKS)
        assert 0.5 <= report["report"][pair]["novelty_auroc"] <= 1
    print({pair: report["thresholds"][pair] for pair in report["thresholds"]})
    print({pair: report["report"][pair]["novelty_auroc"] for pair in report["report"]})
    # The plot is written and sealed in the manifest like every other file of the folder.
    assert report["plot"] == CALIBRATION_PLOT and (loo_keys / CALIBRATION_PLOT).stat().st_size > 10_000
    assert CALIBRATION_PLOT in verify_key_folder(loo_keys)["files"]
    # A real Odonata barcode against the invented library: no species in the keys, and flagged so.
    [odonata] = [r for r in read_bold(realdata / "coi_fulltax_sample.tsv") if r["processid"] == ODONATA]
    [answer] = Identifier.load(trained_tiny, loo_keys).identify(barcodes=[odonata["nuc"]])
    assert answer.unknown_species, answer.ranks


def test_validation_calibration_flags_absent_species_and_is_printed(tmp_path, trained_tiny, mini_dir, mini_cache,
                                                                   capsys):  # fmt: skip
    out = tmp_path / "keys"
    data = ["--source", "mini", "--data_dir", str(mini_dir), "--cache_dir", str(mini_cache)]
    assert main(["index", "--model", str(trained_tiny), *data, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "calibration: validation queries, labels held out of the keys per rank" in printed
    assert "novel-species detection AUROC" in printed and "confident calls: precision" in printed
    assert f"reliability diagram: {out / CALIBRATION_PLOT}" in printed and "warning:" not in printed
    report = json.loads((out / "calibration.json").read_text())
    assert report["calibration_queries"] > 0 and report["report"]["dna->dna"]["ranks"]["species"]["absent_queries"]
    # Keys without the unseen test species (mini-BIOSCAN's keys hold them): most of those queries are flagged
    # unknown species, few of the seen ones.
    splits, roles = load_splits("mini", str(mini_dir), cache_dir=str(mini_cache))
    absent = role_records(splits, roles, "test_queries_unseen")
    keys = role_records(splits, roles, "keys")
    keys = keys.select([i for i, s in enumerate(keys["species"]) if s not in set(absent["species"])])
    validation = [role_records(splits, roles, r) for r in ("val_queries_seen", "val_queries_unseen")]
    model, processor = load(trained_tiny)
    folder = build_key_folder(model, processor, keys, tmp_path / "open-set", show_progress=False,
                              calibration_queries=datasets.concatenate_datasets(validation))  # fmt: skip
    identifier = Identifier.load(trained_tiny, folder)
    present = role_records(splits, roles, "test_queries_seen")
    flagged = {
        name: float(np.mean([a.unknown_species for a in identifier.identify(barcodes=records["dna_barcode"])]))
        for name, records in (("present", present), ("absent", absent))
    }
    print(flagged, json.loads((folder / "calibration.json").read_text())["report"]["dna->dna"])
    assert flagged["absent"] > 0.5 > flagged["present"], flagged


def test_no_calibration_is_said_not_silent(tmp_path, trained_tiny, mini_dir, mini_cache, capsys):
    out = tmp_path / "keys"
    data = ["--source", "mini", "--data_dir", str(mini_dir), "--cache_dir", str(mini_cache)]
    assert main(["index", "--model", str(trained_tiny), *data, "--out", str(out), "--no_calibration"]) == 0
    assert "warning: calibration turned off" in capsys.readouterr().out
    report = json.loads((out / "calibration.json").read_text())
    assert report["method"] == METHOD_NONE and report["thresholds"] == {}


def test_bold_library_without_partition_is_calibrated(tmp_path, trained_tiny, realdata, capsys):
    out = tmp_path / "bold-keys"
    data = ["--source", "bold", "--partition", "none", "--data_dir", str(realdata / "coi_fulltax_sample.tsv"),
            "--cache_dir", str(tmp_path / "cache")]  # fmt: skip
    assert main(["index", "--model", str(trained_tiny), *data, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "calibration.json").read_text())
    assert report["method"].startswith("leave-one-out over the keys")
    assert set(report["thresholds"]) == {"dna->dna", ALIGNMENT_PAIR}  # the embedding's and the barcode hits'
    alignment = report["report"][ALIGNMENT_PAIR]["ranks"]
    assert alignment["species"]["absent_queries"] > 0 and alignment["species"]["method"] == "held-out labels"
    assert all(0.5 < report["thresholds"][ALIGNMENT_PAIR][rank] <= 1 for rank in ("genus", "species"))
    assert "novel-species detection AUROC" in printed
    print(printed)
    species = report["report"]["dna->dna"]["ranks"]["species"]
    assert species["absent_queries"] > 0 and np.isfinite(report["thresholds"]["dna->dna"]["order"])
