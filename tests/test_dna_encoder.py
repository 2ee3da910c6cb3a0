"""The DNA encoder's training options (issue 28): masked-k-mer pretraining of the tower, taxonomy-aware targets and
the k-mer tokenisation, each reached from train_accelerate.py's command line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_train import base_args

from bioscan_clip.apps import train as train_app
from bioscan_clip.data.specimens import lineage_ids
from bioscan_clip.training import loop
from bioscan_clip.training.pretraining import mask_kmers
from modeling_bioscanclip import BioscanDnaTokenizer, contrastive_loss, taxonomic_targets


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


def test_tokenisation_options_fit_the_tower_and_the_frames(text_tokenizer):
    config = train_app.parse_args(["--dna_stride", "1"])
    assert (config.kmer_size(), config.stride(), config.frames()) == (5, 1, 1)  # overlapping: one frame is all
    assert "dna_frames" not in config.model_overrides()
    assert train_app.parse_args([]).frames() == 5  # the tiny preset averages the five frames of 5-mers
    four = train_app.parse_args(["--dna_kmer_size", "4"])
    assert (four.kmer_size(), four.stride(), four.frames()) == (4, 4, 4)
    processor = loop.presets.build_processor("tiny", text_tokenizer, kmer_size=4, stride=4)
    model_config = loop.presets.model_config("tiny", ["dna", "text"], 100, dna_tokenizer=processor.dna_tokenizer)
    assert model_config.dna_config.vocab_size == 4**4 + 3 == processor.dna_tokenizer.vocab_size
    overlapping = BioscanDnaTokenizer(stride=1)
    positions = loop.presets.model_config("tiny", ["dna", "text"], 100, dna_tokenizer=overlapping)
    assert positions.dna_config.max_position_embeddings == overlapping.sequence_length == 657
    for bad, message in (
        (["--dna_stride", "6"], "--dna_stride: expected 1 to the k-mer length"),
        (["--dna_kmer_size", "4", "--dna_reference_mode"], "--dna_reference_mode reads the original's"),
        (["--rank_weight", "1"], "--rank_weight: expected 0"),
        (["--mask_ratio", "0"], "--mask_ratio"),
    ):
        with pytest.raises(SystemExit):
            train_app.parse_args(bad)


def test_mask_kmers_masks_only_real_kmers():
    tokenizer = BioscanDnaTokenizer()
    encoded = tokenizer.encode_batch(["ACGTTGCA" * 60, "ACGTNACGTAGGCT"])
    ids, attention = torch.from_numpy(encoded.input_ids), torch.from_numpy(encoded.attention_mask)
    masked, labels = mask_kmers(ids, attention, 0.5, np.random.default_rng(0), mask_id=0)
    chosen = labels != -100
    assert torch.equal(masked[chosen], torch.zeros(int(chosen.sum()), dtype=torch.long))
    assert torch.equal(labels[chosen], ids[chosen]) and torch.equal(masked[~chosen], ids[~chosen])
    assert not chosen[:, 0].any()  # the <CLS> prefix
    assert not (chosen & (attention == 0)).any() and not (chosen & (ids == 2)).any()  # padding, <UNK>
    assert 0.4 < chosen[0].sum() / attention[0, 1:].sum() < 0.6
    assert chosen[1].sum() >= 1  # a short barcode still asks for something


def test_pretrained_tower_is_what_training_starts_from(tmp_path, mini_dir, mini_cache, capsys):
    from transformers import BertForMaskedLM

    from modeling_bioscanclip import BioscanClipModel

    pretrain = tmp_path / "pretrain"
    train_app.main(base_args(mini_dir, mini_cache, pretrain, "--objective", "masked_kmers", "--max_steps", "3"))
    summary = json.loads((pretrain / "train_summary.json").read_text())
    assert summary["steps"] == 3 and summary["objective"] == "masked_kmers"
    tower = pretrain / "dna_tower"
    pretrained = BertForMaskedLM.from_pretrained(tower).bert.embeddings.word_embeddings.weight
    out = tmp_path / "clip"
    train_app.main(base_args(mini_dir, mini_cache, out, "--max_steps", "1", "--dna_tower", str(tower)))
    trained = BioscanClipModel.from_pretrained(out / "final_model").dna_model.embeddings.word_embeddings.weight
    assert (trained - pretrained).abs().max() < 0.01  # one small step from the pretrained weights
    fresh = torch.nn.init.normal_(torch.empty_like(pretrained), std=0.02)
    assert (fresh - pretrained).abs().max() > 0.05
    # A tower pretrained on other k-mers is refused in one line that says both.
    code = train_app.main(
        base_args(mini_dir, mini_cache, tmp_path / "k4", "--max_steps", "1", "--dna_tower", str(tower),
                  "--dna_kmer_size", "4")  # fmt: skip
    )
    assert code == 2
    assert "pretrained on 5-mers with stride 5, but this run reads 4-mers with stride 4" in capsys.readouterr().err
