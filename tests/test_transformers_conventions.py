"""BioscanClipModel behaves as transformers users expect: attn_implementation reaches the towers, low-precision
models take float32 pixels, return_dict=False gives tuples, hidden states come back, logits are named fields.

Every case runs with a ViT image tower and with a ResNet one (a tower without attention)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModel

from modeling_bioscanclip import (
    BioscanClipConfig,
    BioscanClipImageProcessor,
    BioscanClipModel,
    BioscanClipOutput,
    BioscanDnaTokenizer,
)

LAYERS = 2


def bert(vocab_size: int, positions: int) -> dict:
    return {
        "model_type": "bert",
        "vocab_size": vocab_size,
        "hidden_size": 32,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "max_position_embeddings": positions,
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
    }


IMAGE_TOWERS = {
    "vit": {
        "image_config": {
            "model_type": "vit",
            "hidden_size": 32,
            "num_hidden_layers": LAYERS,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "image_size": 32,
            "patch_size": 8,
        },
        "image_pooling": "cls",
    },
    "resnet": {
        "image_config": {
            "model_type": "resnet",
            "num_channels": 3,
            "embedding_size": 16,
            "hidden_sizes": [16, 32],
            "depths": [1, 1],
            "layer_type": "basic",
            "downsample_in_first_stage": False,
        },
        "image_pooling": "pooler",
    },
}


def make_config(image_tower: str = "vit", **overrides) -> BioscanClipConfig:
    kwargs = {
        "projection_dim": 16,
        "dna_config": bert(1027, 140),
        "text_config": bert(100, 32),
        **IMAGE_TOWERS[image_tower],
        **overrides,
    }
    return BioscanClipConfig(**kwargs)


def make_model(image_tower: str = "vit", **overrides) -> BioscanClipModel:
    torch.manual_seed(0)
    return BioscanClipModel(make_config(image_tower, **overrides)).eval()


def make_inputs(n: int = 3) -> dict[str, torch.Tensor]:
    """Real preprocessor outputs for pixels (float32) and barcodes (with padding), random text ids."""
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, size=(40, 44, 3), dtype=np.uint8)) for _ in range(n)]
    pixels = BioscanClipImageProcessor(resize_shortest_edge=36, crop_size=32)(images)["pixel_values"]
    dna = BioscanDnaTokenizer()(["ACGTTGCAAGTCC" * (10 + 5 * i) for i in range(n)], return_tensors="pt")
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(5, 100, (n, 12), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, 8:] = 0
    assert pixels.dtype == torch.float32
    return {
        "pixel_values": pixels,
        "dna_input_ids": dna["input_ids"],
        "dna_attention_mask": dna["attention_mask"],
        "input_ids": input_ids,
        "attention_mask": attention_mask,
    }


def towers_with_attention(model: BioscanClipModel) -> list[torch.nn.Module]:
    return [
        getattr(model, f"{m}_model")
        for m in model.modalities
        if m != "image" or model.config.image_config.model_type == "vit"
    ]


@pytest.fixture
def sdpa_calls(monkeypatch):
    """Counts calls of torch's scaled_dot_product_attention, which transformers' "sdpa" attention calls."""
    calls = []
    original = torch.nn.functional.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting)
    return calls


@pytest.fixture(scope="module", params=sorted(IMAGE_TOWERS))
def saved(request, tmp_path_factory):
    """(image tower name, folder of a saved tiny model)."""
    folder = tmp_path_factory.mktemp(f"saved-{request.param}")
    make_model(request.param).save_pretrained(folder)
    return request.param, folder


@pytest.mark.parametrize("how", ["config", "from_config", "from_pretrained"])
def test_attn_implementation_reaches_every_tower(saved, how, sdpa_calls):
    image_tower, folder = saved
    inputs = make_inputs()
    embeddings = {}
    for implementation in ("eager", "sdpa"):
        if how == "config":
            config = BioscanClipConfig.from_pretrained(folder)
            config._attn_implementation = implementation
            model = BioscanClipModel(config)
        elif how == "from_config":
            model = AutoModel.from_config(BioscanClipConfig.from_pretrained(folder), attn_implementation=implementation)
        else:
            model = BioscanClipModel.from_pretrained(folder, attn_implementation=implementation)
        assert isinstance(model, BioscanClipModel)
        model.eval()
        if how != "from_pretrained":  # random weights otherwise; the same weights make the outputs comparable
            model.load_state_dict(BioscanClipModel.from_pretrained(folder).state_dict())
        assert model.config._attn_implementation == implementation
        attention_towers = towers_with_attention(model)
        assert len(attention_towers) == (3 if image_tower == "vit" else 2)
        for tower in attention_towers:
            assert tower.config._attn_implementation == implementation, type(tower).__name__
            attention_configs = [
                m.config for m in tower.modules() if "Attention" in type(m).__name__ and hasattr(m, "config")
            ]
            assert len(attention_configs) >= LAYERS
            assert all(c._attn_implementation == implementation for c in attention_configs)
        sdpa_calls.clear()
        with torch.no_grad():
            embeddings[implementation] = model.embed(**inputs)
        # The setting is what really runs: one SDPA call per attention layer of every tower with attention.
        assert len(sdpa_calls) == (0 if implementation == "eager" else LAYERS * len(attention_towers))
    for modality in ("image", "dna", "text"):
        torch.testing.assert_close(embeddings["sdpa"][modality], embeddings["eager"][modality], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("image_tower", sorted(IMAGE_TOWERS))
def test_set_attn_implementation_switches_the_towers(image_tower, sdpa_calls):
    model = make_model(image_tower)
    for implementation, expected_calls in (("eager", 0), ("sdpa", LAYERS * len(towers_with_attention(model)))):
        model.set_attn_implementation(implementation)
        assert all(t.config._attn_implementation == implementation for t in towers_with_attention(model))
        sdpa_calls.clear()
        with torch.no_grad():
            model.embed(**make_inputs())
        assert len(sdpa_calls) == expected_calls


def test_disabled_towers_and_config_round_trip_with_attn_implementation(tmp_path):
    config = make_config("resnet", modalities=["image", "dna"], attn_implementation="sdpa")
    assert config.text_config is None and config.dna_config._attn_implementation == "sdpa"
    model = BioscanClipModel(config)
    assert not hasattr(model, "text_model") and model.dna_model.config._attn_implementation == "sdpa"
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["text_config"] is None and "_attn_implementation" not in json.dumps(saved)
    reloaded = BioscanClipConfig.from_pretrained(tmp_path)
    assert reloaded.to_dict() == BioscanClipConfig.from_dict(config.to_dict()).to_dict()
    assert reloaded.image_config.model_type == "resnet" and reloaded.modalities == ["image", "dna"]


@pytest.mark.parametrize("image_tower", sorted(IMAGE_TOWERS))
@pytest.mark.parametrize(
    "dtype",
    # CPU kernels of torch >= 2.10 run convolutions, attention and LayerNorm in both half types.
    [torch.bfloat16, torch.float16],
)
def test_low_precision_models_take_float32_pixels(image_tower, dtype, tmp_path):
    reference = make_model(image_tower)
    inputs = make_inputs()
    with torch.no_grad():
        expected = reference.embed(**inputs)
    reference.save_pretrained(tmp_path)
    converted = make_model(image_tower).to(dtype)
    loaded = BioscanClipModel.from_pretrained(tmp_path, dtype=dtype).eval()
    assert loaded.image_model.dtype == dtype and loaded.dna_model.dtype == dtype
    for model in (converted, loaded):
        with torch.no_grad():
            out = model(**inputs, return_loss=True)
            features = model.get_image_features(inputs["pixel_values"])
        assert features.dtype == dtype
        for modality in ("image", "dna", "text"):
            embeds = getattr(out, f"{modality}_embeds")
            assert embeds.dtype == dtype and torch.isfinite(embeds).all(), modality
            # Half precision changes the last digits only.
            cosine = torch.nn.functional.cosine_similarity(embeds.float(), expected[modality], dim=-1)
            assert cosine.min() > 0.98, (modality, cosine)
        assert torch.isfinite(out.loss)


@pytest.mark.parametrize("image_tower", sorted(IMAGE_TOWERS))
def test_return_dict_false_gives_the_fields_as_a_tuple(image_tower):
    model = make_model(image_tower)
    inputs = make_inputs()
    with torch.no_grad():
        out = model(**inputs, return_loss=True)
        as_tuple = model(**inputs, return_loss=True, return_dict=False)
    assert isinstance(out, BioscanClipOutput) and isinstance(as_tuple, tuple)
    fields = list(out.values())  # the non-None fields, in their order
    assert len(as_tuple) == len(fields) == 11
    for element, field in zip(as_tuple, fields, strict=True):
        if isinstance(field, torch.Tensor):
            assert torch.equal(element, field)
        else:  # a tower's output, as a tuple too
            assert isinstance(element, tuple) and torch.equal(element[0], field.last_hidden_state)
    # The configuration's default is honoured as well.
    model.config.return_dict = False
    with torch.no_grad():
        assert isinstance(model(**inputs), tuple)


@pytest.mark.parametrize("image_tower", sorted(IMAGE_TOWERS))
def test_output_hidden_states_reach_every_tower(image_tower):
    model = make_model(image_tower)
    inputs = make_inputs()
    with torch.no_grad():
        plain = model(**inputs)
        out = model(**inputs, output_hidden_states=True)
    assert plain.dna_model_output.hidden_states is None and plain.image_model_output.hidden_states is None
    # BERT and ViT: the embeddings plus one per layer; ResNet: the stem plus one per stage.
    assert len(out.dna_model_output.hidden_states) == LAYERS + 1
    assert len(out.text_model_output.hidden_states) == LAYERS + 1
    image_states = out.image_model_output.hidden_states
    assert len(image_states) == (LAYERS + 1 if image_tower == "vit" else 2 + 1)
    torch.testing.assert_close(out.text_model_output.hidden_states[-1], out.text_model_output.last_hidden_state)
    assert out.dna_model_output.hidden_states[0].shape == (3, 133, 32)
    torch.testing.assert_close(out.dna_embeds, plain.dna_embeds)


def test_output_attentions_with_eager_attention():
    config = make_config("vit")
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = BioscanClipModel(config).eval()
    with torch.no_grad():
        out = model(**make_inputs(), output_attentions=True)
    for name in ("image", "dna", "text"):
        attentions = getattr(out, f"{name}_model_output").attentions
        assert len(attentions) == LAYERS and attentions[0].shape[:2] == (3, 2), name


@pytest.mark.parametrize("image_tower", sorted(IMAGE_TOWERS))
def test_named_logits_fields_and_the_old_dict(image_tower):
    model = make_model(image_tower)
    with torch.no_grad():
        out = model(**make_inputs())
    scale = out.logit_scale
    pairs = {
        "logits_per_image_dna": (out.image_embeds, out.dna_embeds),
        "logits_per_image_text": (out.image_embeds, out.text_embeds),
        "logits_per_dna_text": (out.dna_embeds, out.text_embeds),
    }
    for field, (a, b) in pairs.items():
        torch.testing.assert_close(getattr(out, field), scale * a @ b.T)
    assert sorted(out.logits) == ["dna_text", "image_dna", "image_text"]
    assert torch.equal(out.logits["image_dna"], out.logits_per_image_dna)
    assert torch.equal(out.pair_logits("image", "dna"), out.logits_per_image_dna)
    assert torch.equal(out.pair_logits("text", "dna"), out.logits_per_dna_text.T)
    assert "logits" not in [field.name for field in dataclasses.fields(out)]  # a property, not a field


def test_missing_modality_leaves_its_fields_empty():
    model = make_model("resnet", modalities=["image", "dna"])
    inputs = {k: v for k, v in make_inputs().items() if k in ("pixel_values", "dna_input_ids", "dna_attention_mask")}
    with torch.no_grad():
        out = model(**inputs, return_loss=True)
    assert out.logits_per_image_text is None and out.logits_per_dna_text is None and out.text_model_output is None
    assert list(out.logits) == ["image_dna"]
    with pytest.raises(ValueError, match="no image-text logits"):
        out.pair_logits("image", "text")
    with pytest.raises(ValueError, match="two different modalities"):
        out.pair_logits("dna", "dna")


# Flex attention compiles its kernels on first use (~40 s on a CPU); sdpa and eager are checked against each other in CI.
@pytest.mark.slow
@pytest.mark.exhaustive
# torch.compile's internals warn about their own deprecated flags; nothing of ours.
@pytest.mark.filterwarnings("ignore::DeprecationWarning:torch.*", "ignore::DeprecationWarning:transformers.*")
def test_flex_attention_gives_the_same_embeddings():
    model = make_model("resnet")
    inputs = make_inputs()
    with torch.no_grad():
        expected = model.embed(**inputs)
        model.set_attn_implementation("flex_attention")  # flex attention has no backward pass on CPU
        assert all(t.config._attn_implementation == "flex_attention" for t in towers_with_attention(model))
        embeddings = model.embed(**inputs)
    for modality in ("image", "dna", "text"):
        torch.testing.assert_close(embeddings[modality], expected[modality], atol=1e-5, rtol=1e-4)
