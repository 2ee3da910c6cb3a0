"""The frame-robust DNA path: barcode augmentation (random reading frame, trimming, ambiguous bases) and reading-frame
averaging at inference, with an off-frame retrieval test on real BOLD barcodes in ../shared/realdata."""

from __future__ import annotations

import csv
import random

import datasets
import numpy as np
import pytest
import torch

from bioscan_clip.data.augmentation import DNA_STREAM, DnaAugmentation
from bioscan_clip.data.barcodes import clean_barcodes, frame_shifted_barcodes
from bioscan_clip.data.specimens import SpecimenDataset, model_inputs
from bioscan_clip.features import dna_frames_of, embed_dataset, embed_inputs
from bioscan_clip.training import presets
from bioscan_clip.training.config import TrainConfig
from bioscan_clip.training.text_tokenizer import train_taxonomy_tokenizer
from modeling_bioscanclip import (
    BioscanClipConfig,
    BioscanClipModel,
    BioscanClipProcessor,
    BioscanDnaTokenizer,
    BioscanInputError,
    contrastive_loss,
    normalize_barcode,
    taxonomy_to_text,
)
from modeling_bioscanclip.constants_bioscanclip import TAXONOMIC_RANKS
from tests.conftest import tiny_config_kwargs

V3_EXPORT = "matteodegobbi__InsectClassification/insect_species_bold_v3_coi_subset.tsv"
RANK_COLUMNS = {"order": "order_name", "family": "family_name", "genus": "genus_name", "species": "species_name"}


def _bold_records(realdata, species: int, per_species: int, seed: int = 0) -> list[dict]:
    """``per_species`` records of each of ``species`` species (chosen at random among those with enough records,
    barcodes of at least 500 nt), from the real BOLD v3 export."""
    with open(realdata / V3_EXPORT, newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    by_species: dict[str, list[dict]] = {}
    for row in rows:
        barcode = row["nucleotides"].strip()
        if row["species_name"].strip() and len(barcode.replace("-", "")) >= 500:
            record = {"processid": row["processid"], "dna_barcode": barcode}
            record.update({rank: row[column].strip() or None for rank, column in RANK_COLUMNS.items()})
            by_species.setdefault(row["species_name"].strip(), []).append(record)
    names = sorted(name for name, records in by_species.items() if len(records) >= per_species)
    chosen = random.Random(seed).sample(names, species)
    return [record for name in chosen for record in by_species[name][:per_species]]


def _dataset(records: list[dict]) -> datasets.Dataset:
    columns = ("processid", "dna_barcode", *TAXONOMIC_RANKS)
    return datasets.Dataset.from_dict({column: [record[column] for record in records] for column in columns})


@pytest.fixture(scope="module")
def dna_processor(text_tokenizer):
    return BioscanClipProcessor(
        image_processor=presets.image_processor("tiny"), dna_tokenizer=BioscanDnaTokenizer(), tokenizer=text_tokenizer
    )


# ---- the augmentation --------------------------------------------------------------------------------------------


def test_augmentation_is_deterministic_and_stays_within_its_bounds():
    augmentation = DnaAugmentation()
    rng = np.random.default_rng(0)
    barcode = "".join(rng.choice(list("ACGT"), size=658))
    starts, lengths, ambiguous = set(), [], []
    for index in range(400):
        draw = [0, 3, index, DNA_STREAM]
        augmented = augmentation(barcode, np.random.default_rng(draw))
        assert augmented == augmentation(barcode, np.random.default_rng(draw))
        start, end, positions = augmentation.draw(len(barcode), np.random.default_rng(draw))
        assert augmented == "".join("N" if i in set(positions) else base for i, base in enumerate(barcode[start:end]))
        # The shift (0..4) plus a trim of at most a quarter of the record, never below 300 nt.
        assert 0 <= start <= 4 + 0.25 * len(barcode)
        assert len(augmented) >= 300 and len(barcode) - len(augmented) <= 4 + 0.25 * (len(barcode) - 4)
        assert len(positions) <= 3
        starts.add(start % 5)
        lengths.append(len(augmented))
        ambiguous.append(augmented.count("N"))
    assert starts == {0, 1, 2, 3, 4}  # every reading frame is drawn
    assert 0.3 < np.mean(np.array(lengths) < len(barcode) - 4) < 0.7  # about half the records trimmed
    assert 0.15 < np.mean(np.array(ambiguous) > 0) < 0.45 and max(ambiguous) == 3
    # A barcode shorter than min_length is shifted, never trimmed; one of a single k-mer is left whole.
    for index in range(50):
        start, end, _ = augmentation.draw(200, np.random.default_rng([1, 0, index]))
        assert 0 <= start <= 4 and end == 200
        assert augmentation.draw(5, np.random.default_rng([1, 0, index]))[:2] == (0, 5)


def test_augmentation_options_are_checked():
    for bad in ({"max_shift": -1}, {"trim_probability": 1.5}, {"min_length": 2}, {"max_ambiguous": -1}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            DnaAugmentation(**bad)


def test_a_bad_barcode_is_named_by_its_record():
    assert clean_barcodes(["--acgu-\nNNtA"], ["R1"]) == ["ACGTNNTA"]
    with pytest.raises(BioscanInputError, match=r"record BAD-1 \(barcode\): invalid character 'X'"):
        clean_barcodes(["ACGTX"], ["BAD-1"])


def test_dataset_draws_barcodes_from_seed_epoch_and_index(dna_processor):
    rng = np.random.default_rng(1)
    records = [
        {"processid": f"R{i}", "dna_barcode": "---" + "".join(rng.choice(list("ACGT"), size=620)), "order": "Diptera"}
        for i in range(6)
    ]
    for record in records:
        record.update({rank: None for rank in TAXONOMIC_RANKS if rank != "order"})
    plain = SpecimenDataset(_dataset(records), dna_processor, ["dna", "text"])
    augmented = SpecimenDataset(
        _dataset(records), dna_processor, ["dna", "text"], seed=7, dna_augmentation=DnaAugmentation()
    )
    again = SpecimenDataset(
        _dataset(records), dna_processor, ["dna", "text"], seed=7, dna_augmentation=DnaAugmentation()
    )
    # Without augmentation the items are the processor's ids, untouched (the reference path).
    expected = dna_processor(dna=[r["dna_barcode"] for r in records], return_tensors="pt")["dna_input_ids"]
    assert torch.equal(torch.stack([plain[i]["dna_input_ids"] for i in range(6)]), expected)
    epochs = []
    for epoch in (0, 1):
        augmented.set_epoch(epoch)
        again.set_epoch(epoch)
        items = [augmented[i] for i in range(6)]
        assert all(torch.equal(a["dna_input_ids"], again[i]["dna_input_ids"]) for i, a in enumerate(items))
        for i, item in enumerate(items):  # the ids of the augmented barcode drawn from (seed, epoch, index)
            cleaned = normalize_barcode(records[i]["dna_barcode"]).sequence
            barcode = DnaAugmentation()(cleaned, np.random.default_rng([7, epoch, i, DNA_STREAM]))
            ids = dna_processor(dna=[barcode], return_tensors="pt")["dna_input_ids"][0]
            assert torch.equal(item["dna_input_ids"], ids)
            assert item["dna_attention_mask"].sum() == -(-len(barcode) // 5) + 1
            assert torch.equal(item["input_ids"], plain[i]["input_ids"])  # the text is not augmented
        epochs.append(torch.stack([item["dna_input_ids"] for item in items]))
    assert not torch.equal(epochs[0], epochs[1])


def test_persistent_loader_workers_follow_set_epoch(dna_processor):
    # Training keeps its loader workers across epochs: the epoch they augment with is the one set_epoch last wrote.
    rng = np.random.default_rng(2)
    records = [{"processid": f"R{i}", "dna_barcode": "".join(rng.choice(list("ACGT"), size=600))} for i in range(8)]
    for record in records:
        record.update({rank: None for rank in TAXONOMIC_RANKS})
    dataset = SpecimenDataset(_dataset(records), dna_processor, ["dna"], seed=3, dna_augmentation=DnaAugmentation())
    loader = torch.utils.data.DataLoader(dataset, batch_size=8, num_workers=1, persistent_workers=True)
    seen = []
    for epoch in (0, 1, 2):
        dataset.set_epoch(epoch)
        [batch] = list(loader)
        expected = torch.stack([item["dna_input_ids"] for item in dataset.__getitems__(range(8))])
        assert torch.equal(batch["dna_input_ids"], expected), epoch  # the worker drew this epoch's barcodes
        seen.append(batch["dna_input_ids"])
    assert not torch.equal(seen[0], seen[1]) and not torch.equal(seen[1], seen[2])


def test_presets_turn_the_augmentation_on_except_in_the_papers_recipe():
    assert TrainConfig.from_preset("tiny").dna_augmentation
    assert not TrainConfig.from_preset("clibd-1m").dna_augmentation
    assert not TrainConfig.from_preset("clibd-5m").dna_augmentation
    assert not TrainConfig().dna_augmentation
    assert TrainConfig.from_preset("tiny").model_overrides()["dna_frames"] == 5
    assert "dna_frames" not in TrainConfig.from_preset("clibd-5m").model_overrides()
    assert "dna_frames" not in TrainConfig.from_preset("tiny", dna_frames=1).model_overrides()
    with pytest.raises(ValueError, match="dna_frames"):
        TrainConfig.from_preset("tiny", dna_frames=0)


# ---- frame averaging at inference --------------------------------------------------------------------------------


def _untrained_dna_model(**overrides) -> BioscanClipModel:
    torch.manual_seed(0)
    return BioscanClipModel(BioscanClipConfig(**tiny_config_kwargs(("dna", "text"), **overrides))).eval()


def test_one_frame_is_the_plain_embedding_and_the_default(dna_processor, tmp_path):
    model = _untrained_dna_model()
    assert dna_frames_of(model) == 1  # a config without the field (converted CLIBD weights): one frame
    records = [
        {"processid": f"R{i}", "dna_barcode": "ACGTTGCA" * (60 + i), **dict.fromkeys(TAXONOMIC_RANKS)} for i in range(3)
    ]
    dataset = SpecimenDataset(_dataset(records), dna_processor, ["dna"])
    with torch.inference_mode():
        direct = model.embed(
            **model_inputs(dna_processor(dna=[r["dna_barcode"] for r in records], return_tensors="pt"))
        )
    embedded = embed_dataset(model, dataset, show_progress=False, combined=False)["dna"]
    np.testing.assert_array_equal(embedded, direct["dna"].numpy())  # bit-exact: the reference path is untouched
    framed = _untrained_dna_model(dna_frames=5)
    assert dna_frames_of(framed) == 5
    framed.save_pretrained(tmp_path)  # the choice travels with the weights (config.json)
    assert dna_frames_of(BioscanClipModel.from_pretrained(tmp_path)) == 5
    with pytest.raises(ValueError, match="dna_frames"):
        embed_dataset(model, dataset, show_progress=False, dna_frames=0)


def test_frame_averaging_is_the_mean_of_the_shifted_barcodes_and_brings_shifted_barcodes_closer(
    realdata, dna_processor
):
    records = _bold_records(realdata, species=12, per_species=1)
    model = _untrained_dna_model(dna_frames=5)
    cleaned = [normalize_barcode(record["dna_barcode"]).sequence for record in records]

    def embed(barcodes: list[str], frames: int | None) -> np.ndarray:
        rows = [{**record, "dna_barcode": barcode} for record, barcode in zip(records, barcodes, strict=True)]
        dataset = SpecimenDataset(_dataset(rows), dna_processor, ["dna"])
        return embed_dataset(model, dataset, batch_size=5, show_progress=False, combined=False, dna_frames=frames)[
            "dna"
        ]

    # Against a naive reference: the mean of the unit embeddings of barcode[s:], s = 0..4, unit length again.
    with torch.inference_mode():
        naive = sum(
            model.embed(**model_inputs(dna_processor(dna=frame_shifted_barcodes(cleaned, s), return_tensors="pt")))[
                "dna"
            ]
            for s in range(5)
        )
    averaged = embed(cleaned, None)  # the model's config gives the default: 5 frames here
    np.testing.assert_allclose(averaged, torch.nn.functional.normalize(naive, dim=-1).numpy(), atol=1e-6)
    # Raw queries (identify, embed) are embedded as datasets are, frames included, so queries and keys compare.
    raw = [record["dna_barcode"] for record in records]
    np.testing.assert_allclose(embed_inputs(model, dna_processor, barcodes=raw)["dna"].numpy(), averaged, atol=1e-6)
    single = embed_inputs(model, dna_processor, barcodes=raw, dna_frames=1)["dna"].numpy()
    np.testing.assert_allclose(single, embed(cleaned, 1), atol=1e-6)
    # Read from base s, a barcode shares 5 - s of its 5 frames with itself: closer than one frame makes it.
    for shift in range(1, 5):
        shifted = [c[shift:] for c in cleaned]
        one = np.sum(embed(cleaned, 1) * embed(shifted, 1), axis=1)
        five = np.sum(averaged * embed(shifted, None), axis=1)
        assert (five > one).all(), (shift, one, five)


# ---- off-frame retrieval on real barcodes ------------------------------------------------------------------------


def _train_briefly(train: datasets.Dataset, processor, augmentation: DnaAugmentation | None, steps: int):
    """A tiny DNA+text model trained with the project's loss for ``steps`` batches of 32 (the same seed and order
    with and without augmentation)."""
    model = _untrained_dna_model(text_vocab_size=processor.tokenizer.vocab_size).train()
    dataset = SpecimenDataset(train, processor, ["dna", "text"], seed=0, dna_augmentation=augmentation)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    step = 0
    while step < steps:
        dataset.set_epoch(step)
        loader = torch.utils.data.DataLoader(dataset, batch_size=32, shuffle=True, generator=generator, drop_last=True)
        for batch in loader:
            out = model(**model_inputs(batch))
            loss = contrastive_loss(
                {"dna": out.dna_embeds, "text": out.text_embeds}, out.logit_scale, species_ids=batch["species_id"]
            )
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            step += 1
            if step == steps:
                break
    return model.eval()


def test_augmentation_makes_off_frame_real_barcodes_find_their_species(realdata):
    """Keys: one real barcode per species as BOLD gives it; queries: another specimen of the species with its first
    1-4 bases trimmed (a non-multiple of 5: every k-mer of the query is out of the keys' frame)."""
    torch.set_num_threads(1)
    records = _bold_records(realdata, species=24, per_species=6)
    keys = [records[i] for i in range(0, len(records), 6)]
    queries = [records[i + 1] for i in range(0, len(records), 6)]
    train = _dataset([r for i, r in enumerate(records) if i % 6 not in (1,)])
    texts = [taxonomy_to_text(r) for r in records]
    processor = BioscanClipProcessor(
        image_processor=presets.image_processor("tiny"),
        dna_tokenizer=BioscanDnaTokenizer(),
        tokenizer=train_taxonomy_tokenizer(texts, vocab_size=300),
    )
    key_set = SpecimenDataset(_dataset(keys), processor, ["dna"])
    species = np.array([r["species"] for r in keys], dtype=object)

    def accuracy(model, frames: int = 1) -> tuple[float, float]:
        key_embeds = embed_dataset(model, key_set, show_progress=False, combined=False, dna_frames=frames)["dna"]
        scores = []
        for shift in (0, 1, 2, 3, 4):
            rows = [{**q, "dna_barcode": normalize_barcode(q["dna_barcode"]).sequence[shift:]} for q in queries]
            query_set = SpecimenDataset(_dataset(rows), processor, ["dna"])
            embeds = embed_dataset(model, query_set, show_progress=False, combined=False, dna_frames=frames)["dna"]
            found = species[np.argmax(embeds @ key_embeds.T, axis=1)]
            scores.append(float(np.mean(found == np.array([q["species"] for q in queries], dtype=object))))
        return scores[0], float(np.mean(scores[1:]))

    plain_model = _train_briefly(train, processor, None, steps=60)
    plain_in, plain_off = accuracy(plain_model)
    augmented_in, augmented_off = accuracy(_train_briefly(train, processor, DnaAugmentation(), steps=60))
    framed_in, framed_off = accuracy(plain_model, frames=5)
    print(f"in frame {plain_in:.3f} -> {augmented_in:.3f}; off frame {plain_off:.3f} -> {augmented_off:.3f}")
    print(f"5 frames averaged, no augmentation: in frame {framed_in:.3f}, off frame {framed_off:.3f}")
    assert augmented_off >= plain_off + 0.15, (plain_off, augmented_off)
    assert augmented_off >= 0.6 and augmented_in >= 0.6
    # Frame averaging alone (the inference option) also finds the off-frame specimens.
    assert framed_off >= plain_off + 0.15 and framed_in >= 0.6, (plain_off, framed_off, framed_in)


def test_docstring_example_runs():
    import doctest

    from bioscan_clip.data import augmentation as dna_augmentation

    result = doctest.testmod(dna_augmentation, optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.attempted > 0 and result.failed == 0
