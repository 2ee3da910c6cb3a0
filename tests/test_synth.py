"""mini-BIOSCAN generator: determinism, layout read by the 5M builder, splits, barcode divergences, CLI glue."""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
import pytest

from bioscan_clip.apps.commands.synth import add_arguments as add_synth_arguments
from bioscan_clip.apps.commands.synth import run as run_synth
from dataset_scripts import Bioscan5M, MiniBioscan
from dataset_scripts.synth import GENERATOR_VERSION, generate_mini_bioscan, p_distance

CSV = "bioscan5m/metadata/csv/BIOSCAN_5M_Insect_Dataset_metadata.csv"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return generate_mini_bioscan(tmp_path_factory.mktemp("mini") / "a", seed=7, size="tiny", progress=False)


@pytest.fixture(scope="module")
def small_metadata(tmp_path_factory):
    """The default size's metadata (images off: the rows and barcodes for a seed are the same)."""
    out = generate_mini_bioscan(
        tmp_path_factory.mktemp("mini") / "s", seed=0, size="small", progress=False, with_images=False
    )
    return pd.read_csv(out / CSV, dtype=str, keep_default_na=False)


def test_same_seed_same_bytes(tiny, tmp_path):
    again = generate_mini_bioscan(tmp_path / "b", seed=7, size="tiny", progress=False)
    assert (again / CSV).read_bytes() == (tiny / CSV).read_bytes()
    images = sorted((tiny / "bioscan5m" / "images").rglob("*.jpg"))
    assert images and all((again / p.relative_to(tiny)).read_bytes() == p.read_bytes() for p in images[:20])
    other = generate_mini_bioscan(tmp_path / "c", seed=8, size="tiny", progress=False, with_images=False)
    assert (other / CSV).read_bytes() != (tiny / CSV).read_bytes()


def test_labelled_synthetic(tiny):
    card = (tiny / "README.md").read_text()
    assert "SYNTHETIC" in card and f"generator version\n{GENERATOR_VERSION}, seed 7" in card
    metadata = pd.read_csv(tiny / CSV, dtype=str, keep_default_na=False)
    assert set(metadata["country"]) == {"SYNTHETIC"}


def test_5m_builder_reads_generated_layout(tiny, tmp_path):
    builder = Bioscan5M(data_dir=str(tiny), cache_dir=str(tmp_path / "cache"))
    builder.download_and_prepare()
    splits = builder.as_dataset()
    assert set(splits) == {
        "pretrain",
        "train",
        "val",
        "test",
        "key_unseen",
        "val_unseen",
        "test_unseen",
        "other_heldout",
    }
    assert builder.summary.images_missing == 0 and builder.summary.images_corrupt == 0
    record = splits["train"][0]
    assert record["image"].size == (64, 64) and record["species"].startswith(record["genus"] + " ")
    assert record["family"].endswith("idae")
    mini = MiniBioscan(data_dir=str(tiny), cache_dir=str(tmp_path / "cache"))
    assert mini.cache_dir != builder.cache_dir  # its own name, its own cache
    mini.download_and_prepare()
    assert mini.as_dataset(split="val")["processid"] == splits["val"]["processid"]


def test_split_scheme(small_metadata):
    frame = small_metadata
    assert 1500 <= len(frame) <= 2500
    counts = frame["split"].value_counts()
    assert 0.3 <= counts["train"] / len(frame) <= 0.5
    assert 100 <= counts["val"] <= 400 and 100 <= counts["test"] <= 400
    species = {split: set(group["species"]) for split, group in frame.groupby("split")}
    seen = species["train"]
    assert species["val"] <= seen and species["test"] <= seen
    unseen = species["key_unseen"]
    assert 10 <= len(unseen) <= 20 and unseen.isdisjoint(seen)
    assert species["val_unseen"] <= unseen and species["test_unseen"] <= unseen
    assert species["pretrain"] == {""}  # pretrain has no species label...
    assert (frame.loc[frame.split == "pretrain", "genus"] == "").any()  # ...and some no genus
    labelled = frame[frame.species != ""]
    assert labelled["order"].nunique() == 3 and labelled["family"].nunique() == 8
    assert labelled["genus"].nunique() == 20 and labelled["species"].nunique() == 60
    assert (frame.loc[frame.split.isin(["pretrain", "train"]), "chunk"] != "").all()
    assert (frame.loc[~frame.split.isin(["pretrain", "train"]), "chunk"] == "").all()


def test_barcode_divergences(small_metadata):
    frame = small_metadata
    lengths = frame["dna_barcode"].str.len()
    assert lengths.max() == 658 and lengths.min() < 600  # Folmer region with read-length variation
    assert frame["dna_barcode"].str.contains("N").mean() > 0.02
    full = frame[(lengths == 658) & (frame.species != "")].reset_index(drop=True)
    bases = np.frombuffer("".join(full["dna_barcode"]).encode(), dtype=np.uint8).reshape(len(full), 658)
    i, j = np.random.default_rng(0).choice(len(full), size=(2, 20000))
    i, j = i[i != j], j[i != j]
    valid = np.isin(bases[i], np.frombuffer(b"ACGT", np.uint8)) & np.isin(bases[j], np.frombuffer(b"ACGT", np.uint8))
    distance = ((bases[i] != bases[j]) & valid).sum(axis=1) / valid.sum(axis=1)  # p-distance, Ns ignored
    k = 5
    assert distance[k] == pytest.approx(p_distance(full.dna_barcode[i[k]], full.dna_barcode[j[k]]))
    same = {rank: full[rank].to_numpy()[i] == full[rank].to_numpy()[j] for rank in ("species", "genus", "family")}
    groups = {
        "within": distance[same["species"]],
        "congeneric": distance[~same["species"] & same["genus"]],
        "confamilial": distance[~same["genus"] & same["family"]],
        "across_family": distance[~same["family"]],
    }
    median = {k: float(np.median(v)) for k, v in groups.items()}
    assert median["within"] < median["congeneric"] < median["confamilial"] < median["across_family"]
    assert 0.001 <= median["within"] <= 0.012
    assert 0.005 <= np.percentile(groups["within"], 90) <= 0.06
    assert 0.11 <= median["congeneric"] <= 0.19
    assert 0.14 <= median["confamilial"] <= 0.22
    assert 0.19 <= median["across_family"] <= 0.28


def test_transitions_outnumber_transversions_and_third_positions_fastest(small_metadata):
    full = small_metadata[small_metadata["dna_barcode"].str.len() == 658]["dna_barcode"].tolist()
    purines = set("AG")
    transitions = transversions = 0
    by_position = np.zeros(3)
    for a, b in zip(full[:150], full[1:151], strict=True):
        for k, (x, y) in enumerate(zip(a, b, strict=True)):
            if x != y and x in "ACGT" and y in "ACGT":
                by_position[(k + 1) % 3] += 1  # the Folmer region starts at the second base of a codon
                if (x in purines) == (y in purines):
                    transitions += 1
                else:
                    transversions += 1
    assert transitions > transversions
    assert by_position[2] > by_position[0] > by_position[1]


def test_cli_glue(tmp_path, capsys):
    parser = add_synth_arguments(argparse.ArgumentParser(prog="bioscan-clip synth"))
    assert "SYNTHETIC" in parser.format_help() and "--size" in parser.format_help()
    args = parser.parse_args(["--out", str(tmp_path / "m"), "--seed", "1", "--size", "tiny", "--no-progress"])
    assert run_synth(args) == 0
    assert (tmp_path / "m" / CSV).is_file() and "SYNTHETIC" in capsys.readouterr().out
    with pytest.raises(ValueError, match="size must be one of"):
        generate_mini_bioscan(tmp_path / "x", size="huge")


def test_mini_builder_generates_default_when_no_data_dir(tmp_path):
    builder = MiniBioscan(cache_dir=str(tmp_path / "cache"), synth_size="tiny", synth_seed=7)
    assert (tmp_path / "cache" / "mini_bioscan_raw" / "tiny-seed7" / "README.md").is_file()
    builder.download_and_prepare()
    assert "SYNTHETIC" in builder.info.description
    assert len(builder.as_dataset(split="train")) > 0
