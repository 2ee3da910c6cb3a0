"""The official BIOSCAN-1M/5M layouts as released (chunked 5M folders, both 1M layouts), genus-from-species,
metadata-only tables and data files given where a folder is expected."""

from __future__ import annotations

import datasets
import pytest
from fixtures_data import (
    FIVE_M_SPLITS,
    OFFICIAL_5M_CHUNKED,
    five_m_csv,
    write_official_1m,
    write_official_5m,
)

from bioscan_clip.apps import cli
from bioscan_clip.data.spec import DataSpec
from dataset_scripts import Bioscan1M, Bioscan5M, DataIntegrityError, generate_mini_bioscan


def _prepare(builder_class, **kwargs):
    builder = builder_class(**kwargs)
    builder.download_and_prepare()
    return builder, builder.as_dataset()


def test_official_5m_chunked_layout_every_split_and_image(tmp_path):
    frame = write_official_5m(tmp_path / "data")
    assert set(frame.loc[frame.chunk != "", "split"]) == set(OFFICIAL_5M_CHUNKED)
    builder, splits = _prepare(Bioscan5M, data_dir=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"))
    assert set(splits) == set(FIVE_M_SPLITS)
    for split in FIVE_M_SPLITS:
        records = splits[split]
        assert records["processid"] == frame.loc[frame.split == split, "processid"].tolist()
        assert all(image is not None and image.size == (16, 16) for image in records["image"]), split
    heldout = splits["other_heldout"].cast_column("image", datasets.Image(decode=False))[0]["image"]["path"]
    assert "/other_heldout/1/" in heldout  # the chunk level, not a flat other_heldout/ folder
    assert builder.summary.images_missing == 0


def test_generator_writes_the_chunked_layout_and_the_builder_reads_it(tmp_path):
    root = generate_mini_bioscan(tmp_path / "mini", seed=1, size="tiny", progress=False, chunked_splits=FIVE_M_SPLITS)
    for split in FIVE_M_SPLITS:
        folder = root / "bioscan5m" / "images" / "cropped_256" / split
        assert folder.is_dir() and not list(folder.glob("*.jpg")), split  # every image one level down
        assert list(folder.glob("1/*.jpg")), split
    _, splits = _prepare(Bioscan5M, data_dir=str(root), cache_dir=str(tmp_path / "cache"))
    assert set(splits) == set(FIVE_M_SPLITS)
    assert all(image is not None for split in splits.values() for image in split["image"])


@pytest.mark.parametrize("base", ["bioscan1m", "bioscan"])
def test_official_1m_both_layouts_load_with_every_image(tmp_path, base):
    frame = write_official_1m(tmp_path / "data", base=base)
    builder, splits = _prepare(
        Bioscan1M, data_dir=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"), partition="rebuild"
    )
    assert builder.metadata_path.parent == (
        tmp_path / "data" / "bioscan1m" if base == "bioscan1m" else tmp_path / "data"
    )
    written = {pid for name, split in splits.items() if name not in builder.METASPLITS for pid in split["processid"]}
    assert written == set(frame["processid"])
    assert all(image is not None for split in splits.values() for image in split["image"])
    assert builder.summary.images_missing == 0


def test_genus_from_species_matches_bioscan_dataset(tmp_path):
    frame = write_official_1m(tmp_path / "data")
    options = {"data_dir": str(tmp_path / "data"), "partition": "rebuild", "image_package": None}
    _, plain = _prepare(Bioscan1M, cache_dir=str(tmp_path / "c1"), **options)
    builder, filled = _prepare(Bioscan1M, cache_dir=str(tmp_path / "c2"), genus_from_species=True, **options)
    unclassified = int((frame["genus"] == "not_classified").sum())
    assert unclassified > 0
    genus = {r["processid"]: r["genus"] for s in plain.values() for r in s}
    assert sum(g is None for g in genus.values()) == unclassified  # off by default: the source's labels
    for split in filled.values():
        for record in split:
            assert record["genus"] == record["species"].split(" ")[0]  # bioscan-dataset: species.split(" ")[0]
    assert builder.summary.labels_filled == {"genus_from_species": unclassified}


def test_metadata_only_table_as_data_dir(tmp_path):
    write_official_5m(tmp_path / "data")
    table = tmp_path / "barcodes_only.csv"
    table.write_bytes(five_m_csv(tmp_path / "data").read_bytes())  # the metadata without its image folders
    with pytest.raises(DataIntegrityError, match="missing.*image_policy"):
        DataSpec("bioscan5m", str(table), cache_dir=str(tmp_path / "c0")).load()
    for options in ({"image_package": "none"}, {"image_policy": "keep"}):
        splits, roles = DataSpec("bioscan5m", str(table), cache_dir=str(tmp_path / str(options)), **options).load()
        assert set(splits) == set(FIVE_M_SPLITS)
        assert set(splits["val"]["image"]) == {None} and all(splits["val"]["dna_barcode"])


def test_data_dir_that_is_neither_folder_nor_table_is_named(tmp_path):
    image = tmp_path / "photo.jpg"
    image.write_bytes(b"\xff\xd8")
    with pytest.raises(DataIntegrityError, match=r"photo\.jpg is a file but not a table"):
        DataSpec("bioscan5m", str(image), cache_dir=str(tmp_path / "c")).load()
    with pytest.raises(DataIntegrityError, match="does not exist"):
        DataSpec("bioscan1m", str(tmp_path / "nowhere"), cache_dir=str(tmp_path / "c")).load()


def test_cli_indexes_a_metadata_only_dataset_with_an_image_dna_text_model(tmp_path, trained_tiny, mini_dir, capsys):
    """The crash of issue 11: barcodes without images, and a model with an image tower."""
    splits, _ = DataSpec("mini", str(mini_dir), cache_dir=str(tmp_path / "cache"), image_package="none").load()
    saved = tmp_path / "barcodes_only"
    splits.save_to_disk(str(saved))
    assert (
        cli.main(["index", "--model", str(trained_tiny), "--dataset_path", str(saved), "--out", str(tmp_path / "k")])
        == 0
    )
    assert "features ['dna', 'kmer', 'text']" in capsys.readouterr().out
    keys = datasets.load_from_disk(str(tmp_path / "k" / "records"))
    assert len(keys) == len(splits["train"]) + len(splits["key_unseen"])
    # The same from the CLI flags on the builder: a metadata-only read of the 5M layout.
    code = cli.main([
        "index", "--model", str(trained_tiny), "--source", "mini", "--data_dir", str(mini_dir),
        "--cache_dir", str(tmp_path / "cache2"), "--image_package", "none", "--out", str(tmp_path / "k2"),
    ])  # fmt: skip
    assert code == 0 and "features ['dna', 'kmer', 'text']" in capsys.readouterr().out


def test_data_options_reach_the_builder(tmp_path):
    import argparse

    from fixtures_data import five_m_image, write_5m

    from bioscan_clip.apps.commands.options import add_data_arguments, data_spec

    frame = write_5m(tmp_path / "data")
    five_m_image(tmp_path / "data", frame, 4).write_text("not an image")
    parser = argparse.ArgumentParser()
    add_data_arguments(parser)
    base = ["--source", "bioscan5m", "--data_dir", str(tmp_path / "data")]
    spec = data_spec(parser.parse_args([*base, "--cache_dir", str(tmp_path / "c1"), "--verify_images", "none"]))
    assert spec.builder_options() == {"verify_images": "none"}
    splits, _ = spec.load()  # not checked: the text file is kept as the record's image
    assert len(splits["val"]) == 2
    strict = data_spec(parser.parse_args([*base, "--cache_dir", str(tmp_path / "c2"), "--num_proc", "2"]))
    with pytest.raises(DataIntegrityError, match="processid 'P0004' is corrupt"):
        strict.load()
