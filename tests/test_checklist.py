"""Checklists: names without specimens as text keys (`index --checklist`), and as a restriction (`--restrict_file`)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from reliability_fixtures import key_records, png_bytes, save_tiny_model

from bioscan_clip.apps.cli import main
from bioscan_clip.identification.build import build_checklist_index
from bioscan_clip.identification.calibration import METHOD_CHECKLIST
from bioscan_clip.identification.identifier import Identifier
from bioscan_clip.identification.key_folder import verify_key_folder
from dataset_scripts.checklist import read_checklist
from dataset_scripts.integrity import DataIntegrityError
from modeling_bioscanclip import BioscanClipModel, BioscanClipProcessor, BioscanInputError, taxonomy_to_text

CHECKLIST_TXT = """# a regional list
Bradysia impatiens

Diptera Sciaridae Bradysia coprophila
  # an indented comment
Coleoptera Carabidae Carabus nemoralis
Polygonia c-album
"""


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, tiny_processor):
    return save_tiny_model(tmp_path_factory.mktemp("model"), tiny_processor, seed=0)


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_text_checklist_reads_binomials_and_full_paths_skipping_comments(tmp_path):
    checklist = read_checklist(write(tmp_path, "taxa.txt", CHECKLIST_TXT))
    assert [(entry.line, entry.rank, entry.name) for entry in checklist.entries] == [
        (2, "species", "Bradysia impatiens"),
        (4, "species", "Bradysia coprophila"),
        (6, "species", "Carabus nemoralis"),
        (7, "species", "Polygonia c-album"),
    ]
    assert checklist.entries[0].taxonomy == {
        "order": None, "family": None, "genus": "Bradysia", "species": "Bradysia impatiens"
    }  # fmt: skip
    assert checklist.entries[1].taxonomy == {
        "order": "Diptera", "family": "Sciaridae", "genus": "Bradysia", "species": "Bradysia coprophila"
    }  # fmt: skip


def test_table_checklist_takes_higher_rank_entries(tmp_path):
    path = write(
        tmp_path,
        "taxa.csv",
        "Order,family,genus,species,notes\n"
        "Diptera,Sciaridae,Bradysia,Bradysia impatiens,common\n"
        "Diptera,Cecidomyiidae,,,a family\n"
        ",,Carabus,,genus only\n"
        "Coleoptera,Carabidae,not_classified,Carabus nemoralis,genus unknown here\n",
    )
    checklist = read_checklist(path)
    assert [(e.line, e.rank, e.name) for e in checklist.entries] == [
        (2, "species", "Bradysia impatiens"),
        (3, "family", "Cecidomyiidae"),
        (4, "genus", "Carabus"),
        (5, "species", "Carabus nemoralis"),
    ]
    assert checklist.entries[1].taxonomy == {"order": "Diptera", "family": "Cecidomyiidae", "genus": None,
                                             "species": None}  # fmt: skip
    assert checklist.by_rank() == {
        "species": ["Bradysia impatiens", "Carabus nemoralis"], "family": ["Cecidomyiidae"], "genus": ["Carabus"]
    }  # fmt: skip


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("taxa.txt", "Bradysia impatiens\nBradysia\n", "line 2: expected 'Genus species' or 'Order Family Genus"),
        ("taxa.txt", "Diptera Bradysia impatiens\n", "line 1: expected 'Genus species'"),
        ("taxa.txt", "bradysia impatiens\n", "line 1: 'bradysia' is not a capitalised name"),
        ("taxa.txt", "Bradysia Impatiens\n", "line 1: 'Impatiens' is not a species epithet"),
        ("taxa.txt", "Bradysia sp.\n", "line 1: 'sp.' is not a species epithet"),
        ("taxa.txt", "Bradysia impatiens2\n", "line 1: 'impatiens2' is not a species epithet"),
        ("taxa.txt", "Bradysia impatiens\nDiptera Sciaridae Bradysia impatiens\n", "line 2: Bradysia impatiens is "
         "listed already on line 1"),
        ("taxa.txt", "# nothing\n\n", "no taxon listed"),
        ("taxa.txt", b"Bradysia \xff\n", "not UTF-8"),
        ("taxa.json", "[]", "a checklist is a .txt file"),
        ("taxa.csv", "order,family,genus\nDiptera,Sciaridae,Bradysia\n", "no species column"),
        ("taxa.csv", "order,family,genus,species\n,,,\n", "line 2: no taxon (every rank empty)"),
        ("taxa.csv", "order,family,genus,species\nDiptera,,Carabus,Bradysia impatiens\n", "line 2: species "
         "'Bradysia impatiens' is not in the genus 'Carabus'"),
        ("taxa.tsv", "order\tfamily\tgenus\tspecies\nDiptera\t\tBradysia\timpatiens\n", "line 2: species "
         "'impatiens' is not a full species name"),
    ],
)  # fmt: skip
def test_a_malformed_checklist_is_refused_naming_file_and_line(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(DataIntegrityError) as error:
        read_checklist(path)
    assert str(error.value).startswith(str(path)) and message in str(error.value)
    assert "\n" not in str(error.value)


def test_checklist_keys_are_the_text_towers_embedding_of_the_names(tmp_path, tiny_model):
    out = build_checklist_index(tiny_model, write(tmp_path, "taxa.txt", CHECKLIST_TXT), tmp_path / "keys")
    manifest = verify_key_folder(out)  # a whole, sealed key folder like any other
    assert manifest["features"] == ["text"] and manifest["count"] == 4
    assert manifest["checklist"]["file"] == "taxa.txt" and manifest["checklist"]["taxa"] == {"species": 4}
    calibration = json.loads((out / "calibration.json").read_text())
    assert calibration["method"] == METHOD_CHECKLIST and calibration["thresholds"] == {}
    assert any("uncalibrated" in warning for warning in calibration["warnings"])

    model, processor = (
        BioscanClipModel.from_pretrained(tiny_model).eval(),
        BioscanClipProcessor.from_pretrained(tiny_model),
    )
    assert calibration["vote_temperature"] == pytest.approx(1 / float(model.logit_scale.detach().exp()))
    names = read_checklist(tmp_path / "taxa.txt").entries
    texts = [taxonomy_to_text(entry.taxonomy) for entry in names]
    assert texts[0] == "not_classified not_classified Bradysia Bradysia impatiens"  # as a record without those ranks
    with torch.no_grad():
        expected = model.get_text_features(**processor(text=texts, return_tensors="pt"), normalize=True).numpy()

    # An image query: its nearest names and their similarities are the naive cosine ranking against `expected`.
    identifier = Identifier.load(tiny_model, out)
    images = [png_bytes(1), png_bytes(2)]
    answers = identifier.identify(images=images, k=3)
    with torch.no_grad():
        image = model.get_image_features(**processor(images=images, return_tensors="pt"), normalize=True).numpy()
    similarity = image @ expected.T
    for q, answer in enumerate(answers):
        assert (answer.query_feature, answer.key_feature) == ("image", "text")
        order = np.argsort(-similarity[q], kind="stable")[:3]
        assert [n.processid for n in answer.neighbours] == [names[i].name for i in order]
        np.testing.assert_allclose([n.similarity for n in answer.neighbours], similarity[q][order], atol=1e-5)
        species = answer.ranks[-1]
        assert species.label == names[order[0]].name and not species.confident
        weights = np.exp((similarity[q][order] - similarity[q][order].max()) * float(model.logit_scale.detach().exp()))
        agree = np.array([names[i].name == species.label for i in order])
        assert species.confidence == pytest.approx(weights[agree].sum() / weights.sum(), abs=1e-5)
        assert answer.deepest_confident_rank is None and answer.unknown_species  # uncalibrated: never confident

    # A barcode query is answered against the same names (dna->text).
    [answer] = identifier.identify(barcodes=["ACGT" * 160])
    assert answer.key_feature == "text" and answer.ranks[-1].label in {entry.name for entry in names}


def test_index_and_predict_with_a_checklist_on_the_command_line(tmp_path, tiny_model, capsys):
    checklist = write(tmp_path, "taxa.csv", "order,family,genus,species\nDiptera,Sciaridae,Bradysia,Bradysia "
                      "impatiens\nDiptera,Cecidomyiidae,,\nColeoptera,Carabidae,Carabus,Carabus nemoralis\n")  # fmt: skip
    keys = tmp_path / "keys"
    assert main(["index", "--checklist", str(checklist), "--model", str(tiny_model), "--out", str(keys)]) == 0
    printed = capsys.readouterr().out
    assert "text keys of 3 taxa" in printed and "1 at family, 2 at species" in printed and "uncalibrated" in printed
    image = tmp_path / "q1.png"
    image.write_bytes(png_bytes(3))
    fasta = write(tmp_path, "q.fasta", ">b1\n" + "ACGT" * 160 + "\n")
    out = tmp_path / "predictions.json"
    argv = ["predict", "--model", str(tiny_model), "--keys", str(keys), "--images", str(image), "--fasta", str(fasta)]
    assert main([*argv, "--out", str(out)]) == 0
    assert "checklist keys" in capsys.readouterr().out
    rows = json.loads(out.read_text())
    assert [row["id"] for row in rows] == ["q1", "b1"]
    assert [(row["query_feature"], row["key_feature"]) for row in rows] == [("image", "text"), ("dna", "text")]
    for row in rows:  # the report columns of specimen keys, with the checklist's taxa as neighbours
        assert {"species_confidence", "deepest_confident_rank", "unknown_species", "keys_manifest_sha256"} <= set(row)
        assert {n["processid"] for n in json.loads(row["neighbours"])} == {
            "Bradysia impatiens", "Cecidomyiidae", "Carabus nemoralis"
        }  # fmt: skip


def test_checklist_refusals_are_one_line_and_write_nothing(tmp_path, tiny_processor, tiny_model, capsys):
    bad = write(tmp_path, "taxa.txt", "Bradysia impatiens\nBradysia\n")
    keys = tmp_path / "keys"
    assert main(["index", "--checklist", str(bad), "--model", str(tiny_model), "--out", str(keys)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("bioscan-clip index: error: ") and f"{bad}: line 2" in error and "\n" not in error
    good = write(tmp_path, "good.txt", "Bradysia impatiens\n")
    assert main(["index", "--checklist", str(good), "--out", str(keys)]) == 2
    assert "--checklist needs --model" in capsys.readouterr().err
    assert (
        main(["index", "--checklist", str(good), "--model", str(tiny_model), "--data_dir", "x", "--out", str(keys)])
        == 2
    )
    assert "takes no --data_dir" in capsys.readouterr().err
    no_text = save_tiny_model(tmp_path / "image-dna", tiny_processor, seed=0, modalities=("image", "dna"))
    with pytest.raises(BioscanInputError, match="has no taxonomy-text tower"):
        build_checklist_index(no_text, good, keys)
    assert not keys.exists()


def test_restrict_file_limits_a_specimen_library_to_the_checklist(tmp_path, tiny_model, capsys):
    from bioscan_clip.identification.build import build_key_folder

    records = key_records(12, images=False)  # Bradysia impatiens and a Carabus key without species, alternating
    model, processor = BioscanClipModel.from_pretrained(tiny_model), BioscanClipProcessor.from_pretrained(tiny_model)
    keys = build_key_folder(model, processor, records, tmp_path / "keys", show_progress=False)
    fasta = write(tmp_path, "q.fasta", "".join(f">q{i}\n{records[i]['dna_barcode']}\n" for i in (1, 3)))
    species = write(tmp_path, "species.txt", "Bradysia impatiens\nCarabus nemoralis\n")
    out = tmp_path / "restricted.json"
    argv = ["predict", "--keys", str(keys), "--fasta", str(fasta), "--out", str(out)]
    # Unrestricted, each query (a Carabus key's own barcode) finds itself; restricted, only Bradysia impatiens keys.
    assert main([*argv, "--restrict_file", str(species)]) == 0
    printed = capsys.readouterr().out
    assert "1 of 2 species names have no key in the library: Carabus nemoralis" in printed
    rows = json.loads(out.read_text())
    assert {row["species"] for row in rows} == {"Bradysia impatiens"}
    assert all(n["taxonomy"]["species"] == "Bradysia impatiens" for row in rows for n in json.loads(row["neighbours"]))
    assert main(argv) == 0
    assert {json.loads(row["neighbours"])[0]["processid"] for row in json.loads(out.read_text())} == {
        "KEY001",
        "KEY003",
    }

    genus = write(tmp_path, "genus.csv", "order,family,genus,species\n,,Carabus,\n")
    assert main([*argv, "--restrict_file", str(genus), "--restrict", "order=Coleoptera"]) == 0
    assert {row["genus"] for row in json.loads(out.read_text())} == {"Carabus"}
    mixed = write(tmp_path, "mixed.csv", "order,family,genus,species\n,,Carabus,\n,,Bradysia,Bradysia impatiens\n")
    assert main([*argv, "--restrict_file", str(mixed)]) == 2
    assert "lists taxa at several ranks (1 at genus, 1 at species)" in capsys.readouterr().err
