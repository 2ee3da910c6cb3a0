"""The DNA encoder's training options (issue 28): taxonomy-aware targets, overlapping k-mers and a bag-of-k-mers tower,
each reached from train_accelerate.py's command line, and the `bold` preset that puts the measured best together."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import load_script
from test_train import base_args

from bioscan_clip.apps import train as train_app
from bioscan_clip.data.specimens import lineage_ids
from bioscan_clip.features import dna_frames_of
from bioscan_clip.training import presets
from modeling_bioscanclip import (
    BioscanClipModel,
    BioscanClipProcessor,
    BioscanDnaTokenizer,
    contrastive_loss,
    taxonomic_targets,
)

ROOT = Path(__file__).resolve().parents[1]
comparison = load_script("dna_encoder_comparison")


def test_taxonomic_targets_weigh_each_shared_rank_less():
    # order, family, genus, species: 0 and 1 share a genus, 2 only the family, 3 only the order, 4 nothing.
    ids = torch.tensor([[0, 0, 0, 0], [0, 0, 0, 1], [0, 0, 1, 2], [0, 1, 2, 3], [1, 2, 3, 4]])
    targets = taxonomic_targets(ids, 0.2)
    torch.testing.assert_close(targets.sum(dim=1), torch.ones(5))
    row = targets[0] / targets[0, 0]
    torch.testing.assert_close(row, torch.tensor([1.0, 0.2, 0.04, 0.008, 0.0]))
    assert torch.equal(targets, targets.t() * 0 + targets)  # deterministic, no randomness
    # An unknown rank matches nothing there nor below: two records without a genus share only their family.
    unknown = taxonomic_targets(torch.tensor([[0, 0, -1, -1], [0, 0, -1, -1]]), 0.5)
    torch.testing.assert_close(unknown[0], torch.tensor([1.0, 0.25]) / 1.25)
    for weight in (0.0, 1.0, -0.5):
        with pytest.raises(ValueError, match="rank_weight"):
            taxonomic_targets(ids, weight)


def test_rank_weight_changes_the_loss_only_through_shared_ranks():
    torch.manual_seed(0)
    embeds = {m: torch.nn.functional.normalize(torch.randn(4, 8), dim=-1) for m in ("dna", "text")}
    scale = torch.tensor(5.0)
    plain = contrastive_loss(embeds, scale)
    unrelated = torch.tensor([[0, 0, 0, 0], [1, 1, 1, 1], [2, 2, 2, 2], [3, 3, 3, 3]])
    torch.testing.assert_close(contrastive_loss(embeds, scale, taxon_ids=unrelated, rank_weight=0.3), plain)
    related = torch.tensor([[0, 0, 0, 0], [0, 0, 0, 1], [2, 2, 2, 2], [3, 3, 3, 3]])
    assert not torch.allclose(contrastive_loss(embeds, scale, taxon_ids=related, rank_weight=0.3), plain)
    with pytest.raises(ValueError, match="taxon_ids of shape"):
        contrastive_loss(embeds, scale, rank_weight=0.3)


def test_lineage_ids_name_whole_lineages():
    metadata = {
        "order": ["Diptera", "Diptera", "Coleoptera", "Diptera", "Diptera"],
        "family": ["Muscidae", "Muscidae", "Carabidae", "Tipulidae", None],
        "genus": ["Musca", "Musca", "Musca", "Tipula", "Musca"],  # a homonym genus in another family
        "species": ["Musca domestica", "Musca autumnalis", "Musca x", None, "Musca domestica"],
    }
    ids = lineage_ids(metadata, 5).tolist()
    assert ids[0][:3] == ids[1][:3] and ids[0][3] != ids[1][3]  # one genus, two species
    assert ids[2][2] != ids[0][2]  # the same genus name under another family is another genus
    assert ids[3][3] == -1  # no species
    assert ids[4][1:] == [-1, -1, -1]  # no family: nothing finer is known either
    assert ids[4][0] == ids[0][0]


def test_overlapping_kmers_fit_the_tower_and_read_one_frame():
    config = train_app.parse_args(["--dna_stride", "1"])
    assert (config.stride(), config.frames()) == (1, 1)  # every frame holds the same overlapping k-mers
    assert "dna_frames" not in config.model_overrides()
    assert train_app.parse_args([]).frames() == 5  # the tiny preset averages the five frames of 5-mers
    overlapping = BioscanDnaTokenizer(stride=1)
    positions = presets.model_config("tiny", ["dna", "text"], 100, dna_tokenizer=overlapping, dna_layers=0)
    assert positions.dna_config.max_position_embeddings == overlapping.sequence_length == 657
    assert positions.dna_config.num_hidden_layers == 0
    for bad in (["--dna_stride", "6"], ["--dna_stride", "1", "--dna_reference_mode"], ["--rank_weight", "1"]):
        with pytest.raises(SystemExit):
            train_app.parse_args(bad)
    # Reference mode stays the original's non-overlapping 5-mers, bit for bit.
    assert train_app.parse_args(["--dna_reference_mode"]).stride() == 5


def _resolved(argv: list[str]) -> dict:
    config = train_app.parse_args(argv)
    fields = {name: value for name, value in vars(config).items() if name not in ("preset", "dna_frames")}
    return {**fields, "frames": config.frames(), "stride": config.stride()}


def test_the_bold_preset_is_the_variant_the_comparison_measured():
    data = ["--source", "bold", "--data_dir", "library.tsv"]
    variant = comparison.VARIANTS[comparison.DEFAULT]
    measured = ["--preset", "tiny", "--modalities", "dna,text", "--epochs", str(comparison.EPOCHS),
                "--eval_every_epochs", "0", *variant.train, *data]  # fmt: skip
    assert _resolved(["--preset", "bold", "--data_dir", "library.tsv"]) == _resolved(measured)
    assert presets.get_preset("bold").model == presets.get_preset("tiny").model
    assert train_app.parse_args(["--preset", "tiny"]).rank_weight == 0  # tiny and the paper's stay plain InfoNCE
    assert train_app.parse_args(["--preset", "clibd-5m"]).rank_weight == 0


def test_a_bold_preset_model_reads_overlapping_kmers_without_attention(tmp_path, mini_dir, mini_cache):
    args = base_args(mini_dir, mini_cache, tmp_path / "bold", "--max_steps", "2")
    args[args.index("--preset") + 1] = "bold"
    assert train_app.main(args) == 0
    folder = tmp_path / "bold" / "final_model"
    model = BioscanClipModel.from_pretrained(folder)
    processor = BioscanClipProcessor.from_pretrained(folder)
    assert model.config.dna_config.num_hidden_layers == 0 and dna_frames_of(model) == 1
    assert processor.dna_tokenizer.stride == 1 and model.config.modalities == ["dna", "text"]
    rng = torch.Generator().manual_seed(0)
    barcode, other = ("".join("ACGT"[i] for i in torch.randint(0, 4, (650,), generator=rng)) for _ in range(2))
    inputs = processor(dna=[barcode, barcode[1:], other], return_tensors="pt")
    assert inputs["dna_input_ids"].shape[-1] == processor.dna_tokenizer.sequence_length == 657  # <CLS> + 656 k-mers
    with torch.no_grad():
        embeds = model.get_dna_features(inputs["dna_input_ids"], inputs["dna_attention_mask"], normalize=True)
    # One base dropped at the start shifts every k-mer by one position: the same k-mers, nearer than another barcode.
    assert float(embeds[0] @ embeds[1]) > float(embeds[0] @ embeds[2])


def test_the_readme_table_is_the_snapshot_rendered():
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "dna_encoder_comparison.py"), "--check"],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_transfer_rows_count_of_novel_species_trained_elsewhere_is_the_real_libraries(realdata):
    """The README's transfer row says how many of the small library's novel-species queries the large one trains on:
    counted again from the real exports, it is the snapshot's figure."""
    snapshot = json.loads((ROOT / "docs" / "dna_encoder_comparison.json").read_text())
    for library, source in comparison.TRANSFER.items():
        counted = comparison.novel_trained_elsewhere(library, source)
        assert list(counted) == snapshot["transfer"][library]["novel_trained_there"]
        assert 0 < counted[0] < counted[1]
