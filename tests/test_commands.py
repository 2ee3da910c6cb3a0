"""The `bioscan-clip` commands end to end: evaluate, index, predict, embed, and the CLI itself."""

from __future__ import annotations

import csv
import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bioscan_clip.apps.cli import SUBCOMMANDS, main
from bioscan_clip.data.spec import load_splits, role_records
from bioscan_clip.identification.build import build_key_folder
from bioscan_clip.identification.identifier import Identifier
from modeling_bioscanclip import BioscanClipModel, BioscanClipProcessor
from modeling_bioscanclip.constants_bioscanclip import TAXONOMIC_RANKS


@pytest.mark.parametrize("command", sorted(SUBCOMMANDS))
def test_every_command_teaches_with_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert f"bioscan-clip {command}" in text and len(text) > 200


def data_args(mini_dir, mini_cache) -> list[str]:
    return ["--source", "mini", "--data_dir", str(mini_dir), "--cache_dir", str(mini_cache)]


def test_evaluate_writes_tables_plots_and_model_card(tmp_path, trained_tiny, mini_dir, mini_cache, capsys):
    card = tmp_path / "model_card.md"
    card.write_text("---\nlicense: mit\n---\n# tiny\n\nIntro text that must survive.\n")
    out = tmp_path / "evaluation"
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(trained_tiny),
                *data_args(mini_dir, mini_cache),
                "--out",
                str(out),
                "--model_card",
                str(card),
                "--examples",
                "2",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "top-1 macro accuracy" in printed and "image->dna" in printed
    summary = json.loads((out / "results.json").read_text())
    expected = {
        "image->image",
        "image->dna",
        "image->text",
        "dna->dna",
        "dna->text",
        "averaged->averaged",
        "concatenated->concatenated",
        "image->all",
        "dna->all",
        "dna->dna (5-mer profile baseline)",
        "dna->dna (alignment identity 1-NN)",
    }
    assert set(summary["results"]) == expected
    for metrics in summary["results"].values():
        for rank in TAXONOMIC_RANKS:
            for group in ("seen", "unseen"):
                value = metrics[f"{group}/{rank}/macro/top1"]
                assert value is None or 0 <= value <= 1
    assert (out / "accuracy.png").stat().st_size > 10_000 and (out / "retrieval_examples.png").stat().st_size > 10_000
    text = card.read_text()
    assert text.startswith("---\nlicense: mit\n") and "\nmodel-index:\n" in text
    assert "Intro text that must survive." in text
    assert "| image->image | species |" in text and "SYNTHETIC" in text
    # Rewriting replaces the results rather than appending a second copy.
    main(
        [
            "evaluate",
            "--model",
            str(trained_tiny),
            *data_args(mini_dir, mini_cache),
            "--out",
            str(out),
            "--model_card",
            str(card),
            "--examples",
            "0",
            "--no_kmer_baseline",
        ]
    )
    assert card.read_text().count("model-index:") == 1 and card.read_text().count("<!-- results:start -->") == 1


def test_evaluate_species_held_out_compares_identifiers_on_real_barcodes(tmp_path, trained_tiny, realdata, capsys):
    from bioscan_clip.data.spec import DataSpec
    from bioscan_clip.evaluation.protocol import (
        COMBINED_IDENTIFIER,
        IDENTITY_IDENTIFIER,
        KMER_IDENTIFIER,
        MODEL_IDENTIFIER,
        PRODUCT_IDENTIFIER,
    )

    table = realdata / "coi_fulltax_sample.tsv"
    out = tmp_path / "held-out"
    argv = ["evaluate", "--model", str(trained_tiny), "--source", "bold", "--partition", "clibd", "--data_dir",
            str(table), "--cache_dir", str(tmp_path / "cache"), "--out", str(out), "--protocol", "species_held_out"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "novelty AUROC" in printed and COMBINED_IDENTIFIER in printed
    summary = json.loads((out / "results.json").read_text())
    # The novel queries are the val split's unseen species, all of their records, and no key has those species.
    splits, roles = DataSpec(
        source="bold", partition="clibd", data_dir=str(table), cache_dir=str(tmp_path / "cache")
    ).load()
    held = set(splits["val_unseen"]["species"])
    novel_count = len(splits["val_unseen"]) + len(splits["val_unseen_keys"])
    assert summary["queries"]["novel"] == novel_count > 0
    assert summary["keys"] == len(role_records(splits, roles, "keys")) - len(splits["val_unseen_keys"])
    assert not held & (set(splits["test_unseen_keys"]["species"]) | set(splits["seen_keys"]["species"]))
    dna = summary["results"]["dna->dna"]
    assert dna["novel/species/n_queries"] == novel_count and dna["novel/species/micro/top1"] == 0.0
    compared = summary["identification"]
    assert {MODEL_IDENTIFIER, KMER_IDENTIFIER, IDENTITY_IDENTIFIER, COMBINED_IDENTIFIER, PRODUCT_IDENTIFIER} <= set(
        compared
    )
    assert len(compared) == 6  # and the product with the other answer rule
    for entry in compared.values():
        confidence = entry["confidence"]
        assert 0 <= confidence["novel_flagged"] <= 1 and 0 <= confidence["known_flagged"] <= 1
        assert 0 <= confidence["novelty_auroc"] <= 1
        assert set(confidence["ranks"]) == set(TAXONOMIC_RANKS)
    # The model's 1-NN in this table is the evaluation's own dna->dna result.
    assert compared[MODEL_IDENTIFIER]["scores"]["seen/species/micro/top1"] == dna["seen/species/micro/top1"]
    # On real COI, alignment identity separates novel species from known ones (the field's own anchor).
    identity = compared[IDENTITY_IDENTIFIER]["confidence"]
    assert identity["novelty_auroc"] > 0.9 and identity["novel_flagged"] > identity["known_flagged"]
    # The README's tables are this file through scripts/identification_table.py (ranges over runs).
    script = Path(__file__).resolve().parents[1] / "scripts" / "identification_table.py"
    printed = subprocess.run(
        [sys.executable, str(script), str(out / "results.json"), str(out / "results.json")],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    product = compared[PRODUCT_IDENTIFIER]["scores"]["novel/genus/micro/top1"]
    assert f"| {PRODUCT_IDENTIFIER} |" in printed and f"{100 * product:.1f}" in printed
    # The product's thresholds come from the keys themselves (alignment identity, held-out labels), not BOLD's.
    assert "calibrated on the keys" in compared[PRODUCT_IDENTIFIER]["thresholds"]
    # A BOLD library without the partition has no second split to hold species out of: one clear error.
    library = ["evaluate", "--model", str(trained_tiny), "--source", "bold", "--data_dir", str(table),
               "--cache_dir", str(tmp_path / "cache2"), "--out", str(tmp_path / "x"), "--protocol", "species_held_out"]  # fmt: skip
    assert main(library) == 2
    assert "--partition clibd" in capsys.readouterr().err


def test_evaluate_on_real_barcodes_only(tmp_path, trained_tiny, realdata, capsys):
    out = tmp_path / "real-dna"
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(trained_tiny),
                "--source",
                "bold",
                "--partition",
                "clibd",
                "--data_dir",
                str(realdata / "coi_fulltax_sample.tsv"),
                "--cache_dir",
                str(tmp_path / "cache"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    results = json.loads((out / "results.json").read_text())
    assert results["modalities"] == ["dna", "text"]
    assert set(results["results"]) == {
        "dna->dna", "dna->text", "dna->dna (5-mer profile baseline)", "dna->dna (alignment identity 1-NN)",
    }  # fmt: skip
    baseline = results["results"]["dna->dna (5-mer profile baseline)"]
    # Real COI: the alignment-free baseline identifies genera well (a sanity check of the data path).
    assert baseline["unseen/genus/micro/top1"] > 0.7
    # The alignment baseline is top-1 only, and at least as good at species as the 5-mer one on real barcodes.
    identity = results["results"]["dna->dna (alignment identity 1-NN)"]
    assert "unseen/species/micro/top3" not in identity
    assert identity["unseen/species/micro/top1"] >= baseline["unseen/species/micro/top1"]
    assert not (out / "retrieval_examples.png").exists()


@pytest.fixture(scope="module")
def key_folder(tmp_path_factory, trained_tiny, mini_dir, mini_cache):
    out = tmp_path_factory.mktemp("keys") / "keys"
    assert main(["index", "--model", str(trained_tiny), *data_args(mini_dir, mini_cache), "--out", str(out)]) == 0
    return out


def test_index_folder_and_calibration(key_folder, trained_tiny):
    calibration = json.loads((key_folder / "calibration.json").read_text())
    assert set(calibration["thresholds"]) >= {"image->image", "dna->dna", "averaged->averaged", "image->dna"}
    for thresholds in calibration["thresholds"].values():
        assert set(thresholds) == set(TAXONOMIC_RANKS)
    assert {p.name for p in key_folder.iterdir()} >= {"image", "dna", "text", "averaged", "records"}
    identifier = Identifier.load(trained_tiny, key_folder)
    assert identifier.key_image(0).mode == "RGB"  # stored encoded, decoded by the safe loader


def test_predict_on_real_images_and_barcodes(tmp_path, trained_tiny, key_folder, realdata):
    images = sorted(str(p) for p in (realdata / "zahrag__BIOSCAN-1M/cropped_images").glob("BIOUG*.jpg"))
    with open(realdata / "coi_fulltax_sample.tsv", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))[:4]
    fasta = tmp_path / "barcodes.fasta"
    fasta.write_text("".join(f">{r['processid']}\n{r['nuc']}\n" for r in rows))
    out = tmp_path / "predictions.csv"
    assert (
        main(
            [
                "predict",
                "--model",
                str(trained_tiny),
                "--keys",
                str(key_folder),
                "--images",
                *images,
                "--fasta",
                str(fasta),
                "--out",
                str(out),
                "--k",
                "3",
            ]
        )
        == 0
    )
    table = pd.read_csv(out)
    assert len(table) == len(images) + len(rows)
    assert set(table["id"]) == {p.split("/")[-1][:-4] for p in images} | {r["processid"] for r in rows}
    assert set(table["query_feature"]) == {"image", "dna"}
    for rank in TAXONOMIC_RANKS:
        assert table[rank].notna().all()
        assert table[f"{rank}_confidence"].between(0, 1).all()
    assert table["unknown_species"].isin([True, False]).all()
    assert set(table["deepest_confident_rank"].dropna()) <= set(TAXONOMIC_RANKS)
    neighbours = json.loads(table["neighbours"].iloc[0])
    assert len(neighbours) == 3 and neighbours[0]["similarity"] >= neighbours[-1]["similarity"]


def test_predict_pairs_photos_and_barcodes_by_id_and_keeps_the_input_order(
    tmp_path, trained_tiny, key_folder, realdata, capsys
):
    """A FASTA record is identified with the photo of the same name; the rest stand alone; rows in input order."""
    images = sorted(str(p) for p in (realdata / "zahrag__BIOSCAN-1M/cropped_images").glob("BIOUG*.jpg"))[:3]
    stems = [Path(p).stem for p in images]
    with open(realdata / "coi_fulltax_sample.tsv", newline="") as handle:
        barcodes = [row["nuc"] for row in list(csv.DictReader(handle, delimiter="\t"))[:3]]
    fasta = tmp_path / "barcodes.fasta"  # an unmatched record first: it comes after the photos, in file order
    fasta.write_text(f">LONE1\n{barcodes[0]}\n>{stems[2]}\n{barcodes[1]}\n>{stems[1]}\n{barcodes[2]}\n")
    out = tmp_path / "predictions.csv"
    common = ["predict", "--model", str(trained_tiny), "--keys", str(key_folder), "--fasta", str(fasta)]
    assert main([*common, "--images", *images, "--out", str(out), "--batch_size", "1"]) == 0
    table = pd.read_csv(out)
    assert list(table["id"]) == [*stems, "LONE1"]
    assert list(table["query_feature"]) == ["image", "averaged", "averaged", "dna"]
    # Barcode queries' neighbours carry what barcoders read (identity, overlap, BIN); a photo's do not.
    hits = [json.loads(cell) for cell in table["neighbours"]]
    assert all(n["percent_identity"] is None for n in hits[0])
    assert all(0 <= n["percent_identity"] <= 100 and n["overlap"] >= 0 for row in hits[1:] for n in row)
    # Every row says what made it: the package, the model and the sealed key manifest it was answered from.
    manifest = json.loads((key_folder / "key_folder.json").read_text())
    assert set(table["keys_manifest_sha256"]) == {manifest["manifest_sha256"]}
    assert set(table["model"]) == {str(trained_tiny)} and set(table["model_revision"]) == {"none"}
    assert set(table["bioscan_clip_version"]) == {importlib.metadata.version("bioscan-clip")}
    # Two photos of one name and a record of that name: a guess, refused in one line.
    twin = tmp_path / "elsewhere" / Path(images[1]).name
    twin.parent.mkdir()
    twin.write_bytes(Path(images[1]).read_bytes())
    assert main([*common, "--images", *images, str(twin), "--out", str(tmp_path / "x.csv")]) == 2
    assert not (tmp_path / "x.csv").exists()
    assert f"record '{stems[1]}' matches several images" in capsys.readouterr().err


def test_barcode_neighbours_report_identity_overlap_and_bin(trained_tiny, key_folder):
    """A key's own barcode as the query: its neighbour row is 100 % identical over the whole barcode, with its BIN;
    every other hit's identity is that of the two barcodes aligned (the right key row, not a neighbour's)."""
    from bioscan_clip.baselines.identity import alignment_identity
    from bioscan_clip.data.barcodes import clean_barcodes

    identifier = Identifier.load(trained_tiny, key_folder)
    records = identifier.records
    query = records[3]["dna_barcode"]
    [answer] = identifier.identify(barcodes=[query], k=5)
    [cleaned] = clean_barcodes([query])
    by_row = {n.row: n for n in answer.neighbours}
    assert 3 in by_row, "a key's own barcode is among its nearest keys"
    assert by_row[3].percent_identity == 100.0 and by_row[3].overlap == len(cleaned)
    for neighbour in answer.neighbours:
        assert neighbour.processid == records[neighbour.row]["processid"]
        assert neighbour.bin == records[neighbour.row].get("dna_bin")
        [key] = clean_barcodes([records[neighbour.row]["dna_barcode"]])
        identity, overlap = alignment_identity(cleaned, key)
        assert (neighbour.percent_identity, neighbour.overlap) == (round(100 * identity, 2), overlap)


def test_barcode_answer_is_its_best_alignment_hit(trained_tiny, key_folder):
    """The product's barcode answer: hits sorted by identity, drawn from the 5-mer and the model's nearest keys,
    every rank the best hit's label, confident exactly where the best identity reaches the library's calibrated
    threshold."""
    from bioscan_clip.data.barcodes import clean_barcodes
    from bioscan_clip.identification.barcode_search import ALIGNMENT_PAIR, CANDIDATES

    identifier = Identifier.load(trained_tiny, key_folder)
    search = identifier.barcode_search
    assert search is not None and search.dna is not None  # model candidates beside the 5-mer's
    thresholds = identifier.calibration["thresholds"][ALIGNMENT_PAIR]
    barcodes = identifier.records.select(range(0, 40, 8))["dna_barcode"]
    answers = identifier.identify(barcodes=barcodes)
    features = identifier.embed(barcodes=barcodes)
    candidates = search.candidates(clean_barcodes(barcodes), features["dna"], count=25)  # k 5-mer candidates
    for answer, rows in zip(answers, candidates, strict=True):
        identities = [n.percent_identity for n in answer.neighbours]
        assert identities == sorted(identities, reverse=True) and len(identities) == min(25, len(rows))
        assert {n.row for n in answer.neighbours} <= set(rows.tolist()) and len(rows) > CANDIDATES  # both sources
        best = answer.neighbours[0]
        for prediction in answer.ranks:
            assert prediction.label == best.taxonomy[prediction.rank]
            assert prediction.confident == (best.percent_identity / 100 >= thresholds[prediction.rank])
        assert answer.unknown_species == (not answer.ranks[-1].confident)


def test_barcodes_indexed_and_identified_without_a_model(tmp_path, realdata, capsys):
    """A lab with a BOLD export and no model: `index` writes the 5-mer index and identity thresholds calibrated on
    the library, `predict --fasta` answers with the hits (BLAST-style rows in --hits), provenance says no model,
    and images are refused in one line."""
    table = realdata / "coi_fulltax_sample.tsv"
    keys = tmp_path / "keys"
    data = ["--source", "bold", "--partition", "none", "--data_dir", str(table), "--cache_dir", str(tmp_path / "c")]
    assert main(["index", *data, "--out", str(keys)]) == 0
    assert "dna->dna (alignment identity): thresholds" in capsys.readouterr().out
    manifest = json.loads((keys / "key_folder.json").read_text())
    assert manifest["features"] == ["kmer"] and manifest["model"] is None
    records = pd.read_csv(table, sep="\t")
    records = records[records["nuc"].notna() & records["species"].notna()].head(3)
    fasta = tmp_path / "q.fasta"
    pairs = zip(records["processid"], records["nuc"], strict=True)
    fasta.write_text("".join(f">{pid}\n{seq[30:]}\n" for pid, seq in pairs))
    out, hits = tmp_path / "p.json", tmp_path / "hits.tsv"
    assert main(["predict", "--keys", str(keys), "--fasta", str(fasta), "--out", str(out), "--hits", str(hits)]) == 0
    rows = json.loads(out.read_text())
    assert [row["id"] for row in rows] == records["processid"].tolist()
    for row, species in zip(rows, records["species"], strict=True):
        assert row["model"] == "none" and row["species"] == species
        neighbours = json.loads(row["neighbours"])
        assert neighbours[0]["percent_identity"] == 100.0 and len(neighbours) == 25
    lines = [line.split("\t") for line in hits.read_text().splitlines()]
    assert lines[0][:4] == ["query", "hit", "percent_identity", "overlap"] and len(lines) == 1 + 3 * 25
    first = [float(line[2]) for line in lines[1:26]]
    assert first == sorted(first, reverse=True) and {line[0] for line in lines[1:]} == set(records["processid"])
    image = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(image)
    assert main(["predict", "--keys", str(keys), "--images", str(image), "--out", str(tmp_path / "i.json")]) == 2
    assert "no model" in capsys.readouterr().err


def test_predict_restricted_to_a_taxon(tmp_path, trained_tiny, key_folder, mini_dir, mini_cache):
    splits, roles = load_splits("mini", str(mini_dir), cache_dir=str(mini_cache))
    queries = role_records(splits, roles, "test_queries_seen").select(range(4))
    table = tmp_path / "queries.csv"
    pd.DataFrame({"processid": queries["processid"], "dna_barcode": queries["dna_barcode"]}).to_csv(table, index=False)
    order = splits["train"][0]["order"]
    out = tmp_path / "restricted.json"
    assert (
        main(
            [
                "predict",
                "--model",
                str(trained_tiny),
                "--keys",
                str(key_folder),
                "--table",
                str(table),
                "--restrict",
                f"order={order}",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    rows = json.loads(out.read_text())
    assert len(rows) == 4 and {row["order"] for row in rows} == {order}


def test_open_set_flag_fires_more_for_species_absent_from_the_keys(tmp_path, trained_tiny, mini_dir, mini_cache):
    model, processor = (
        BioscanClipModel.from_pretrained(trained_tiny),
        BioscanClipProcessor.from_pretrained(trained_tiny),
    )
    splits, roles = load_splits("mini", str(mini_dir), cache_dir=str(mini_cache))
    absent = role_records(splits, roles, "test_queries_unseen")
    absent_species = set(absent["species"])
    keys = role_records(splits, roles, "keys")
    keys = keys.select([i for i, s in enumerate(keys["species"]) if s not in absent_species])
    build_key_folder(
        model,
        processor,
        keys,
        tmp_path / "keys",
        calibration_queries=role_records(splits, roles, "val_queries_seen"),
        show_progress=False,
    )
    identifier = Identifier.load(trained_tiny, tmp_path / "keys")
    present = role_records(splits, roles, "test_queries_seen")

    def flag_rate(records) -> float:
        answers = identifier.identify(barcodes=records["dna_barcode"])
        return float(np.mean([answer.unknown_species for answer in answers]))

    rate_absent, rate_present = flag_rate(absent), flag_rate(present)
    assert rate_absent > rate_present, (rate_absent, rate_present)


def test_embed_exports_parquet(tmp_path, trained_tiny, realdata, mini_dir, mini_cache):
    images = sorted(str(p) for p in (realdata / "zahrag__BIOSCAN-1M/cropped_images").glob("BIOUG*.jpg"))[:2]
    out = tmp_path / "embeddings.parquet"
    assert main(["embed", "--model", str(trained_tiny), "--images", *images, "--out", str(out)]) == 0
    frame = pd.read_parquet(out)
    vectors = np.stack(frame["embedding"].to_numpy())
    assert vectors.shape == (2, 128) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    out = tmp_path / "records.parquet"
    assert (
        main(
            [
                "embed",
                "--model",
                str(trained_tiny),
                *data_args(mini_dir, mini_cache),
                "--split",
                "val",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    frame = pd.read_parquet(out)
    assert set(frame["feature"]) >= {"image", "dna", "text"} and frame["species"].notna().any()


def test_approximate_index_reports_its_recall(tmp_path, trained_tiny, mini_dir, mini_cache, capsys):
    out = tmp_path / "keys-hnsw"
    assert (
        main(
            [
                "index",
                "--model",
                str(trained_tiny),
                *data_args(mini_dir, mini_cache),
                "--out",
                str(out),
                "--index_type",
                "hnsw",
            ]
        )
        == 0
    )
    recall = json.loads((out / "calibration.json").read_text())["recall_at_5"]
    assert set(recall) >= {"image", "dna", "averaged"}
    assert all(0.5 <= value <= 1.0 for value in recall.values()), recall
    assert "recall@5 of the hnsw index against exact search" in capsys.readouterr().out
