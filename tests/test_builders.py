"""Builders: record schema from each source's real layout, integrity checks, cache staleness, export."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import datasets
import pandas as pd
import pytest
from fixtures_data import FIVE_M_SPLITS, five_m_csv, five_m_image, write_1m, write_5m

from dataset_scripts import (
    RECORD_FEATURES,
    RETRIEVAL_SPLITS,
    Bioscan1M,
    Bioscan5M,
    BoldExport,
    DataIntegrityError,
    export_parquet,
    get_builder,
    load_bioscan,
    sha256_file,
)
from dataset_scripts import base as base_module

BOLD_DIR = "bge-barcoding__bold-library-curation"


def _prepare(builder_class, **kwargs):
    builder = builder_class(**kwargs)
    builder.download_and_prepare()
    return builder, builder.as_dataset()


def _error_chain(error: BaseException) -> str:
    messages = []
    while error is not None:
        messages.append(str(error))
        error = error.__cause__ or error.__context__
    return " | ".join(messages)


# --- BIOSCAN-5M ---------------------------------------------------------------------------------------------------
def test_bioscan5m_layout_schema_and_splits(tmp_path):
    frame = write_5m(tmp_path / "data")
    builder, splits = _prepare(Bioscan5M, data_dir=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"))
    assert set(splits) == set(FIVE_M_SPLITS)
    for split in FIVE_M_SPLITS:
        dataset = splits[split]
        assert dataset.features == RECORD_FEATURES
        assert dataset["processid"] == frame.loc[frame.split == split, "processid"].tolist()
        assert set(dataset["split"]) == {split}
    first = splits["pretrain"][0]
    assert first["image"].size == (16, 16)  # chunked path pretrain/3/P0000.jpg resolved and decoded
    assert len(first["dna_barcode"]) == 660  # 700 nt truncated to the BIOSCAN 660
    assert first["species"] is None and first["subfamily"] is None and first["tribe"] is None
    assert splits["pretrain"][1]["genus"] is None  # literal "NA" read as missing, not NaN nor "NA"
    assert splits["val"][0]["genus"] == "Aphidoletes"
    assert builder.summary.records == {split: 2 for split in FIVE_M_SPLITS}


def test_bioscan5m_streaming_and_untruncated(tmp_path):
    write_5m(tmp_path / "data")
    builder = Bioscan5M(data_dir=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"), max_nucleotides=None)
    streamed = list(builder.as_streaming_dataset(split="pretrain"))
    assert [row["processid"] for row in streamed] == ["P0000", "P0001"]
    assert len(streamed[0]["dna_barcode"]) == 700


def test_load_bioscan_and_retrieval_splits(tmp_path):
    write_5m(tmp_path / "data")
    splits = load_bioscan("bioscan5m", tmp_path / "data", cache_dir=str(tmp_path / "cache"))
    for role, names in RETRIEVAL_SPLITS["bioscan5m"].items():
        assert all(name in splits for name in names), role
    with pytest.raises(ValueError, match="unknown source"):
        get_builder("bioscan9m", tmp_path)


def test_export_parquet_round_trip_offline(tmp_path):
    write_5m(tmp_path / "data")
    _, splits = _prepare(Bioscan5M, data_dir=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"))
    out = export_parquet(splits, tmp_path / "export")
    assert (out / "data" / "val-00000-of-00001.parquet").is_file()
    assert "configs:" in (out / "README.md").read_text()
    shutil.rmtree(tmp_path / "data")  # the export must not point at the source images
    loaded = datasets.load_dataset(str(out), cache_dir=str(tmp_path / "cache2"))
    assert set(loaded) == set(FIVE_M_SPLITS)
    assert loaded["val"]["processid"] == splits["val"]["processid"]
    assert loaded["train"][0]["image"].size == (16, 16)


# --- BIOSCAN-1M ---------------------------------------------------------------------------------------------------
def test_bioscan1m_official_lists_and_renamed_columns(tmp_path):
    lists = {
        "no_split": [f"BIOUG{n:05d}" for n in range(36, 48)],
        "train_seen": [f"BIOUG{n:05d}" for n in range(0, 20)],
        "seen_keys": [f"BIOUG{n:05d}" for n in range(20, 24)],
        "val_seen": [f"BIOUG{n:05d}" for n in range(24, 28)],
        "test_seen": [f"BIOUG{n:05d}" for n in range(28, 32)],
        "val_unseen": [f"BIOUG{n:05d}" for n in range(32, 34)],
        "val_unseen_keys": [f"BIOUG{n:05d}" for n in range(34, 36)],
    }
    write_1m(tmp_path / "data", lists=lists)
    builder, splits = _prepare(Bioscan1M, data_dir=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"))
    for split, ids in lists.items():
        assert splits[split]["sampleid"] == ids
    assert sorted(splits["all_keys"]["sampleid"]) == sorted(lists["seen_keys"] + lists["val_unseen_keys"])
    assert len(splits["no_split_and_seen_train"]) == 32
    record = splits["train_seen"][0]
    assert record["dna_barcode"] == "acgt-" * 4  # nucraw kept as written: the tokenizer normalises
    assert record["dna_bin"] == "BOLD:ABC0000"  # uri
    assert record["subfamily"] is None and record["tribe"] is None  # "not_classified"
    assert record["image"] is not None
    assert "test_unseen" not in splits  # no records: not written, and said so
    assert any("test_unseen" in warning for warning in builder.summary.warnings)


def test_bioscan1m_rebuilt_partition_is_seeded(tmp_path):
    write_1m(tmp_path / "data", n_species=6)
    kwargs = {"data_dir": str(tmp_path / "data"), "image_package": None, "partition": "rebuild"}
    _, first = _prepare(Bioscan1M, cache_dir=str(tmp_path / "c1"), seed=3, **kwargs)
    _, again = _prepare(Bioscan1M, cache_dir=str(tmp_path / "c2"), seed=3, **kwargs)
    assert {s: d["processid"] for s, d in first.items()} == {s: d["processid"] for s, d in again.items()}
    assert len(first["no_split"]) == 12  # the not_classified species
    assert first["train_seen"][0]["image"] is None  # image_package=None: metadata only


def test_bioscan1m_official_partition_requires_lists(tmp_path):
    write_1m(tmp_path / "data")
    builder = Bioscan1M(data_dir=str(tmp_path / "data"), cache_dir=str(tmp_path / "c"), partition="official")
    with pytest.raises(DataIntegrityError, match="CLIBD split lists are missing"):
        builder.download_and_prepare()


def _real_1m_layout(realdata: Path, root: Path, n_images: int = 3) -> list[str]:
    base = root / "bioscan1m"
    base.mkdir(parents=True)
    shutil.copy(
        realdata / "zahrag__BIOSCAN-1M" / "small_dataset_validation_metadata.tsv",
        base / "BIOSCAN_Insect_Dataset_metadata.tsv",
    )
    meta = pd.read_csv(base / "BIOSCAN_Insect_Dataset_metadata.tsv", sep="\t", dtype=str, keep_default_na=False)
    photos = sorted((realdata / "zahrag__BIOSCAN-1M" / "cropped_images").glob("cropped_resized_*.jpg"))
    folder = base / "images" / "cropped_256" / "part1"
    folder.mkdir(parents=True)
    for photo, name in zip(photos, meta["image_file"][:n_images], strict=False):
        shutil.copy(photo, folder / name)  # real BIOSCAN-1M photos under real image_file names
    return meta["processid"][:n_images].tolist()


def test_bioscan1m_real_metadata_without_dna(realdata, tmp_path):
    with_images = _real_1m_layout(realdata, tmp_path / "data")
    builder, splits = _prepare(
        Bioscan1M, data_dir=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"), image_policy="keep"
    )
    summary = builder.summary
    assert summary.rows_read == 8273
    assert any("no 'nucraw'" in warning for warning in summary.warnings)
    assert summary.images_missing == 8273 - 3 and summary.images_skipped == 0
    everything = datasets.concatenate_datasets(
        [splits[s] for s in splits if s not in ("all_keys", "no_split_and_seen_train")]
    )
    assert len(everything) == 8273 and len(set(everything["processid"])) == 8273
    assert set(everything["dna_barcode"]) == {None}
    by_id = {row["processid"]: row for row in everything.select_columns(["processid", "image", "species"])}
    assert all(by_id[pid]["image"] is not None for pid in with_images)
    assert sum(row["image"] is not None for row in by_id.values()) == 3
    assert "not_classified" not in set(everything["species"])

    strict = Bioscan1M(
        data_dir=str(tmp_path / "data"), cache_dir=str(tmp_path / "c2"), image_package=None, require_dna=True
    )
    with pytest.raises(DataIntegrityError, match="nucraw"):
        strict.download_and_prepare()


def test_bioscan1m_real_images_skip_policy(realdata, tmp_path):
    with_images = _real_1m_layout(realdata, tmp_path / "data")
    builder, splits = _prepare(
        Bioscan1M, data_dir=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"), image_policy="skip"
    )
    kept = sorted(
        pid for s in splits if s not in ("all_keys", "no_split_and_seen_train") for pid in splits[s]["processid"]
    )
    assert kept == sorted(with_images)
    assert builder.summary.images_skipped == 8270
    assert PrepareSummaryFromCache(tmp_path).images_skipped == 8270  # stored with the cache


def PrepareSummaryFromCache(tmp_path: Path):  # noqa: N802 (reads like the object it returns)
    return Bioscan1M(data_dir=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"), image_policy="skip").summary


# --- BOLD ---------------------------------------------------------------------------------------------------------
def test_bold_bcdm_export_real(realdata, tmp_path):
    source = realdata / BOLD_DIR / "test_odonata_small.tsv"
    builder, splits = _prepare(BoldExport, data_dir=str(source), cache_dir=str(tmp_path / "cache"))
    library = splits["train"]
    summary = builder.summary
    assert summary.rows_read == 85
    assert summary.rows_dropped["non_coi_marker"] == 13  # 16S, ITS and marker 'None' rows filtered
    assert summary.rows_dropped["no_sequence"] == 1
    assert len(library) == 85 - 13 - 1
    assert len(set(library["processid"])) == len(library)  # the 16S/COI twins are no longer duplicates
    assert set(library["image"]) == {None}
    barcodes = library["dna_barcode"]
    assert any(b.islower() for b in barcodes) and any("-" in b for b in barcodes)  # kept as given
    assert None in set(library["species"]) and "None" not in set(library["species"])
    assert "None" not in set(library["family"])


def test_bold_older_tsv_and_derived_sample(realdata, tmp_path):
    _, old = _prepare(BoldExport, data_dir=str(realdata / BOLD_DIR / "BOLD_test.tsv"), cache_dir=str(tmp_path / "c1"))
    assert len(old["train"]) == 199 and all(old["train"]["dna_barcode"])  # nucraw column
    _, sample = _prepare(
        BoldExport,
        data_dir=str(realdata),
        metadata_file="coi_fulltax_sample.tsv",
        cache_dir=str(tmp_path / "c2"),
        partition="clibd",
        seed=0,
    )
    seen = {
        sp for s in ("train_seen", "val_seen", "test_seen", "seen_keys") if s in sample for sp in sample[s]["species"]
    }
    unseen = {sp for s in ("val_unseen", "test_unseen") if s in sample for sp in sample[s]["species"]}
    assert seen.isdisjoint(unseen)
    assert sum(len(sample[s]) for s in sample if s not in ("all_keys", "no_split_and_seen_train")) == 412


def test_bold_multi_value_cells(realdata, tmp_path):
    raw = pd.read_csv(realdata / "coi_fulltax_sample.tsv", sep="\t", dtype=str, keep_default_na=False).head(4)
    coi = raw.loc[0, "nuc"]
    raw.loc[0, "marker_code"] = "16S;COI-5P"
    raw.loc[0, "nuc"] = "AATTTAAAGG;" + coi
    raw.loc[1, "bin_uri"] = "BOLD:AAA0001;BOLD:AAA0002"
    raw.loc[2, "marker_code"] = "COI-3P"
    raw.loc[3, "species"] = "None"
    path = tmp_path / "multi.tsv"
    raw.to_csv(path, sep="\t", index=False)
    builder, splits = _prepare(BoldExport, data_dir=str(path), cache_dir=str(tmp_path / "cache"))
    rows = {row["processid"]: row for row in splits["train"]}
    assert rows[raw.loc[0, "processid"]]["dna_barcode"] == coi  # the COI-5P member of the pair
    assert rows[raw.loc[1, "processid"]]["dna_bin"] == "BOLD:AAA0001"  # first value
    assert raw.loc[2, "processid"] not in rows  # COI-3P is not COI-5P
    assert rows[raw.loc[3, "processid"]]["species"] is None
    assert builder.summary.multi_value_cells == {"marker_code": 1, "bin_uri": 1}
    assert builder.summary.rows_dropped["non_coi_marker"] == 1


# --- integrity ----------------------------------------------------------------------------------------------------
def test_sha256_mismatch_names_file_and_both_hashes(tmp_path):
    write_5m(tmp_path / "data")
    actual = sha256_file(five_m_csv(tmp_path / "data"))
    wrong = "0" * 64
    builder = Bioscan5M(data_dir=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"), sha256=wrong)
    with pytest.raises(DataIntegrityError) as error:
        builder.download_and_prepare()
    message = str(error.value)
    assert "BIOSCAN_5M_Insect_Dataset_metadata.csv" in message and wrong in message and actual in message
    Bioscan5M(data_dir=str(tmp_path / "data"), cache_dir=str(tmp_path / "c2"), sha256=actual).download_and_prepare()


def test_manifest_checked(tmp_path):
    write_5m(tmp_path / "data")
    manifest = tmp_path / "SHA256SUMS"
    manifest.write_text(f"{'f' * 64}  bioscan5m/metadata/csv/BIOSCAN_5M_Insect_Dataset_metadata.csv\n")
    builder = Bioscan5M(data_dir=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"), manifest=str(manifest))
    with pytest.raises(DataIntegrityError, match="f" * 64):
        builder.download_and_prepare()


def test_duplicate_processid_named(tmp_path):
    frame = write_5m(tmp_path / "data")
    frame.loc[5, "processid"] = "P0002"
    frame.to_csv(five_m_csv(tmp_path / "data"), index=False)
    builder = Bioscan5M(data_dir=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"), image_policy="keep")
    with pytest.raises(DataIntegrityError, match="duplicate processid 'P0002'"):
        builder.download_and_prepare()


@pytest.mark.parametrize("policy", ["fail", "skip", "keep"])
def test_corrupt_image_policy(tmp_path, policy):
    frame = write_5m(tmp_path / "data")
    image = five_m_image(tmp_path / "data", frame, 4)  # a val record
    image.write_bytes(image.read_bytes()[:40])  # truncated JPEG
    builder = Bioscan5M(data_dir=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"), image_policy=policy)
    if policy == "fail":
        with pytest.raises(Exception) as error:  # noqa: B017 (datasets wraps it in DatasetGenerationError)
            builder.download_and_prepare()
        assert "P0004" in _error_chain(error.value) and "corrupt" in _error_chain(error.value)
        assert not list((tmp_path / "cache").rglob("*.incomplete"))
        return
    builder.download_and_prepare()
    val = builder.as_dataset(split="val")
    assert builder.summary.images_corrupt == 1
    assert builder.summary.images_skipped == (1 if policy == "skip" else 0)
    if policy == "skip":
        assert val["processid"] == ["P0005"]
    else:
        assert val["processid"] == ["P0004", "P0005"] and val[0]["image"] is None


def test_missing_image_fails_with_processid(tmp_path):
    frame = write_5m(tmp_path / "data")
    five_m_image(tmp_path / "data", frame, 6).unlink()
    builder = Bioscan5M(data_dir=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(DataIntegrityError, match="processid 'P0006' is missing"):
        builder.download_and_prepare()


def test_missing_metadata_file_is_clear(tmp_path):
    builder = Bioscan5M(data_dir=str(tmp_path / "nowhere"), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(DataIntegrityError, match="nowhere does not exist"):
        builder.download_and_prepare()
    (tmp_path / "empty").mkdir()
    builder = Bioscan5M(data_dir=str(tmp_path / "empty"), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(DataIntegrityError, match="metadata file not found"):
        builder.download_and_prepare()


def test_changed_source_gets_new_cache(tmp_path):
    frame = write_5m(tmp_path / "data")
    kwargs = {"data_dir": str(tmp_path / "data"), "cache_dir": str(tmp_path / "cache")}
    first, splits = _prepare(Bioscan5M, **kwargs)
    assert len(splits["val"]) == 2
    frame.loc[4, "split"] = "test"  # one val record moves to test, same path
    frame.to_csv(five_m_csv(tmp_path / "data"), index=False)
    os.utime(five_m_csv(tmp_path / "data"), ns=(1, 1))  # a different mtime even on coarse clocks
    (tmp_path / "data" / "bioscan5m" / "images" / "cropped_256" / "test").joinpath("P0004.jpg").write_bytes(
        five_m_image(tmp_path / "data", frame.assign(split="val"), 4).read_bytes()
    )
    second, splits = _prepare(Bioscan5M, **kwargs)
    assert second.cache_dir != first.cache_dir
    assert len(splits["val"]) == 1 and len(splits["test"]) == 3


def test_interrupted_prepare_leaves_nothing_and_rerun_succeeds(tmp_path, monkeypatch):
    write_5m(tmp_path / "data")
    kwargs = {"data_dir": str(tmp_path / "data"), "cache_dir": str(tmp_path / "cache")}
    real = base_module.records_to_arrow
    calls = {"n": 0}

    def explode(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 3:  # mid-generation: two splits written, the third fails
            raise KeyboardInterrupt("simulated interruption")
        return real(*args, **kw)

    monkeypatch.setattr(base_module, "records_to_arrow", explode)
    builder = Bioscan5M(**kwargs)
    with pytest.raises(KeyboardInterrupt):
        builder.download_and_prepare()
    assert not list((tmp_path / "cache").rglob("*.incomplete"))
    assert not list((tmp_path / "cache").rglob("dataset_info.json"))
    assert not list((tmp_path / "cache").rglob("*.arrow"))

    monkeypatch.setattr(base_module, "records_to_arrow", real)
    _, splits = _prepare(Bioscan5M, **kwargs)
    assert sum(len(d) for d in splits.values()) == 16


def test_embed_images_stores_bytes(tmp_path):
    write_5m(tmp_path / "data")
    builder = Bioscan5M(data_dir=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"), embed_images=True)
    builder.download_and_prepare()
    cell = builder.as_dataset(split="val").cast_column("image", datasets.Image(decode=False))[0]["image"]
    assert cell["bytes"][:2] == b"\xff\xd8" and cell["path"] == "P0004.jpg"  # JPEG bytes, no absolute path


def test_official_hash_table(tmp_path, monkeypatch):
    from dataset_scripts import integrity

    write_5m(tmp_path / "data")
    builder = Bioscan5M(data_dir=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"), sha256="official")
    with pytest.raises(DataIntegrityError, match="no official sha256 is recorded"):
        builder.download_and_prepare()
    monkeypatch.setitem(integrity.KNOWN_SHA256, "BIOSCAN_5M_Insect_Dataset_metadata.csv", "a" * 64)
    with pytest.raises(DataIntegrityError, match="expected a{64}"):
        Bioscan5M(
            data_dir=str(tmp_path / "data"), cache_dir=str(tmp_path / "c2"), sha256="official"
        ).download_and_prepare()
    lenient = Bioscan5M(data_dir=str(tmp_path / "data"), cache_dir=str(tmp_path / "c3"))
    lenient.download_and_prepare()  # same-named non-official files (mini-BIOSCAN) still load, with a warning
    assert any("is not the official" in warning for warning in lenient.summary.warnings)


# --- num_proc, streaming by row, image checks, metasplit views ----------------------------------------------------
def _all_records(splits) -> dict[str, list[dict]]:
    plain = {name: split.cast_column("image", datasets.Image(decode=False)) for name, split in splits.items()}
    return {name: split.to_list() for name, split in plain.items()}


def test_num_proc_2_writes_the_same_records_as_num_proc_1(tmp_path, monkeypatch):
    from dataset_scripts import images as images_module

    monkeypatch.setattr(base_module, "_BATCH_ROWS", 1)  # one shard per record: every split can be spread
    monkeypatch.setattr(base_module, "_SPREAD_MIN_ROWS", 1)
    monkeypatch.setattr(images_module, "_PARALLEL_MIN", 1)  # and the image checks run in the process pool
    frame = write_5m(tmp_path / "data", rows_per_split=3)
    image = five_m_image(tmp_path / "data", frame, 7)
    image.write_bytes(image.read_bytes()[:60])
    prepared = {}
    for num_proc in (1, 2):
        builder = Bioscan5M(
            data_dir=str(tmp_path / "data"),
            cache_dir=str(tmp_path / f"c{num_proc}"),
            image_policy="skip",
            embed_images=True,  # the workers read the image bytes
        )
        builder.download_and_prepare(num_proc=num_proc)
        prepared[num_proc] = (_all_records(builder.as_dataset()), builder.summary)
        if num_proc == 2:  # really written by two jobs: datasets names the shards of each job
            assert len(list((tmp_path / "c2").rglob("*-pretrain-0000[01]-of-00002.arrow"))) == 2
    assert prepared[1][0] == prepared[2][0]
    assert prepared[2][0]["train"][0]["processid"] == "P0003"
    assert "P0007" not in [r["processid"] for r in prepared[2][0]["val"]]  # skipped in the pool's check
    assert prepared[1][1].records == prepared[2][1].records == {**dict.fromkeys(FIVE_M_SPLITS, 3), "val": 2}
    assert prepared[2][1].images_corrupt == prepared[2][1].images_skipped == 1


def test_num_proc_2_corrupt_image_fails_naming_the_record(tmp_path, monkeypatch):
    from dataset_scripts import images as images_module

    monkeypatch.setattr(images_module, "_PARALLEL_MIN", 1)
    frame = write_5m(tmp_path / "data")
    five_m_image(tmp_path / "data", frame, 4).write_text("not an image")
    builder = Bioscan5M(data_dir=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(DataIntegrityError, match=r"processid 'P0004' is corrupt .*P0004\.jpg: not a decodable image"):
        builder.download_and_prepare(num_proc=2)
    assert not list((tmp_path / "cache").rglob("*.arrow"))


def test_streaming_by_row_yields_before_the_rest_of_the_table_is_read(tmp_path, monkeypatch):
    monkeypatch.setattr(base_module, "_BATCH_ROWS", 2)
    frame = write_5m(tmp_path / "data")
    _, splits = _prepare(Bioscan5M, data_dir=str(tmp_path / "data"), cache_dir=str(tmp_path / "prepared"))
    for split in FIVE_M_SPLITS:  # the same records, split by split, as preparation writes
        streamed = Bioscan5M(data_dir=str(tmp_path / "data"), cache_dir=str(tmp_path / "s"))
        rows = list(streamed.as_streaming_dataset(split=split).cast_column("image", datasets.Image(decode=False)))
        assert rows == splits[split].cast_column("image", datasets.Image(decode=False)).to_list(), split
    with five_m_csv(tmp_path / "data").open("a") as handle:  # a malformed last line: reached only at the end
        handle.write('P9999,"unterminated\n')
    stream = Bioscan5M(data_dir=str(tmp_path / "data"), cache_dir=str(tmp_path / "s2")).as_streaming_dataset(
        split="pretrain"
    )
    assert next(iter(stream))["processid"] == frame.loc[0, "processid"]
    with pytest.raises(DataIntegrityError, match="BIOSCAN_5M_Insect_Dataset_metadata.csv: not a well-formed"):
        list(Bioscan5M(data_dir=str(tmp_path / "data"), cache_dir=str(tmp_path / "s3")).as_streaming_dataset("val"))


def test_streaming_refuses_a_duplicate_processid_when_reached(tmp_path, monkeypatch):
    monkeypatch.setattr(base_module, "_BATCH_ROWS", 2)
    frame = write_5m(tmp_path / "data")
    frame.loc[9, "processid"] = "P0001"
    frame.to_csv(five_m_csv(tmp_path / "data"), index=False)
    builder = Bioscan5M(data_dir=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"), image_policy="keep")
    with pytest.raises(DataIntegrityError, match="duplicate processid 'P0001'"):
        list(builder.as_streaming_dataset(split="other_heldout"))


def test_bioscan1m_streaming_and_metasplit_views_match_the_prepared_records(tmp_path):
    write_1m(tmp_path / "data", n_species=6)
    kwargs = {"data_dir": str(tmp_path / "data"), "partition": "rebuild", "seed": 1}
    builder, splits = _prepare(Bioscan1M, cache_dir=str(tmp_path / "c"), **kwargs)
    written = {path.name.split("-")[1] for path in (tmp_path / "c").rglob("*.arrow")}
    assert written and not written & set(builder.METASPLITS)  # metasplits are not stored twice
    for name, members in builder.METASPLITS.items():
        view = builder.as_dataset(split=name)
        assert sorted(view["processid"]) == sorted(p for m in members if m in splits for p in splits[m]["processid"])
        assert sorted(splits[name]["processid"]) == sorted(view["processid"])
        assert builder.summary.records[name] == len(view)
        streamed = Bioscan1M(cache_dir=str(tmp_path / "s"), **kwargs).as_streaming_dataset(split=name)
        assert sorted(row["processid"] for row in streamed) == sorted(view["processid"])


@pytest.mark.parametrize(
    ("damage", "mode", "refused"),
    [
        ("cut_half", "header", True),  # no JPEG end marker: decoded, found truncated
        ("text", "header", True),
        ("png_cut", "header", True),  # PNG checksums up to IEND
        ("cut_half", "decode", True),
        ("cut_half", "none", False),
    ],
)
def test_image_verification_modes(tmp_path, damage, mode, refused):
    import io

    from PIL import Image

    frame = write_5m(tmp_path / "data")
    image = five_m_image(tmp_path / "data", frame, 4)
    data = image.read_bytes()
    if damage == "cut_half":
        image.write_bytes(data[: len(data) // 2])
    elif damage == "text":
        image.write_text("processid,sampleid\n")
    else:
        buffer = io.BytesIO()
        Image.open(io.BytesIO(data)).save(buffer, format="PNG")
        image.write_bytes(buffer.getvalue()[:-30])
    builder = Bioscan5M(
        data_dir=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"), verify_images=mode, image_policy="keep"
    )
    builder.download_and_prepare()
    assert builder.summary.images_corrupt == int(refused)
    cell = builder.as_dataset(split="val").cast_column("image", datasets.Image(decode=False))[0]["image"]
    assert (cell is None) == refused  # "none" keeps the damaged file: it fails later, when decoded


def test_header_mode_does_not_decode_a_complete_jpeg(tmp_path, monkeypatch):
    from modeling_bioscanclip import image_processing_bioscanclip

    write_5m(tmp_path / "data")

    def no_decode(*args, **kwargs):
        raise AssertionError("decoded")

    monkeypatch.setattr(image_processing_bioscanclip, "load_image_safely", no_decode)
    builder = Bioscan5M(data_dir=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"))
    builder.download_and_prepare()  # 16 JPEGs accepted by their header and end marker alone
    assert builder.summary.images_corrupt == 0
    with pytest.raises(ValueError, match="verify_images must be one of"):
        Bioscan5M(data_dir=str(tmp_path / "data"), cache_dir=str(tmp_path / "c2"), verify_images="pixels")
