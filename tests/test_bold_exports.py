"""BOLD exports as users have them: every flavour of the one table reader, drop summaries, query tables, and the
README walk-through (train DNA+text on a library, index all of it, predict a table of barcodes) end to end on the
real exports in ../shared/realdata."""

from __future__ import annotations

import csv
import json

import datasets
import pandas as pd
import pytest

from bioscan_clip.apps import cli
from bioscan_clip.apps import train as training
from bioscan_clip.data.spec import DataSpec
from dataset_scripts import BoldExport, DataIntegrityError, read_query_table, read_table

CURATION = "bge-barcoding__bold-library-curation"
V3_EXPORT = "matteodegobbi__InsectClassification/insect_species_bold_v3_coi_subset.tsv"


def _real(realdata, name: str) -> pd.DataFrame:
    return pd.read_csv(realdata / name, sep="\t", dtype=str, keep_default_na=False, quoting=csv.QUOTE_NONE)


def _library(path, tmp_path, **options):
    builder = BoldExport(data_dir=str(path), cache_dir=str(tmp_path / f"cache-{path.name}"), **options)
    builder.download_and_prepare()
    return builder, builder.as_dataset()["train"]


def _write(frame: pd.DataFrame, path, *, sep: str, bom: bool = False, crlf: bool = False, quote_all: bool = False):
    text = frame.to_csv(
        sep=sep,
        index=False,
        lineterminator="\r\n" if crlf else "\n",
        quoting=csv.QUOTE_ALL if quote_all else csv.QUOTE_MINIMAL,
    )
    path.write_bytes(("\ufeff" if bom else "").encode() + text.encode())
    return path


FLAVOURS = {
    "semicolon": {"sep": ";"},
    "comma": {"sep": ","},
    "tab_bom_crlf": {"sep": "\t", "bom": True, "crlf": True},
    "semicolon_quoted_crlf": {"sep": ";", "quote_all": True, "crlf": True},
    "tab_quoted": {"sep": "\t", "quote_all": True},
}


@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
def test_every_flavour_of_a_real_export_gives_the_same_library(realdata, tmp_path, flavour):
    source = realdata / CURATION / "test_odonata_small.tsv"
    _, reference = _library(source, tmp_path)
    path = _write(
        _real(realdata, f"{CURATION}/test_odonata_small.tsv"), tmp_path / f"{flavour}.txt", **FLAVOURS[flavour]
    )
    builder, library = _library(path, tmp_path)
    assert library.to_dict() == reference.to_dict()  # same records, same fields, same order
    assert builder.summary.rows_dropped == {"non_coi_marker": 13, "no_sequence": 1}


def test_older_and_v3_column_names(realdata, tmp_path):
    builder, library = _library(realdata / V3_EXPORT, tmp_path)
    raw = _real(realdata, V3_EXPORT)
    assert len(library) == len(raw) == 8949
    first = library[0]
    assert first["processid"] == raw.loc[0, "processid"]
    assert first["species"] == raw.loc[0, "species_name"] and first["order"] == raw.loc[0, "order_name"]
    assert first["dna_barcode"] == raw.loc[0, "nucleotides"].strip()[:660]
    assert first["dna_bin"] == raw.loc[0, "bin_uri"]
    assert builder.summary.rows_dropped == {"non_coi_marker": 0, "no_sequence": 0}
    assert "marker_code" not in " ".join(builder.summary.warnings)  # markercode was found under its v3 name
    _, old = _library(realdata / CURATION / "BOLD_test.tsv", tmp_path)  # the portal's older nucraw TSV
    assert len(old) == 199 and all(old["dna_barcode"])


def test_drop_summary_and_provisional_names(realdata, tmp_path, caplog):
    source = realdata / CURATION / "test_odonata_small.tsv"
    with caplog.at_level("INFO", logger="dataset_scripts"):
        DataSpec("bold", str(source), cache_dir=str(tmp_path / "c")).load()
        DataSpec("bold", str(source), cache_dir=str(tmp_path / "c")).load()  # from the cache: printed again
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith(str(source))]
    expected = "read 85 rows, kept 71, dropped 14 (13 non-COI marker, 1 no sequence); labels read as missing: 2"
    assert len(lines) == 2 and all(expected in line for line in lines), lines
    builder, library = _library(source, tmp_path)
    assert builder.summary.labels_cleared == {"provisional_species": 2}
    assert not [s for s in library["species"] if s and " sp." in s]
    splits, _ = DataSpec("bold", str(source), cache_dir=str(tmp_path / "k"), keep_provisional_names=True).load()
    kept = [s for s in splits["train"]["species"] if s and " sp." in s]
    assert len(kept) == 2 and all(kept)  # e.g. "Cora sp. A": a label of its own


def test_query_tables_read_the_real_exports(realdata):
    odonata, summary = read_query_table(realdata / CURATION / "test_odonata_small.tsv")
    assert len(odonata) == 71 and summary.rows_dropped == {"non_coi_marker": 13, "no_sequence": 1}
    assert all(q["barcode"] for q in odonata)
    v3, _ = read_query_table(realdata / V3_EXPORT)
    assert len(v3) == 8949 and v3[0]["truth"]["species"] == _real(realdata, V3_EXPORT).loc[0, "species_name"]


def test_generic_query_table_flavours(tmp_path):
    plain = pd.DataFrame({"id": ["a", "b", "c"], "barcode": ["ACGTACGT", "", "TTGACCA"], "genus": ["Aus", "", "NA"]})
    for name, flavour in FLAVOURS.items():
        queries, summary = read_query_table(_write(plain, tmp_path / f"{name}.csv", **flavour))
        assert [q["id"] for q in queries] == ["a", "c"], name
        assert summary.rows_dropped == {"no_sequence": 1}
        assert queries[0]["truth"] == {"genus": "Aus"} and "truth" not in queries[1]  # "NA" is missing


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty"),
        (b"\xff\xfe\x00p\x00r\x00o", "not UTF-8"),
        (b"processid;nuc\nA1;ACGT\nA2;ACGT;extra;cells\n", r"line 3"),
        (b"id,species\na,Aus bus\n", "expected a barcode column"),
    ],
)
def test_bad_tables_name_the_file_and_line(tmp_path, content, message):
    path = tmp_path / "bad.tsv"
    path.write_bytes(content)
    with pytest.raises(DataIntegrityError, match=message) as caught:
        read_query_table(path)
    assert str(path) in str(caught.value)


def test_bad_export_fails_the_builder_with_one_named_error(tmp_path):
    path = tmp_path / "export.csv"
    path.write_text("sampleid;species\nS1;Aus bus\n")
    with pytest.raises(DataIntegrityError, match=r"export\.csv has no 'processid' column"):
        DataSpec("bold", str(path), cache_dir=str(tmp_path / "c")).load()


def test_read_table_keeps_every_cell_a_string(tmp_path):
    path = _write(pd.DataFrame({"a": ["NA", "None", ""], "b": ["1", '"x"', "0.5"]}), tmp_path / "t.tsv", sep="\t")
    frame = read_table(path)
    assert frame.to_dict("list") == {"a": ["NA", "None", ""], "b": ["1", '"x"', "0.5"]}


# --- the README walk-through, end to end ----------------------------------------------------------------------------
def _train(library, out, *extra, max_steps: int | None = 3):
    steps = ["--max_steps", str(max_steps)] if max_steps else []
    assert training.main([
        "--preset", "tiny", "--source", "bold", "--data_dir", str(library), "--modalities", "dna,text",
        *steps, "--epochs", "1", "--batch_size", "32", "--output_dir", str(out), "--report_to", "none",
        "--cpu", "--cache_dir", str(out / "cache"), *extra,
    ]) == 0  # fmt: skip
    return out / "final_model"


@pytest.mark.parametrize("flavour", ["semicolon", "tab"])
def test_train_index_predict_a_real_bold_library(realdata, tmp_path, capsys, flavour):
    """Done-when of issue 11: train DNA+text, index the whole library, predict a table of barcodes."""
    if flavour == "tab":
        library = realdata / CURATION / "BOLD_test.tsv"  # the real file as exported (older portal TSV)
        queries = realdata / CURATION / "test_odonata_small.tsv"
        n_records = 199
    else:  # every 10th record of the real v3 export, written as BOLD's curation tooling writes: ';'-separated
        library = _write(_real(realdata, V3_EXPORT).iloc[::10], tmp_path / "library.csv", sep=";")
        queries = realdata / CURATION / "BOLD_test.tsv"
        n_records = 895
    model = _train(library, tmp_path / "run")
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert summary["training_records"] == n_records, summary  # partition none: every record is a training record

    keys = tmp_path / "keys"
    common = ["--source", "bold", "--data_dir", str(library), "--cache_dir", str(tmp_path / "cache")]
    assert cli.main(["index", "--model", str(model), *common, "--out", str(keys)]) == 0
    assert "features ['dna', 'kmer', 'text']" in capsys.readouterr().out
    assert len(datasets.load_from_disk(str(keys / "records"))) == n_records  # every record is a key

    out = tmp_path / "predictions.csv"
    assert (
        cli.main(["predict", "--model", str(model), "--keys", str(keys), "--table", str(queries), "--out", str(out)])
        == 0
    )
    printed = capsys.readouterr().out
    assert f"{queries}: read " in printed and "agreement with the table's own labels" in printed
    predictions = pd.read_csv(out)
    assert len(predictions) == len(read_query_table(queries)[0])
    assert predictions["species"].notna().any() and "label_species" in predictions

    # Each library record searched against the library finds itself: the whole path keeps ids and labels.
    own = tmp_path / "own.csv"
    assert (
        cli.main(["predict", "--model", str(model), "--keys", str(keys), "--table", str(library), "--out", str(own)])
        == 0
    )
    rows = pd.read_csv(own)
    nearest = rows["neighbours"].map(lambda text: json.loads(text)[0])
    assert (nearest.map(lambda n: n.get("processid")) == rows["id"]).mean() > 0.9


@pytest.mark.slow
def test_clibd_partition_of_a_bold_library_trains_dna_text(realdata, tmp_path):
    # The first 1,500 records (sorted by taxon: whole species of up to 12 records), ';'-separated.
    library = _write(_real(realdata, V3_EXPORT).iloc[:1500], tmp_path / "library.csv", sep=";")
    _train(library, tmp_path / "run", "--partition", "clibd", "--eval_every_epochs", "1", max_steps=None)
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert 0 < summary["training_records"] < 1500  # the paper's split holds queries and unseen species out
    assert summary["best_score"] is not None  # validated on the held-out seen and unseen queries
